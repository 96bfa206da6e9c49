"""Cost of one ConAbl step and one UCE solve on SD3-medium's transformer at real size (CPU).

SD3-medium's transformer in its published configuration (2.03 B parameters, random weights,
float32; obliviate.testing.transformer_config("sd3", "full")) inside a StableDiffusion3Pipeline
whose other parts are the tiny test ones: they are never run here. The text states a real
pipeline would get from CLIP-L + CLIP-G + T5-XXL (77 + 256 tokens, 4096 wide; pooled 2048)
are random tensors of that shape, put where the request's encoders' outputs are cached
(Context's prompt cache for ConAbl, UCE's text-state cache), because T5-XXL alone is 19 GB in
float32. Everything else is the library's own code path:

- ConAbl: `train` (the one training loop) with ConAbl's method_loss on anchor latents at
  64 px (8x8 latents, 16 image tokens), batch 1, parameter group kv-xattn (the context-side
  keys and values of the 24 joint blocks); step 1 is a warm-up, the figure is step 2.
- UCE: `UCE.solve` with the default rows (positions=after, preserve=others+empty) of a
  catalog of 4 styles: the 4096 x 4096 solve in float64 and W0 M for context_embedder.

FLUX.1-dev (11.9 B parameters, 47.6 GB in float32) does not fit this machine: it is built on
the meta device only, and the JSON states its size and what each group would train.
Each measurement runs in its own process so that its peak resident memory is its own.

    python scripts/bench_realsize_dit.py --out docs/results/bench-realsize-dit.json
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STYLES = ["Van Gogh", "Pop Art", "Claude Monet", "Art Nouveau"]


def sd3_context(method_name: str, tmp: Path):
    import torch
    from diffusers import SD3Transformer2DModel

    from obliviate.model import Cond, select_parameters
    from obliviate.protocols import Catalog
    from obliviate.testing import random_flow_pipeline, transformer_config
    from obliviate.request import Request
    from obliviate.trainer import Context

    t0 = time.time()
    pipe = random_flow_pipeline("sd3")
    torch.manual_seed(0)
    big = SD3Transformer2DModel(**transformer_config("sd3", "full", latent_size=8)).eval().requires_grad_(False)
    pipe.register_modules(transformer=big)
    build = time.time() - t0
    catalog = Catalog(name="bench", styles=STYLES, objects=["tree", "sports car"], template="a painting of a {object} in {style} style",
                      style_only="an image in the style of {style}", object_only="an image of a {object}",
                      sampler={"steps": 2, "guidance": 3.0})
    group = "context" if method_name == "uce" else "kv-xattn"
    request = Request("Van Gogh", "style", method_name, param_group=group)
    params = select_parameters(big, group)
    for p in params.values():
        p.requires_grad_(True)
    start = {n: p.detach().clone() for n, p in params.items()}
    ctx = Context(pipe=pipe, request=request, params=params, pretrained=start, start=start, catalog=catalog, unlearned_before=[],
                  cache_dir=tmp, base_hash="bench", restore_base=contextlib.nullcontext, quiet=True)
    gen = torch.Generator().manual_seed(1)

    def states(n=1):  # what CLIP-L + CLIP-G (padded) + T5-XXL give: 333 tokens of width 4096, pooled 2048
        return Cond(torch.randn(n, 77 + 256, 4096, generator=gen) * 0.2, torch.randn(n, 2048, generator=gen))

    return pipe, ctx, states, build, sum(p.numel() for p in big.parameters()), sum(p.numel() for p in params.values())


def one(method_name: str) -> dict:
    import torch

    from obliviate.methods.conabl import ConAbl, ConAblSettings
    from obliviate.methods.uce import UCE, UCESettings
    from obliviate.trainer import train

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    with tempfile.TemporaryDirectory() as tmp:
        pipe, ctx, states, build, total, trained = sd3_context(method_name, Path(tmp))
        if method_name == "conabl":
            method = ConAbl(ConAblSettings(steps=2, batch_size=1, anchor_images=1))
            method.latents = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(2))
            method.anchor_prompts, method.target_prompts = ["an image of a tree"], [["a painting of a tree in Van Gogh style"]]
            for p in method.anchor_prompts + method.target_prompts[0]:
                ctx._prompt_cache[p] = states()
            seconds = []

            class Clock:  # the loop's after_step hook: wall time of each step
                name, order, needs_update_transform = "clock", 100, False

                def __init__(self):
                    self.t = time.time()

                def after_step(self, ctx, step, total):
                    seconds.append(time.time() - self.t)
                    self.t = time.time()

                def __getattr__(self, name):  # every other hook call does nothing
                    return lambda *a, **k: None

            train(ctx, method, [Clock()])
            result = {"seconds_per_step": seconds[-1], "warmup_step_seconds": seconds[0]}
        else:
            method = UCE(UCESettings())

            class EncoderOutputs(dict):
                """UCE's per-prompt text-state cache, answering every prompt with T5-XXL-shaped states."""

                def __contains__(self, prompt):
                    self.setdefault(prompt, states().hidden[0])
                    return True

            ctx.__dict__["_uce_states"] = EncoderOutputs()
            t0 = time.time()
            solved = method.solve(ctx)
            result = {"solve_seconds": time.time() - t0, "erase_rows": method.info["erase_rows"],
                      "preserve_rows": method.info["preserve_rows"],
                      "edited": {n: list(v.shape) for n, v in solved.items()}}
        result.update({"build_seconds": build, "transformer_parameters": total, "trained_parameters": trained,
                       "param_group": ctx.request.param_group,
                       "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20})
        return result


def flux_meta() -> dict:
    from accelerate import init_empty_weights
    from diffusers import FluxTransformer2DModel

    from obliviate.model import select_parameters
    from obliviate.testing import transformer_config

    with init_empty_weights():
        flux = FluxTransformer2DModel(**transformer_config("flux", "full"))
    n = sum(p.numel() for p in flux.parameters())
    groups = {g: sum(p.numel() for p in select_parameters(flux, g).values()) for g in ("kv-xattn", "xattn", "context")}
    return {"parameters": n, "float32_gib": 4 * n / 2**30, "group_parameters": groups,
            "note": "built on the meta device only (accelerate.init_empty_weights): 11.9 B parameters need 44 GiB in "
                    "float32 for the weights alone, more than this machine's memory; no step or solve was run"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/results/bench-realsize-dit.json")
    ap.add_argument("--one", choices=["conabl", "uce", "flux-meta"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(flux_meta() if args.one == "flux-meta" else one(args.one)))
        return 0
    results = {}
    for name in ("conabl", "uce", "flux-meta"):
        proc = subprocess.run([sys.executable, __file__, "--one", name], capture_output=True, text=True)
        if proc.returncode:
            print(proc.stderr, file=sys.stderr)
            return proc.returncode
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(name, results[name], flush=True)
    load = os.getloadavg()
    out = {
        "what": "SD3-medium transformer (published config, random weights, float32) at 64 px on CPU: one ConAbl step "
                "(kv-xattn, batch 1) and one UCE solve (context_embedder); FLUX.1-dev on the meta device only",
        "provisional": True,
        "load_average_1_5_15": [round(x, 2) for x in load],
        "note": "measured while other jobs shared the machine's cores (load average above): re-take on idle cores",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "torch_threads": int(os.environ.get("OMP_NUM_THREADS", "0") or 0)},
        "sd3_medium_conabl_step": results["conabl"], "sd3_medium_uce_solve": results["uce"], "flux_dev": results["flux-meta"],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
