"""Output replay (beyond the paper): keep the model's *predictions* for protected prompts.

L1/L2-SP protect the weights and projection protects the keys/values of one token per
concept, to first order. On MiniCanvas neither stops the retained concepts from degrading
over a long sequence: the causal text encoder carries a concept into the template and
padding tokens too, which the projection's subspace does not cover. Replay protects what
is evaluated, the denoiser's output, with distillation from the request's starting model:

    weight * || eps_theta(x_t, t, c) - eps_start(x_t, t, c) ||^2

for prompts c of the protected concepts (default: the catalog's other concepts of the
request's domain plus every concept unlearned earlier, as the projection uses), each in
the model's prompt template with the catalog's partner concepts, or after the neutral
prefix when there is no template. Distilling from the *request's start* (not the base
model) keeps earlier unlearned concepts unlearned as well as retained ones retained.
x_t comes from images the base model generated once for these prompts (cached; seeds
`diffusion.image_seeds(20000, seed)`, which follow the request's seed unless `image_seed` is
set, disjoint from the evaluation and probe seeds). The frozen teacher costs no memory:
the same UNet is called with the starting tensors (torch.func.functional_call), as in ESD.

Note for reading results: on MiniCanvas the default protected set is the catalog, so the
evaluated retained concepts are among the protected ones (as for the projection); the
evaluation seeds are not. `exclude=A+B` leaves concepts out, to measure how much of the
retention carries over to concepts that were never replayed.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..diffusion import base_model_latents, image_seeds, noised, sampler_settings
from ..model import predict
from ..parsing import Checked
from ..trainer import Context, Hook
from .common import concept_domain, protected_concepts


@dataclass
class ReplaySettings(Checked):
    weight: float = 1.0
    concepts: str | None = None  # '+'-separated; default: catalog + unlearned earlier
    exclude: str | None = None  # '+'-separated concepts left out of the protected set (held-out checks)
    images_per_concept: int = 4
    batch_size: int = 8
    image_seed: int | None = None  # seed of the replayed images; None = the request's seed


class Replay(Hook):
    name = "replay"
    order = 50
    Settings = ReplaySettings
    quick_settings = {"images_per_concept": 1}

    def prompts(self, ctx: Context) -> list[str]:
        cat, n = ctx.catalog, self.settings.images_per_concept
        excluded = set((self.settings.exclude or "").split("+"))
        out = []
        for c in protected_concepts(ctx, self.settings.concepts, "replay"):
            if c in excluded:
                continue
            domain = concept_domain(ctx, c)
            partners = cat.partners(domain)
            for i in range(n):
                if partners:  # cycle through partners, offset per concept so all get used
                    out.append(cat.prompt_with(c, domain, partners[(i + len(out)) % len(partners)]))
                else:
                    out.append(cat.single(c, domain))
        return out

    def setup(self, ctx: Context, method=None) -> None:
        self.replay_prompts = self.prompts(ctx)
        if not self.replay_prompts:
            raise ValueError("replay: every protected concept is excluded; nothing to replay")
        steps, guidance = sampler_settings(ctx, None, None)
        image_seed = ctx.request.seed if self.settings.image_seed is None else self.settings.image_seed
        seeds = image_seeds(20_000, image_seed, len(self.replay_prompts))
        self.seeds_used = {"first": seeds[0], "count": len(seeds)}
        self.latents = base_model_latents(ctx, self.replay_prompts, seeds, steps, guidance, purpose="replay")
        ctx.encode(self.replay_prompts)
        # its own generator: the method's draws stay exactly what they are without replay
        self.gen = torch.Generator().manual_seed(ctx.request.seed + 104729)
        ctx.log(f"replay: {len(self.replay_prompts)} prompts of protected concepts")

    def loss(self, ctx: Context) -> torch.Tensor:
        b = self.settings.batch_size
        idx = torch.randint(0, len(self.latents), (b,), generator=self.gen)
        x_t, t, _ = noised(ctx, self.latents[idx], self.gen)
        emb = ctx.encode([self.replay_prompts[i] for i in idx.tolist()])
        x_t, t, emb = ctx.local(x_t, t, emb)  # several processes: this one's slice
        with ctx.autocast():
            with torch.no_grad():
                teacher = predict(ctx.unet, x_t, t, emb, params=ctx.start)
            student = predict(ctx.unet, x_t, t, emb)
        return self.settings.weight * F.mse_loss(student.float(), teacher.float())

    def report(self) -> dict:
        return {"replay_image_seeds": self.seeds_used}

    def for_lora(self, group: str) -> Hook:
        return self  # it distils the model's outputs, whatever is trained

    def state_dict(self) -> dict:
        return {"generator": self.gen.get_state()}  # resume draws the same batches

    def load_state_dict(self, state: dict) -> None:
        if "generator" in state:
            self.gen.set_state(state["generator"])
