"""`rece`: UCE hardened against adversarial embeddings (RECE-style; Gong et al., ECCV 2024).

UCE maps the erased concept's text states c* to a guide's values, but other text states can
still produce the concept's keys and values on the edited model: that is what embedding
attacks (Concept Inversion, soft prefixes) find. RECE finds them in closed form and erases
them too. With W_new = W0 M for every key/value weight (methods/uce.py) and
K = sum over the edited layers of W0^T W0, the embedding that best regenerates c*'s original
keys and values on the edited model is

    c' = argmin_c  sum_l |W0_l M c - W0_l c*|^2 + r |c|^2  =  (M^T K M + r I)^-1 M^T K c*.

Each round: one adversarial embedding c' per erase row (every concept erased so far, every
row of its request's settings), each mapped to that row's guide value (v* = W0 g) and added
to the erase rows; then the whole edit is solved again from the anchor (the base weights
with anchor=base), never on top of the previous round. `rounds=0` is plain `uce`, bit for bit.

Bounded adversary (ours): a text encoder ends in a layer norm, so an attack cannot reach
states of any norm; the ridge r of each row is chosen (bisection, on one eigendecomposition)
so that |c'| <= norm x |c*|, the strongest adversary within the norm of real text states
(RECE uses one fixed ridge). With r -> 0 and a well-conditioned M, c' is M^-1 c*: an embedding
of huge norm that no prompt produces, whose erasure would cost retention for nothing.

Reported in step.json (`closed_form.adversary`): per round, the adversary's *gap*, the mean
over rows of |W_new c' - W0 c*|_K^2 / |W0 g - W0 c*|_K^2 (0: the adversary regenerates the
concept's keys and values exactly; 1: it gets no closer than the guide does). Hardening
works when the gap found against the hardened model is larger than against plain uce.

Defaults: rounds 3, norm 1.0, adv_scale 1 (adversarial rows weigh what their erase rows weigh).
"""
from __future__ import annotations

import time
from typing import Literal
from dataclasses import dataclass

import torch

from ..parsing import NON_NEGATIVE
from ..trainer import Context
from .uce import UCE, UCESettings, concept_position_rows


@dataclass
class RECESettings(UCESettings):
    rounds: int = 3
    norm: float = 1.0  # |c'| <= norm x |c*| (0: no bound other than a tiny ridge)
    adv_scale: float = 1.0  # weight of each adversarial row relative to its erase row
    # which erase rows get an adversary: the concept's tokens, or every row (`after`)
    adv_positions: Literal["concept", "after"] = "concept"

    ranges = {"rounds": NON_NEGATIVE, "norm": NON_NEGATIVE, "adv_scale": NON_NEGATIVE}


def gram(weights: dict[str, torch.Tensor]) -> torch.Tensor:
    """K = sum_l W_l^T W_l (d_text x d_text, float64): the metric of keys and values over all edited layers."""
    mats = [w.double() for w in weights.values()]
    return sum(w.T @ w.to(mats[0].device) for w in mats)


def adversarial_embeddings(m: torch.Tensor, k: torch.Tensor, targets: torch.Tensor, norm: float = 1.0) -> torch.Tensor:
    """One c' per row of `targets` (n x d): argmin |K^1/2 (M c - c*)|^2 + r |c|^2 with |c'| <= norm |c*|."""
    m, k, targets = m.double(), k.double(), targets.double()
    h = m.T @ k @ m
    h = (h + h.T) / 2
    s, v = torch.linalg.eigh(h)
    s = s.clamp_min(0)
    a = (targets @ (k @ m)) @ v  # n x d: coefficients of M^T K c* in the eigenbasis
    top = float(s.max()) if len(s) else 1.0
    floor = 1e-10 * top  # a tiny ridge: H may be singular (edit=k on a model with keys only, ...)

    def solution(r: torch.Tensor) -> torch.Tensor:
        return a / (s[None, :] + r[:, None])

    n = len(targets)
    r = torch.full((n,), floor, dtype=torch.float64)
    if norm > 0:
        bound = norm * targets.norm(dim=1)
        over = solution(r).norm(dim=1) > bound
        if bool(over.any()):
            # |c(r)| decreases in r: bisect log r per row, between the floor and a ridge large enough
            lo = torch.full((n,), floor, dtype=torch.float64).log()
            hi = torch.full((n,), 1e8 * top + 1.0, dtype=torch.float64).log()
            for _ in range(60):
                mid = (lo + hi) / 2
                too_long = solution(mid.exp()).norm(dim=1) > bound
                lo = torch.where(too_long, mid, lo)
                hi = torch.where(too_long, hi, mid)
            r = torch.where(over, hi.exp(), r)
    return solution(r) @ v.T


def adversary_gap(m: torch.Tensor, k: torch.Tensor, adv: torch.Tensor, targets: torch.Tensor, guides: torch.Tensor) -> float:
    """Mean over rows of |M c' - c*|_K^2 / |g - c*|_K^2: how far the adversary stays from the concept's values."""
    m, k = m.double(), k.double()
    miss = adv.double() @ m.T - targets.double()
    ref = guides.double() - targets.double()
    num = ((miss @ k) * miss).sum(1)
    den = ((ref @ k) * ref).sum(1).clamp_min(1e-30)
    return float((num / den).mean())


def adversary_rows(ctx: Context, s: RECESettings, e, g, w, erased):
    """The erase rows an adversary imitates: the concept's own tokens (default), or every erase
    row. The rows after the concept (end and padding tokens) look alike in every prompt,
    retained concepts' too: adversaries of those rows erase retained concepts with them."""
    if s.adv_positions == "after":
        return e, g, w
    parts = concept_position_rows(ctx, erased)
    return tuple(torch.cat([q[i] for q in parts]) for i in range(3))


def harden(edit, k: torch.Tensor, rows, targets, s: RECESettings):
    """`rounds` re-solves, each adding one bounded adversarial embedding per target row (mapped
    to that row's guide, weighted adv_scale x its weight) to the erase rows. `edit(e, g, w)` -> M
    solves from the anchor, never on top of the previous round. Returns the final M, the number
    of erase rows it was solved with, and per round the adversary's gap and norm ratio (the last
    entry: the adversary against the final model, what hardening left an attacker)."""
    e, g, w = rows
    m = edit(e, g, w)
    if not s.rounds:
        return m, len(e), []
    te, tg, tw = targets
    all_e, all_g, all_w, rounds = [e], [g], [w], []

    def record(adv):
        rounds.append({"gap": adversary_gap(m, k, adv, te, tg),
                       "norm_ratio": float((adv.norm(dim=1) / te.norm(dim=1).clamp_min(1e-12)).mean())})

    for _ in range(s.rounds):
        adv = adversarial_embeddings(m, k, te, s.norm).to(e.dtype)
        record(adv)
        all_e.append(adv)
        all_g.append(tg)
        all_w.append(tw * s.adv_scale)
        m = edit(torch.cat(all_e), torch.cat(all_g), torch.cat(all_w))
    record(adversarial_embeddings(m, k, te, s.norm))
    return m, sum(len(x) for x in all_e), rounds


class RECE(UCE):
    """UCE + closed-form adversarial embeddings, erased in `rounds` re-solves from the anchor."""

    name = "rece"
    Settings = RECESettings

    def solve(self, ctx: Context) -> dict[str, torch.Tensor]:
        s = self.settings
        t0 = time.time()
        e, g, w, p, erased = self.rows(ctx)
        k = gram(self.edited(ctx)) if s.rounds else None
        targets = adversary_rows(ctx, s, e, g, w, erased) if s.rounds else None
        m, n_rows, rounds = harden(lambda e_, g_, w_: self.edit_of(e_, g_, w_, p), k, (e, g, w), targets, s)
        self.info = {"erase_rows": n_rows, "preserve_rows": 0 if p is None else len(p),
                     "erased": [c for c, _, _ in erased], "rows_seconds": time.time() - t0,
                     "adversary": rounds}
        return self.weights(ctx, m)
