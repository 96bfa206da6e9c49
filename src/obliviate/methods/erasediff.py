"""EraseDiff: unlearning as a bi-level problem (Wu et al., 2024), first-order update.

Forget objective L_f: on images of the target (made by the base model), the denoiser is
pushed towards an unrelated noise draw, so the concept's denoising direction is lost.
Remain objective L_r: the ordinary denoising loss on images of retained concepts.
First-order bi-level step with a dynamic barrier: d = g_r + lam * g_f with
lam = max(0, (alpha * |g_f|^2 - <g_r, g_f>) / |g_f|^2), so that the step decreases L_f at
least at rate alpha while following L_r as closely as possible. Regularizer terms are
added to the remain side.

SD 1.5 reference: lr 1e-5, 2 epochs over 800 forget/remain images, batch 2, K=2 inner steps.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..diffusion import base_model_latents, denoising_target, image_seeds, noised, sampler_settings
from ..model import predict
from ..trainer import Context, Method, TrainSettings


@dataclass
class EraseDiffSettings(TrainSettings):
    steps: int = 80
    lr: float = 1e-4
    batch_size: int = 8
    forget_images: int = 32
    remain_images: int = 64
    alpha: float = 0.5
    sampler_steps: int | None = None
    guidance: float | None = None
    image_seed: int | None = None  # seed of the forget/remain images; None = the request's seed


class EraseDiff(Method):
    name = "erasediff"
    Settings = EraseDiffSettings
    quick_settings = {"steps": 6, "batch_size": 2, "forget_images": 4, "remain_images": 4, "sampler_steps": 3}
    not_multi_process = "its bi-level step combines whole-batch gradients nonlinearly; run it in one process"

    def setup(self, ctx: Context, method=None) -> None:
        s, cat = self.settings, ctx.catalog
        targets, domain = ctx.request.targets, ctx.request.domain
        if not (cat.styles and cat.objects):
            raise ValueError("erasediff needs a concept catalog (retained data); this model has none")
        gone = set(targets) | {x for x, _ in ctx.unlearned_before}
        others = [c for c in cat.concepts(domain) if c not in gone]
        if not others:
            raise ValueError(f"erasediff needs retained {domain}s for its remain objective; every {domain} of the "
                             f"{cat.name} catalog is unlearned or a target")
        partners = cat.partners(domain)
        self.forget_prompts = [cat.prompt_with(targets[i % len(targets)], domain, partners[(i // len(targets)) % len(partners)])
                               for i in range(s.forget_images * len(targets))]
        self.remain_prompts = [cat.prompt_with(others[i % len(others)], domain, partners[(i * 7) % len(partners)])
                               for i in range(s.remain_images)]
        steps, guidance = sampler_settings(ctx, s.sampler_steps, s.guidance)
        image_seed = ctx.request.seed if s.image_seed is None else s.image_seed
        forget_seeds = image_seeds(20_000, image_seed, len(self.forget_prompts))
        remain_seeds = image_seeds(30_000, image_seed, s.remain_images)
        self.forget = base_model_latents(ctx, self.forget_prompts, forget_seeds, steps, guidance, "forget")
        self.remain = base_model_latents(ctx, self.remain_prompts, remain_seeds, steps, guidance, "remain")
        self.seeds_used = {"forget": {"first": forget_seeds[0], "count": len(forget_seeds)},
                           "remain": {"first": remain_seeds[0], "count": len(remain_seeds)}}

    def report(self) -> dict:
        return {"image_seeds": self.seeds_used}

    def _loss(self, ctx, latents, prompts, gen, forget: bool):
        idx = torch.randint(0, len(latents), (self.settings.batch_size,), generator=gen)
        x0 = latents[idx]
        x_t, t, noise = noised(ctx, x0, gen)
        emb = ctx.encode([prompts[i] for i in idx.tolist()])
        pred = predict(ctx.unet, x_t, t, emb).float()
        if forget:
            target = torch.randn(x0.shape, generator=gen).to(x0.device)  # an unrelated direction
        else:
            target = denoising_target(ctx, x0, noise, t)
        return F.mse_loss(pred, target.float())

    def method_loss(self, ctx: Context, gen: torch.Generator) -> torch.Tensor:
        """The forget objective alone (what SelFT scores elements by)."""
        return self._loss(ctx, self.forget, self.forget_prompts, gen, forget=True)

    def backward(self, ctx: Context, gen: torch.Generator, extra_loss) -> float:
        params = list(ctx.params.values())
        with ctx.autocast():
            loss_f = self._loss(ctx, self.forget, self.forget_prompts, gen, forget=True)
        scale = ctx.grad_scaler.scale if ctx.grad_scaler is not None else (lambda x: x)  # fp16: same scale on both
        g_f = torch.autograd.grad(scale(loss_f), params)
        with ctx.autocast():
            loss_r = self._loss(ctx, self.remain, self.remain_prompts, gen, forget=False)
        extra = extra_loss()
        g_r = torch.autograd.grad(scale(loss_r + extra if extra is not None else loss_r), params)
        dot = sum((a * b).sum() for a, b in zip(g_r, g_f))
        norm_sq = sum((a * a).sum() for a in g_f).clamp_min(1e-20)
        lam = torch.clamp((self.settings.alpha * norm_sq - dot) / norm_sq, min=0.0)
        for p, a, b in zip(params, g_r, g_f):
            p.grad = a + lam * b
        return float(loss_f.detach())
