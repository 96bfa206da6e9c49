"""ConAbl's step time on MiniCanvas: the plain loop vs. a tuned one, same process, same steps.

Prints JSON: seconds per step for each loop, a forward(reference, no grad) / forward(trained)
/ backward / optimizer breakdown, the largest |delta| difference between the two loops, and
the implied ratio to the reference implementation's time per request:
    ratio_vs_reference = (tuned / plain) * 0.72
where 0.72 (obliviate's plain loop / CUIG's ConAbl loop, median of requests 2-8, equal steps
and settings) is the side-by-side measurement reported in issue 10, not measured here.

Usage: python scripts/bench_conabl.py [--steps 20] [--batch 8] [--model DIR]
"""
from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from obliviate.minicanvas import bundled_path
from obliviate.model import encode_prompts, load_pipeline, select_parameters
from obliviate.start_token import start_token_detached

ISSUE_RATIO = 0.72


def run(pipe, params, steps, batch, tuned, seed=0):
    from diffusers import DDPMScheduler

    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    start = {n: p.detach().clone() for n, p in params.items()}
    opt = torch.optim.AdamW(params.values(), lr=5e-4, weight_decay=1e-2)
    gen = torch.Generator().manual_seed(seed)
    unet = pipe.unet
    size = unet.config.sample_size
    latents = torch.randn(48, unet.config.in_channels, size, size, generator=gen)
    anchor = encode_prompts(pipe, ["an image of a circle"] * 1)
    target = encode_prompts(pipe, ["A circle image in fire style"] * 1)
    if tuned:
        unet.to(memory_format=torch.channels_last)
    parts = {"forward_reference": 0.0, "forward_trained": 0.0, "backward": 0.0, "optimizer": 0.0}
    t_all = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(0, len(latents), (batch,), generator=gen)
        x0 = latents[idx]
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, sched.config.num_train_timesteps, (batch,), generator=gen)
        x_t = sched.add_noise(x0, noise, t)
        if tuned:
            x_t = x_t.contiguous(memory_format=torch.channels_last)
        a, b = anchor.expand(batch, -1, -1), target.expand(batch, -1, -1)
        with start_token_detached(unet):
            t0 = time.perf_counter()
            if tuned:
                with torch.inference_mode():
                    reference = unet(x_t, t, encoder_hidden_states=a).sample
                reference = reference.clone()
            else:
                with torch.no_grad():
                    reference = unet(x_t, t, encoder_hidden_states=a).sample
            t1 = time.perf_counter()
            prediction = unet(x_t, t, encoder_hidden_states=b).sample
            loss = F.mse_loss(prediction, reference)
            t2 = time.perf_counter()
            loss.backward()
            t3 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(params.values(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=not tuned)
        t4 = time.perf_counter()
        for k, d in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            parts[k] += d / steps
    total = (time.perf_counter() - t_all) / steps
    delta = {n: p.detach() - start[n] for n, p in params.items()}
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(start[n])
    unet.to(memory_format=torch.contiguous_format)
    return total, parts, delta


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--model", default=None)
    args = ap.parse_args()
    pipe = load_pipeline(args.model or bundled_path(), device="cpu")
    params = select_parameters(pipe.unet, "kv-xattn")
    for p in params.values():
        p.requires_grad_(True)
    run(pipe, params, 2, args.batch, False)  # warm-up
    plain, plain_parts, d_plain = run(pipe, params, args.steps, args.batch, False)
    tuned, tuned_parts, d_tuned = run(pipe, params, args.steps, args.batch, True)
    diff = max(float((d_plain[n] - d_tuned[n]).abs().max()) for n in d_plain)
    scale = max(float(d.abs().max()) for d in d_plain.values())
    print(json.dumps({
        "steps": args.steps, "batch": args.batch, "threads": torch.get_num_threads(),
        "seconds_per_step": {"plain": plain, "tuned": tuned},
        "breakdown_plain": plain_parts, "breakdown_tuned": tuned_parts,
        "tuned_over_plain": tuned / plain,
        "max_abs_delta_difference": diff, "max_abs_delta": scale,
        "ratio_vs_reference": tuned / plain * ISSUE_RATIO,
        "ratio_note": "0.72 = obliviate plain / CUIG ConAbl per request (issue 10's side-by-side), not measured here",
    }, indent=2))


if __name__ == "__main__":
    main()
