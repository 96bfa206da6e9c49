"""ConAbl's step time on MiniCanvas: the sequential loop vs. the overlapped one, same process.

A ConAbl step is two forwards (the anchor prompt without gradient, the target prompt with
it), a backward and an AdamW step. The two forwards are independent; obliviate runs the
no-gradient one on a second thread (diffusion.reference_and_prediction). This script times
both loops at 1 and 2 torch threads, interleaved in rounds so that a change in machine load
hits every configuration alike, checks that they give the same delta, and prints JSON:
median seconds per step per configuration, a forward/forward/backward/optimizer breakdown
of the sequential loop, what the reference recipe's clean latents cost per step (re-encoding
the anchor images as the reference does, or sampling stored posteriors as obliviate does),
and the implied ratio to the reference implementation's time:

    ratio_vs_reference = (best configuration / sequential at 2 threads) * 0.72

where 0.72 (obliviate's sequential loop at torch's default threads / CUIG's ConAbl loop,
median of requests 2-8, equal steps and settings, on this 2-core machine) is the
side-by-side measurement made outside the project, not measured here. scripts/bench_reference.py
measures the ratio itself, against CUIG's own training loop (docs/RESULTS.md).

Usage: python scripts/bench_conabl.py [--steps 10] [--rounds 5] [--batch 8] [--model DIR]

With `--compile MODE` (default, reduce-overhead or max-autotune) it times torch.compile
(inductor) instead, on the same loop at one thread without the overlap: the first compiled
step (compilation included), then --rounds interleaved rounds of --steps eager and --steps
compiled steps, median seconds per step each. Result of 2026-11-29/30: not worth it on this
machine (docs/RESULTS.md, "ConAbl step time"; docs/results/bench-compile.txt).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time
import types

import torch
import torch.nn.functional as F

from obliviate import diffusion
from obliviate.minicanvas import bundled_path
from obliviate.model import encode_prompts, load_pipeline, select_parameters
from obliviate.start_token import start_token_detached

ISSUE_RATIO = 0.72


def run(pipe, params, steps, batch, overlap, seed=0, parts=None, unet=None, detach_start=True):
    """`steps` ConAbl steps on `params`; `unet` replaces pipe.unet (a compiled one). Restores
    the parameters and returns (seconds per step, the delta the steps made). detach_start=False
    when the caller keeps the start-token hooks on for the whole run (a compiled UNet would
    recompile if they came and went every step)."""
    from diffusers import DDPMScheduler

    os.environ["OBLIVIATE_OVERLAP"] = "1" if overlap else "0"
    unet = unet if unet is not None else pipe.unet
    ctx = types.SimpleNamespace(unet=unet, device=torch.device("cpu"), dist=None, autocast=contextlib.nullcontext)
    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    start = {n: p.detach().clone() for n, p in params.items()}
    opt = torch.optim.AdamW(params.values(), lr=5e-4, weight_decay=1e-2)
    gen = torch.Generator().manual_seed(seed)
    size = pipe.unet.config.sample_size
    latents = torch.randn(48, pipe.unet.config.in_channels, size, size, generator=torch.Generator().manual_seed(1))
    anchor = encode_prompts(pipe, ["an image of a circle"]).expand(batch, -1, -1)
    target = encode_prompts(pipe, ["A circle image in fire style"]).expand(batch, -1, -1)
    t_all = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(0, len(latents), (batch,), generator=gen)
        x0 = latents[idx]
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, sched.config.num_train_timesteps, (batch,), generator=gen)
        x_t = sched.add_noise(x0, noise, t)
        with start_token_detached(pipe.unet, enabled=detach_start):
            t0 = time.perf_counter()
            if parts is None:
                reference, prediction = diffusion.reference_and_prediction(ctx, x_t, t, anchor, target)
            else:  # the sequential loop, timed piece by piece
                with torch.no_grad():
                    reference = unet(x_t, t, encoder_hidden_states=anchor).sample
                t1 = time.perf_counter()
                prediction = unet(x_t, t, encoder_hidden_states=target).sample
            t2 = time.perf_counter()
            F.mse_loss(prediction, reference).backward()
            t3 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(params.values(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=False)
        t4 = time.perf_counter()
        if parts is not None:
            for k, d in zip(("forward_reference", "forward_trained", "backward", "optimizer"),
                            (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                parts.setdefault(k, []).append(d)
    total = (time.perf_counter() - t_all) / steps
    delta = {n: p.detach() - start[n] for n, p in params.items()}
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(start[n])
    return total, delta


def reference_recipe_latents(pipe, batch, rounds=20):
    """The reference recipe's clean latents for one step: re-encoding the (randomly mirrored)
    anchor images with the VAE, as the reference does at every step, vs sampling from the
    posteriors obliviate stores once per request. Median seconds per step at one thread."""
    from obliviate.diffusion import image_posteriors, sample_image_latents

    ctx = types.SimpleNamespace(pipe=pipe)
    images = torch.randint(0, 256, (64, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    posteriors = image_posteriors(ctx, images, hflip=True)
    setup = time.perf_counter() - t0

    @torch.no_grad()
    def re_encode(idx):
        x = images[idx].float() / 127.5 - 1.0
        flip = torch.rand(len(x), generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        posterior = pipe.vae.encode(x).latent_dist
        return (posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen)) * 0.18215

    times = {"re_encode": [], "stored_posterior": []}
    for _ in range(rounds):
        idx = torch.randint(0, len(images), (batch,), generator=gen)
        for name, fn in (("re_encode", re_encode), ("stored_posterior",
                                                     lambda i: sample_image_latents(ctx, posteriors, i, gen, True))):
            t0 = time.perf_counter()
            fn(idx)
            times[name].append(time.perf_counter() - t0)
    return {**{f"{k}_seconds_per_step": statistics.median(v) for k, v in times.items()},
            "stored_posterior_setup_seconds_64_images": setup}


def compile_figures(pipe, params, mode, steps, rounds, batch):
    """torch.compile against eager on the sequential loop at one thread, interleaved in rounds."""
    torch.set_num_threads(1)
    compiled = torch.compile(pipe.unet, mode=None if mode == "default" else mode, dynamic=False)
    rounds_out = []
    with start_token_detached(pipe.unet):  # on throughout, so that the compiled graph keeps its guards
        t0 = time.perf_counter()
        run(pipe, params, 1, batch, False, unet=compiled, detach_start=False)
        first = time.perf_counter() - t0
        for _ in range(rounds):
            eager, _ = run(pipe, params, steps, batch, False, detach_start=False)
            fast, _ = run(pipe, params, steps, batch, False, unet=compiled, detach_start=False)
            rounds_out.append({"eager": eager, "compiled": fast, "compiled_over_eager": fast / eager})
    return {"mode": mode, "steps": steps, "rounds": rounds, "batch": batch, "threads": 1,
            "load_average": os.getloadavg(), "compile_and_first_step_seconds": first, "rounds_seconds_per_step": rounds_out,
            "median_compiled_over_eager": statistics.median(r["compiled_over_eager"] for r in rounds_out)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10, help="steps per timed loop")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds of every configuration")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--model", default=None)
    ap.add_argument("--compile", choices=("default", "reduce-overhead", "max-autotune"),
                    help="time torch.compile in this mode against eager instead")
    args = ap.parse_args()
    pipe = load_pipeline(args.model or bundled_path(), device="cpu")
    params = select_parameters(pipe.unet, "kv-xattn")
    for p in params.values():
        p.requires_grad_(True)
    if args.compile:
        print(json.dumps(compile_figures(pipe, params, args.compile, args.steps, args.rounds, args.batch), indent=2))
        return
    configs = [(threads, overlap) for threads in (1, 2) for overlap in (False, True)]
    times = {c: [] for c in configs}
    parts: dict[str, list[float]] = {}
    deltas = {}
    for threads, overlap in configs:  # warm-up
        torch.set_num_threads(threads)
        run(pipe, params, 2, args.batch, overlap)
    for _ in range(args.rounds):
        for threads, overlap in configs:
            torch.set_num_threads(threads)
            seconds, deltas[(threads, overlap)] = run(pipe, params, args.steps, args.batch, overlap,
                                                      parts=parts if (threads, overlap) == (1, False) else None)
            times[(threads, overlap)].append(seconds)
    torch.set_num_threads(1)
    latents = reference_recipe_latents(pipe, args.batch)
    name = {c: f"threads{c[0]}-{'overlap' if c[1] else 'sequential'}" for c in configs}
    median = {name[c]: statistics.median(v) for c, v in times.items()}
    baseline = median["threads2-sequential"]
    best = min(median, key=median.get)
    ref = deltas[(1, False)]
    diff = max(float((d[n] - ref[n]).abs().max()) for d in deltas.values() for n in ref)
    print(json.dumps({
        "steps": args.steps, "rounds": args.rounds, "batch": args.batch, "cores": os.cpu_count(),
        "load_average": os.getloadavg(),
        "median_seconds_per_step": median,
        "all_seconds_per_step": {name[c]: v for c, v in times.items()},
        "breakdown_threads1_sequential": {k: statistics.median(v) for k, v in parts.items()},
        "best": best, "best_over_sequential_2_threads": median[best] / baseline,
        "max_abs_delta_difference_between_configurations": diff,
        "max_abs_delta": max(float(d.abs().max()) for d in ref.values()),
        "ratio_vs_reference": median[best] / baseline * ISSUE_RATIO,
        "reference_recipe_clean_latents_threads1": latents,
        "ratio_note": "0.72 = obliviate sequential / CUIG ConAbl per request (a side-by-side run outside the project), not measured here",
    }, indent=2))


if __name__ == "__main__":
    main()
