"""ESD-x: Erased Stable Diffusion, cross-attention variant (Gandikota et al., 2023).

A frozen copy of the model at the start of the request gives the target
`eps*(x_t, c) - eta * (eps*(x_t, c) - eps*(x_t, ""))`; the student is trained with MSE to it
on `x_t` taken along the frozen model's own sampling trajectory for the concept prompt.
eta here equals 1 + ESD's `negative_guidance` (eta=2 is the published negative_guidance=1).
The frozen copy costs no memory: only the trained tensors differ, so the frozen prediction
is the same UNet called with the request's starting values (torch.func.functional_call).

Flow form (SD3, FLUX): the same target on the velocity,
`v*(x_t, c) - eta * (v*(x_t, c) - v*(x_t, ""))` = v*("") - (eta - 1) (v*(c) - v*("")), at x_t on
the frozen model's Euler trajectory over the pipeline's own sigmas (`ddim_steps` Euler steps,
FLUX's resolution shift included). The trajectory is guided as the pipeline guides it: SD3
(and a FLUX without guidance embedding, like FLUX.1-schnell) by classifier-free guidance at
`start_guidance`; FLUX.1-dev through its guidance embedding at `start_guidance`, one
prediction per step. The target's two predictions use FLUX's training guidance (model.FLUX_GUIDANCE).

MiniCanvas defaults versus SD 1.5 reference: lr 1e-5, 1000 iterations, 50 DDIM steps,
start guidance 3, negative guidance 1 (eta 2), batch 1, cross-attention k/v.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..diffusion import flow_sampling_sigmas
from ..model import Cond, is_flow, latent_shape, predict
from ..protocols import family
from ..trainer import Context, Method, TrainSettings


@dataclass
class ESDSettings(TrainSettings):
    steps: int = 60
    lr: float = 5e-4
    batch_size: int = 8
    eta: float = 2.0
    ddim_steps: int = 20
    start_guidance: float = 3.0


class ESD(Method):
    name = "esd"
    Settings = ESDSettings
    quick_settings = {"steps": 6, "batch_size": 2, "ddim_steps": 4}

    def setup(self, ctx: Context, method=None) -> None:
        # the concept in the model's own prompt template when it has one (MiniCanvas), with
        # every partner concept; else the concept after a neutral prefix
        cat, domain = ctx.catalog, family(ctx.request.domain)
        partners = cat.partners(domain)
        if partners:
            self.prompts = [cat.prompt_with(c, domain, p) for c in ctx.request.targets for p in partners]
        else:
            self.prompts = [cat.single(c, domain) for c in ctx.request.targets]
        ctx.encode(self.prompts + [""])
        if is_flow(ctx.pipe):
            self.sigmas = flow_sampling_sigmas(ctx.pipe, self.settings.ddim_steps)
            self.flux_guidance = bool(getattr(ctx.unet.config, "guidance_embeds", False))
            return
        from diffusers import DDIMScheduler

        self.sched = DDIMScheduler.from_config(ctx.pipe.scheduler.config)
        self.sched.set_timesteps(self.settings.ddim_steps)

    def frozen(self, ctx: Context, x, t, emb, guidance=None):
        return predict(ctx.unet, x, t, emb, params=ctx.start, guidance=guidance)

    def flow_loss(self, ctx: Context, gen: torch.Generator) -> torch.Tensor:
        s = self.settings
        k = int(torch.randint(0, s.ddim_steps, (1,), generator=gen))
        which = torch.randint(0, len(self.prompts), (s.batch_size,), generator=gen).tolist()
        cond = ctx.encode([self.prompts[i] for i in which])
        uncond = ctx.encode([""] * s.batch_size)
        x = torch.randn(latent_shape(ctx.pipe, s.batch_size), generator=gen).to(ctx.device)
        x, cond, uncond = ctx.local(x, cond, uncond)  # several processes: this one's slice
        sigmas = self.sigmas.to(ctx.device)
        with torch.no_grad():
            for i in range(k):  # FlowMatchEulerDiscreteScheduler.step's update: x + (s_next - s) v
                t = sigmas[i] * 1000
                if self.flux_guidance:
                    v = self.frozen(ctx, x, t, cond, guidance=s.start_guidance)
                else:
                    v_u, v_c = self.frozen(ctx, torch.cat([x, x]), t, Cond.cat([uncond, cond])).chunk(2)
                    v = v_u + s.start_guidance * (v_c - v_u)
                x = x + (sigmas[i + 1] - sigmas[i]) * v
            t = sigmas[k] * 1000
            v_u, v_c = self.frozen(ctx, torch.cat([x, x]), t, Cond.cat([uncond, cond])).chunk(2)
            target = v_c - s.eta * (v_c - v_u)
        prediction = predict(ctx.unet, x, t, cond)
        return F.mse_loss(prediction.float(), target.float())

    def method_loss(self, ctx: Context, gen: torch.Generator) -> torch.Tensor:
        if is_flow(ctx.pipe):
            return self.flow_loss(ctx, gen)
        s, sched = self.settings, self.sched
        k = int(torch.randint(0, s.ddim_steps, (1,), generator=gen))
        which = torch.randint(0, len(self.prompts), (s.batch_size,), generator=gen).tolist()
        cond = ctx.encode([self.prompts[i] for i in which])
        uncond = ctx.encode([""] * s.batch_size)
        unet = ctx.unet
        shape = (s.batch_size, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
        x = (torch.randn(shape, generator=gen) * sched.init_noise_sigma).to(ctx.device)
        x, cond, uncond = ctx.local(x, cond, uncond)  # several processes: this one's slice
        with torch.no_grad():
            for t in sched.timesteps[:k]:  # walk the frozen model's own trajectory to step k
                e = self.frozen(ctx, torch.cat([x, x]), t, Cond.cat([uncond, cond]))
                e_u, e_c = e.chunk(2)
                x = sched.step(e_u + s.start_guidance * (e_c - e_u), t, x).prev_sample
            t = sched.timesteps[k]
            e = self.frozen(ctx, torch.cat([x, x]), t, Cond.cat([uncond, cond]))
            e_u, e_c = e.chunk(2)
            target = e_c - s.eta * (e_c - e_u)
        prediction = predict(unet, x, t, cond)
        return F.mse_loss(prediction.float(), target.float())
