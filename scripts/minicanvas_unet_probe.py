"""Which UNet recipe draws MiniCanvas objects best, at equal training steps?

The bundled model's VAE keeps every shape (object classifier 99.0% after encode/decode), so
its UNet is what loses diamonds and stars. This probe isolates the UNet: it keeps the bundled
tokenizer, text encoder, VAE and classifiers, trains a *new* UNet from scratch with
`minicanvas.build.train_unet` under the settings given, and scores generated images (every
style x object pair, seed 188, the default sampler) with the bundled judge. Two recipes
compared at the same --steps and --seed differ only in what the flags change.

    OMP_NUM_THREADS=1 python scripts/minicanvas_unet_probe.py --steps 1200 --lr 3e-4 --min-snr 0 \
        --json docs/minicanvas/unet-probe/baseline.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from obliviate.evaluate.sampler import SamplerConfig, generate
from obliviate.minicanvas import build, bundled_path, world
from obliviate.minicanvas.classifiers import MiniCanvasJudge
from obliviate.model import load_pipeline


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--min-snr", type=float, default=0.0, help="min-SNR-gamma weighting; 0 = off (1.0's recipe)")
    ap.add_argument("--timesteps", default="uniform", choices=build.TIMESTEP_SAMPLINGS,
                    help="how training timesteps are drawn")
    ap.add_argument("--channels", default="48,96", help="UNet block_out_channels")
    ap.add_argument("--layers-per-block", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", required=True, help="where to write the result")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    size = dataclasses.replace(
        build.FULL, unet_steps=args.steps, unet_lr=args.lr, min_snr_gamma=args.min_snr, timestep_sampling=args.timesteps,
        unet_channels=tuple(int(c) for c in args.channels.split(",")), unet_layers_per_block=args.layers_per_block,
    )
    model_dir = bundled_path()
    pipe = load_pipeline(model_dir, device="cpu")
    t0 = time.time()
    images, style_labels, object_labels = build.render_dataset(size.renders_per_pair, seed_offset=0)
    latents = build.encode_latents(pipe.vae, images)
    bank = build.caption_bank_for(pipe.tokenizer, pipe.text_encoder)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    t1 = time.time()
    unet, losses = build.train_unet(latents, style_labels, object_labels, bank, size, gen, quiet=True)
    train_seconds = time.time() - t1

    pipe.unet = unet
    pairs = [(s, o) for s in world.STYLE_NAMES for o in world.OBJECT_NAMES]
    generated = generate(pipe, [world.prompt(s, o) for s, o in pairs], [188] * len(pairs), SamplerConfig())
    pred = MiniCanvasJudge(model_dir).predict(np.stack(generated))
    object_ok = np.array([p == o for p, (_, o) in zip(pred["object"], pairs)])
    style_ok = np.array([p == s for p, (s, _) in zip(pred["style"], pairs)])
    per_object = {o: round(100 * float(object_ok[[q == o for _, q in pairs]].mean()), 1) for o in world.OBJECT_NAMES}
    result = {
        "settings": {k: v for k, v in vars(args).items() if k != "json"}, "images": len(pairs), "seed": 188,
        "object_accuracy": round(100 * float(object_ok.mean()), 1), "style_accuracy": round(100 * float(style_ok.mean()), 1),
        "per_object_accuracy": per_object, "unet_loss_last": float(np.mean(losses[-100:])),
        "train_seconds": round(train_seconds, 1), "seconds_per_step": round(train_seconds / args.steps, 3),
        "setup_seconds": round(t1 - t0, 1), "load_average": list(__import__("os").getloadavg()),
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
