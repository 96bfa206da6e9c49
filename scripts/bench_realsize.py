"""Seconds per training step and peak memory at real SD 1.5 / SD 2.1 size on this machine.

Random weights in the published shapes (obliviate.testing, no download): 860M-parameter UNet,
768- (SD 1.5) or 1024-wide (SD 2.1, v-prediction, 96x96 latents) CLIP text encoder, f=8 VAE.
Each (family, method) runs in its own process so that peak resident memory
(resource.getrusage ru_maxrss: model, activations, gradients, optimizer state) is its own.
The first step is a warm-up; seconds per step is the mean of the later ones.
`--latent-size 8` keeps every weight's shape and trains at 64x64 pixels, as the full-size
tests do (tests/test_realmodels.py).

    python scripts/bench_realsize.py --out docs/results/bench-realsize.json
    python scripts/bench_realsize.py --latent-size 8 --out docs/results/bench-realsize-64px.json
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

METHOD_SETTINGS = {  # one short request; batch sizes of the SD 1.5 references (ConAbl 4 is too slow on CPU: 1)
    "conabl": {"anchor_images": 1, "sampler_steps": 1},
    "esd": {"ddim_steps": 1},
}


def one(family: str, method_name: str, steps: int, batch_size: int, latent_size: int | None = None) -> dict:
    import torch

    from obliviate.methods import get_method
    from obliviate.model import select_parameters
    from obliviate.protocols import generic_catalog
    from obliviate.testing import random_pipeline
    from obliviate.request import Request
    from obliviate.trainer import Context, Hook, train

    t0 = time.time()
    pipe = random_pipeline(family, "full", latent_size=latent_size)
    pipe.set_progress_bar_config(disable=True)
    for m in (pipe.unet, pipe.vae, pipe.text_encoder):
        m.requires_grad_(False).eval()
    build_seconds = time.time() - t0
    cls = get_method(method_name)
    settings = cls.Settings(steps=steps, batch_size=batch_size, **METHOD_SETTINGS[method_name])
    method = cls(settings)
    request = Request("Van Gogh", "style", method_name, seed=0)
    params = select_parameters(pipe.unet, request.param_group)
    for p in params.values():
        p.requires_grad_(True)
    start = {n: p.detach().clone() for n, p in params.items()}

    class Clock(Hook):
        name, order = "clock", 100

        def __init__(self):
            super().__init__()
            self.times, self.cpu = [time.time()], [time.process_time()]

        def after_step(self, ctx, step, total_steps):
            self.times.append(time.time())
            self.cpu.append(time.process_time())

    with tempfile.TemporaryDirectory() as cache:
        ctx = Context(pipe=pipe, request=request, params=params, pretrained=start, start=start, catalog=generic_catalog(),
                      unlearned_before=[], cache_dir=Path(cache), base_hash="bench", restore_base=contextlib.nullcontext,
                      quiet=True)
        t0 = time.time()
        method.setup(ctx)
        setup_seconds = time.time() - t0
        clock = Clock()
        train(ctx, method, [clock])
    per_step = [b - a for a, b in zip(clock.times, clock.times[1:])]
    later = per_step[1:] or per_step
    cpu = [b - a for a, b in zip(clock.cpu, clock.cpu[1:])]
    cpu_later = cpu[1:] or cpu
    return {
        "family": family, "method": method_name, "param_group": request.param_group, "batch_size": batch_size,
        "trained_tensors": len(params), "trained_parameters": sum(p.numel() for p in params.values()),
        "unet_parameters": sum(p.numel() for p in pipe.unet.parameters()),
        "text_width": pipe.text_encoder.config.hidden_size, "latent_size": pipe.unet.config.sample_size,
        "prediction_type": pipe.scheduler.config.prediction_type,
        "build_seconds": round(build_seconds, 2), "setup_seconds": round(setup_seconds, 2),
        "seconds_per_step": round(sum(later) / len(later), 2), "step_seconds": [round(s, 2) for s in per_step],
        # CPU seconds of this process: less sensitive than wall time to other work on the machine
        "cpu_seconds_per_step": round(sum(cpu_later) / len(cpu_later), 2),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "torch_threads": torch.get_num_threads(),
        "load_average_after": [round(x, 1) for x in os.getloadavg()],  # other work on the machine slows the figures
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", nargs="+", default=["sd15", "sd21"], choices=["sd15", "sd21"])
    ap.add_argument("--methods", nargs="+", default=list(METHOD_SETTINGS), choices=list(METHOD_SETTINGS))
    ap.add_argument("--steps", type=int, default=3, help="training steps per measurement (the first is a warm-up)")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--latent-size", type=int, default=None, help="latent resolution (default: the family's, 64 / 96)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--one", nargs=2, metavar=("FAMILY", "METHOD"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.steps < 1 or args.batch_size < 1:
        ap.error("--steps and --batch-size must be >= 1")
    if args.one:
        print(json.dumps(one(*args.one, args.steps, args.batch_size, args.latent_size)))
        return
    import torch

    from obliviate.delta import atomic_write_json

    rows = []
    if args.out and args.out.exists():  # rerunning measures only what the file lacks
        rows = [r for r in json.loads(args.out.read_text())["results"] if r["family"] in args.families]
    done = {(r["family"], r["method"]) for r in rows}
    result = {"device": "cpu", "cpus": os.cpu_count(), "machine": platform.machine(), "torch": torch.__version__,
              "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "steps": args.steps, "results": rows,
              **({"latent_size": args.latent_size} if args.latent_size else {})}
    for family in args.families:
        for method in args.methods:
            if (family, method) in done:
                continue
            cmd = [sys.executable, __file__, "--one", family, method, "--steps", str(args.steps), "--batch-size", str(args.batch_size)]
            cmd += ["--latent-size", str(args.latent_size)] if args.latent_size else []
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
            if args.out:  # after every measurement: a long benchmark keeps what it measured
                args.out.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_json(args.out, result)
    print(json.dumps(result, indent=2))

if __name__ == "__main__":
    main()
