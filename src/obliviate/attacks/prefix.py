"""`prefix`: UnlearnDiffAtk-style soft prompt (Zhang et al., ECCV 2024).

k new tokens `<adv0> ... <adv{k-1}>` are prepended to the ordinary template prompt of the
erased concept; their embedding rows (and nothing else) are optimised with the denoising
loss on K images of the concept made by the base model, so that the *unlearned* model,
reading "<adv0> <adv1> <adv2> A circle image in fire style", denoises them as the base model
would. One prefix per concept, shared over partners (the images cycle through the partners),
not one per prompt: cheaper, and a stronger claim when it works.

Defaults (MiniCanvas): k 3, K 16 images, 50 steps, batch 8, Adam lr 2e-2, rows initialised
from k vocabulary words drawn with the seed (never a concept name). UnlearnDiffAtk uses 40
iterations at lr 0.01 against one target image and projects the soft tokens to real tokens; `project=true` does
that projection (nearest vocabulary row by cosine) after optimising; the default keeps the
soft rows (a stronger, white-box attacker).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..parsing import AT_LEAST_ONE
from .common import Attack, LearnedRowsSettings, NewTokens, Target, learn_rows


@dataclass
class PrefixSettings(LearnedRowsSettings):
    tokens: int = 3
    project: bool = False
    ranges = {"tokens": AT_LEAST_ONE}


class Prefix(Attack):
    name = "prefix"
    Settings = PrefixSettings

    def attack_concept(self, target: Target, concept: str) -> dict:
        s = self.settings
        partners, latents = target.training_latents(concept, s.images)
        pipe = target.pipe
        names = [f"<adv{i}>" for i in range(s.tokens)]
        table = pipe.text_encoder.get_input_embeddings().weight
        # start from ordinary words, never from a concept name (a prefix that starts as
        # "forest" would recover forest by its initialisation, not by the attack)
        concepts = set(target.protocol.styles) | set(target.protocol.objects)
        special = set(pipe.tokenizer.all_special_ids)
        vocab = pipe.tokenizer.convert_ids_to_tokens(list(range(table.shape[0])))
        words = [i for i, w in enumerate(vocab) if i not in special and w not in concepts]
        gen = torch.Generator(device="cpu").manual_seed(s.seed)
        start = [words[i] for i in torch.randint(0, len(words), (s.tokens,), generator=gen).tolist()]
        tokens = NewTokens(pipe, names, table[start].detach().clone())
        prefix = " ".join(names) + " "
        losses = learn_rows(pipe, tokens, [prefix + target.prompt(concept, p) for p in partners], latents, s)
        projected = tokens.project_to_vocab() if s.project else None
        hits = target.attacked_hits(lambda c, p: prefix + target.prompt(c, p), concept, tokens)
        out = {"asr": 100.0 * sum(hits) / len(hits), "hits": hits, "steps": s.steps, "images": len(hits),
               "train_images": s.images, "init_words": pipe.tokenizer.convert_ids_to_tokens(start), **losses}
        if projected is not None:
            out["projected_words"] = projected
        return out
