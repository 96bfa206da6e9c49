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
from typing import Literal

import torch

from ..parsing import NON_NEGATIVE
from ..trainer import Context
from .rece import adversarial_embeddings, adversary_gap
from .speed import SPEED, SPEEDSettings, null_space_edit
from .uce import concept_position_rows


@dataclass
class SpeedRECESettings(SPEEDSettings):
    rounds: int = 3
    norm: float = 1.0  # |c'| <= norm x |c*| (0: no bound other than a tiny ridge)
    adv_scale: float = 1.0  # weight of each adversarial row relative to its erase row
    # which erase rows get an adversary: the concept's tokens, or every row (`after`)
    adv_positions: Literal["concept", "after"] = "concept"

    ranges = {"rounds": NON_NEGATIVE, "norm": NON_NEGATIVE, "adv_scale": NON_NEGATIVE}


class SpeedRECE(SPEED):
    """speed + closed-form adversarial embeddings, erased in `rounds` re-solves within the same null space."""

    name = "speed-rece"
    Settings = SpeedRECESettings
    quick_settings = {"augment": 2, "rounds": 1}

    def solve(self, ctx: Context) -> dict[str, torch.Tensor]:
        s = self.settings
        t0 = time.time()
        e, g, w, p, erased = self.rows(ctx)
        q, parts = self.protected(ctx, e, g, w, p, erased)

        def edit(rows, guides, weights):
            return null_space_edit(rows, guides, q, p, lam=s.lam, erase_scale=s.erase_scale,
                                   preserve_scale=s.preserve_scale, erase_weights=weights)

        m = edit(e, g, w)
        rounds = []
        if s.rounds:
            k = parts["k"]
            if s.adv_positions == "after":
                te, tg, tw = e, g, w
            else:
                split = concept_position_rows(ctx, erased)
                te, tg, tw = (torch.cat([part[i] for part in split]) for i in range(3))
            all_e, all_g, all_w = [e], [g], [w]
            for _ in range(s.rounds + 1):
                adv = adversarial_embeddings(m, k, te, s.norm).to(e.dtype)
                rounds.append({"gap": adversary_gap(m, k, adv, te, tg),
                               "norm_ratio": float((adv.norm(dim=1) / te.norm(dim=1).clamp_min(1e-12)).mean())})
                if len(rounds) > s.rounds:  # the last entry: the adversary against the final model
                    break
                all_e.append(adv)
                all_g.append(tg)
                all_w.append(tw * s.adv_scale)
                m = edit(torch.cat(all_e), torch.cat(all_g), torch.cat(all_w))
        self.info = {"erase_rows": sum(len(x) for x in all_e) if s.rounds else len(e), "erased": [c for c, _, _ in erased],
                     **self.motion(ctx, m, e, g, parts), "adversary": rounds, "rows_seconds": time.time() - t0}
        return self.weights(ctx, m)
