"""`adversarial`: adversarial prompts during training (AdvUnlearn-style; Zhang et al., NeurIPS 2024).

Embedding attacks (attacks/inversion.py, attacks/prefix.py) learn new token rows that make
the *unlearned* model denoise the concept's images again. This add-on runs that attack
inside training and trains the model against what it finds:

    inner (every `every` steps, `attack_steps` Adam steps at `attack_lr`, warm-started):
        rows* = argmin_rows  || eps_theta(x_t, t, E(adversarial prompt; rows)) - target(x_0, eps) ||^2
        on base-model images x_0 of the concept: the attacks' own objective
    outer (every step, added to the method's loss):
        weight * || eps_theta(x_t, t, E(adversarial prompt; rows*)) - sg[eps_theta(x_t, t, E(target prompt))] ||^2

An adversary's rows live *outside* the model, by the attacks' own mechanism
(soft_tokens.NewTokens): its tokens are added to a private copy of the tokenizer, and the
text encoder is called with a longer embedding table (the original rows plus every
adversary's) through torch.func.functional_call, so the model's tokenizer, text encoder and
trained tensors are never modified; the inner loop takes gradients of the rows only
(torch.autograd.grad), so no trained tensor's .grad is touched either.

Adversaries (`mode`): `replace` puts one token in the concept's place in the template
(Concept Inversion's prompt; the row starts from the concept's own word, i.e. at the plain
prompt, and moves to wherever the model still renders the concept); `prefix` puts `tokens`
soft tokens before the plain prompt (UnlearnDiffAtk's; rows start from seeded ordinary
words, never a concept name); `both` keeps one of each and alternates between them.

Which concepts (`concepts`): `current` = the request's own; `all` (default) = also every
concept unlearned earlier in the same domain, so a later request cannot revive an earlier
one through an embedding. Refreshes go round-robin over (concept, adversary) pairs; each
outer batch draws its images over all of them.

Target of the adversarial prompt (`target`): `anchor` = the partner alone after the neutral
prefix ("an image of a circle" for a style, "an image in the style of fire" for an object:
the concept taken out, as ConAbl's anchors do); `erased` = the *plain* prompt on the current
model (no embedding may do more than the plain prompt does: method-agnostic, but weak while
the method has not yet erased the plain prompt).

Images: `images` base-model images per concept, partners cycled, seeds 30000+i (disjoint
from the evaluation seeds, ConAbl's anchors 10000+i, replay's 20000+i, the attacks' 50000+i),
cached per concept, so later requests reuse them.

Deterministic given the request's seed: a generator of its own (saved in checkpoints with
the adversaries' rows and the refresh counter). Refused on SDXL (two text encoders).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ..diffusion import noised, reference_and_prediction
from ..model import Cond
from ..protocols import family, other_family
from ..parsing import AT_LEAST_ONE, POSITIVE, Checked
from ..soft_tokens import NewTokens
from ..trainer import Context, Hook
from .common import attacked_concepts, concept_images, make_adversary, ordinary_token_ids, sharpen

GEN_OFFSET = 7_919  # the add-on's generator: request seed + this (the method's draws stay as they are)


@dataclass
class AdversarialSettings(Checked):
    weight: float = 1.0
    mode: Literal["replace", "prefix", "both"] = "both"
    concepts: Literal["current", "all"] = "all"
    target: Literal["anchor", "erased"] = "anchor"
    every: int = 5  # refresh one adversary every `every` training steps
    attack_steps: int = 5  # Adam steps per refresh (warm start: rows persist across refreshes and requests' steps)
    attack_lr: float = 2e-2  # the attacks' default lr
    tokens: int = 3  # soft tokens of a prefix adversary (the prefix attack's default)
    images: int = 16  # base-model images per concept
    batch_size: int = 4  # outer batch and inner batch
    ranges = {"every": AT_LEAST_ONE, "attack_steps": AT_LEAST_ONE, "attack_lr": POSITIVE, "tokens": AT_LEAST_ONE,
              "images": AT_LEAST_ONE}


class Adversarial(Hook):
    name = "adversarial"
    order = 50
    Settings = AdversarialSettings
    quick_settings = {"every": 3, "attack_steps": 1, "images": 2, "batch_size": 2, "tokens": 1}

    # it perturbs one CLIP encoder's token embeddings: SDXL has two, SD3 and FLUX read T5 states
    families = ("sd",)

    def setup(self, ctx: Context, method=None) -> None:
        s, cat = self.settings, ctx.catalog
        domain = family(ctx.request.domain)
        concepts = attacked_concepts(ctx, s.concepts, self.name)
        self.tokens = NewTokens(ctx.pipe)  # every adversary's tokens, outside the model
        kinds = {"both": ("replace", "prefix")}.get(s.mode, (s.mode,))
        self.adversaries, self.latents, self.targets = [], [], []
        gen = torch.Generator().manual_seed(ctx.request.seed + GEN_OFFSET)
        ordinary = ordinary_token_ids(self.tokens, cat)
        for c in concepts:
            images = concept_images(ctx, c, domain, s.images)
            if s.target == "anchor":
                targets = [cat.single(p, other_family(domain)) for p in images.partners]
            else:
                targets = images.plain
            ctx.encode(targets)
            for kind in kinds:
                self.adversaries.append(make_adversary(ctx, self.tokens, kind, len(self.adversaries), images, s.tokens,
                                                       ordinary, gen, self.name))
                self.latents.append(images.latents)
                self.targets.append(targets)
        self.concepts = concepts
        self.gen = gen
        self.refreshes = 0
        self.inner_losses: list[float] = []
        ctx.log(f"adversarial: {len(self.adversaries)} adversaries ({', '.join(kinds)}) for {', '.join(concepts)}")
        self.refresh(ctx)  # an adversary before the first step

    # ------------------------------------------------------------ inner loop: the attack
    def all_rows(self) -> torch.Tensor:
        return torch.cat([a.rows for a in self.adversaries], 0)

    def refresh(self, ctx: Context) -> None:
        """`attack_steps` Adam steps on one adversary's rows (round-robin), everything else fixed."""
        s = self.settings
        i = self.refreshes % len(self.adversaries)
        last = sharpen(ctx, self.adversaries[i], self.latents[i], self.all_rows(), s.attack_steps, s.attack_lr,
                       s.batch_size, self.gen)
        self.inner_losses.append(last)
        self.refreshes += 1

    def after_step(self, ctx: Context, step: int, total_steps: int) -> None:
        if (step + 1) % self.settings.every == 0 and step + 1 < total_steps:
            self.refresh(ctx)

    # ------------------------------------------------------------ outer loss: train against it
    def loss(self, ctx: Context) -> torch.Tensor:
        s = self.settings
        which = torch.randint(0, len(self.adversaries), (s.batch_size,), generator=self.gen).tolist()
        x0, adv_prompts, target_prompts = [], [], []
        for i in which:
            j = int(torch.randint(0, len(self.latents[i]), (1,), generator=self.gen))
            x0.append(self.latents[i][j])
            adv_prompts.append((i, self.adversaries[i].prompts[j]))
            target_prompts.append(self.targets[i][j])
        x_t, t, _ = noised(ctx, torch.stack(x0), self.gen)
        rows = self.all_rows()
        with torch.no_grad():  # the adversaries are fixed here; only the model trains
            hidden = torch.cat([self.adversaries[i].hidden(ctx.pipe.text_encoder, [p], self.adversaries[i].rows, rows)
                                for i, p in adv_prompts])
        target_cond = ctx.encode(target_prompts)
        adv_cond = Cond(hidden)
        x_t, t, adv_cond, target_cond = ctx.local(x_t, t, adv_cond, target_cond)  # several processes: this one's slice
        with ctx.autocast():  # the target prompt's no-gradient forward overlaps the trained one on a CPU
            reference, prediction = reference_and_prediction(ctx, x_t, t, target_cond, adv_cond)
        return s.weight * F.mse_loss(prediction.float(), reference.float())

    # ------------------------------------------------------------ checkpoints and step.json
    def state_dict(self) -> dict:
        return {"generator": self.gen.get_state(), "rows": [a.rows.clone() for a in self.adversaries],
                "refreshes": self.refreshes, "inner_losses": list(self.inner_losses)}

    def load_state_dict(self, state: dict) -> None:
        if "generator" in state:
            self.gen.set_state(state["generator"])
            for a, r in zip(self.adversaries, state["rows"]):
                a.rows = r.clone()
            self.refreshes, self.inner_losses = state["refreshes"], list(state["inner_losses"])

    def report(self) -> dict:
        head, tail = self.inner_losses[:3], self.inner_losses[-3:]
        return {"adversarial": {"concepts": self.concepts, "adversaries": len(self.adversaries), "refreshes": self.refreshes,
                                "inner_loss_first": sum(head) / max(len(head), 1),
                                "inner_loss_last": sum(tail) / max(len(tail), 1)}}
