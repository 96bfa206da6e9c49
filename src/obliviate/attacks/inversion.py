"""`inversion`: Concept Inversion (Pham et al., ICLR 2024) - textual inversion of one new
token on the *unlearned* model.

The attacker has K images of the concept made by the base model (the base model's own
template prompt, partners cycled, seeds 50000+i) and the unlearned model. It adds one token
`<inv>` with one embedding row (soft_tokens.NewTokens: a private tokenizer copy and a longer
table passed to the text encoder, so the model itself never changes), learns that row with
the ordinary denoising loss on those images,
with prompts where `<inv>` takes the concept's place in the template, then generates the
evaluation grid with `<inv>` in the concept's place.

Defaults (MiniCanvas): K 16 images, 50 steps, batch 8, Adam lr 2e-2, the row initialised
from the word "art" (style) or "shape" (object). The paper uses ~25 images and textual
inversion's SD defaults (thousands of steps at lr 5e-3). 300 steps at lr 5e-3 (the first
choice) cost ~1 s a step on this shared 2-core machine, five times the 60 s budget; 100 steps
at lr 1e-2 cost 128-131 s per concept at load 10-12; 50 steps at lr 2e-2 still recover every
concept tried on the pretrained model (docs/GETTING_STARTED.md, Attacks).
"""
from __future__ import annotations

from dataclasses import dataclass

from .common import Attack, LearnedRowsSettings, NewTokens, Target, learn_rows, word_rows

TOKEN = "<inv>"


@dataclass
class InversionSettings(LearnedRowsSettings):
    init: str | None = None  # a vocabulary word to start from (default: "art" for a style, "shape" for an object)


class Inversion(Attack):
    name = "inversion"
    Settings = InversionSettings

    def attack_concept(self, target: Target, concept: str) -> dict:
        s = self.settings
        partners, latents = target.training_latents(concept, s.images)
        init = s.init or ("art" if target.domain == "style" else "shape")
        tokens = NewTokens(target.pipe, [TOKEN], word_rows(target.pipe, [init]))
        losses = learn_rows(target.pipe, tokens, [target.prompt(TOKEN, p) for p in partners], latents, s)
        hits = target.attacked_hits(lambda c, p: target.prompt(TOKEN, p), concept, tokens)
        return {"asr": 100.0 * sum(hits) / len(hits), "hits": hits, "steps": s.steps, "images": len(hits),
                "train_images": s.images, **losses, "token_norm": float(tokens.rows[0].norm())}
