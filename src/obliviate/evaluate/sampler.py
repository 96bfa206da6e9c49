"""Batched classifier-free-guidance sampling with one seeded generator per image, cached.

An image's starting noise comes from its own `torch.Generator(seed)`, so it never depends on
which other images share its batch; generated images are saved as PNG files named after
prompt and seed under a directory keyed by (model, sampler), and never generated twice.
"""
from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..delta import atomic_write

SCHEDULERS = {
    "dpm": "DPMSolverMultistepScheduler", "ddim": "DDIMScheduler", "euler": "EulerDiscreteScheduler",
    "pndm": "PNDMScheduler", "ddpm": "DDPMScheduler",
}


@dataclass
class SamplerConfig:
    steps: int = 20
    guidance: float = 5.0
    scheduler: str = "dpm"
    batch_size: int = 64

    def __post_init__(self):
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"sampler scheduler {self.scheduler!r} is not valid; valid: {', '.join(SCHEDULERS)}")
        if self.steps < 1:
            raise ValueError(f"sampler steps must be >= 1, got {self.steps}")

    def key(self) -> str:
        return f"{self.scheduler}{self.steps}-g{self.guidance:g}"


def use_scheduler(pipe, name: str) -> None:
    import diffusers

    cls = getattr(diffusers, SCHEDULERS[name])
    if type(pipe.scheduler).__name__ != cls.__name__:
        pipe.scheduler = cls.from_config(pipe.scheduler.config)


def image_filename(prompt: str, seed: int) -> str:
    name = re.sub(r"[^A-Za-z0-9]+", "_", prompt).strip("_")[:80]
    digest = hashlib.sha1(prompt.encode()).hexdigest()[:6]  # distinguishes prompts that slug alike
    return f"{name}-{digest}-seed{seed}.png"


@torch.no_grad()
def generate(pipe, prompts: list[str], seeds: list[int], config: SamplerConfig, *, cache_dir: Path | None = None,
             model_key: str | None = None, progress=None) -> list[np.ndarray]:
    """uint8 images (H, W, 3), one per (prompt, seed) pair."""
    if len(prompts) != len(seeds):
        raise ValueError("prompts and seeds must have the same length")
    folder = None
    if cache_dir is not None:
        if model_key is None:
            raise ValueError("a cache needs the model's key")
        folder = Path(cache_dir) / model_key[:16] / config.key()
        folder.mkdir(parents=True, exist_ok=True)
    images: list[np.ndarray | None] = [None] * len(prompts)
    todo = []
    for i, (p, s) in enumerate(zip(prompts, seeds)):
        path = folder / image_filename(p, s) if folder else None
        if path is not None and path.exists():
            images[i] = np.asarray(Image.open(path).convert("RGB"))
        else:
            todo.append(i)
    use_scheduler(pipe, config.scheduler)
    for start in range(0, len(todo), config.batch_size):
        chunk = todo[start : start + config.batch_size]
        gens = [torch.Generator(device="cpu").manual_seed(int(seeds[i])) for i in chunk]
        out = pipe([prompts[i] for i in chunk], num_inference_steps=config.steps, guidance_scale=config.guidance,
                   generator=gens, output_type="np").images
        for i, arr in zip(chunk, out):
            img = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
            images[i] = img
            if folder is not None:
                path = folder / image_filename(prompts[i], seeds[i])
                atomic_write(path, lambda f, img=img: Image.fromarray(img).save(f, format="PNG"))
        if progress is not None:
            progress(len(chunk))
    return images  # type: ignore[return-value]
