"""`speed`: closed-form erasure confined to the null space of what must be kept (after SPEED,
Li et al., ICLR 2026; code: Ouxiang-Li/SPEED, `train_erase_null.py`).

uce (methods/uce.py) keeps retained concepts in the least-squares sense: their keys and values
move a little, and after many requests the little adds up. speed keeps a chosen set of text
states *exactly*: every key/value weight gets W_new = W0 + Delta with Delta q = 0 for every q in
a protected subspace span(Q), by construction. With P = I - Q Q^T = F F^T (F: an orthonormal
basis of the free directions), the minimiser of

    s_e sum_i w_i |(W0 + Delta) e_i - W0 g_i|^2 + s_p sum_j |Delta p_j|^2 + lam |Delta|^2
    subject to  Delta Q = 0

is Delta = W0 D, D = R F (F^T C F + lam I)^-1 F^T, R = s_e (G - E)^T diag(w) E,
C = s_e E^T diag(w) E + s_p P_rows^T P_rows: SPEED's closed form (its equality constraints folded
into Q, solved in F's coordinates so that nothing of size 1/lam is ever formed), plus uce's
least-squares preservation rows p_j for what Q does not cover (ours: SPEED has none; on
MiniCanvas's 64-wide text space the protected directions cannot hold all 2,900 retained rows,
and without them retention fell below uce's: UA 95.8, RA-I 75.0, RA-C 81.2 after 4 styles on
the probe seed, at erase_scale 1, lam 0.1). As in uce, D is one d_text x d_text matrix shared by every layer
(W_new = W0 (I + D)): one small solve in float64, whatever the UNet size. With Q empty it is
uce (tests/test_speed.py).

Erase rows (e_i, their guides g_i, weights w_i): uce's, with uce's settings (rows, positions,
guide, after_weight); anchor=base re-solves from the base weights with every concept erased so
far, sorted by name (order-independent), exactly as uce does.

The protected subspace Q, built from the current request's settings:
1. Invariant equality constraints (SPEED's K2): the start token's state and the
   `invariant_dims` principal directions of the empty prompt's other positions (SPEED takes
   3 k-means centres of them; the leading singular directions span the same part of the
   space and need no random start). Classifier-free guidance reads the empty prompt: its keys
   and values along these directions never move, in any request.
2. Candidate retained rows: `preserve` as in uce (`others`: every catalog concept of the
   request's domain that is not erased, in the template with every partner, at
   `retain_positions`: `concept` = its own tokens (SPEED's last subject token), `after` = its
   tokens and every later position, `all` = every position; `empty`, `erased-partners`,
   `file` as in uce).
3. Influence-based prior filtering: the edit without protected directions (uce's, with the
   same rows) is computed first; a retained row c is kept when the change of its keys and values over all edited
   layers, |W0 D0 c|, is above the candidates' mean: the retained inputs an edit would move
   most are the ones that need the constraint. (SPEED filters per layer; here the norm is
   taken over all edited layers together, K = sum_l W0_l^T W0_l, so one Q serves every layer.)
4. Directed prior augmentation: `augment` copies of each kept row, c + a u with u the
   direction the edited weights respond to least (K's last eigenvector; SPEED: each layer's
   last right-singular vector) and a ~ N(0, |c|^2 / d) drawn from the request's seed; the
   copies whose influence is above their mean are kept. They carry the same keys and values
   to first order, so protecting them widens the protected set where it costs least.
5. Q: the invariant directions, then the eigenvectors of the kept rows' covariance (the
   invariants' part removed) whose eigenvalue is at least `threshold` x its largest.
   `threshold=0` keeps every direction of the kept rows (numerical rank): they are then
   unchanged exactly; a larger threshold leaves more room for the erasure and keeps the kept
   rows up to their energy outside Q (reported).

step.json (`closed_form`) reports the sizes (candidates, kept, augmented, protected
dimensions) and what moved, each as |Delta c| / |W0 c| over all edited layers: the protected
rows (max), every candidate retained row (mean, max), the empty prompt (max), and the erase
rows' remaining distance to their targets relative to where they started (mean).

Defaults (erase_scale 8, threshold 0.1; lam, rows, guide and preservation as uce's) are the
study's choice for styles on MiniCanvas 1.2's probe seed (configs/study/styles.yaml: the only
threshold of 0.01, 0.03, 0.1, 0.3 keeping UA >= 90 after each of 12 styles; docs/NULL-SPACE.md).
On objects the probe seed needed more room for the erasure (threshold 0.3).

SD3 and FLUX: the same solve on the transformer's context_embedder (--param-group context), as
uce does; positions are counted per tokenizer run (model.text_segments).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Literal

import torch

from ..model import concept_token_span, text_segments
from ..protocols import family
from ..trainer import Context
from .rece import gram
from .uce import UCE, UCESettings, preserve_rows, solve_edit, text_states



@dataclass
class SPEEDSettings(UCESettings):
    retain_positions: Literal["concept", "after", "all"] = "all"  # positions of the `others` rows kept exactly
    erase_scale: float = 8.0
    threshold: float = 0.1  # protected directions: covariance eigenvalue >= threshold x the largest
    prior_filter: bool = True  # influence-based prior filtering (keep the retained rows the edit moves most)
    augment: int = 10  # directed augmentation: perturbed copies per kept retained row
    invariant_dims: int = 3  # principal directions of the empty prompt kept exactly (besides the start token)

    ranges = {"threshold": (0, True, 1, True), "augment": (0, True, None, False),
              "invariant_dims": (0, True, None, False), "lam": (0, False, None, False)}


# ---------------------------------------------------------------- the solve (public: the combined method uses it)
def null_space_edit(erase: torch.Tensor, guide: torch.Tensor, protected: torch.Tensor | None,
                    preserve: torch.Tensor | None = None, *, lam: float, erase_scale: float = 1.0,
                    preserve_scale: float = 1.0, erase_weights: torch.Tensor | None = None) -> torch.Tensor:
    """The d x d matrix M with W_new = W0 M, W_new q = W0 q for every column q of `protected`
    (orthonormal, d x k), and the erase rows mapped toward their guides in the rest, where the
    `preserve` rows are kept in the least-squares sense as in uce (float64)."""
    e, g = erase.double(), guide.double()
    if e.shape != g.shape:
        raise ValueError(f"erase rows {tuple(e.shape)} and guide rows {tuple(g.shape)} must have the same shape")
    d = e.shape[1]
    eye = torch.eye(d, dtype=torch.float64)
    w = erase_scale * (erase_weights.double() if erase_weights is not None else torch.ones(len(e), dtype=torch.float64))
    c = e.T @ (w[:, None] * e)
    if preserve is not None and len(preserve):
        c = c + preserve_scale * preserve.double().T @ preserve.double()  # their target is no change: R gets nothing
    r = (g - e).T @ (w[:, None] * e)
    # solved in an orthonormal basis F of the free directions (P = F F^T): D = R F (F^T C F + lam I)^-1 F^T,
    # the same as R P (P C P + lam I)^-1, and exact in the protected directions whatever lam (the
    # 1/lam of (P C P + lam I)^-1 there is never formed)
    if protected is None or not protected.shape[1]:
        free = eye
    else:
        values, vectors = torch.linalg.eigh(eye - protected.double() @ protected.double().T)
        free = vectors[:, values > 0.5]
    n = free.T @ c @ free + lam * torch.eye(free.shape[1], dtype=torch.float64)  # symmetric
    d_edit = torch.linalg.solve(n, (r @ free).T).T @ free.T
    return eye + d_edit


def relative_motion(m: torch.Tensor, k: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """|W0 (M - I) c| / |W0 c| over all edited layers (K = sum W0^T W0), per row c."""
    rows = rows.double()
    moved = rows @ (m.double() - torch.eye(len(m), dtype=torch.float64)).T
    num = ((moved @ k) * moved).sum(1).clamp_min(0).sqrt()
    den = ((rows @ k) * rows).sum(1).clamp_min(1e-30).sqrt()
    return num / den


def influence(m: torch.Tensor, k: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """|W0 (M - I) c| over all edited layers, per row c: how far an edit moves c's keys and values."""
    moved = rows.double() @ (m.double() - torch.eye(len(m), dtype=torch.float64)).T
    return ((moved @ k) * moved).sum(1).clamp_min(0).sqrt()


# ---------------------------------------------------------------- rows
def invariant_rows(ctx: Context, dims: int) -> torch.Tensor:
    """The start token's state and the `dims` leading directions of the empty prompt's other
    positions, per tokenizer run (rows, not yet orthonormal)."""
    empty = text_states(ctx, [""])[0].double()
    rows = []
    for _tok, offset, length in text_segments(ctx.pipe):
        segment = empty[offset : offset + length]
        rows.append(segment[:1])
        if dims and len(segment) > 1:
            _, _, vh = torch.linalg.svd(segment[1:], full_matrices=False)
            rows.append(vh[:dims])
    return torch.cat(rows)


def retained_rows(ctx: Context, erased: list[tuple[str, str]], domain: str, s: SPEEDSettings) -> torch.Tensor | None:
    """Candidate retained rows: uce's preservation rows, the `others` at `retain_positions`."""
    sources = s.preserve_sources()
    if "others" not in sources or s.retain_positions == "all":
        return preserve_rows(ctx, erased, domain, s)
    rows = []
    cat, dom, names = ctx.catalog, family(domain), {c for c, _ in erased}
    for concept in cat.concepts(dom):
        if concept in names:
            continue
        partners = [p for p in cat.partners(dom) if p not in names] or [None]
        prompts = [cat.prompt_with(concept, dom, p) if p else cat.single(concept, dom) for p in partners]
        states = text_states(ctx, prompts)
        for i, prompt in enumerate(prompts):
            for tok, offset, length in text_segments(ctx.pipe):
                start, end = concept_token_span(tok, prompt, concept, limit=length)
                last = min(end if s.retain_positions == "concept" else length, length)
                if start < last:
                    rows.append(states[i, offset + start : offset + last])
    rest = "+".join(x for x in sources if x != "others") or "none"
    others = preserve_rows(ctx, erased, domain, dataclasses.replace(s, preserve=rest))
    if others is not None:
        rows.append(others)
    return torch.cat(rows) if rows else None


def protected_basis(invariants: torch.Tensor, kept: torch.Tensor | None, threshold: float) -> torch.Tensor:
    """Orthonormal columns: the invariants' span, then the kept rows' leading directions outside it."""
    inv = invariants.double()
    d = inv.shape[1]
    if len(inv):
        q_inv, r = torch.linalg.qr(inv.T)
        q_inv = q_inv[:, r.diagonal().abs() > 1e-10 * float(r.diagonal().abs().max())]
    else:
        q_inv = inv.T  # d x 0
    if kept is None or not len(kept):
        return q_inv
    outside = torch.eye(d, dtype=torch.float64) - q_inv @ q_inv.T
    kept = kept.double()
    cov = kept.T @ kept / len(kept)
    top = float(torch.linalg.eigvalsh(cov)[-1])
    values, vectors = torch.linalg.eigh(outside @ cov @ outside)
    floor = max(threshold * top, 1e-12 * top)
    q = torch.cat([q_inv, vectors[:, values >= floor]], dim=1)
    q, _ = torch.linalg.qr(q)  # exactly orthonormal (the two parts already are, up to rounding)
    return q


# ---------------------------------------------------------------- the method
class SPEED(UCE):
    """Closed form like uce; the edit leaves the protected inputs' keys and values exactly as they were."""

    name = "speed"
    Settings = SPEEDSettings
    quick_settings = {"augment": 2}

    def protected(self, ctx: Context, e, g, w, p, erased) -> tuple[torch.Tensor, dict]:
        """Q (d x k, orthonormal) and what went into it (for step.json)."""
        s = self.settings
        k = gram(self.edited(ctx))
        invariants = invariant_rows(ctx, s.invariant_dims)
        candidates = retained_rows(ctx, [(c, d) for c, d, _ in erased], ctx.request.domain, s)
        info = {"candidates": 0 if candidates is None else len(candidates), "kept": 0, "augmented": 0}
        kept = None
        if candidates is not None and len(candidates):
            candidates = candidates.double()
            kept = candidates
            if s.prior_filter:
                m0 = solve_edit(e, g, p, lam=s.lam, erase_scale=s.erase_scale, preserve_scale=s.preserve_scale,
                                erase_weights=w)
                score = influence(m0, k, candidates)
                kept = candidates[score > score.mean()]
                if s.augment:
                    _, vectors = torch.linalg.eigh(k)
                    u = vectors[:, 0]  # the direction every edited weight responds to least
                    gen = torch.Generator().manual_seed(ctx.request.seed)
                    scale = kept.norm(dim=1, keepdim=True) / kept.shape[1] ** 0.5
                    a = torch.randn(s.augment, len(kept), 1, generator=gen, dtype=torch.float64) * scale
                    copies = (kept[None] + a * u[None, None]).flatten(0, 1)
                    score = influence(m0, k, copies)
                    copies = copies[score > score.mean()]
                    info["augmented"] = len(copies)
                    kept = torch.cat([kept, copies])
            info["kept"] = len(kept) - info["augmented"]
        q = protected_basis(invariants, kept, s.threshold)
        info["protected_dims"] = int(q.shape[1])
        return q, {**info, "k": k, "candidate_rows": candidates, "kept_rows": kept}

    def solve(self, ctx: Context) -> dict[str, torch.Tensor]:
        s = self.settings
        t0 = time.time()
        e, g, w, p, erased = self.rows(ctx)
        q, parts = self.protected(ctx, e, g, w, p, erased)
        m = null_space_edit(e, g, q, p, lam=s.lam, erase_scale=s.erase_scale, preserve_scale=s.preserve_scale,
                            erase_weights=w)
        self.info = {"erase_rows": len(e), "erased": [c for c, _, _ in erased], **self.motion(ctx, m, e, g, parts),
                     "rows_seconds": time.time() - t0}
        return self.weights(ctx, m)

    def motion(self, ctx: Context, m, e, g, parts) -> dict:
        """Sizes and relative motions for step.json (see the module's docstring)."""
        k = parts["k"]
        out = {key: parts[key] for key in ("candidates", "kept", "augmented", "protected_dims")}
        if parts["kept_rows"] is not None and len(parts["kept_rows"]):
            out["kept_motion_max"] = float(relative_motion(m, k, parts["kept_rows"]).max())
        if parts["candidate_rows"] is not None and len(parts["candidate_rows"]):
            moved = relative_motion(m, k, parts["candidate_rows"])
            out["retained_motion_mean"], out["retained_motion_max"] = float(moved.mean()), float(moved.max())
        out["empty_motion_max"] = float(relative_motion(m, k, text_states(ctx, [""])[0]).max())
        miss, start = e.double() @ m.T - g.double(), e.double() - g.double()
        norm = lambda x: ((x @ k) * x).sum(1).clamp_min(0).sqrt()  # noqa: E731
        out["erase_residual_mean"] = float((norm(miss) / norm(start).clamp_min(1e-30)).mean())
        return out
