"""Add-on regularizers, registered by name. Adding one: a new file plus one line here."""
from .adversarial import Adversarial
from .advunlearn import AdvUnlearn
from .projection import Projection
from .replay import Replay
from .selft import SelFT
from .sp import L1SP, L2SP

REGULARIZERS = {r.name: r for r in (L1SP, L2SP, SelFT, Projection, Replay, Adversarial, AdvUnlearn)}


def get_regularizer(name: str):
    if name not in REGULARIZERS:
        raise ValueError(f"unknown regularizer {name!r}; valid regularizers: {', '.join(REGULARIZERS)}")
    return REGULARIZERS[name]
