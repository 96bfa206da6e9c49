"""Build the MiniCanvas model from nothing: tokenizer, frozen text encoder, VAE, UNet, classifiers.

Every stage is seeded; the result is a standard diffusers StableDiffusionPipeline directory
plus a `classifiers/` folder. `obliviate minicanvas build --out DIR [--quick]` calls `build`.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import world
from .classifiers import ConceptClassifier, save_classifiers
from .tokenizer import make_portable

# Words the tokenizer knows beyond the concept names: the prompt templates, ConAbl's
# prompt constructions and a few common words so that free-form prompts mostly tokenize.
BASE_WORDS = (
    "a an the image images picture photo painting drawing of in on with and style styles "
    "by art artwork shape object objects scene , . one some small large big"
).split()


@dataclass
class BuildSize:
    """How big and how long. `full` is the bundled model; `quick` exists for tests."""

    renders_per_pair: int = 48
    # Steps sized for a 90-minute build on the 2-core machine, where a UNet step (batch 64, two
    # threads) takes ~0.6 s: the UNet gets most of them. A 1.1 attempt with 600 / 1200 / 2800
    # steps and 1.0's UNet recipe drew objects at 59% against 1.0's 76% (5000 steps): the UNet
    # needs its steps, and a better recipe (below) per step (docs/MINICANVAS.md)
    text_steps: int = 800
    vae_steps: int = 1200
    unet_steps: int = 5500
    classifier_steps: int = 1200
    batch_size: int = 64
    text_width: int = 64
    text_layers: int = 3
    vae_channels: tuple[int, ...] = (16, 32, 32)
    unet_channels: tuple[int, ...] = (48, 96)
    # UNet recipe of 1.1 (scripts/minicanvas_unet_probe.py, docs/minicanvas/unet-probe/): at 1,200
    # steps on 1.0's VAE and text encoder, lr 1e-3 + min-SNR-5 + logit-normal timesteps drew
    # objects at 58.9% against 43.8% for 1.0's recipe (lr 3e-4, uniform, unweighted)
    unet_lr: float = 1e-3
    ema_decay: float = 0.999
    min_snr_gamma: float = 5.0  # 0 turns the weighting off (1.0 trained without it)
    timestep_sampling: str = "logit-normal"  # or "uniform" (1.0)
    unet_layers_per_block: int = 1
    # 1.2: share of the UNet's training captions in the reference's two style phrasings
    # (world.REFERENCE_STYLE_PHRASINGS, half each), taken from the template's share; 0 is 1.1's mix
    reference_phrasings: float = 0.2

    def __post_init__(self):
        if not 0 <= self.reference_phrasings <= 0.7:
            raise ValueError(f"reference_phrasings={self.reference_phrasings} must be in [0, 0.7] (the template's share is 0.7)")


FULL = BuildSize()
QUICK = BuildSize(
    renders_per_pair=4, text_steps=60, vae_steps=60, unet_steps=80, classifier_steps=60,
    batch_size=32, text_width=32, text_layers=1, vae_channels=(16, 16, 16), unet_channels=(32, 32), ema_decay=0.9,
)

MAX_TOKENS = 16
VERSION = "1.2"  # recorded in minicanvas.json; the bundled model is 1.2 (docs/MINICANVAS.md)
TIMESTEP_SAMPLINGS = ("uniform", "logit-normal")
BOS, EOS, UNK = "<|startoftext|>", "<|endoftext|>", "<|unk|>"


def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(f"[minicanvas] {msg}", flush=True)


def _descend(opt, sched, loss, clip=None) -> None:
    """One optimiser step of a build stage (gradient norm clipped to 1 where `clip` names parameters)."""
    opt.zero_grad()
    loss.backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(clip, 1.0)
    opt.step()
    sched.step()


# ---------------------------------------------------------------- tokenizer
def build_tokenizer(out_dir: Path):
    """A word-level tokenizer saved as standard Hugging Face files (tokenizer.json & co)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = [BOS, EOS, UNK] + sorted(set(BASE_WORDS) | set(world.STYLE_NAMES) | set(world.OBJECT_NAMES))
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, unk_token=UNK, pad_token=EOS,
        model_max_length=MAX_TOKENS,
    )
    fast.save_pretrained(out_dir)
    return fast


# ---------------------------------------------------------------- data
def _images_to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def render_dataset(renders_per_pair: int, seed_offset: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All (style, object) pairs x seeds: images in [-1, 1], style labels, object labels."""
    triples, styles, objects = [], [], []
    for si, s in enumerate(world.STYLE_NAMES):
        for oi, o in enumerate(world.OBJECT_NAMES):
            for k in range(renders_per_pair):
                triples.append((s, o, seed_offset + k))
                styles.append(si)
                objects.append(oi)
    return _images_to_tensor(world.render_array(triples)), torch.tensor(styles), torch.tensor(objects)


def caption_for(style_idx: int, object_idx: int, kind: int) -> str:
    s, o = world.STYLE_NAMES[style_idx], world.OBJECT_NAMES[object_idx]
    if kind == 0:
        return world.prompt(s, o)
    if kind == 1:
        return world.STYLE_ONLY_TEMPLATE.format(style=s)
    if kind == 2:
        return world.OBJECT_ONLY_TEMPLATE.format(object=o)
    if kind in (4, 5):
        return world.REFERENCE_STYLE_PHRASINGS[kind - 4].format(style=s, object=o)
    return ""


CAPTION_KINDS = 6  # 0 template, 1 style only, 2 object only, 3 empty (CFG), 4 and 5 the reference's phrasings


def draw_caption_kinds(n: int, size: BuildSize, gen: torch.Generator) -> torch.Tensor:
    """The UNet's caption kinds: template 70% - reference_phrasings, each reference phrasing half
    of reference_phrasings, style only, object only and empty (classifier-free guidance) 10% each.
    One uniform draw per caption, so reference_phrasings=0 draws 1.1's kinds exactly."""
    r = size.reference_phrasings
    bounds = torch.tensor([0.7 - r, 0.7 - r / 2, 0.7, 0.8, 0.9])
    return torch.tensor([0, 4, 5, 1, 2, 3])[torch.bucketize(torch.rand(n, generator=gen), bounds)]


# ---------------------------------------------------------------- text encoder
class _ImageTower(torch.nn.Module):
    """A small CNN with three heads: the whole image (for the pooled caption), its style and its
    object (for the concept tokens' own states)."""

    def __init__(self, width: int):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.GELU(), torch.nn.AvgPool2d(2),
            torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.GELU(), torch.nn.AvgPool2d(2),
            torch.nn.Conv2d(64, 96, 3, padding=1), torch.nn.GELU(), torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
        )
        self.heads = torch.nn.ModuleDict({k: torch.nn.Linear(96, width) for k in ("image", "style", "object")})

    def forward(self, x):
        h = self.net(x)
        return {k: head(h) for k, head in self.heads.items()}


def new_text_encoder(tokenizer, size: BuildSize):
    """The MiniCanvas CLIPTextModel at random init (draws from the global generator)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=size.text_width, intermediate_size=size.text_width * 4,
        num_hidden_layers=size.text_layers, num_attention_heads=4, max_position_embeddings=MAX_TOKENS,
        projection_dim=size.text_width, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


# 1.1: the text encoder sees each concept in several contexts, so that a concept token's state
# is a property of the word, not of the sentence around it (a CLIP-like encoder keeps a word's
# identity in context; the projection regularizer's premise depends on it). The canonical
# templates come first and are drawn half of the time.
PAIR_CONTEXTS = (world.PROMPT_TEMPLATE, "a painting of a {object} in {style} style",
                 "a picture of a {object} in the style of {style}", "{style} style {object}")
STYLE_CONTEXTS = (world.STYLE_ONLY_TEMPLATE, "{style} style", "a painting in {style} style", "art in the style of {style}")
OBJECT_CONTEXTS = (world.OBJECT_ONLY_TEMPLATE, "a {object}", "a picture of a {object}", "a drawing of a {object} shape")
FAMILY_CREDIT = 0.2  # soft contrastive target for a concept's designed neighbours (1 for itself)
# A fixed (not learned) temperature for the token terms: at the optimum of a soft target the
# cosine gap between a concept and its neighbours is ln(1 / FAMILY_CREDIT) / scale, so a learned
# scale growing to 100 would squeeze neighbours to cosine ~0.98; at 8 they stay told apart.
TOKEN_SCALE = 8.0


def _context_caption(style_idx: int, object_idx: int, kind: int, variant: int) -> str:
    contexts = (PAIR_CONTEXTS, STYLE_CONTEXTS, OBJECT_CONTEXTS)[kind]
    return contexts[variant % len(contexts)].format(style=world.STYLE_NAMES[style_idx], object=world.OBJECT_NAMES[object_idx])


def _soft_targets(labels_a: torch.Tensor, labels_b: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Row-normalised targets: 1 for the same concept, FAMILY_CREDIT for a designed neighbour."""
    same = (labels_a[:, None] == labels_b[None, :]).float()
    family = (groups[labels_a][:, None] == groups[labels_b][None, :]).float() - same
    w = same + FAMILY_CREDIT * family
    return w / w.sum(1, keepdim=True)


def _token_states(hidden: torch.Tensor, input_ids: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """The state at the (single-token) concept word of each caption: hidden[b, pos(token_ids[b])]."""
    pos = (input_ids == token_ids[:, None]).float().argmax(1)
    return hidden[torch.arange(len(hidden)), pos]


def train_text_encoder(tokenizer, images, style_labels, object_labels, size: BuildSize, gen: torch.Generator, quiet: bool):
    """CLIP-style contrastive training of a small CLIPTextModel against a small image tower.

    Image similarity shapes text similarity: styles whose renders look alike end up with
    nearby text embeddings, as real CLIP does for Stable Diffusion. Three terms (1.1):
    the pooled caption against the whole image (as 1.0); each concept token's own state against
    the image's style or object head, with soft targets that give a designed neighbour partial
    credit (FAMILY_CREDIT), so that the token states carry the family structure the world is
    built with; and a consistency term pulling a token's state in any context towards its state
    in the neutral prompt ("an image in the style of X" / "an image of a X").
    """
    text_model = new_text_encoder(tokenizer, size)
    tower = _ImageTower(size.text_width)
    text_proj = torch.nn.Linear(size.text_width, size.text_width, bias=False)
    logit_scale = torch.nn.Parameter(torch.tensor(math.log(10.0)))
    params = list(text_model.parameters()) + list(tower.parameters()) + list(text_proj.parameters()) + [logit_scale]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=size.text_steps, pct_start=0.1)
    style_group_names = sorted({st.group for st in world.STYLES})
    object_group_names = sorted({ob.group for ob in world.OBJECTS})
    style_groups = torch.tensor([style_group_names.index(st.group) for st in world.STYLES])
    object_groups = torch.tensor([object_group_names.index(ob.group) for ob in world.OBJECTS])
    style_tok = torch.tensor(tokenizer.convert_tokens_to_ids(list(world.STYLE_NAMES)))
    object_tok = torch.tensor(tokenizer.convert_tokens_to_ids(list(world.OBJECT_NAMES)))
    neutral = [world.STYLE_ONLY_TEMPLATE.format(style=s) for s in world.STYLE_NAMES] + \
              [world.OBJECT_ONLY_TEMPLATE.format(object=o) for o in world.OBJECT_NAMES]
    neutral_ids = tokenizer(neutral, padding="max_length", max_length=MAX_TOKENS, return_tensors="pt").input_ids
    neutral_tok = torch.cat([style_tok, object_tok])
    n_styles = len(world.STYLE_NAMES)
    batch = 128
    bar = tqdm(range(size.text_steps), desc="text encoder", disable=quiet)
    for _ in bar:
        idx = torch.randint(0, len(images), (batch,), generator=gen)
        kinds = torch.randint(0, 3, (batch,), generator=gen)
        # half the captions in the canonical template of their kind, half in another context
        variants = torch.where(torch.rand(batch, generator=gen) < 0.5, 0, torch.randint(1, 4, (batch,), generator=gen))
        s, o = style_labels[idx], object_labels[idx]
        captions = [_context_caption(int(a), int(b), int(k), int(v)) for a, b, k, v in zip(s, o, kinds, variants)]
        enc = tokenizer(captions, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt")
        out = text_model(enc.input_ids)
        t = F.normalize(text_proj(out.pooler_output), dim=-1)
        heads = {k: F.normalize(v, dim=-1) for k, v in tower(images[idx]).items()}
        # caption j describes image i if every concept it names is in image i
        style_ok = (kinds[None, :] == 2) | (s[None, :] == s[:, None])
        object_ok = (kinds[None, :] == 1) | (o[None, :] == o[:, None])
        match = (style_ok & object_ok).float()
        logits = logit_scale.exp().clamp(max=100) * heads["image"] @ t.T
        loss_i = -(F.log_softmax(logits, dim=1) * match / match.sum(1, keepdim=True)).sum(1).mean()
        loss_t = -(F.log_softmax(logits.T, dim=1) * match.T / match.T.sum(1, keepdim=True)).sum(1).mean()
        loss = (loss_i + loss_t) / 2

        # concept tokens: their own states against the style / object heads, family-soft targets
        neutral_states = F.normalize(text_model(neutral_ids).last_hidden_state, dim=-1)
        neutral_states = _token_states(neutral_states, neutral_ids, neutral_tok)
        scale = TOKEN_SCALE
        for which, has, labels, toks, groups, offset in (
            ("style", kinds != 2, s, style_tok, style_groups, 0),
            ("object", kinds != 1, o, object_tok, object_groups, n_styles),
        ):
            states = F.normalize(_token_states(out.last_hidden_state[has], enc.input_ids[has], toks[labels[has]]), dim=-1)
            target = _soft_targets(labels[has], labels, groups)
            loss = loss + 0.5 * -(F.log_softmax(scale * states @ heads[which].T, dim=1) * target).sum(1).mean()
            # consistency: a token's state in any context against the neutral states of its
            # domain's concepts, itself the target, its designed neighbours partial credit
            domain_neutral = neutral_states[offset : offset + len(toks)]
            target = _soft_targets(labels[has], torch.arange(len(toks)), groups)
            loss = loss + 0.5 * -(F.log_softmax(scale * states @ domain_neutral.T, dim=1) * target).sum(1).mean()
            loss = loss + (1 - (states * neutral_states[offset + labels[has]]).sum(-1)).mean()
        _descend(opt, sched, loss)
        bar.set_postfix(loss=f"{loss.item():.3f}")
    text_model.eval().requires_grad_(False)
    return text_model, float(loss.item())


@torch.no_grad()
def encode_captions(tokenizer, text_model, captions: list[str]) -> torch.Tensor:
    enc = tokenizer(captions, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt")
    return text_model(enc.input_ids).last_hidden_state


# ---------------------------------------------------------------- VAE
def new_vae(size: BuildSize):
    from diffusers import AutoencoderKL

    n = len(size.vae_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=size.vae_channels, latent_channels=4,
        layers_per_block=1, norm_num_groups=8, sample_size=world.IMAGE_SIZE,
    )


def train_vae(images, size: BuildSize, gen: torch.Generator, quiet: bool):
    vae = new_vae(size)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=size.vae_steps, pct_start=0.05)
    bar = tqdm(range(size.vae_steps), desc="vae", disable=quiet)
    for _ in bar:
        idx = torch.randint(0, len(images), (size.batch_size,), generator=gen)
        x = images[idx]
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
        recon = vae.decode(z).sample
        rec = F.mse_loss(recon, x) + 0.5 * F.l1_loss(recon, x)
        kl = post.kl().mean() / x[0].numel()
        loss = rec + 1e-4 * kl
        _descend(opt, sched, loss)
        bar.set_postfix(rec=f"{rec.item():.4f}")
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        mean = torch.cat([vae.encode(images[i : i + 256]).latent_dist.mean for i in range(0, len(images), 256)])
    # SD's convention: latents are multiplied by scaling_factor to have unit variance
    vae.register_to_config(scaling_factor=float(1.0 / mean.std()))
    return vae, float(rec.item())


@torch.no_grad()
def encode_latents(vae, images: torch.Tensor) -> torch.Tensor:
    out = [vae.encode(images[i : i + 256]).latent_dist.mean for i in range(0, len(images), 256)]
    return torch.cat(out) * vae.config.scaling_factor


# ---------------------------------------------------------------- UNet
def make_scheduler_config() -> dict:
    # Stable Diffusion 1.x's noise schedule
    return dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                prediction_type="epsilon", steps_offset=1)


def new_unet(latent_size: int, text_width: int, size: BuildSize):
    from diffusers import UNet2DConditionModel

    n = len(size.unet_channels)
    return UNet2DConditionModel(
        sample_size=latent_size, in_channels=4, out_channels=4, block_out_channels=size.unet_channels,
        layers_per_block=size.unet_layers_per_block, down_block_types=("CrossAttnDownBlock2D",) * n, up_block_types=("CrossAttnUpBlock2D",) * n,
        cross_attention_dim=text_width, attention_head_dim=8, norm_num_groups=16,
    )


def _draw_timesteps(size: BuildSize, n: int, gen: torch.Generator) -> torch.Tensor:
    if size.timestep_sampling == "uniform":
        return torch.randint(0, n, (size.batch_size,), generator=gen)
    if size.timestep_sampling == "logit-normal":
        # SD3 (Esser et al. 2024): t/n = sigmoid(N(0, 1)); fewer draws near t=0 and t=n, where
        # a small model learns little about an object's silhouette
        u = torch.sigmoid(torch.randn(size.batch_size, generator=gen))
        return (u * n).long().clamp(0, n - 1)
    raise ValueError(f"timestep_sampling {size.timestep_sampling!r}: choose one of {TIMESTEP_SAMPLINGS}")


def train_unet(latents, style_labels, object_labels, caption_bank, size: BuildSize, gen: torch.Generator, quiet: bool):
    """Latent diffusion training with classifier-free-guidance dropout (10% empty captions)."""
    from diffusers import DDPMScheduler

    unet = new_unet(latents.shape[-1], caption_bank["embeddings"].shape[-1], size)
    ema = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    scheduler = DDPMScheduler(**make_scheduler_config())
    opt = torch.optim.AdamW(unet.parameters(), lr=size.unet_lr, weight_decay=0.01)
    warmup = max(1, size.unet_steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warmup) * (0.5 * (1 + math.cos(math.pi * min(i, size.unet_steps) / size.unet_steps)) * 0.9 + 0.1)
    )
    embeddings, index = caption_bank["embeddings"], caption_bank["index"]
    alphas = scheduler.alphas_cumprod
    losses = []
    bar = tqdm(range(size.unet_steps), desc="unet", disable=quiet)
    for step in bar:
        idx = torch.randint(0, len(latents), (size.batch_size,), generator=gen)
        kinds = draw_caption_kinds(size.batch_size, size, gen)
        cap = torch.tensor([index[(int(s), int(o), int(k))] for s, o, k in zip(style_labels[idx], object_labels[idx], kinds)])
        x0 = latents[idx]
        noise = torch.randn(x0.shape, generator=gen)
        t = _draw_timesteps(size, scheduler.config.num_train_timesteps, gen)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        pred = unet(xt, t, embeddings[cap]).sample
        # 1.1: min-SNR-gamma weighting (Hang et al. 2023): the nearly noise-free timesteps, easy
        # and many, no longer dominate; the mid-noise ones that decide an object's silhouette do
        snr = a.view(-1) / (1 - a.view(-1))
        weight = snr.clamp(max=size.min_snr_gamma) / snr if size.min_snr_gamma else torch.ones_like(snr)
        loss = (weight * (pred - noise).pow(2).mean(dim=(1, 2, 3))).mean()
        _descend(opt, sched, loss, clip=unet.parameters())
        with torch.no_grad():
            decay = min(size.ema_decay, (1 + step) / (10 + step))
            for k, v in unet.state_dict().items():
                if v.dtype.is_floating_point:
                    ema[k].mul_(decay).add_(v, alpha=1 - decay)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
    unet.load_state_dict(ema)
    unet.eval().requires_grad_(False)
    return unet, losses


def caption_bank_for(tokenizer, text_model) -> dict:
    """Every training caption encoded once (the text encoder is frozen)."""
    keys, captions = [], []
    for si in range(len(world.STYLE_NAMES)):
        for oi in range(len(world.OBJECT_NAMES)):
            for kind in range(CAPTION_KINDS):
                keys.append((si, oi, kind))
                captions.append(caption_for(si, oi, kind))
    unique = sorted(set(captions))
    emb = encode_captions(tokenizer, text_model, unique)
    pos = {c: i for i, c in enumerate(unique)}
    return {"embeddings": emb, "index": {k: pos[c] for k, c in zip(keys, captions)}}


# ---------------------------------------------------------------- classifiers
def train_classifiers(images, style_labels, object_labels, vae, size: BuildSize, gen: torch.Generator, quiet: bool):
    """Style and object CNNs. Half of each batch passes through the VAE first, so the
    classifiers know the slight blur of decoded images (they never see generated images)."""
    with torch.no_grad():
        recon = torch.cat([vae.decode(vae.encode(images[i : i + 256]).latent_dist.mean).sample.clamp(-1, 1)
                           for i in range(0, len(images), 256)])
    heads = {"style": (style_labels, len(world.STYLE_NAMES)), "object": (object_labels, len(world.OBJECT_NAMES))}
    models = {}
    for name, (labels, n_classes) in heads.items():
        model = ConceptClassifier(n_classes)
        opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=size.classifier_steps, pct_start=0.1)
        bar = tqdm(range(size.classifier_steps), desc=f"{name} classifier", disable=quiet)
        for _ in bar:
            idx = torch.randint(0, len(images), (128,), generator=gen)
            use_recon = (torch.rand(128, generator=gen) < 0.5).view(-1, 1, 1, 1)
            x = torch.where(use_recon, recon[idx], images[idx])
            x = x + 0.03 * torch.randn(x.shape, generator=gen)
            loss = F.cross_entropy(model(x), labels[idx])
            _descend(opt, sched, loss)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        models[name] = model.eval().requires_grad_(False)
    return models


# ---------------------------------------------------------------- the whole build
def save_pipeline(directory: Path, tokenizer, text_model, vae, unet, classifiers: dict) -> None:
    """A standard StableDiffusionPipeline directory plus the judge's classifiers/."""
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    scheduler = DPMSolverMultistepScheduler(**make_scheduler_config())
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_model, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(directory, safe_serialization=True)
    make_portable(directory)
    save_classifiers(classifiers, directory / "classifiers")


def build_untrained(out: str | os.PathLike, *, seed: int = 0) -> Path:
    """A MiniCanvas pipeline in the quick build's architecture with random weights, in about a
    second: for tests of I/O, the ledger, hooks and the command line, which need the real code
    path but not a model that has learned anything (as diffusers' own tests do)."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"--out {out} exists and is not empty; choose a new directory")
    size = QUICK
    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(out / "tokenizer")
    text_model = new_text_encoder(tokenizer, size).eval().requires_grad_(False)
    vae = new_vae(size).eval().requires_grad_(False)
    latent_size = world.IMAGE_SIZE // 2 ** (len(size.vae_channels) - 1)
    unet = new_unet(latent_size, size.text_width, size).eval().requires_grad_(False)
    classifiers = {"style": ConceptClassifier(len(world.STYLE_NAMES)).eval(),
                   "object": ConceptClassifier(len(world.OBJECT_NAMES)).eval()}
    save_pipeline(out, tokenizer, text_model, vae, unet, classifiers)
    info = {"version": VERSION, "untrained": True, "seed": seed, "size": asdict(size), "image_size": world.IMAGE_SIZE,
            "latent_size": latent_size, "torch": torch.__version__, "catalog": world.catalog()}
    (out / "minicanvas.json").write_text(json.dumps(info, indent=2))
    return out


def build(out: str | os.PathLike, *, quick: bool = False, seed: int = 0, quiet: bool = False) -> dict:
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"--out {out} exists and is not empty; choose a new directory")
    size = QUICK if quick else FULL
    torch.manual_seed(seed)  # module initialisers draw from the global generator
    gen = torch.Generator().manual_seed(seed)
    timings: dict[str, float] = {}
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)

    t0 = time.time()
    _log(f"rendering {size.renders_per_pair} images for each of {len(world.STYLE_NAMES)}x{len(world.OBJECT_NAMES)} pairs", quiet)
    images, style_labels, object_labels = render_dataset(size.renders_per_pair, seed_offset=0)
    cls_images, cls_styles, cls_objects = render_dataset(max(2, size.renders_per_pair // 2), seed_offset=100_000)
    timings["render"] = time.time() - t0

    t0 = time.time()
    tokenizer = build_tokenizer(tmp / "tokenizer")
    text_model, text_loss = train_text_encoder(tokenizer, images, style_labels, object_labels, size, gen, quiet)
    timings["text_encoder"] = time.time() - t0

    t0 = time.time()
    vae, vae_rec = train_vae(images, size, gen, quiet)
    latents = encode_latents(vae, images)
    timings["vae"] = time.time() - t0

    t0 = time.time()
    bank = caption_bank_for(tokenizer, text_model)
    unet, unet_losses = train_unet(latents, style_labels, object_labels, bank, size, gen, quiet)
    timings["unet"] = time.time() - t0

    t0 = time.time()
    classifiers = train_classifiers(cls_images, cls_styles, cls_objects, vae, size, gen, quiet)
    timings["classifiers"] = time.time() - t0

    save_pipeline(tmp, tokenizer, text_model, vae, unet, classifiers)
    head = max(1, len(unet_losses) // 10)
    info = {
        "version": VERSION, "quick": quick, "seed": seed, "size": asdict(size), "timings_seconds": timings,
        "build_seconds": sum(timings.values()), "text_contrastive_loss": text_loss, "vae_reconstruction_loss": vae_rec,
        "unet_loss_first": float(np.mean(unet_losses[:head])), "unet_loss_last": float(np.mean(unet_losses[-head:])),
        "parameters": {
            "unet": sum(p.numel() for p in unet.parameters()), "vae": sum(p.numel() for p in vae.parameters()),
            "text_encoder": sum(p.numel() for p in text_model.parameters()),
            "style_classifier": sum(p.numel() for p in classifiers["style"].parameters()),
            "object_classifier": sum(p.numel() for p in classifiers["object"].parameters()),
        },
        "image_size": world.IMAGE_SIZE, "latent_size": int(latents.shape[-1]), "torch": torch.__version__,
        "catalog": world.catalog(),
    }
    (tmp / "minicanvas.json").write_text(json.dumps(info, indent=2))
    if out.exists():
        out.rmdir()
    tmp.rename(out)  # the directory appears complete or not at all
    _log(f"built in {info['build_seconds']:.0f} s -> {out}", quiet)
    return info
