"""MiniCanvas: a miniature UnlearnCanvas (procedural world, small latent diffusion model, classifiers)."""
from __future__ import annotations

from pathlib import Path

from .world import OBJECT_NAMES, STYLE_NAMES, catalog, neighbours, prompt, render, validate_concept

BUNDLED_DIR = Path(__file__).parent / "model"


def bundled_path() -> Path:
    """Directory of the bundled MiniCanvas StableDiffusionPipeline."""
    if not (BUNDLED_DIR / "model_index.json").exists():
        raise FileNotFoundError(
            f"the bundled MiniCanvas model is missing at {BUNDLED_DIR}; rebuild it with "
            f"`obliviate minicanvas build --out {BUNDLED_DIR}`"
        )
    return BUNDLED_DIR


__all__ = ["STYLE_NAMES", "OBJECT_NAMES", "catalog", "neighbours", "prompt", "render", "validate_concept", "bundled_path"]
