"""Diffusion helpers below methods, add-ons and attacks: the training scheduler, forward
noising and denoising targets (epsilon or v-prediction; the flow-matching velocity for SD3
and FLUX), sampler settings, and the base model's latents and images (generated once, cached
on disk with a checksum, verified on every read). Nothing here knows about a particular
method or add-on.

Flow matching (SD3, FLUX): x_t = (1 - s) x_0 + s e, the transformer predicts the
velocity v = e - x_0 at timestep t = 1000 s. Training draws s uniformly from the pipeline
scheduler's own 1000 training sigmas (FlowMatchEulerDiscreteScheduler.sigmas: shifted by SD3's
static shift 3.0; unshifted for FLUX, whose shift depends on the image size and is applied
only when sampling), as diffusers' train_dreambooth_sd3.py / train_dreambooth_flux.py do with
`weighting_scheme=none`."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor

from typing import TYPE_CHECKING

import torch

from .delta import load_verified_tensor, save_verified_tensor
from .locking import filling
from .model import denoiser, is_flow, is_flux, pipeline_call_kwargs, predict

if TYPE_CHECKING:  # annotations only: this module sits below the trainer
    from .trainer import Context


def scheduler_for_training(pipe):
    """The forward process every training loss noises with (whatever sampler the pipeline
    generates with): DDPM from the pipeline's config, or the pipeline's own flow-matching
    scheduler (a copy) for SD3 and FLUX."""
    from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

    if is_flow(pipe):
        return FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
    return DDPMScheduler.from_config(pipe.scheduler.config)


def training_scheduler(ctx: Context):
    """The request's training scheduler, made once per request."""
    if ctx._training_scheduler is None:
        ctx._training_scheduler = scheduler_for_training(ctx.pipe)
    return ctx._training_scheduler


def is_flow_scheduler(sched) -> bool:
    return type(sched).__name__ == "FlowMatchEulerDiscreteScheduler"


def add_noise(sched, x0: torch.Tensor, gen: torch.Generator):
    """Forward-noise clean latents at uniformly drawn timesteps: (x_t, t, noise). The noise is
    drawn on the CPU from `gen` (then moved), so draws do not depend on the device."""
    noise = torch.randn(x0.shape, generator=gen).to(x0.device)
    t = torch.randint(0, sched.config.num_train_timesteps, (x0.shape[0],), generator=gen).to(x0.device)
    if is_flow_scheduler(sched):  # rectified flow, at one of the scheduler's training sigmas
        sigmas = sched.sigmas[t.cpu()].to(x0.device, x0.dtype).view(-1, *[1] * (x0.dim() - 1))
        return (1 - sigmas) * x0 + sigmas * noise, sched.timesteps[t.cpu()].to(x0.device), noise
    return sched.add_noise(x0, noise, t), t, noise


def target_for(sched, x0: torch.Tensor, noise: torch.Tensor, t) -> torch.Tensor:
    """What the denoiser predicts: the noise (epsilon), the velocity (v-prediction), or the
    flow-matching velocity e - x_0 (SD3, FLUX)."""
    if is_flow_scheduler(sched):
        return noise - x0
    if sched.config.prediction_type == "v_prediction":
        return sched.get_velocity(x0, noise, t)
    return noise


def flow_sampling_sigmas(pipe, steps: int, resolution: int | None = None) -> torch.Tensor:
    """The steps + 1 sigmas (1 -> 0) the pipeline samples `steps` steps with: FLUX's linspace
    with its resolution shift mu, SD3's static shift; from the pipeline's own scheduler."""
    import numpy as np
    from diffusers import FlowMatchEulerDiscreteScheduler

    from .model import default_resolution

    sched = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
    kwargs = {}
    if sched.config.use_dynamic_shifting:
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        side = (resolution or default_resolution(pipe)) // pipe.vae_scale_factor
        tokens = (side // 2) ** 2 if is_flux(pipe) else (side // denoiser(pipe).config.patch_size) ** 2
        kwargs["mu"] = calculate_shift(tokens, sched.config.get("base_image_seq_len", 256), sched.config.get("max_image_seq_len", 4096),
                                       sched.config.get("base_shift", 0.5), sched.config.get("max_shift", 1.15))
    if is_flux(pipe):
        kwargs["sigmas"] = np.linspace(1.0, 1 / steps, steps)
        sched.set_timesteps(device="cpu", **kwargs)
    else:
        sched.set_timesteps(steps, device="cpu", **kwargs)
    return sched.sigmas.float()


def vae_to_latents(vae, z: torch.Tensor) -> torch.Tensor:
    """VAE posterior sample -> the denoiser's latents: scaled, and shifted first where the
    VAE has a shift_factor (SD3, FLUX)."""
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (z - shift) * vae.config.scaling_factor


def latents_to_vae(vae, latents: torch.Tensor) -> torch.Tensor:
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return latents / vae.config.scaling_factor + shift


def noised(ctx: Context, x0: torch.Tensor, gen: torch.Generator):
    """Forward-noise clean latents at uniformly drawn training timesteps."""
    return add_noise(training_scheduler(ctx), x0, gen)


def denoising_target(ctx: Context, x0, noise, t):
    return target_for(training_scheduler(ctx), x0, noise, t)


# The no-gradient forward of a loss like ConAbl's (the anchor prompt's prediction) does not
# depend on the trained forward, so on a CPU it can run on a second thread while this one
# runs the trained forward: both read the same weights, nothing is written during a forward,
# and the numbers are the same bit for bit. MiniCanvas's ops are too small for torch's
# intra-op threads to use a second core well; two forwards at once do. Off on a GPU (one
# stream: nothing to gain) and with several processes (DDP's forward is not re-entrant).
# OBLIVIATE_OVERLAP=0 turns it off (scripts/bench_conabl.py compares both).
_REFERENCE_THREAD: ThreadPoolExecutor | None = None


def overlap_enabled(ctx: Context) -> bool:
    return os.environ.get("OBLIVIATE_OVERLAP", "1") != "0" and ctx.device.type == "cpu" and ctx.dist is None


def reference_and_prediction(ctx: Context, x_t: torch.Tensor, t, reference_cond, trained_cond):
    """(eps(x_t, reference_cond) without gradient, eps(x_t, trained_cond) with it), both from
    the model being trained (model.predict), overlapped on a CPU (see above)."""
    def reference():
        with torch.no_grad(), ctx.autocast():  # grad mode and autocast are per thread
            return predict(ctx.unet, x_t, t, reference_cond)

    if not overlap_enabled(ctx):
        return reference(), predict(ctx.unet, x_t, t, trained_cond)
    global _REFERENCE_THREAD
    if _REFERENCE_THREAD is None:
        _REFERENCE_THREAD = ThreadPoolExecutor(1, thread_name_prefix="obliviate-reference")
    future = _REFERENCE_THREAD.submit(reference)
    try:
        prediction = predict(ctx.unet, x_t, t, trained_cond)
    finally:
        ref = future.result()  # wait even when the trained forward failed
    return ref, prediction


def sampler_settings(ctx: Context, steps: int | None, guidance: float | None) -> tuple[int, float]:
    return steps or int(ctx.catalog.sampler["steps"]), guidance if guidance is not None else float(ctx.catalog.sampler["guidance"])


@contextlib.contextmanager
def sampling_scheduler(pipe, scheduler: str | None):
    """`scheduler=None`: the pipeline's own; "dpm-solver": DPMSolverMultistepScheduler from the
    same config (the reference ConAbl's anchor sampler), for the duration only."""
    if scheduler is None:
        yield
        return
    if scheduler != "dpm-solver":
        raise ValueError(f"anchor sampler {scheduler!r} is not valid; valid: model, dpm-solver")
    if is_flow(pipe):
        raise ValueError("anchor sampler dpm-solver is for SD models; SD3 and FLUX sample anchors with their own "
                         "flow-matching scheduler (anchor_sampler=model)")
    from diffusers import DPMSolverMultistepScheduler

    own = pipe.scheduler
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(own.config)
    try:
        yield
    finally:
        pipe.scheduler = own


def image_seeds(offset: int, seed: int, count: int) -> list[int]:
    """Per-image seeds of a set of base-model images a request trains on (ConAbl's anchors,
    replay's and EraseDiff's images): `offset + 1_000_000 * seed + i`.

    The set follows the request's seed, so a new training seed is a new draw of images, as in
    the reference ConAbl (it samples its anchors from the generator its --seed seeds): the
    anchor draw moves UA and RA-I far more than the training seed does on one fixed set
    (docs/RESULTS.md, "Anchor sets"). Seed 0 gives `offset + i`, the images every seed used
    before the set followed the seed. Sets of different seeds share no image below a million
    images per set, and stay clear of the evaluation and probe seeds (below 10,000)."""
    if seed < 0:
        raise ValueError(f"image seed {seed} must be >= 0")
    return [offset + 1_000_000 * seed + i for i in range(count)]


def unpacked(pipe, latents: torch.Tensor) -> torch.Tensor:
    """FluxPipeline returns `output_type="latent"` packed in 2x2 patches; every other caller
    (and model.predict) works on (b, c, h, w)."""
    if not is_flux(pipe):
        return latents
    from diffusers import FluxPipeline

    size = pipeline_call_kwargs(pipe)["height"]
    return FluxPipeline._unpack_latents(latents, size, size, pipe.vae_scale_factor)


@torch.no_grad()
def base_model_latents(ctx: Context, prompts: list[str], seeds: list[int], steps: int, guidance: float, purpose: str,
                       scheduler: str | None = None) -> torch.Tensor:
    """Latents generated by the *base* model (not the current step's model), cached on disk.

    Each image has its own seeded generator, so the cache key is (base model, prompt, seed,
    sampler) and an image never depends on its neighbours in a batch.
    """
    fields = [ctx.base_hash, prompts, seeds, steps, guidance, type(ctx.pipe.scheduler).__name__]
    if scheduler is not None:  # keys of the model's own sampler stay as they were
        fields.append(scheduler)
    key = hashlib.sha256(json.dumps(fields).encode()).hexdigest()[:20]
    path = ctx.cache_dir / f"{purpose}-{key}.safetensors"
    cached = load_verified_tensor(path)  # None when missing or damaged: a damaged copy is regenerated
    if cached is not None:
        return cached.to(ctx.device)
    with filling(path):  # another worker may be generating it: wait, then read its copy
        cached = load_verified_tensor(path)
        if cached is not None:
            return cached.to(ctx.device)
        return _generate_latents(ctx, path, prompts, seeds, steps, guidance, purpose, scheduler)


def _generate_latents(ctx: Context, path, prompts, seeds, steps, guidance, purpose, scheduler) -> torch.Tensor:
    if path.exists():
        ctx.log(f"{path} is damaged or has no checksum; regenerating it")
    ctx.log(f"generating {len(prompts)} {purpose} images with the base model (cached for later requests)")
    out = []
    with ctx.restore_base(), sampling_scheduler(ctx.pipe, scheduler):
        for i in range(0, len(prompts), 32):
            gens = [torch.Generator(device="cpu").manual_seed(s) for s in seeds[i : i + 32]]
            res = ctx.pipe(prompts[i : i + 32], num_inference_steps=steps, guidance_scale=guidance, generator=gens,
                           output_type="latent", **pipeline_call_kwargs(ctx.pipe))
            out.append(unpacked(ctx.pipe, res.images.float()))
    latents = torch.cat(out)
    save_verified_tensor(path, latents)
    return latents


@torch.no_grad()
def base_model_images(ctx: Context, prompts: list[str], seeds: list[int], steps: int, guidance: float, purpose: str,
                      scheduler: str | None = None) -> torch.Tensor:
    """The base model's images as uint8 (N, 3, H, W), as the reference ConAbl stores its
    anchors (image files): decoded once from `base_model_latents` and cached."""
    latents = base_model_latents(ctx, prompts, seeds, steps, guidance, purpose, scheduler)
    key = hashlib.sha256(json.dumps([ctx.base_hash, prompts, seeds, steps, guidance, scheduler, "uint8"]).encode()).hexdigest()[:20]
    path = ctx.cache_dir / f"{purpose}-images-{key}.safetensors"
    cached = load_verified_tensor(path)  # None when missing or damaged: decoded again
    if cached is not None:
        return cached
    with filling(path):  # another worker may be decoding it: wait, then read its copy
        cached = load_verified_tensor(path)
        if cached is not None:
            return cached
        return _decode_images(ctx, path, latents)


def _decode_images(ctx: Context, path, latents: torch.Tensor) -> torch.Tensor:
    vae = ctx.pipe.vae
    out = []
    for i in range(0, len(latents), 16):
        x = vae.decode(latents_to_vae(vae, latents[i : i + 16].to(vae.device, vae.dtype))).sample
        out.append(((x.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).cpu())
    images = torch.cat(out)
    save_verified_tensor(path, images)
    return images


@torch.no_grad()
def image_posteriors(ctx: Context, images: torch.Tensor, hflip: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The VAE posterior (mean, std) of each uint8 image, and of its mirror image with `hflip`:
    tensors (1 or 2, N, C, h, w), index 0 the image as stored, 1 mirrored.

    The reference ConAbl re-encodes its stored anchor images at every step. The encoder is
    frozen and deterministic, so encoding each image (and its mirror) once and sampling from
    the stored posterior at every step (`sample_image_latents`) gives the same latents for the
    same random draws, without a VAE forward per step (about 12% of a MiniCanvas step)."""
    vae = ctx.pipe.vae
    x = images.float() / 127.5 - 1.0
    views = [x, x.flip(-1)] if hflip else [x]
    means, stds = [], []
    for view in views:
        m, sd = [], []
        for i in range(0, len(view), 16):
            posterior = vae.encode(view[i : i + 16].to(vae.device, vae.dtype)).latent_dist
            m.append(posterior.mean)
            sd.append(posterior.std)
        means.append(torch.cat(m))
        stds.append(torch.cat(sd))
    return torch.stack(means), torch.stack(stds)


def sample_image_latents(ctx: Context, posteriors: tuple[torch.Tensor, torch.Tensor], idx: torch.Tensor,
                         gen: torch.Generator, hflip: bool) -> torch.Tensor:
    """Latents of images `idx` the reference's way: a random horizontal flip (p 0.5 per image)
    with `hflip`, then a latent *sampled* from the VAE's posterior (not its mean), scaled. The
    same draws from `gen`, in the same order, as flipping and re-encoding the images."""
    mean, std = posteriors
    view = torch.zeros(len(idx), dtype=torch.long)
    if hflip:
        view = (torch.rand(len(idx), generator=gen) < 0.5).long()
    view, rows = view.to(mean.device), idx.to(mean.device)
    m, sd = mean[view, rows], std[view, rows]
    noise = torch.randn(m.shape, generator=gen).to(m.device, m.dtype)
    return vae_to_latents(ctx.pipe.vae, m + sd * noise).float()
