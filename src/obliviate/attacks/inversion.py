"""`inversion`: Concept Inversion (Pham et al., ICLR 2024) - textual inversion of one new
token on the *unlearned* model.

The attacker has K images of the concept made by the base model (the base model's own
template prompt, partners cycled, seeds 50000+i) and the unlearned model. It adds one token
`<inv>` to the tokenizer and one row to the text encoder's embedding table (every original
row stays bit-identical), learns that row with the ordinary denoising loss on those images,
with prompts where `<inv>` takes the concept's place in the template, then generates the
evaluation grid with `<inv>` in the concept's place.

Defaults (MiniCanvas): K 16 images, 100 steps, batch 8, Adam lr 1e-2, the row initialised
from the word "art" (style) or "shape" (object). The paper uses ~25 images and textual
inversion's SD defaults (thousands of steps at lr 5e-3). 300 steps at lr 5e-3 (the first
choice) cost ~1 s a step on this shared 2-core machine, five times the 60 s budget; 100 steps
at lr 1e-2 fit it (measured figures in the README).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .common import Attack, AttackSettings, Diffusion, NewTokens, Target, check_fits, encode, word_rows

TOKEN = "<inv>"


@dataclass
class InversionSettings(AttackSettings):
    images: int = 16
    steps: int = 100
    lr: float = 1e-2
    batch_size: int = 8
    init: str | None = None  # a vocabulary word to start from (default: "art" for a style, "shape" for an object)

    def __post_init__(self):
        for key in ("images", "steps", "batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


class Inversion(Attack):
    name = "inversion"
    Settings = InversionSettings

    def attack_concept(self, target: Target, concept: str) -> dict:
        s = self.settings
        partners, images = target.base_images(concept, s.images)
        latents = target.latents_of(images)
        pipe = target.pipe
        init = s.init or ("art" if target.domain == "style" else "shape")
        tokens = NewTokens(pipe, [TOKEN], word_rows(pipe, [init]))
        prompts = [target.prompt(TOKEN, p) for p in partners]
        check_fits(pipe, prompts)
        weight = tokens.trainable()
        opt = torch.optim.Adam([weight], lr=s.lr)
        diffusion = Diffusion(pipe, s.seed)
        losses = []
        for _ in range(s.steps):
            idx = diffusion.batch(len(prompts), s.batch_size)
            loss = diffusion.loss(latents[idx], encode(pipe, [prompts[i] for i in idx]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tokens.restore_original()
            losses.append(float(loss))
        weight.requires_grad_(False)
        cells = target.grid()
        asr = target.asr(target.generate([target.prompt(TOKEN, p) for p, _ in cells], [s_ for _, s_ in cells]), concept)
        return {"asr": asr, "steps": s.steps, "images": len(cells), "train_images": s.images,
                "loss_first": sum(losses[:10]) / len(losses[:10]), "loss_last": sum(losses[-10:]) / len(losses[-10:]),
                "token_norm": float(tokens.rows()[0].norm())}
