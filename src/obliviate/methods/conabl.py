"""ConAbl: Concept Ablation, model-based variant (Kumari et al., 2023).

Map the target concept onto an anchor: for anchor images generated once by the base model,
train `eps(x_t, E(p_target))` to match `sg[eps(x_t, E(p_anchor))]`, both from the model
being trained.

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

from ..trainer import Context, Method, TrainSettings
from .common import GENERIC_CAPTIONS, base_model_latents, default_anchor_object, noised, replace_word, sampler_settings

SD15_REFERENCE = {"lr": 8e-6, "batch_size": 4, "steps_style": 1000, "steps_object": 2000, "anchor_images": 200,
                  "weight_decay": 1e-2, "grad_clip": 1.0}


@dataclass
class ConAblSettings(TrainSettings):
    steps: int = 100
    lr: float = 5e-4
    batch_size: int = 8
    anchor_images: int = 48
    anchor: str | None = None  # object requests: the anchor object (default: chosen from the catalog)
    sampler_steps: int | None = None  # default: the model catalog's sampler
    guidance: float | None = None
    # style requests: how the target prompt inserts the style into an anchor caption.
    # "spec": "In X style, <caption>" or "<caption>, in X style" (SPEC 3); "catalog": the
    # model's own prompt template with the anchor's object (MiniCanvas, UnlearnCanvas).
    phrasing: Literal["spec", "catalog", "both"] = "catalog"


class ConAbl(Method):
    name = "conabl"
    Settings = ConAblSettings

    def setup(self, ctx: Context, method=None) -> None:
        s, domain = self.settings, ctx.request.domain
        steps, guidance = sampler_settings(ctx, s.sampler_steps, s.guidance)
        latents, anchor_prompts, target_prompts, anchors = [], [], [], []
        for concept in ctx.request.targets:  # several only when unlearning simultaneously
            a, t = self.build_prompts(ctx, concept, domain, s.anchor_images)
            seeds = [10_000 + i for i in range(len(a))]
            latents.append(base_model_latents(ctx, a, seeds, steps, guidance, purpose="anchors"))
            anchor_prompts += a
            target_prompts += t
            anchors.append(self.anchor)
        self.latents = torch.cat(latents)
        self.anchor_prompts = anchor_prompts
        self.target_prompts = target_prompts  # per example: the phrasings to choose from
        self.anchor = anchors[0] if len(anchors) == 1 else anchors
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
                spec = [f"In {concept} style, {c}", f"{c}, in {concept} style"]
                own = [cat.prompt(concept, o)] if o else []
                targets.append({"spec": spec, "catalog": own, "both": spec + own}[phrasing])
            self.anchor = None
        return anchors, targets

    def method_loss(self, ctx: Context, gen: torch.Generator) -> torch.Tensor:
        b = self.settings.batch_size
        idx = torch.randint(0, len(self.latents), (b,), generator=gen)
        choice = torch.randint(0, 6, (b,), generator=gen)  # 6: divisible by 1, 2 and 3 phrasings
        x_t, t, _ = noised(ctx, self.latents[idx], gen)
        anchor_emb = ctx.encode([self.anchor_prompts[i] for i in idx.tolist()])
        options = [self.target_prompts[i] for i in idx.tolist()]
        target_emb = ctx.encode([o[c % len(o)] for o, c in zip(options, choice.tolist())])
        x_t, t, anchor_emb, target_emb = ctx.local(x_t, t, anchor_emb, target_emb)  # several processes: this one's slice
        with torch.no_grad():
            reference = ctx.unet(x_t, t, encoder_hidden_states=anchor_emb).sample
        prediction = ctx.unet(x_t, t, encoder_hidden_states=target_emb).sample
        return F.mse_loss(prediction.float(), reference.float())
