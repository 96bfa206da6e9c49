"""Cost of one uce request on a Stable Diffusion 1.5-size model, on CPU, random weights.

Builds a UNet2DConditionModel with SD 1.5's configuration and a CLIPTextModel of width 768
(12 layers, 77 positions) from configs (nothing is downloaded), a word-level tokenizer over
a synthetic vocabulary, and times one `uce` request (anchor=base: the solve covers every
concept erased so far) with 1, 10 and 50 erased concepts: prompt encoding, rows, the
d_text x d_text solve and W0 M for every cross-attention key/value weight. Prints JSON.

As in a run, the earlier concepts' prompts were encoded by their own requests and sit in the
run's text-state cache (uce.text_states): the cache is filled for them before the timing
(not timed), and each timed request starts from a fresh Context (nothing in memory), so it
reads the earlier states from disk and encodes only its own prompts.

    OMP_NUM_THREADS=1 python scripts/bench_uce.py [--counts 1,10,50] [--out docs/results/bench_uce.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
SD15_TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                 max_position_embeddings=77, hidden_act="quick_gelu", bos_token_id=0, eos_token_id=1, pad_token_id=1)


def word_tokenizer(words: list[str], directory: Path):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<|startoftext|>", "<|endoftext|>", "<|unk|>", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|unk|>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<|startoftext|> $A <|endoftext|>",
                                                       special_tokens=[("<|startoftext|>", 0), ("<|endoftext|>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                                   unk_token="<|unk|>", pad_token="<|endoftext|>", model_max_length=77)
    return fast


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--counts", default="1,10,50")
    ap.add_argument("--out")
    args = ap.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from obliviate.methods.uce import UCE, UCESettings, erase_prompts, text_states
    from obliviate.model import select_parameters
    from obliviate.protocols import generic_catalog
    from obliviate.request import Request
    from obliviate.trainer import Context

    torch.manual_seed(0)
    t0 = time.time()
    unet = UNet2DConditionModel(**SD15_UNET).eval().requires_grad_(False)
    text = CLIPTextModel(CLIPTextConfig(**SD15_TEXT)).eval().requires_grad_(False)
    concepts = [f"artist{i}" for i in range(max(counts))]
    words = "a an image in the style of painting by art photo picture".split()
    tokenizer = word_tokenizer(words + concepts, Path(tempfile.mkdtemp()))
    build_seconds = time.time() - t0
    pipe = SimpleNamespace(unet=unet, text_encoder=text, tokenizer=tokenizer)
    params = select_parameters(unet, "kv-xattn")
    base = {n: p.detach().clone() for n, p in params.items()}
    results = []
    cache = Path(tempfile.mkdtemp())
    catalog = generic_catalog()
    settings = UCESettings(rows="neutral", preserve="empty")
    warmed = 0
    for n in counts:
        # the earlier requests' own encoding (not timed): their states are in the run's cache
        t_warm = time.time()
        for c in concepts[warmed : n - 1]:
            warm = Context(pipe=pipe, request=Request(c, "style", "uce", {}), params=params, pretrained=base, start=base,
                           catalog=catalog, unlearned_before=[], cache_dir=cache, base_hash="bench", quiet=True)
            ps = erase_prompts(warm, c, "style", settings)
            text_states(warm, ps + [p.replace(c, "art") for p in ps] + [""])
        warmed = max(warmed, n - 1)
        print(json.dumps({"warmed_cache_for": n - 1, "seconds": round(time.time() - t_warm, 1)}), flush=True)
        earlier = [Request(c, "style", "uce", {}).to_dict() for c in concepts[: n - 1]]
        req = Request(concepts[n - 1], "style", "uce", {})
        method = UCE(settings)
        # a fresh Context, as in a new request: earlier states come from the disk cache
        ctx = Context(pipe=pipe, request=req, params=params, pretrained=base, start=base, catalog=catalog,
                      unlearned_before=[(c, "style") for c in concepts[: n - 1]], cache_dir=cache, base_hash="bench",
                      quiet=True, earlier_requests=earlier)
        t1 = time.time()
        method.setup(ctx)
        new = method.solve(ctx)
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(new[name])
        seconds = time.time() - t1
        results.append({"erased_concepts": n, "seconds_per_request": round(seconds, 2),
                        "rows_seconds": round(method.info["rows_seconds"], 2), "erase_rows": method.info["erase_rows"]})
        print(json.dumps(results[-1]), flush=True)
    report = {
        "benchmark": "uce request on a random-weight SD 1.5-size UNet + 768-wide CLIP text encoder, CPU",
        "kv_tensors": len(params), "kv_parameters": sum(p.numel() for p in params.values()),
        "unet_parameters": sum(p.numel() for p in unet.parameters()), "build_seconds": round(build_seconds, 1),
        "settings": "rows=neutral (the concept after the neutral prefix, and alone), positions=after (to the 77th token), "
                    "preserve=empty, anchor=base (the solve covers every concept erased so far); earlier concepts' "
                    "text states read from the run's disk cache, this request's prompts encoded",
        "threads": torch.get_num_threads(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "torch": torch.__version__, "machine": platform.machine(), "results": results,
    }
    text_out = json.dumps(report, indent=2)
    print(text_out)
    if args.out:
        from obliviate.delta import atomic_write_json

        atomic_write_json(Path(args.out), report)


if __name__ == "__main__":
    main()
