"""What the base methods alone share: prompt editing and the anchor choice. Diffusion helpers
(noising, targets, base-model latents) live in obliviate.diffusion, below methods and add-ons."""
from __future__ import annotations

import re

from ..trainer import Context

# For models without a concept catalog (e.g. a Stable Diffusion checkpoint): neutral
# captions that ConAbl's style requests use as anchors.
GENERIC_CAPTIONS = (
    "a photo of a house", "a painting of a landscape", "a picture of a cat", "a photo of a city street",
    "a portrait of a woman", "a bowl of fruit on a table", "a boat on a lake", "a mountain at sunrise",
)


def replace_word(text: str, old: str, new: str) -> str:
    """Whole-word replacement: 'sunflower' stays 'sunflower' when replacing 'flower'."""
    return re.sub(rf"(?<![\w-]){re.escape(old)}(?![\w-])", new, text, flags=re.IGNORECASE)


def default_anchor_object(ctx: Context, concept: str) -> str:
    """First catalog object that is not the target, not unlearned, and not a designed neighbour."""
    if concept in ctx.catalog.anchors:  # the benchmark's own choice (UnlearnCanvas)
        return ctx.catalog.anchors[concept]
    taken = {c for c, _ in ctx.unlearned_before} | set(ctx.request.targets) | {concept} | set(ctx.catalog.neighbours.get(concept, []))
    for obj in ctx.catalog.objects:
        if obj not in taken:
            return obj
    raise ValueError(f"no anchor object available for {concept!r}; pass method setting anchor=NAME")
