"""Pieces every attack shares: the attacked model, base-model images of a concept, learned
tokens (soft_tokens.NewTokens: rows outside the model), the diffusion loss, the judge's verdict.

An attack sees one *target*: the base model plus a cumulative delta (a run's model after
step K), the concepts unlearned so far, and the evaluation grid they are scored on
(partners x seeds, as the protocol's UA uses them). Images are made by the evaluation
sampler (`evaluate.sampler.generate`, one seeded generator per image) and labelled by the
protocol's judge, so an attack's ASR is measured exactly like UA:

    ASR(c) = % of attacked images of concept c that the judge labels c
    Robust UA = 100 - mean over unlearned concepts of ASR(c)
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..delta import apply_delta, tensors_hash, with_delta
from ..diffusion import add_noise, scheduler_for_training, target_for, vae_to_latents
from ..evaluate.evaluator import Protocol, model_key
from ..evaluate.sampler import SamplerConfig, generate
from ..model import denoiser, edited, load_pipeline, pick_device, predict
from ..parsing import Checked
from ..protocols import other_family
from ..soft_tokens import NewTokens, check_fits as _check_fits  # the one soft-token mechanism, also the adversarial add-on's

# Training images of a concept come from these seeds, disjoint from every evaluation seed
# (188, 288, ...) and from ConAbl's anchor seeds (10_000 + i).
TRAIN_SEED_OFFSET = 50_000


@dataclass
class AttackSettings(Checked):
    seed: int = 0


@dataclass
class LearnedRowsSettings(AttackSettings):
    """What inversion and prefix share: K base-model images, Adam on new embedding rows.
    50 steps at lr 2e-2 (batch 8) recover every concept tried on the pretrained model
    (docs/GETTING_STARTED.md, Attacks) at half the cost of 100 steps at 1e-2."""

    images: int = 16
    steps: int = 50
    lr: float = 2e-2
    batch_size: int = 8


@dataclass
class Target:
    """The attacked model and what it is scored on."""

    pipe: object  # the model under attack: base + delta (learned tokens never change it: soft_tokens.py)
    base_model: Path
    base_hash: str
    delta: dict[str, torch.Tensor]
    unlearned: list[str]
    domain: str
    protocol: Protocol
    partners: list[str]
    seeds: list[int]
    sampler: SamplerConfig
    cache_dir: Path | None = None  # base-model images, shared with the evaluator's cache (same key)
    quiet: bool = True
    _base_images: dict = field(default_factory=dict)

    # ------------------------------------------------------------ prompts
    def prompt(self, concept: str, partner: str) -> str:
        """The protocol's template with `concept` (of the target's domain) and `partner`."""
        style, obj = (concept, partner) if self.domain == "style" else (partner, concept)
        return self.protocol.prompt(style, obj)

    def all_partners(self) -> list[str]:
        return self.protocol.concepts(other_family(self.domain))

    def grid(self) -> list[tuple[str, int]]:
        """(partner, seed) cells an attacked concept is scored on."""
        return [(p, s) for p in self.partners for s in self.seeds]

    def log(self, msg: str) -> None:
        if not self.quiet:
            print(f"[obliviate attack] {msg}", flush=True)

    # ------------------------------------------------------------ models
    @contextlib.contextmanager
    def base(self):
        """The pipe with the delta removed (the pretrained model), its own weights restored afterwards."""
        with with_delta(edited(self.pipe), {n: -d for n, d in self.delta.items()}):
            yield self.pipe

    # ------------------------------------------------------------ images
    def generate(self, prompts: list[str], seeds: list[int]) -> list[np.ndarray]:
        """Images of the attacked model (never cached: attacks may install learned tokens on it)."""
        return generate(self.pipe, prompts, seeds, self.sampler)

    def generate_plain(self, prompts: list[str], seeds: list[int]) -> list[np.ndarray]:
        """Images of the attacked model with its original text side (no attack tokens), cached
        under the model's key: every attack on the same model shares its clean images."""
        if self.cache_dir is None:
            return self.generate(prompts, seeds)
        key = model_key(self.base_hash, tensors_hash(self.delta) if self.delta else "base")
        return generate(self.pipe, prompts, seeds, self.sampler, cache_dir=self.cache_dir, model_key=key)

    def base_images(self, concept: str, n: int) -> tuple[list[str], list[np.ndarray]]:
        """`n` images of `concept` by the base model: partners cycled, seeds TRAIN_SEED_OFFSET + i."""
        key = (concept, n)
        if key not in self._base_images:
            partners = self.all_partners()
            pairs = [(partners[i % len(partners)], TRAIN_SEED_OFFSET + i) for i in range(n)]
            prompts = [self.prompt(concept, p) for p, _ in pairs]
            with self.base() as pipe:
                imgs = generate(pipe, prompts, [s for _, s in pairs], self.sampler, cache_dir=self.cache_dir,
                                model_key=model_key(self.base_hash) if self.cache_dir else None)
            self._base_images[key] = ([p for p, _ in pairs], imgs)
        return self._base_images[key]

    @torch.no_grad()
    def latents_of(self, images: list[np.ndarray]) -> torch.Tensor:
        vae = self.pipe.vae
        x = torch.as_tensor(np.stack(images)).float().div(127.5).sub(1).permute(0, 3, 1, 2).to(vae.device)
        return vae_to_latents(vae, vae.encode(x).latent_dist.mean)

    def hits(self, images: list[np.ndarray], concept: str) -> list[int]:
        """Per image, 1 if the judge labels it `concept` (in the target's domain): what intervals resample."""
        labels = self.protocol.judge.predict(np.stack(images))[self.domain]
        return [int(label == concept) for label in labels]

    def asr(self, images: list[np.ndarray], concept: str) -> float:
        """% of images the judge labels as `concept` (in the target's domain)."""
        return 100.0 * float(np.mean(self.hits(images, concept)))

    def clean_hits(self, concept: str) -> list[int]:
        """The judge's verdicts on `concept` over the grid with the plain template (the unattacked model)."""
        cells = self.grid()
        return self.hits(self.generate_plain([self.prompt(concept, p) for p, _ in cells], [s for _, s in cells]), concept)

    # ------------------------------------------------------------ learned rows (inversion, prefix)
    def training_latents(self, concept: str, n: int) -> tuple[list[str], torch.Tensor]:
        """(partners, VAE latents) of the `n` base-model images of `concept` an attacker learns from."""
        partners, images = self.base_images(concept, n)
        return partners, self.latents_of(images)

    def attacked_hits(self, make, concept: str, tokens: NewTokens | None = None) -> list[int]:
        """Verdicts on the grid with `make(concept, partner)` prompts, the learned `tokens` installed."""
        cells = self.grid()
        with tokens.installed(self.pipe) if tokens is not None else contextlib.nullcontext():
            images = self.generate([make(concept, p) for p, _ in cells], [k for _, k in cells])
        return self.hits(images, concept)


def load_target(model_dir, delta: dict[str, torch.Tensor], unlearned: list[str], domain: str, protocol: Protocol,
                partners: list[str], seeds: list[int], sampler: SamplerConfig, *, base_hash: str, device=None,
                cache_dir=None, quiet=True) -> Target:
    if not unlearned:
        raise ValueError("this model unlearned nothing (step 0 or an empty run): there is no erased concept to attack; "
                         "choose a step >= 1")
    pipe = load_pipeline(model_dir, device=pick_device(device))
    if delta:
        apply_delta(edited(pipe), delta)
    return Target(pipe=pipe, base_model=Path(model_dir), base_hash=base_hash, delta={n: v.clone() for n, v in delta.items()},
                  unlearned=list(unlearned), domain=domain, protocol=protocol, partners=list(partners), seeds=list(seeds),
                  sampler=sampler, cache_dir=Path(cache_dir) if cache_dir else None, quiet=quiet)


# ---------------------------------------------------------------- learned tokens
def encode(pipe, prompts: list[str]) -> torch.Tensor:
    """Text-encoder states with gradient (model.encode_prompts is no_grad)."""
    tok = pipe.tokenizer(prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True,
                         return_tensors="pt")
    return pipe.text_encoder(tok.input_ids.to(pipe.text_encoder.device))[0]


def word_rows(pipe, words: list[str]) -> torch.Tensor:
    vocab = pipe.tokenizer.get_vocab()
    # CLIP's BPE: the whole word is "art</w>"; "art" alone is the piece that starts "artist"
    ids = pipe.tokenizer.convert_tokens_to_ids([w + "</w>" if w + "</w>" in vocab else w for w in words])
    unk = pipe.tokenizer.unk_token_id
    bad = [w for w, i in zip(words, ids) if i is None or i == unk]
    if bad:
        raise ValueError(f"words {bad} are not in the model's vocabulary")
    return pipe.text_encoder.get_input_embeddings().weight[ids].detach().clone()


def check_fits(pipe, prompts: list[str]) -> None:
    """A prompt longer than the encoder's context would silently lose its end (the concept)."""
    _check_fits(pipe.tokenizer, prompts)


def learn_rows(pipe, tokens: NewTokens, prompts: list[str], latents: torch.Tensor, settings) -> dict:
    """Optimise the new rows of `tokens` (and nothing else: the model is only read) with the
    denoising loss on `latents`, batch i drawn from `prompts[i]`/`latents[i]` with the
    settings' seed; returns loss figures."""
    tokens.check_fits(prompts)
    rows = tokens.trainable()
    opt = torch.optim.Adam([rows], lr=settings.lr)
    diffusion = Diffusion(pipe, settings.seed)
    losses = []
    for _ in range(settings.steps):
        idx = diffusion.batch(len(prompts), settings.batch_size)
        loss = diffusion.loss(latents[idx], tokens.encode([prompts[i] for i in idx]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    tokens.frozen()
    head, tail = losses[:10], losses[-10:]
    return {"loss_first": sum(head) / len(head), "loss_last": sum(tail) / len(tail)}


class Diffusion:
    """The ordinary denoising loss on clean latents, with its own seeded noise: the same
    forward process and targets as training (obliviate.diffusion) and the same UNet call
    (model.predict)."""

    def __init__(self, pipe, seed: int):
        self.sched = scheduler_for_training(pipe)
        self.unet = denoiser(pipe)
        self.gen = torch.Generator(device="cpu").manual_seed(seed)

    def loss(self, latents: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        x_t, t, noise = add_noise(self.sched, latents, self.gen)
        target = target_for(self.sched, latents, noise, t)
        return F.mse_loss(predict(self.unet, x_t, t, cond).float(), target.float())

    def batch(self, n: int, size: int) -> list[int]:
        return torch.randint(0, n, (size,), generator=self.gen).tolist()


class Timer:
    def __init__(self):
        self.t0 = time.time()

    def seconds(self) -> float:
        return round(time.time() - self.t0, 3)


def settings_dict(settings) -> dict:
    return dataclasses.asdict(settings)


class Attack:
    """One attack, registered by name. `attack_concept` returns a JSON-able dict with at least
    `asr` (percent) and `steps` (optimisation steps; 0 for prompt-only attacks); it must be
    deterministic given `settings.seed` and never record wall-clock times (the driver does)."""

    name = ""
    Settings = AttackSettings
    counts_in_robust_ua = True  # relearn changes the weights: reported, but not a prompt-side ASR
    # model families it can attack (model.model_family): learned tokens and relearning train
    # through one text encoder, so the default is single-encoder Stable Diffusion
    families: tuple[str, ...] = ("sd",)

    def __init__(self, settings):
        self.settings = settings

    def attack_concept(self, target: Target, concept: str) -> dict:
        raise NotImplementedError
