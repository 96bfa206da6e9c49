"""Helpers the add-ons share: which concepts a request protects, a concept's domain, a
concept's text-embedding column, and the adversaries of the two adversarial add-ons
(`adversarial` trains the denoiser against them, `advunlearn` the text encoder). Add-ons import
from here (and from obliviate.diffusion), never from a method or from another add-on."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..diffusion import base_model_latents, denoising_target, noised, sampler_settings
from ..model import Cond, concept_token_embedding, concept_token_embeddings, predict
from ..protocols import family, other_family
from ..soft_tokens import NewTokens
from ..trainer import Context

ADVERSARY_IMAGE_SEED = 30_000  # base-model images of an attacked concept: seeds 30000+i


def protected_concepts(ctx: Context, concepts: str | None, hook: str, both_domains: bool = False) -> list[str]:
    """The concepts a request must not disturb: `concepts` ('+'-separated) when given, else the
    catalog's other concepts of the request's domain (and of the other domain with
    `both_domains`) plus every concept unlearned earlier."""
    req = ctx.request
    if concepts:
        names = [c for c in concepts.split("+") if c]
    else:
        domain = family(req.domain)
        names = [c for c in ctx.catalog.concepts(domain) if c not in req.targets]
        if both_domains:
            other = other_family(domain)
            names += [c for c in ctx.catalog.concepts(other) if c not in req.targets and c not in names]
        names += [c for c, _ in ctx.unlearned_before if c not in names and c not in req.targets]
    if not names:
        raise ValueError(
            f"{hook} has no auxiliary concepts: this model has no concept catalog for the "
            f"{req.domain!r} domain; pass {hook}:concepts=A+B" + (" or projection:prompts=FILE" if hook == "projection" else "")
        )
    return names


def concept_domain(ctx: Context, concept: str) -> str:
    fallback = family(ctx.request.domain)
    return dict(ctx.unlearned_before).get(concept, ctx.catalog.domain_of(concept) or fallback)


def concept_embedding(ctx: Context, concept: str, domain: str, context: str = "neutral",
                      per_run: bool = False) -> torch.Tensor:
    """Mean hidden state over the concept's tokens after the neutral prefix, or (context=template)
    inside the catalog's prompt template, averaged over every partner concept of the other domain.

    Why the template: the text encoder is causal, so a word's state depends on what precedes
    it; generation and evaluation use the template, and on MiniCanvas the neutral-prefix state
    of a style has cosine ~0.4 to its state in the template (docs/RESULTS.md)."""
    cat, domain = ctx.catalog, family(domain)
    partners = cat.partners(domain)
    texts = [cat.prompt_with(concept, domain, p) for p in partners] if context == "template" and partners else []
    if per_run:  # (runs, width): SD3's CLIP-position and T5-position states apart (model.text_segments)
        texts = texts or [cat.single(concept, domain)]
        return torch.stack([concept_token_embeddings(ctx.pipe, t, concept) for t in texts]).mean(0)
    if texts:
        return torch.stack([concept_token_embedding(ctx.pipe, t, concept) for t in texts]).mean(0)
    return concept_token_embedding(ctx.pipe, cat.single(concept, domain), concept)


# ---------------------------------------------------------------- adversaries (soft tokens found by attacking the model)
def attacked_concepts(ctx: Context, which: str, hook: str) -> list[str]:
    """`current`: the request's concepts; `all`: also every concept unlearned earlier in the same
    domain (so a later request cannot revive an earlier one through an embedding)."""
    domain = family(ctx.request.domain)
    if not ctx.catalog.partners(domain):
        raise ValueError(f"{hook} needs a prompt template with partner concepts (a concept catalog); this model has none")
    concepts = list(ctx.request.targets)
    if which == "all":
        concepts = [c for c, d in ctx.unlearned_before if family(d) == domain and c not in concepts] + concepts
    return concepts


@dataclass
class ConceptImages:
    """Base-model images of one concept in the template, partners cycled (seeds 30000+i, cached per concept)."""

    concept: str
    partners: list[str]
    plain: list[str]  # the concept's prompt with each image's partner
    latents: torch.Tensor


def concept_images(ctx: Context, concept: str, domain: str, n: int) -> ConceptImages:
    cat = ctx.catalog
    partners = cat.partners(domain)
    ps = [partners[i % len(partners)] for i in range(n)]
    plain = [cat.prompt_with(concept, domain, p) for p in ps]
    steps, guidance = sampler_settings(ctx, None, None)
    latents = base_model_latents(ctx, plain, [ADVERSARY_IMAGE_SEED + i for i in range(n)], steps, guidance,
                                 purpose="adversarial")
    return ConceptImages(concept, ps, plain, latents)


class Adversary:
    """One concept's adversary in one prompt shape: its slice of the shared soft tokens (`tokens`,
    every adversary's); only `rows` ever changes."""

    def __init__(self, tokens: NewTokens, names: list[str], init: torch.Tensor, prompts: list[str]):
        self.tokens = tokens
        self.slice = tokens.add(names, init)
        self.ids = tokens.ids[self.slice]
        self.rows = tokens.rows[self.slice].clone()
        self.prompts = prompts  # one per training image: the adversarial prompt with that image's partner

    @property
    def tokenizer(self):
        return self.tokens.tokenizer

    def hidden(self, encoder, prompts: list[str], rows: torch.Tensor, all_rows: torch.Tensor) -> torch.Tensor:
        """Text states of `prompts` with the table extended by `all_rows` (every adversary's, this
        one's replaced by `rows`, which may carry a gradient)."""
        s = self.slice
        extra = all_rows.clone()
        extra = torch.cat([extra[: s.start], rows.to(extra), extra[s.stop:]], 0)
        return self.tokens.encode(prompts, extra, encoder)


def ordinary_token_ids(tokens: NewTokens, catalog) -> list[int]:
    """Vocabulary ids a prefix adversary may start from: not special, never a concept's name."""
    vocab = tokens.tokenizer.get_vocab()
    names = set(catalog.styles) | set(catalog.objects)
    special = set(tokens.tokenizer.all_special_ids)
    return [i for w, i in sorted(vocab.items(), key=lambda x: x[1]) if i not in special and w.replace("</w>", "") not in names]


def make_adversary(ctx: Context, tokens: NewTokens, kind: str, k: int, images: ConceptImages, n_tokens: int,
                   ordinary: list[int], gen: torch.Generator, hook: str) -> Adversary:
    """The k-th adversary, of `kind`: `replace` = one token in the concept's place in the template
    (Concept Inversion's prompt; its row starts from the concept's own word, i.e. at the plain
    prompt); `prefix` = `n_tokens` soft tokens before the plain prompt (UnlearnDiffAtk's; rows
    start from seeded ordinary words, never a concept name)."""
    cat, domain = ctx.catalog, family(ctx.request.domain)
    table = ctx.pipe.text_encoder.get_input_embeddings().weight
    if kind == "replace":
        names = [f"<defence{k}>"]
        word = cat.word(images.concept)
        vocab = tokens.tokenizer.get_vocab()
        wid = vocab.get(word + "</w>", vocab.get(word))
        if wid is None:
            raise ValueError(f"{hook}: concept word {word!r} is not one token of the vocabulary")
        init = table[[wid]]
        prompts = [cat.prompt_with(names[0], domain, p) for p in images.partners]
    else:
        names = [f"<defence{k}_{j}>" for j in range(n_tokens)]
        pick = torch.randint(0, len(ordinary), (n_tokens,), generator=gen).tolist()
        init = table[[ordinary[i] for i in pick]]
        prompts = [" ".join(names) + " " + q for q in images.plain]
    try:
        return Adversary(tokens, names, init, prompts)
    except ValueError as err:  # a name already in the tokenizer, unexpected ids
        raise ValueError(f"{hook}: {err}") from None


def sharpen(ctx: Context, adv: Adversary, latents: torch.Tensor, all_rows: torch.Tensor, steps: int, lr: float,
            batch_size: int, gen: torch.Generator) -> float:
    """The inner loop: `steps` Adam steps on one adversary's rows (warm start from its rows),
    everything else fixed, on the attacks' own objective (denoise the concept's base-model images
    from the adversarial prompt); gradients reach the rows only (torch.autograd.grad). Returns the
    last loss."""
    rows = adv.rows.clone().requires_grad_(True)
    opt = torch.optim.Adam([rows], lr=lr)
    last = 0.0
    for _ in range(steps):
        idx = torch.randint(0, len(latents), (batch_size,), generator=gen)
        x0 = latents[idx]
        x_t, t, noise = noised(ctx, x0, gen)
        hidden = adv.hidden(ctx.pipe.text_encoder, [adv.prompts[j] for j in idx.tolist()], rows, all_rows)
        with ctx.autocast():
            pred = predict(ctx.unet, x_t, t, Cond(hidden))
        loss = F.mse_loss(pred.float(), denoising_target(ctx, x0, noise, t).float())
        (grad,) = torch.autograd.grad(loss, [rows])
        opt.zero_grad(set_to_none=True)
        rows.grad = grad
        opt.step()
        last = float(loss.detach())
    adv.rows = rows.detach().clone()
    return last
