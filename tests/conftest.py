"""Shared fixtures: MiniCanvas models built once per session (an untrained one for tests of
the machinery, a quickly trained one for tests of learned behaviour), tiny request helpers."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import pytest
import torch


@pytest.fixture(scope="session")
def random_model(tmp_path_factory):
    """The quick model's architecture, tokenizer, classifiers and catalog with random weights
    (about a second): for tests of I/O, the ledger, hooks, export and the command line."""
    from obliviate.minicanvas.build import build_untrained

    return build_untrained(tmp_path_factory.mktemp("random") / "model", seed=0)


@pytest.fixture(scope="session")
def quick_model(tmp_path_factory):
    """A MiniCanvas pipeline from `build(quick=True)` (about a minute): only for tests whose
    assertions need a model that has learned its concepts."""
    from obliviate.minicanvas.build import build

    out = tmp_path_factory.mktemp("quick") / "model"
    info = build(out, quick=True, quiet=True)
    return out, info


@pytest.fixture(scope="session")
def bundled_model():
    from obliviate.minicanvas import bundled_path

    return bundled_path()


# fast settings for engine tests on the quick model
FAST_CONABL = {"steps": "12", "anchor_images": "8", "sampler_steps": "4", "batch_size": "4"}


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
