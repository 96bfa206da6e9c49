"""ConAbl: Concept Ablation, model-based variant (Kumari et al., 2023).

Map the target concept onto an anchor: for anchor images generated once by the base model,
train `eps(x_t, E(p_target))` to match `sg[eps(x_t, E(p_anchor))]`, both from the model
being trained.

Two recipes (`recipe=`), each element also its own setting (an explicit setting wins):

| element        | reference (CUIG's ConAbl code)                  | obliviate (ours)                     |
|----------------|-------------------------------------------------|--------------------------------------|
| detach_start   | true: no gradient through k/v at token 0        | true (the reference's; both recipes) |
| loss           | masked: drops a one-latent-pixel border, summed | mse: plain mean over every element   |
|                | over channels, averaged over the kept pixels    |                                      |
| anchor_sampler | dpm-solver, 100 steps, guidance 6               | the model's scheduler, catalog steps |
|                |                                                 | and guidance (MiniCanvas: 20, 5)     |
| anchor_store   | images: uint8 images, re-encoded every step     | latents: the sampler's latents,      |
|                | with a *sampled* VAE latent                     | cached                               |
| hflip          | true: random horizontal flip every step         | false                                |
| phrasing       | spec: "In X Style, <caption>" /                 | catalog: the model's own prompt      |
|                | "<caption>, in X Style."                        | template (see below)                 |

`phrasing=catalog` trains a style on the very template the evaluation prompts the judge
with ("A {object} image in {style} style" on MiniCanvas): it flatters UA, since the
measured prompts are the trained ones. The reference trains on caption insertions only.
The reference's style anchors are LAION captions; MiniCanvas uses its own object captions.

Flow form (SD3, FLUX): the same objective on the velocity. For an anchor latent x_0
(generated once by the base pipeline with its own flow-matching scheduler),
x_t = (1 - s) x_0 + s e at a training sigma s (diffusion.py), train
`v(x_t, s, E(p_target))` to match `sg[v(x_t, s, E(p_anchor))]`, both from the model being
trained; FLUX reads its guidance embedding at model.FLUX_GUIDANCE in both. The reference
recipe's DPM-Solver anchor sampler is for SD models and is refused there.

MiniCanvas defaults (below) versus the SD 1.5 reference: AdamW wd 1e-2, lr 8e-6, batch 4,
constant schedule, grad-clip 1.0, 1000 steps for a style / 2000 for an object, 200 anchor
images. MiniCanvas trains far fewer cross-attention weights on a far smaller model, so it
takes a larger learning rate and fewer steps.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ..diffusion import (base_model_images, base_model_latents, image_posteriors, image_seeds, noised,
                         reference_and_prediction, sample_image_latents, sampler_settings)
from ..parsing import NON_NEGATIVE
from ..trainer import Context, Method, TrainSettings
from .common import GENERIC_CAPTIONS, default_anchor_object, replace_word

# every element of a recipe, resolved into the settings (so step.json shows each one)
RECIPES = {
    "reference": {"loss": "masked", "anchor_sampler": "dpm-solver", "sampler_steps": 100, "guidance": 6.0,
                  "anchor_store": "images", "hflip": True, "phrasing": "spec"},
    "obliviate": {"loss": "mse", "anchor_sampler": "model", "sampler_steps": None, "guidance": None,
                  "anchor_store": "latents", "hflip": False, "phrasing": "catalog"},
}


@dataclass
class ConAblSettings(TrainSettings):
    steps: int = 100
    lr: float = 5e-4
    batch_size: int = 8
    anchor_images: int = 48
    anchor: str | None = None  # object requests: the anchor object (default: chosen from the catalog)
    recipe: Literal["obliviate", "reference"] = "obliviate"
    detach_start: bool = True  # the reference's (both recipes)
    # None = the recipe's value (RECIPES); sampler_steps/guidance None under obliviate = the catalog's sampler
    sampler_steps: int | None = None
    guidance: float | None = None
    anchor_sampler: Literal["model", "dpm-solver"] | None = None
    anchor_store: Literal["latents", "images"] | None = None
    hflip: bool | None = None
    loss: Literal["mse", "masked"] | None = None
    mask_border: int = 1  # latent pixels dropped at each edge by loss=masked
    # seed of the anchor images (diffusion.image_seeds); None = the request's seed, so each
    # training seed draws its own anchor set. Set it to hold one anchor set across seeds.
    image_seed: int | None = None
    # style requests: how the target prompt inserts the style into an anchor caption.
    # "spec": the reference's "In X Style, <caption>" / "<caption>, in X Style.";
    # "catalog": the model's own prompt template with the anchor's object (ours; the
    # evaluation template itself, see the module docstring)
    phrasing: Literal["spec", "catalog", "both"] | None = None

    ranges = {"mask_border": NON_NEGATIVE}

    def complete(self):
        for key, value in RECIPES[self.recipe].items():  # what the recipe decides, unless given
            if getattr(self, key) is None:
                setattr(self, key, value)


def style_phrasings(concept: str, caption: str) -> list[str]:
    """The reference's two insertions of a style into a caption (prepend, append)."""
    name = concept.replace("_", " ").replace(" Style", "")
    return [f"In {name} Style, {caption[:1].lower() + caption[1:]}", f"{caption.replace('.', '')}, in {name} Style."]


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, border: int) -> torch.Tensor:
    """The reference's loss: squared error on latent pixels inside a `border`-pixel frame,
    summed over channels and averaged over the kept pixels, then over the batch (so it is
    `channels` times a per-element mean)."""
    b, _, h, w = prediction.shape
    if 2 * border >= min(h, w):
        raise ValueError(f"mask_border={border} leaves no latent pixel of a {h}x{w} latent")
    mask = torch.zeros(b, 1, h, w, device=prediction.device, dtype=prediction.dtype)
    mask[:, :, border : h - border, border : w - border] = 1
    err = (prediction - target) ** 2
    return ((err * mask).sum((1, 2, 3)) / mask.sum((1, 2, 3))).mean()


class ConAbl(Method):
    name = "conabl"
    Settings = ConAblSettings
    quick_settings = {"steps": 6, "batch_size": 2, "anchor_images": 4, "sampler_steps": 3}

    def report(self) -> dict:
        out = {"anchor": self.anchor} if getattr(self, "anchor", None) else {}
        return {**out, "anchor_image_seeds": self.seeds_used} if hasattr(self, "seeds_used") else out

    def setup(self, ctx: Context, method=None) -> None:
        s, domain = self.settings, ctx.request.domain
        steps, guidance = sampler_settings(ctx, s.sampler_steps, s.guidance)
        scheduler = "dpm-solver" if s.anchor_sampler == "dpm-solver" else None
        anchors_x, anchor_prompts, target_prompts, anchors = [], [], [], []
        image_seed = ctx.request.seed if s.image_seed is None else s.image_seed
        for concept in ctx.request.targets:  # several only when unlearning simultaneously
            a, t = self.build_prompts(ctx, concept, domain, s.anchor_images)
            seeds = image_seeds(10_000, image_seed, len(a))
            self.seeds_used = {"first": seeds[0], "count": len(seeds)}
            if s.anchor_store == "images":
                anchors_x.append(base_model_images(ctx, a, seeds, steps, guidance, purpose="anchors", scheduler=scheduler))
            else:
                anchors_x.append(base_model_latents(ctx, a, seeds, steps, guidance, purpose="anchors", scheduler=scheduler))
            anchor_prompts += a
            target_prompts += t
            anchors.append(self.anchor)
        # latents (float) or uint8 images, by anchor_store
        self.latents = torch.cat(anchors_x)
        self.anchor_prompts = anchor_prompts
        self.target_prompts = target_prompts  # per example: the phrasings to choose from
        self.anchor = anchors[0] if len(anchors) == 1 else anchors
        if s.anchor_store == "images":  # encoded once (and mirrored), sampled at every step
            self.posteriors = image_posteriors(ctx, self.latents, s.hflip)
        ctx.encode(anchor_prompts + [p for options in target_prompts for p in options])

    def build_prompts(self, ctx: Context, concept: str, domain: str, n: int):
        cat = ctx.catalog
        if domain == "object":
            anchor = self.settings.anchor or (default_anchor_object(ctx, concept) if cat.objects else None)
            if anchor is None:
                raise ValueError("ConAbl on an object needs an anchor object: pass --method-setting anchor=NAME")
            if cat.styles:
                anchors = [cat.prompt(cat.styles[i % len(cat.styles)], anchor) for i in range(n)]
            else:
                anchors = [f"a photo of a {anchor}", f"an image of a {anchor}"] * (n // 2 + 1)
            anchors = anchors[:n]
            targets = [[replace_word(p, anchor, concept)] for p in anchors]
            self.anchor = anchor
        else:  # style (and "other": anything that can be inserted like a style)
            phrasing = self.settings.phrasing if cat.objects else "spec"
            if cat.objects:
                objects = [cat.objects[i % len(cat.objects)] for i in range(n)]
                captions = [cat.object_only.format(object=o) for o in objects]
            else:
                objects, captions = [None] * n, [GENERIC_CAPTIONS[i % len(GENERIC_CAPTIONS)] for i in range(n)]
            anchors = captions
            targets = []
            for o, c in zip(objects, captions):
                spec = style_phrasings(concept, c)
                own = [cat.prompt(concept, o)] if o else []
                targets.append({"spec": spec, "catalog": own, "both": spec + own}[phrasing])
            self.anchor = None
        return anchors, targets

    def clean_latents(self, ctx: Context, idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        s = self.settings
        if s.anchor_store == "images":
            return sample_image_latents(ctx, self.posteriors, idx, gen, hflip=s.hflip)
        x0 = self.latents[idx]
        if s.hflip:
            flip = torch.rand(len(idx), generator=gen) < 0.5
            x0 = torch.where(flip.to(x0.device)[:, None, None, None], x0.flip(-1), x0)
        return x0

    def loss_between(self, prediction: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        if self.settings.loss == "masked":
            return masked_mse(prediction.float(), reference.float(), self.settings.mask_border)
        return F.mse_loss(prediction.float(), reference.float())

    def method_loss(self, ctx: Context, gen: torch.Generator) -> torch.Tensor:
        b = self.settings.batch_size
        idx = torch.randint(0, len(self.latents), (b,), generator=gen)
        choice = torch.randint(0, 6, (b,), generator=gen)  # 6: divisible by 1, 2 and 3 phrasings
        x_t, t, _ = noised(ctx, self.clean_latents(ctx, idx, gen), gen)
        anchor_emb = ctx.encode([self.anchor_prompts[i] for i in idx.tolist()])
        options = [self.target_prompts[i] for i in idx.tolist()]
        target_emb = ctx.encode([o[c % len(o)] for o, c in zip(options, choice.tolist())])
        x_t, t, anchor_emb, target_emb = ctx.local(x_t, t, anchor_emb, target_emb)  # several processes: this one's slice
        reference, prediction = reference_and_prediction(ctx, x_t, t, anchor_emb, target_emb)
        return self.loss_between(prediction, reference)
