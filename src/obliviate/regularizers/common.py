"""Helpers the add-ons share: which concepts a request protects, a concept's domain, and a
concept's text-embedding column. Add-ons import from here (and from obliviate.diffusion),
never from a method or from another add-on."""
from __future__ import annotations

import torch

from ..model import concept_token_embedding, concept_token_embeddings
from ..protocols import family, other_family
from ..trainer import Context


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
