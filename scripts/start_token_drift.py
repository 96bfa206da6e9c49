"""Which token positions' cross-attention keys and values a run's updates move.

For every variant of an experiment directory (or one run directory), after each request:
the relative change of the keys and values that *retained* prompts produce,
||dW e_i|| / ||W e_i||, averaged over the cross-attention key/value layers and the retained
prompts, grouped by position: the start token (position 0, which every prompt reads), the
retained style's own word, the other words of the prompt, and the end/padding positions. Also
which real-token position moved most. Prints JSON.

Usage: python scripts/start_token_drift.py runs/start-token [--out FILE]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from obliviate.continual import Run
from obliviate.model import encode_prompts, load_pipeline


def run_dirs(path: Path) -> dict[str, Path]:
    if (path / "variants").is_dir():
        return {d.name: d / "run" for d in sorted((path / "variants").iterdir()) if (d / "run").is_dir()}
    return {path.name: path}


@torch.no_grad()
def position_drift(run_dir: Path, retained: list[str], partners: list[str]) -> list[dict]:
    run = Run(run_dir)
    pipe = load_pipeline(run.base_model, device="cpu")
    catalog = run.catalog()
    prompts = [catalog.prompt(style, obj) for style in retained for obj in partners]
    states = encode_prompts(pipe, prompts)  # (n, L, d)
    ids = pipe.tokenizer(prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids
    end_id = pipe.tokenizer.eos_token_id
    groups = torch.full(ids.shape, 2)  # 2: other words of the prompt
    groups[:, 0] = 0  # the start token
    for i, style in enumerate(s for s in retained for _ in partners):
        style_ids = set(pipe.tokenizer(style, add_special_tokens=False).input_ids)
        for j, t in enumerate(ids[i].tolist()):
            if j > 0 and t in style_ids:
                groups[i, j] = 1  # the retained style's own word
    after_end = (ids == end_id).int().cumsum(1) > 0
    groups[after_end & (groups != 0)] = 3  # end token and padding
    weights = dict(pipe.unet.named_parameters())
    out = []
    for step in range(1, len(run.steps()) + 1):
        delta = run.cumulative_delta(upto=step)
        change = []
        for name, d in delta.items():
            if ".attn2.to_k." not in name and ".attn2.to_v." not in name:
                continue
            base = states @ weights[name].T  # (n, L, out)
            moved = states @ d.to(states.dtype).T
            change.append(moved.norm(dim=-1) / base.norm(dim=-1).clamp_min(1e-12))
        rel = torch.stack(change).mean(0)  # (n, L): mean over layers
        by_group = {g: float(rel[groups == k].mean()) for k, g in enumerate(("start", "retained_word", "other_words",
                                                                               "end_and_padding"))}
        real = rel.masked_fill(groups == 3, float("-inf")).mean(0)
        out.append({"step": step, "relative_kv_change": by_group, "most_changed_real_position": int(real.argmax())})
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("path", help="an experiment output directory (with variants/) or a run directory")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()
    path = Path(args.path)
    config = json.loads((path / "experiment.json").read_text()) if (path / "experiment.json").exists() else {}
    retained = config.get("retained") or ["lava", "autumn", "winter", "sky", "jungle", "moss", "galaxy", "storm"]
    partners = config.get("partners") or ["circle", "ring", "square", "heart"]
    result = {name: position_drift(d, retained, partners) for name, d in run_dirs(path).items()}
    text = json.dumps({"retained": retained, "partners": partners, "variants": result}, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
