"""`advunlearn`: a text-side defence, adversarial training of the text encoder (after AdvUnlearn;
Zhang et al., NeurIPS 2024).

Embedding attacks (attacks/inversion.py, attacks/prefix.py) do not need the erased word: they
learn token rows whose text states make the unlearned denoiser render the concept again.
AdvUnlearn moves the erasure into the *text encoder* and trains it against such rows. Here the
encoder is trained first (`Hook.before_method`), against the model as the request finds it, and
then the method runs with the encoder it left: a closed form (`speed+advunlearn`,
`uce+advunlearn`) solves on the new text states, so the plain prompts are erased exactly as
without the defence; a fine-tuning method (`conabl+advunlearn`) trains on them. It combines with
every method that way.

    inner (every `every` steps, `attack_steps` Adam steps at `attack_lr`, warm-started):
        rows* = argmin_rows || eps(x_t, t, E_theta(adversarial prompt; rows)) - target(x_0, eps) ||^2
        on base-model images x_0 of the concept: the attacks' own objective, through the text
        encoder being trained and the request's starting denoiser (regularizers/common.sharpen)
    outer (`steps` Adam steps at `lr` on the encoder's layers):
        forget = || eps(x_t, t, E_theta(prompt)) - sg[eps(x_t, t, E_start(anchor prompt))] ||^2
                 over the adversarial prompts (rows* fixed) and the plain prompts of the concepts
        retain = || E_theta(p) - E_base(p) ||^2 over the kept prompts p
        loss   = forget + retain_weight * retain

- The adversaries (`mode`, `concepts`, `tokens`, `images`) are the `adversarial` add-on's:
  `replace` = one soft token in the concept's place in the template (Concept Inversion's prompt),
  `prefix` = `tokens` soft tokens before the plain prompt (UnlearnDiffAtk's); `concepts=all`
  defends every concept unlearned so far in the domain, so a later request does not reopen an
  earlier one. Their rows live outside the model (soft_tokens.NewTokens).
- The anchor prompt is the concept taken out ("an image of a circle" for a style).
- Kept prompts: every concept of the request's domain not erased so far, in the template with
  every partner, every concept of the other domain alone after the neutral prefix, and the empty
  prompt (classifier-free guidance's unconditional branch, in every step's batch: every image
  reads it). Their states are pulled to the *base* encoder's (not this request's start), so the
  encoder does not drift over a sequence.
- Trained: every tensor of the encoder's transformer layers and final norm; the token and
  position embeddings stay (an attacker writes its own rows; training the table would only move
  the real words). The step's delta keeps their change as `text_encoder.`-prefixed tensors
  (model.Edited); loading, export, evaluation and the attacks read them.
- Why before the method and not after: trained after a closed form, the encoder moved the plain
  prompts' states off those the solve had erased (3% of their norm in one request), and wherever
  that bought robustness `speed`'s clean UA fell from 90.6 to 52-67 (MiniCanvas 1.2, 8 styles,
  probe seed; docs/results/advunlearn-probe-1.2.json).

Defaults (steps 40, lr 1e-3, retain_weight 10, both adversaries, every 2, 5 attack steps) from
the probe seed on MiniCanvas 1.2 after 8 requests with `speed`: on objects robust UA +15.6 under
both inversion and prefix (paired) at no retention cost; on styles +34.4 under inversion, nothing
under prefix, and RA-I 21.8 points lower; retain_weight 100 kept styles' retention but bought only
+9.4 (inconclusive). Figures on the reported seeds: docs/RESULTS.md (Attacks).

Deterministic given the request's seed (a generator of its own); a killed request runs it again
from the same start, so it resumes to the same bytes. Refused where it cannot apply: SDXL (two
text encoders), SD3 and FLUX (the denoiser also reads T5 states), LoRA parameter groups (the
ledger keeps an adapter there, not dense text-encoder tensors), several processes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ..diffusion import noised, reference_and_prediction
from ..model import TEXT_ENCODER_PREFIX, Cond, encode_prompts
from ..parsing import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, Checked
from ..protocols import family, other_family
from ..soft_tokens import NewTokens
from ..trainer import Context, Hook
from .common import attacked_concepts, concept_images, make_adversary, ordinary_token_ids, sharpen

GEN_OFFSET = 8_191  # the add-on's generator: request seed + this


@dataclass
class AdvUnlearnSettings(Checked):
    steps: int = 40  # Adam steps on the text encoder
    lr: float = 1e-3
    retain_weight: float = 10.0
    mode: Literal["replace", "prefix", "both"] = "both"
    concepts: Literal["current", "all"] = "all"
    every: int = 2  # refresh one adversary every `every` steps (round-robin)
    attack_steps: int = 5  # Adam steps per refresh (warm start)
    attack_lr: float = 2e-2  # the attacks' default lr
    tokens: int = 3  # soft tokens of a prefix adversary (the prefix attack's default)
    images: int = 16  # base-model images per concept
    batch_size: int = 4  # forget batch and inner batch
    retain_batch: int = 64  # kept prompts per step
    ranges = {"steps": AT_LEAST_ONE, "lr": POSITIVE, "retain_weight": NON_NEGATIVE, "every": AT_LEAST_ONE,
              "attack_steps": AT_LEAST_ONE, "attack_lr": POSITIVE, "tokens": AT_LEAST_ONE, "images": AT_LEAST_ONE,
              "batch_size": AT_LEAST_ONE, "retain_batch": AT_LEAST_ONE}


def trained_encoder_tensor(name: str) -> bool:
    return ".embeddings." not in f".{name}"


class AdvUnlearn(Hook):
    name = "advunlearn"
    order = 60
    Settings = AdvUnlearnSettings
    trains_before_method = True
    quick_settings = {"steps": 2, "every": 1, "attack_steps": 1, "images": 2, "batch_size": 2, "tokens": 1,
                      "retain_batch": 2}
    # the denoiser must read one CLIP encoder's states only: SDXL reads two, SD3 and FLUX also T5's
    families = ("sd",)
    not_multi_process = "advunlearn trains the text encoder in one process before the method"

    def own_tensors(self, pipe) -> dict[str, torch.nn.Parameter]:
        return {TEXT_ENCODER_PREFIX + n: p for n, p in pipe.text_encoder.named_parameters() if trained_encoder_tensor(n)}

    # ------------------------------------------------------------ setup: images, adversaries, kept states
    def setup(self, ctx: Context, method=None) -> None:
        s, cat = self.settings, ctx.catalog
        domain = family(ctx.request.domain)
        concepts = attacked_concepts(ctx, s.concepts, self.name)
        self.tokens = NewTokens(ctx.pipe)
        kinds = {"both": ("replace", "prefix")}.get(s.mode, (s.mode,))
        self.gen = torch.Generator().manual_seed(ctx.request.seed + GEN_OFFSET)
        ordinary = ordinary_token_ids(self.tokens, cat)
        # one "prompt set" per adversary and one per concept's plain prompts: (prompts, latents, anchor states)
        self.adversaries, self.adv_sets, self.plain_sets = [], [], []
        for c in concepts:
            images = concept_images(ctx, c, domain, s.images)
            anchor = ctx.encode([cat.single(p, other_family(domain)) for p in images.partners])  # the encoder as found
            for kind in kinds:
                adv = make_adversary(ctx, self.tokens, kind, len(self.adversaries), images, s.tokens, ordinary,
                                     self.gen, self.name)
                self.adversaries.append(adv)
                self.adv_sets.append((adv.prompts, images.latents, anchor))
            self.plain_sets.append((images.plain, images.latents, anchor))
        erased = set(concepts) | {c for c, d in ctx.unlearned_before if family(d) == domain}
        kept = [c for c in cat.concepts(domain) if c not in erased]
        self.retain_prompts = [cat.prompt_with(c, domain, p) for c in kept for p in cat.partners(domain)]
        self.retain_prompts += [cat.single(p, other_family(domain)) for p in cat.partners(domain)]
        with ctx.restore_base():  # the base encoder's states: kept prompts never drift over a sequence
            self.retain_states = _encode(ctx.pipe, self.retain_prompts)
            self.uncond_state = _encode(ctx.pipe, [""])
        self.concepts, self.kinds = concepts, kinds
        self.refreshes, self.inner_losses, self.forget_losses, self.retain_losses = 0, [], [], []

    # ------------------------------------------------------------ before the method: train the encoder
    def all_rows(self) -> torch.Tensor:
        return torch.cat([a.rows for a in self.adversaries], 0)

    def refresh(self, ctx: Context) -> None:
        s = self.settings
        i = self.refreshes % len(self.adversaries)
        _, latents, _ = self.adv_sets[i]
        self.inner_losses.append(sharpen(ctx, self.adversaries[i], latents, self.all_rows(), s.attack_steps,
                                         s.attack_lr, s.batch_size, self.gen))
        self.refreshes += 1

    def before_method(self, ctx: Context) -> None:
        s = self.settings
        params = list(self.own_tensors(ctx.pipe).values())
        opt = torch.optim.Adam(params, lr=s.lr)
        sets = self.adv_sets + self.plain_sets
        try:
            for p in params:
                p.requires_grad_(True)
            for step in range(s.steps):
                if step % s.every == 0:
                    self.refresh(ctx)
                # forget: adversarial and plain prompts of the erased concepts -> the anchor's prediction
                prompts, x0, anchor = [], [], []
                for i in torch.randint(0, len(sets), (s.batch_size,), generator=self.gen).tolist():
                    set_prompts, latents, anchors = sets[i]
                    j = int(torch.randint(0, len(latents), (1,), generator=self.gen))
                    prompts.append(set_prompts[j])
                    x0.append(latents[j])
                    anchor.append(anchors[j:j + 1])
                x_t, t, _ = noised(ctx, torch.stack(x0), self.gen)
                rows = self.all_rows()
                hidden = self.tokens.encode(prompts, rows, ctx.pipe.text_encoder)
                with ctx.autocast():
                    reference, prediction = reference_and_prediction(ctx, x_t, t, Cond.cat(anchor), Cond(hidden))
                forget = F.mse_loss(prediction.float(), reference.float())
                # retain: kept prompts' states -> the base encoder's (the unconditional prompt in every batch)
                idx = torch.randint(0, len(self.retain_prompts), (s.retain_batch,), generator=self.gen)
                states = self.tokens.encode([""] + [self.retain_prompts[k] for k in idx.tolist()], rows,
                                            ctx.pipe.text_encoder).float()
                wanted = torch.cat([self.uncond_state, self.retain_states[idx]]).to(states.device)
                retain = F.mse_loss(states, wanted)
                grads = torch.autograd.grad(forget + s.retain_weight * retain, params)
                opt.zero_grad(set_to_none=True)
                for p, g in zip(params, grads):
                    p.grad = g
                opt.step()
                self.forget_losses.append(float(forget.detach()))
                self.retain_losses.append(float(retain.detach()))
        finally:
            for p in params:
                p.requires_grad_(False)
                p.grad = None
        ctx.log(f"advunlearn: {s.steps} steps on the text encoder before the method, against {len(self.adversaries)} adversaries "
                f"({', '.join(self.kinds)}) for {', '.join(self.concepts)}; forget loss "
                f"{_mean(self.forget_losses[:3]):.4f} -> {_mean(self.forget_losses[-3:]):.4f}")

    def report(self) -> dict:
        return {"advunlearn": {"concepts": self.concepts, "adversaries": len(self.adversaries), "refreshes": self.refreshes,
                               "inner_loss_first": _mean(self.inner_losses[:3]), "inner_loss_last": _mean(self.inner_losses[-3:]),
                               "forget_loss_first": _mean(self.forget_losses[:3]),
                               "forget_loss_last": _mean(self.forget_losses[-3:]),
                               "retain_loss_last": _mean(self.retain_losses[-3:])}}


def _encode(pipe, prompts: list[str]) -> torch.Tensor:
    return torch.cat([encode_prompts(pipe, prompts[i:i + 64]).float() for i in range(0, len(prompts), 64)])


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)
