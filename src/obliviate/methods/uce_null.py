"""`uce-null` (ours): UCE whose edit leaves no text state a way back to an erased concept.

Why UCE and RECE fall to embedding attacks (docs/RESULTS.md, "Attacks"): the edit is
W_new = W0 M (methods/uce.py) with M a d_text x d_text matrix of full rank, so for any erased
state c* some input c' = M^-1 c* gives back the concept's original keys and values exactly.
RECE erases the c' it finds, but M stays invertible and the next attack finds another one.

uce-null removes the concept's own directions from the *range* of the edit. With
K = sum over the edited layers of W0^T W0 (the metric in which keys and values are compared,
as in RECE) and y = L^T x the coordinates where K is the identity (K = L L^T):

1. per erased concept, the `dims` directions u in which its rows carry the most energy
   relative to the states that must be kept (the generalized eigenvectors of
   A = mean over the concept's rows of y y^T and B = mean over the preserve rows of y y^T
   + ridge x mean eigenvalue of B x I): the concept's own part, not what it shares with others;
2. Q: an orthonormal basis of all of them (y coordinates);
3. M_null = L^-T (I - Q Q^T) L^T M.

Then L^T M_null c is orthogonal to Q for *every* input c: no prompt, learned token or soft
prefix can produce keys and values (over all edited layers together) with a component along
the erased concept's own directions; the closed-form adversary of methods/rece.py (which
reaches any state in M's range) is left with the concept minus those directions. A kept state
p loses only its component along Q, which step 1 chose small: step.json reports, under
`closed_form.null`, the share of the preserve rows' and of the erased rows' K-energy removed
and the closed-form adversary's gap before and after (rece.py's definition; 1 = the adversary
gets no closer than the guide).

Rows: the concept's own token positions of its erase prompts (as RECE's adv_positions=concept).
Every other setting is uce's. `dims=0` is uce bit for bit.

Defaults (dims 2, ridge 0.1) were chosen from these closed-form figures alone, no image
generated: after MiniCanvas's 8 style requests the adversary's gap is 0.77 (plain uce 0.044)
at 2.5% of the kept rows' energy removed; dims 4 gives 1.18 at 7.4%, ridge 0.03 less gap for
less removed (docs/RESULTS.md, "Attacks").
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..parsing import NON_NEGATIVE, POSITIVE
from ..trainer import Context
from .rece import adversarial_embeddings, adversary_gap, gram
from .uce import UCE, UCESettings, concept_position_rows


@dataclass
class UCENullSettings(UCESettings):
    dims: int = 2  # directions removed per erased concept
    ridge: float = 0.1  # B's ridge, relative to its mean eigenvalue: how rare in kept states a direction must be

    ranges = {"dims": NON_NEGATIVE, "ridge": POSITIVE}


def concept_directions(rows: torch.Tensor, weights: torch.Tensor, kept: torch.Tensor, dims: int, ridge: float) -> torch.Tensor:
    """The `dims` directions (columns, y coordinates) with the largest ratio of the rows'
    mean energy to the kept rows' (a generalized symmetric eigenproblem, float64)."""
    rows, kept, weights = rows.double(), kept.double(), weights.double()
    a = rows.T @ (weights[:, None] * rows) / weights.sum()
    b = kept.T @ kept / len(kept)
    b = b + ridge * float(torch.linalg.eigvalsh(b).mean()) * torch.eye(len(b), dtype=torch.float64)
    s, v = torch.linalg.eigh(b)
    b_inv_half = v @ torch.diag(s.rsqrt()) @ v.T
    _, z = torch.linalg.eigh(b_inv_half @ a @ b_inv_half)
    return b_inv_half @ z[:, -dims:]  # eigh sorts ascending: the last ones are the largest ratios


class UCENull(UCE):
    """UCE, then the erased concepts' own directions removed from the edit's range."""

    name = "uce-null"
    Settings = UCENullSettings

    def solve(self, ctx: Context) -> dict[str, torch.Tensor]:
        s = self.settings
        t0 = time.time()
        e, g, w, p, erased = self.rows(ctx)
        m = self.edit_of(e, g, w, p)
        info = {"erase_rows": len(e), "preserve_rows": 0 if p is None else len(p), "erased": [c for c, _, _ in erased]}
        if s.dims:
            if p is None or not len(p):
                raise ValueError("uce-null needs preserve rows to tell a concept's own directions from shared ones; "
                                 "use preserve=others+empty (the default) or add some")
            k = gram(self.edited(ctx))
            if s.dims * len(erased) >= len(k):
                raise ValueError(f"uce-null dims={s.dims} x {len(erased)} erased concepts would remove every one of the "
                                 f"text space's {len(k)} directions; use dims <= {max((len(k) - 1) // len(erased), 0)}")
            lower = torch.linalg.cholesky(k)  # K = L L^T; y = L^T x
            parts = concept_position_rows(ctx, erased)
            kept_y = p.double() @ lower
            directions = torch.cat([concept_directions(q[0].double() @ lower, q[2], kept_y, s.dims, s.ridge)
                                    for q in parts], dim=1)
            q_basis, _ = torch.linalg.qr(directions)
            eye = torch.eye(len(k), dtype=torch.float64)
            projector = eye - q_basis @ q_basis.T
            m_null = torch.linalg.solve(lower.T, projector @ lower.T @ m.double())
            te, tg = torch.cat([q[0] for q in parts]), torch.cat([q[1] for q in parts])
            before = adversarial_embeddings(m, k, te)
            after = adversarial_embeddings(m_null, k, te)
            te_y = te.double() @ lower

            def removed(y):  # share of the rows' K-energy along Q
                return float((y @ q_basis).pow(2).sum() / y.pow(2).sum())

            info["null"] = {"directions": int(q_basis.shape[1]), "kept_energy_removed": removed(kept_y),
                            "erased_energy_removed": removed(te_y),
                            "adversary_gap_uce": adversary_gap(m, k, before, te, tg),
                            "adversary_gap": adversary_gap(m_null, k, after, te, tg)}
            m = m_null
        info["rows_seconds"] = time.time() - t0
        self.info = info
        return self.weights(ctx, m)
