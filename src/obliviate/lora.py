"""LoRA adapters (through peft) as a parameter group: `--param-group lora:r=4,targets=kv-xattn`.

A request trains a fresh low-rank adapter dW = s B A (s = alpha / r; A: r x d_in, B: d_out x r,
B starts at zero) on the chosen layers of the model produced by the previous requests. The
ledger stores the adapter itself (A and B, with rank/alpha/targets in the safetensors
metadata): for SD 1.5 kv-xattn at r=4 that is 0.198 M numbers instead of the 19.2 M of the
full key/value delta (step.json reports both).

Continual policy: **one adapter per request, stacked** (not one adapter kept in training):
- each step stays an immutable, auditable file, as for full deltas; the model after K steps is
  base + sum_k s_k B_k A_k, and independent+merge works unchanged on the densified deltas;
- a request's change starts at exactly zero (B_k = 0), so L1/L2-SP `reference=request` and the
  per-request drift mean the same as with full deltas;
- the stack exports *exactly* as one LoRA of rank sum(r_k) (A's stacked by rows, s_k B_k by
  columns), which plain diffusers loads with `pipe.load_lora_weights(dir)`;
- one adapter kept in training would have to re-use its r directions for every new concept,
  so a later request can only unlearn by overwriting what earlier ones wrote, and its rank
  never grows to fit a stream of requests.
The alternative is available as `lora:...,continual=keep` (each step then stores the adapter
it ended with and the one it started from) so that the choice can be measured (docs/LORA.md);
the projection is refused there, because B's update multiplies the earlier A, whose rows are not
orthogonal to the protected concepts, so dW c = 0 cannot hold.
Cost of stacking: the stored rank grows by r per request (still far below the full delta for any
realistic stream: 12 SD 1.5 style requests at r=4 are 2.4 M numbers vs 19.2 M per full delta).

Regularizers on A and B (each add-on's `for_lora` gives its form or refuses):
- projection: dW c = s B (A c), so projecting **A** onto the orthogonal complement of span(C)
  keeps A c = 0, hence dW c = 0, whatever B does. A starts projected; mode=update projects A's
  actual optimizer update (exact invariance); mode=grad projects A's gradient (approximate
  under AdamW, as for full deltas). B is left free.
- l1sp / l2sp: the penalty is on the weight change the adapter makes, s B A (plus the earlier
  requests' change for reference=pretrained), averaged over the adapted weight's elements,
  so a weight means the same as with kv-xattn. A penalty on A and B themselves would punish
  A's random start and has no drift meaning.
- replay: unchanged (it distils the model's outputs, whatever is trained).
- refused: selft and the sculpmem method. Both keep chosen *elements of W* fixed; every
  element of B A depends on every element of A and B, so no mask on A or B keeps masked
  elements of W bit-identical (and SelFT's |theta * g| score is 0 for all of B at its zero
  start). Use them with `--param-group kv-xattn` (or xattn/full).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from .parsing import AT_LEAST_ONE, POSITIVE, Checked

ADAPTER = "obliviate"
FORMAT = "lora"
TARGET_PATTERNS = {
    "kv-xattn": r".*\.attn2\.(to_k|to_v)",
    "xattn": r".*\.attn2\.(to_q|to_k|to_v|to_out\.0)",
}
# why an element mask (SelFT, SculpMem) has no LoRA form; both quote it when they refuse
ELEMENT_MASK = ("it keeps chosen elements of W fixed, but every element of a LoRA update s B A depends on all of A "
                "and B, so masked elements cannot stay fixed")
# on an SD3 / FLUX transformer: the context side of joint attention (model.TRANSFORMER_GROUPS)
TRANSFORMER_TARGET_PATTERNS = {
    "kv-xattn": r"transformer_blocks\.\d+\.attn\.(add_k_proj|add_v_proj)",
    "xattn": r"transformer_blocks\.\d+\.attn\.(add_q_proj|add_k_proj|add_v_proj|to_add_out)",
}


@dataclass
class LoraSettings(Checked):
    r: int = 4
    alpha: float | None = None  # default: r (scale 1)
    targets: Literal["kv-xattn", "xattn"] = "kv-xattn"
    # stack: a fresh adapter per request (default); keep: continue training the previous
    # request's adapter (the alternative, kept for measuring it: docs/LORA.md)
    continual: Literal["stack", "keep"] = "stack"

    ranges = {"r": AT_LEAST_ONE, "alpha": POSITIVE}

    @property
    def scale(self) -> float:
        return (self.alpha if self.alpha is not None else self.r) / self.r


def check_param_group(group: str) -> str:
    """A clear error, before any work, for an unknown group or bad LoRA settings."""
    from .model import PARAM_GROUPS

    if is_lora(group):
        parse_group(group)
    elif group not in PARAM_GROUPS:
        raise ValueError(f"unknown parameter group {group!r}; valid groups: {', '.join(PARAM_GROUPS)}, "
                         "lora[:r=4,alpha=4,targets=kv-xattn|xattn]")
    return group


def is_lora(group: str) -> bool:
    return group == "lora" or group.startswith("lora:")


def parse_group(group: str) -> LoraSettings:
    """`lora:r=4,targets=kv-xattn,alpha=4` -> settings, with errors naming the input."""
    from .parsing import parse_named, parse_settings

    _, values = parse_named(group, "--param-group", "lora:r=4,targets=kv-xattn")
    return parse_settings(LoraSettings, values, f"--param-group {group}")


def inject(unet: torch.nn.Module, group: str, seed: int = 0) -> dict[str, torch.nn.Parameter]:
    """Add a fresh adapter (A seeded, B = 0) to the UNet; return its trainable tensors by name."""
    from peft import LoraConfig, inject_adapter_in_model

    from .model import is_transformer

    settings = parse_group(group)
    patterns = TRANSFORMER_TARGET_PATTERNS if is_transformer(unet) else TARGET_PATTERNS
    config = LoraConfig(r=settings.r, lora_alpha=settings.r * settings.scale, target_modules=patterns[settings.targets],
                        init_lora_weights=True, lora_dropout=0.0)
    with torch.random.fork_rng(devices=[]):  # A's start depends on the request's seed only
        torch.manual_seed(seed)
        inject_adapter_in_model(config, unet, adapter_name=ADAPTER)
    params = {n: p for n, p in unet.named_parameters() if f".{ADAPTER}." in n}
    if not params:
        raise ValueError(f"--param-group {group!r} matched no UNet layer; is this a text-conditioned UNet?")
    device = next(p for n, p in unet.named_parameters() if f".{ADAPTER}." not in n).device
    for p in params.values():
        p.data = p.data.to(device)
        p.requires_grad_(True)
    return params


def stored_name(param_name: str) -> str:
    """`...to_k.lora_A.obliviate.weight` -> `...to_k.lora_A.weight` (peft's state-dict naming)."""
    return param_name.replace(f".{ADAPTER}.", ".")


def adapter_tensors(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {stored_name(n): p.detach().float().cpu().clone() for n, p in params.items()}


def metadata(group: str) -> dict[str, str]:
    s = parse_group(group)
    return {"format": FORMAT, "rank": str(s.r), "alpha": str(s.r * s.scale), "targets": s.targets, "continual": s.continual}


PREVIOUS = "previous."  # continual=keep: the adapter this request started from, stored with it


def densify(adapter: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """The weight change a step made: {`<module>.weight`: scale * (B A - B_start A_start)}
    (B_start A_start only for continual=keep; a stacked adapter starts at B = 0)."""
    dense = {}
    for name, a in adapter.items():
        if not name.endswith(".lora_A.weight") or name.startswith(PREVIOUS):
            continue
        module = name[: -len(".lora_A.weight")]
        w = adapter[f"{module}.lora_B.weight"].double() @ a.double()
        if f"{PREVIOUS}{name}" in adapter:
            w = w - adapter[f"{PREVIOUS}{module}.lora_B.weight"].double() @ adapter[f"{PREVIOUS}{name}"].double()
        dense[f"{module}.weight"] = (scale * w).float()
    return dense


def current_adapter(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {n: v for n, v in tensors.items() if not n.startswith(PREVIOUS)}


@torch.no_grad()
def continue_adapter(unet, params: dict[str, torch.nn.Parameter], group: str, steps: list[dict]) -> dict | None:
    """continual=keep: start from the previous step's adapter, model unchanged at the start
    (each adapted base weight loses the s B A that the adapter now adds back). None for stack."""
    settings = parse_group(group)
    if settings.continual != "keep" or not steps:
        return None
    tensors, info = read_step(Path(steps[-1]["dir"]) / "delta.safetensors")
    if info.get("format") != FORMAT or (info["rank"], info["alpha"], info["targets"]) != (
            str(settings.r), str(settings.r * settings.scale), settings.targets):
        raise ValueError(f"--param-group {group}: continual=keep continues the previous step's adapter, but step "
                         f"{steps[-1]['step']} is not a LoRA adapter of the same rank, alpha and targets")
    previous = current_adapter(tensors)
    for name, p in params.items():
        p.copy_(previous[stored_name(name)].to(p.device))
    for module, w in densify(previous, settings.scale).items():
        layer = unet.get_submodule(module[: -len(".weight")])
        layer.base_layer.weight.sub_(w.to(layer.base_layer.weight.device))
    return previous


def read_step(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    from .delta import load_delta

    tensors = load_delta(path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    return tensors, meta


def dense_step(path: Path) -> dict[str, torch.Tensor]:
    """A step's change to the UNet's weights, whether the ledger holds a full delta or an adapter."""
    tensors, meta = read_step(path)
    if meta.get("format") == FORMAT:
        return densify(tensors, float(meta["alpha"]) / int(meta["rank"]))
    return tensors


def size_report(adapter: dict[str, torch.Tensor], dense: dict[str, torch.Tensor], file: Path) -> dict:
    """For step.json: the adapter next to the full delta of the same weights."""
    n_adapter = sum(v.numel() for v in current_adapter(adapter).values())
    n_full = sum(v.numel() for v in dense.values())
    return {"adapter_parameters": n_adapter, "adapter_bytes": file.stat().st_size,
            "full_delta_parameters": n_full, "full_delta_bytes": 4 * n_full,
            "ratio": n_adapter / max(1, n_full)}


# ---------------------------------------------------------------- export
def export_lora(run, out: str | Path, step: int | None = None) -> Path:
    """The run's stacked adapters as one LoRA directory that `pipe.load_lora_weights(dir)` reads.

    Exact: concatenating A_k by rows and s_k B_k by columns gives sum_k s_k B_k A_k; the
    scale is folded into B, so the file's alpha equals its rank (scale 1)."""
    import diffusers
    from diffusers.utils import convert_state_dict_to_diffusers

    from .model import is_flow, pipeline_class

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"--out {out} exists and is not empty; choose a new directory")
    steps = run.verify_chain(step)
    if not steps:
        raise ValueError(f"run {run.path} has no steps to export")
    adapters: list[tuple[dict[str, torch.Tensor], float]] = []
    for meta in steps:
        tensors, info = read_step(Path(meta["dir"]) / "delta.safetensors")
        if info.get("format") != FORMAT:
            raise ValueError(f"step {meta['step']} ({meta['request']['concept']}) stores a full delta "
                             f"(--param-group {meta['request'].get('param_group')}), not a LoRA adapter; "
                             "export --format pipeline writes the merged model instead")
        entry = (current_adapter(tensors), float(info["alpha"]) / int(info["rank"]))
        if info.get("continual") == "keep" and any(n.startswith(PREVIOUS) for n in tensors):
            adapters[-1] = entry  # a continued adapter replaces the one it started from
        else:
            adapters.append(entry)
    parts: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    for tensors, scale in adapters:
        for name, a in tensors.items():
            if name.endswith(".lora_A.weight"):
                module = name[: -len(".lora_A.weight")]
                parts.setdefault(module, []).append((a, scale * tensors[f"{module}.lora_B.weight"]))
    state = {}
    for module, pairs in parts.items():
        state[f"{module}.lora_A.weight"] = torch.cat([a for a, _ in pairs], dim=0).contiguous()
        state[f"{module}.lora_B.weight"] = torch.cat([b for _, b in pairs], dim=1).contiguous()
    from .delta import atomic_directory

    with atomic_directory(out) as tmp:
        layers = convert_state_dict_to_diffusers(state)
        if is_flow(run.base_model):  # FluxPipeline / StableDiffusion3Pipeline: the adapter is on the transformer
            getattr(diffusers, pipeline_class(run.base_model)).save_lora_weights(
                tmp, transformer_lora_layers=layers, safe_serialization=True)
        else:
            diffusers.StableDiffusionPipeline.save_lora_weights(tmp, unet_lora_layers=layers, safe_serialization=True)
    return out


def adapted_modules(params: dict) -> list[tuple[str, str, str]]:
    """(module, A name, B name) of every adapted layer, by the trained tensors' names."""
    import re

    out = []
    for n in params:
        m = re.match(rf"(.*)\.lora_A\.{ADAPTER}\.weight$", n)
        if m:
            out.append((m.group(1), n, f"{m.group(1)}.lora_B.{ADAPTER}.weight"))
    return out
