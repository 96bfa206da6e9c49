"""`speed-rece`: speed hardened against adversarial embeddings, the RECE way, inside speed's null space.

speed (methods/speed.py) leaves the protected inputs' keys and values exactly where they were,
which is also what an embedding attack looks for: an input the edit does not move that still
produces the erased concept (on MiniCanvas, inversion and prefix recover more from speed than
from uce; docs/RESULTS.md, Attacks). Here each round finds, in closed form, the embedding c'
that best regenerates each erase row's original keys and values on the edited model
(methods/rece.py: c' = (M^T K M + r I)^-1 M^T K c*, its norm bounded by `norm` x |c*|), adds it
to the erase rows mapped to that row's guide, and solves speed's constrained edit again from
the base weights. The protected basis Q is computed once, from the real erase rows, so the
retained inputs stay fixed however many adversaries are added: the hardening cannot cost what
speed protects, only what it leaves free.

`rounds=0` is `speed`, bit for bit. step.json reports `closed_form.adversary` as `rece` does
(per round the adversary's gap: 0 = it regenerates the concept exactly, 1 = no closer than the
guide), next to speed's motions.

Defaults: speed's (erase_scale 8, threshold 0.1), and RECE's rounds 3, norm 1, adv_scale 1 on the
concept's tokens.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..trainer import Context
from .rece import RECESettings, adversary_rows, harden
from .speed import SPEED, SPEEDSettings, null_space_edit


@dataclass
class SpeedRECESettings(SPEEDSettings, RECESettings):
    """speed's settings and rece's (rounds, norm, adv_scale, adv_positions), with speed's defaults."""


class SpeedRECE(SPEED):
    """speed + closed-form adversarial embeddings, erased in `rounds` re-solves within the same null space."""

    name = "speed-rece"
    Settings = SpeedRECESettings
    quick_settings = {"augment": 2, "rounds": 1}

    def solve(self, ctx: Context) -> dict[str, torch.Tensor]:
        s = self.settings
        t0 = time.time()
        e, g, w, p, erased = self.rows(ctx)
        q, parts = self.protected(ctx, e, g, w, p, erased)  # from the real rows only: adversaries never widen it

        def edit(rows, guides, weights):
            return null_space_edit(rows, guides, q, p, lam=s.lam, erase_scale=s.erase_scale,
                                   preserve_scale=s.preserve_scale, erase_weights=weights)

        targets = adversary_rows(ctx, s, e, g, w, erased) if s.rounds else None
        m, n_rows, rounds = harden(edit, parts["k"], (e, g, w), targets, s)
        self.info = {"erase_rows": n_rows, "erased": [c for c, _, _ in erased],
                     **self.motion(ctx, m, e, g, parts), "adversary": rounds, "rows_seconds": time.time() - t0}
        return self.weights(ctx, m)
