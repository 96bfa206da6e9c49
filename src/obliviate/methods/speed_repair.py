"""`speed-repair`: the closed form first, then a short repair of what it damaged.

A closed-form edit (methods/speed.py) keeps retained *text inputs* at the level of keys and
values; what is evaluated is the images, and the edit still moves retained concepts' keys and
values in the directions it could not protect (on MiniCanvas: a 64-wide text space shared by
28 concepts). The repair is a few optimizer steps of output distillation on the same k/v
weights, started from the solved weights:

    loss = mean over a batch of | eps_theta(x_t, t, c) - eps_teacher(x_t, t, c) |^2

with, for each prompt c of the catalog's concepts of the request's domain (in the template,
`images_per_concept` partners each, cycled as `replay` does):
- a retained concept (not erased so far): the teacher is the *base* model (the ledger's
  pretrained values of the trained tensors), so the repair pulls retained concepts back to
  what they were before any request;
- an erased concept (this request's or an earlier one's): the teacher is the *solved* model,
  weighted by `forget_weight`, so the repair cannot buy retention back by undoing the erasure.
x_t: images the base model generated once for these prompts (cached for the run, as replay's;
seeds `diffusion.image_seeds(30000, seed)`), noised at uniformly drawn training timesteps.

And the hard constraint (`freeze_erased`): every update is confined to the null space of the
erased concepts' own token states (the leading directions of their concept-position rows,
eigenvalue >= `freeze_threshold` x the largest, as speed picks its protected directions), so the keys
and values the erased concepts' own tokens produce stay exactly where the solve put them.

anchor=base (the default): every request re-solves from the base weights with every concept
erased so far (speed's solve, order-independent) and repairs again from there; an earlier
request's repair is not carried forward, so the result does not depend on the order of the
requests beyond the training noise of the last repair. Every setting of speed applies to the
solve; the repair's own are below. Deterministic given the request's seed; a killed request
resumes from its checkpoint like any training method.

Defaults (steps 10, forget_weight 3, the rest of the repair's as below) from the probe seed on
MiniCanvas 1.2, 12 styles, erase_scale 8: with them the repair's UA after request 8 was 90.6
against 87.5 for speed alone, at 2.5-2.8 s per request on a loaded machine; steps 20 with
forget_weight 1 (erase_scale 4) gave 87.5 there. Those runs used speed's threshold 0.01; at
speed's present default, 0.1, the repair gave 1-2.6 points of RA-C for 1-2 points of UA on the
same probe: its effect is inconclusive (docs/NULL-SPACE.md).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..diffusion import base_model_latents, image_seeds, noised, sampler_settings
from ..model import predict
from ..protocols import family
from ..parsing import NON_NEGATIVE
from ..trainer import Context
from .speed import SPEED, SPEEDSettings, protected_basis
from .uce import concept_position_rows


@dataclass
class SpeedRepairSettings(SPEEDSettings):
    steps: int = 10
    lr: float = 1e-3
    batch_size: int = 8
    weight_decay: float = 0.0  # decoupled weight decay would move the frozen directions too
    grad_clip: float = 1.0
    detach_start: bool = False
    images_per_concept: int = 2
    forget_weight: float = 3.0  # weight of the erased prompts' term (teacher: the solved model)
    freeze_erased: bool = True  # updates confined to the null space of the erased concepts' own tokens
    freeze_threshold: float = 0.01  # frozen directions: eigenvalue >= this x the largest (0: all of them)
    image_seed: int | None = None  # seed of the repair images; None = the request's seed

    ranges = {"freeze_threshold": (0, True, 1, True), "forget_weight": NON_NEGATIVE}

    def complete(self):
        super().complete()
        if self.weight_decay:
            raise ValueError("weight_decay must be 0 in speed-repair: decoupled weight decay shrinks every weight, "
                             "the erased concepts' frozen directions included")


class SpeedRepair(SPEED):
    """speed's solve in `setup`, then the training loop runs the repair (`method_loss`)."""

    name = "speed-repair"
    Settings = SpeedRepairSettings
    closed_form = False  # the engine runs the training loop after setup
    solves_first = True  # a closed form in setup: on SD3/FLUX it needs --param-group context (model.check_group_for_model)
    order = 90
    not_multi_process = "speed-repair's solve and repair run in one process"
    quick_settings = {"steps": 3, "batch_size": 2, "images_per_concept": 1, "augment": 2}

    def for_lora(self, group: str):
        raise ValueError(f"method {self.name!r} solves whole k/v weights before repairing them, not a low-rank adapter; "
                         f"use it with --param-group kv-xattn")

    def setup(self, ctx: Context, method=None) -> None:
        super().setup(ctx)  # the tokenizer and the run's earlier requests checked
        s = self.settings
        cat = ctx.catalog
        dom = family(ctx.request.domain)
        concepts = cat.concepts(dom)
        if not concepts:
            raise ValueError(f"speed-repair repairs the catalog's concepts, and this model has no {dom} catalog; "
                             "use speed (closed form only)")
        # 1. the repair's prompts, and their images from the base model (before the solve changes the weights)
        erased = {concept for concept, _, _ in self.erase_set(ctx)}
        partners = cat.partners(dom)
        prompts, is_erased = [], []
        for concept in concepts:
            for i in range(s.images_per_concept):
                prompts.append(cat.prompt_with(concept, dom, partners[(i + len(prompts)) % len(partners)])
                               if partners else cat.single(concept, dom))
                is_erased.append(concept in erased)
        steps, guidance = sampler_settings(ctx, None, None)
        seed = ctx.request.seed if s.image_seed is None else s.image_seed
        # the whole catalog's prompts every request: one cached set of base images per run
        self.latents = base_model_latents(ctx, prompts, image_seeds(30_000, seed, len(prompts)), steps, guidance,
                                          purpose="repair")
        self.prompts, self.is_erased = prompts, torch.tensor(is_erased)
        ctx.encode(prompts)
        # 2. the closed form, from the anchor, with every concept erased so far
        solved = self.solve(ctx)
        with torch.no_grad():
            for n, p in ctx.params.items():
                p.copy_(solved[n])
        self.solved = {n: v.detach().clone() for n, v in solved.items()}
        # 3. the directions the repair may not move: the erased concepts' own tokens
        self.free = None
        if s.freeze_erased:
            parts = concept_position_rows(ctx, self.erase_set(ctx))
            rows = torch.cat([q[0] for q in parts]).double()
            q = protected_basis(rows[:0], rows, s.freeze_threshold)
            self.free = (torch.eye(len(q), dtype=torch.float64) - q @ q.T).float().to(ctx.device)
            self.frozen_dims = int(q.shape[1])
        ctx.log(f"speed-repair: solved {len(erased)} erased concept(s); repairing on {len(prompts)} prompts")

    @property
    def needs_update_transform(self) -> bool:
        return self.settings.freeze_erased

    def method_loss(self, ctx: Context, gen: torch.Generator) -> torch.Tensor:
        s = self.settings
        idx = torch.randint(0, len(self.latents), (s.batch_size,), generator=gen)
        x_t, t, _ = noised(ctx, self.latents[idx], gen)
        emb = ctx.encode([self.prompts[i] for i in idx.tolist()])
        erased = self.is_erased[idx].to(ctx.device)
        student = predict(ctx.unet, x_t, t, emb)
        teacher = torch.empty_like(student, dtype=torch.float32)
        with torch.no_grad():  # each image's own teacher only: one teacher forward per image, not two
            for chosen, params in ((~erased, ctx.pretrained), (erased, self.solved)):
                if bool(chosen.any()):
                    teacher[chosen] = predict(ctx.unet, x_t[chosen], t[chosen], emb[chosen], params=params).float()
        per_image = (student.float() - teacher.float()).pow(2).flatten(1).mean(1)
        weights = torch.where(erased, torch.full_like(per_image, s.forget_weight), torch.ones_like(per_image))
        return (weights * per_image).mean()

    def transform_update(self, ctx: Context, before) -> None:
        if self.free is None:
            return
        with torch.no_grad():
            for n, p in ctx.params.items():
                p.copy_(before[n] + (p - before[n]) @ self.free)

    def report(self) -> dict:
        return {"repair": {"prompts": len(self.prompts), "erased_prompts": int(self.is_erased.sum()),
                           "frozen_dims": getattr(self, "frozen_dims", 0)}}
