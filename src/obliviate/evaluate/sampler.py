"""Batched classifier-free-guidance sampling with one seeded generator per image, cached.

An image's starting noise comes from its own `torch.Generator(seed)`, so it never depends on
which other images share its batch; generated images are saved as PNG files named after
prompt and seed under a directory keyed by (model, sampler), and never generated twice.

Cheaper evaluations (scripts/bench_eval.py measures them against the reference): fewer steps,
another solver, `guidance <= 1` (no CFG: one UNet evaluation per step instead of two), and
`x0_at=k`: stop after k steps of the schedule and score the predicted clean image of the
k-th step. Named presets (`SAMPLER_PRESETS`) are selectable in experiment files as
`eval: {sampler: NAME}`.

SD3 and FLUX pipelines always sample with their own FlowMatchEulerDiscreteScheduler (its shift,
FLUX's resolution shift included): `scheduler` names the solver of SD pipelines only, and
`x0_at` is refused there. FLUX.1-dev reads `guidance` through its guidance embedding (one
transformer call per step), SD3 (and FLUX.1-schnell, without guidance embedding, at
guidance 1) by classifier-free guidance, as their pipelines do.
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
    scheduler: str = "dpm"  # one of SCHEDULERS: dpm (DPM-Solver++), ddim, euler, pndm, ddpm
    batch_size: int = 64
    x0_at: int = 0  # 0: the whole trajectory; k: the predicted clean image after k of `steps` steps

    def __post_init__(self):
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"sampler scheduler {self.scheduler!r} is not valid; valid: {', '.join(SCHEDULERS)}")
        if self.steps < 1:
            raise ValueError(f"sampler steps must be >= 1, got {self.steps}")
        if not 0 <= self.x0_at < self.steps:
            raise ValueError(f"sampler x0_at must be 0 (off) or in [1, steps - 1] = [1, {self.steps - 1}], got {self.x0_at}")
        if self.x0_at and self.scheduler not in X0_SCHEDULERS:
            # the x0 formula below reads the sample as x_t = sqrt(a) x0 + sqrt(1 - a) eps, true of these only
            raise ValueError(f"sampler x0_at needs a scheduler in {', '.join(X0_SCHEDULERS)}, got {self.scheduler!r}")

    def key(self) -> str:
        base = f"{self.scheduler}{self.steps}-g{self.guidance:g}"
        return base + (f"-x0at{self.x0_at}" if self.x0_at else "")  # unchanged keys (image caches) for full trajectories

    def unet_evaluations(self) -> int:
        """UNet evaluations per image: one per step, two with classifier-free guidance
        (diffusers skips the unconditional half when guidance <= 1)."""
        return (self.x0_at or self.steps) * (2 if self.guidance > 1 else 1)

    @classmethod
    def named(cls, name: str, **overrides) -> "SamplerConfig":
        if name not in SAMPLER_PRESETS:
            raise ValueError(f"sampler preset {name!r} is not valid; valid: {', '.join(SAMPLER_PRESETS)}")
        return cls(**{**SAMPLER_PRESETS[name], **overrides})


X0_SCHEDULERS = ("dpm", "ddim")

# Named evaluation samplers. `reference` is the study's (and the MiniCanvas protocol's) default;
# the others are the candidates of scripts/bench_eval.py (docs/results/bench-eval.json).
SAMPLER_PRESETS: dict[str, dict] = {
    "reference": {"steps": 20, "guidance": 5.0, "scheduler": "dpm"},
    "dpm10": {"steps": 10, "guidance": 5.0, "scheduler": "dpm"},
    "dpm5": {"steps": 5, "guidance": 5.0, "scheduler": "dpm"},
    "ddim5": {"steps": 5, "guidance": 5.0, "scheduler": "ddim"},
    "dpm10-nocfg": {"steps": 10, "guidance": 1.0, "scheduler": "dpm"},
    "dpm5-nocfg": {"steps": 5, "guidance": 1.0, "scheduler": "dpm"},
    "x0at5of20": {"steps": 20, "guidance": 5.0, "scheduler": "dpm", "x0_at": 5},
    "x0at10of20-nocfg": {"steps": 20, "guidance": 1.0, "scheduler": "dpm", "x0_at": 10},
}


def predicted_x0(scheduler, model_output: torch.Tensor, timestep, sample: torch.Tensor) -> torch.Tensor:
    """The clean latent the model predicts from x_t (epsilon or v-prediction), for samplers
    whose sample is x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps (DPM-Solver, DDIM)."""
    a = scheduler.alphas_cumprod.to(sample.device)[int(timestep)].to(sample.dtype)
    if scheduler.config.prediction_type == "v_prediction":
        return a.sqrt() * sample - (1 - a).sqrt() * model_output
    if scheduler.config.prediction_type != "epsilon":
        raise ValueError(f"x0_at needs an epsilon or v-prediction model, got {scheduler.config.prediction_type!r}")
    return (sample - (1 - a).sqrt() * model_output) / a.sqrt()


class _StopAt:
    """Scores the predicted clean image of step k: the scheduler's `step` is wrapped to keep
    x0 of every step, and the pipeline's step-end callback swaps it in for the latents at step
    k and sets the pipeline's interrupt flag, so the remaining steps run no UNet at all."""

    def __init__(self, pipe, k: int):
        self.pipe, self.k, self.x0 = pipe, k, None
        sched = pipe.scheduler
        self.own_step = sched.step

        def step(model_output, timestep, sample, *args, **kwargs):
            self.x0 = predicted_x0(sched, model_output, timestep, sample)
            return self.own_step(model_output, timestep, sample, *args, **kwargs)

        sched.step = step  # an instance attribute, removed again in close()

    def __call__(self, pipe, i, t, kwargs):
        if i == self.k - 1:
            pipe._interrupt = True
            return {"latents": self.x0}
        return {}

    def close(self):
        del self.pipe.scheduler.step


def use_scheduler(pipe, name: str) -> None:
    import diffusers

    cls = getattr(diffusers, SCHEDULERS[name])
    if type(pipe.scheduler).__name__ != cls.__name__:
        extra = {}
        if "clip_sample" not in pipe.scheduler.config and "clip_sample" in cls.from_config(pipe.scheduler.config).config:
            # latents are not in [-1, 1]: DDIM/DDPM default to clipping their x0 prediction there,
            # which a config from another solver (MiniCanvas: DPM-Solver) does not switch off
            # (DDIM at 5 steps scored 13-19% instead of 59-83% on MiniCanvas before this)
            extra["clip_sample"] = False
        pipe.scheduler = cls.from_config(pipe.scheduler.config, **extra)


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
    from ..model import is_flow, pipeline_call_kwargs

    if is_flow(pipe):
        if config.x0_at:
            raise ValueError("sampler x0_at is for SD pipelines; SD3 and FLUX sample whole trajectories (x0_at: 0)")
    else:
        use_scheduler(pipe, config.scheduler)
    size = pipeline_call_kwargs(pipe)
    for start in range(0, len(todo), config.batch_size):
        chunk = todo[start : start + config.batch_size]
        gens = [torch.Generator(device="cpu").manual_seed(int(seeds[i])) for i in chunk]
        stop = _StopAt(pipe, config.x0_at) if config.x0_at else None
        try:
            extra = {"callback_on_step_end": stop} if stop else {}
            out = pipe([prompts[i] for i in chunk], num_inference_steps=config.steps, guidance_scale=config.guidance,
                       generator=gens, output_type="np", **size, **extra).images
        finally:
            if stop:
                stop.close()
        for i, arr in zip(chunk, out):
            img = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
            images[i] = img
            if folder is not None:
                path = folder / image_filename(prompts[i], seeds[i])
                atomic_write(path, lambda f, img=img: Image.fromarray(img).save(f, format="PNG"))
        if progress is not None:
            progress(len(chunk))
    return images  # type: ignore[return-value]
