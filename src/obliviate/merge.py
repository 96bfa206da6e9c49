"""Merging of task vectors for continual unlearning (independent + merge setting).

Each unlearning request ``i`` yields a task vector ``tau_i = theta_i - theta_0``,
given as a dict ``{tensor_name: torch.Tensor}`` with the same names and shapes for
every ``i``. :func:`merge_task_vectors` combines them into a single delta that is
added to ``theta_0``:

* ``uniform``:          ``mean_i tau_i``                  (``lam`` and ``top_k`` ignored)
* ``task_arithmetic``:  ``lam * sum_i tau_i``
* ``ties``:             TIES merging (trim, elect sign, disjoint mean), times ``lam``:

  1. *trim*: per tensor and per task vector, keep the ``top_k`` fraction of entries
     with the largest magnitude and zero the rest. The number kept is
     ``k = ceil(top_k * numel)`` (with a 1e-6 slack so that e.g. ``0.3 * 10`` gives 3,
     not 4), at least 1. Every entry whose magnitude is ``>=`` the k-th largest
     magnitude is kept, so ties on the threshold may keep a few more than ``k``
     entries (deterministic, and independent of the order of the entries).
  2. *elect*: per element, the elected sign is ``sign(sum_i trimmed_i)``. When that
     sum is exactly 0 the elected sign is 0 and no entry agrees with it.
  3. *disjoint mean*: per element, average only the trimmed entries that are
     non-zero and whose sign equals the elected sign; elements where no entry agrees
     are 0. The result is multiplied by ``lam``.

Relation to ``peft.utils.merge_utils`` (peft is a project dependency; its source was
read, peft 0.21):

* ``disjoint_merge(task_tensors, majority_sign_mask)`` computes
  ``sum(task_tensors * mask, 0) / clamp(mask.sum(0), min=1)``, i.e. exactly step 3
  given the mask (elements with no agreeing entry give 0/1 = 0). It is **used**
  (wrapped) here, with a mask built as described in step 2.
* ``ties`` / ``prune`` / ``calculate_majority_sign_mask`` are **not** used, because
  they differ from the definition above:

  - ``prune(..., "magnitude")`` keeps ``k = int(density * numel)`` entries (floor:
    ``density=0.1`` on a 5-element bias keeps nothing; float error such as
    ``int(0.29 * 100) == 28`` drops one more) via ``torch.topk``, which breaks ties on
    the threshold arbitrarily (device/implementation dependent) instead of keeping
    all tied entries; ``density >= 1`` also emits a warning.
  - ``calculate_majority_sign_mask(method="total")`` elects ``+1`` where the sum is
    exactly 0 (``torch.where(sum >= 0, 1, -1)``), so the positive entries are averaged
    there; the definition here elects ``sign(0) = 0`` and yields 0 (symmetric in sign).
  - ``ties(weights=...)`` elects the sign on the unweighted trimmed tensors and then
    applies the weights before the disjoint mean; with all weights equal to ``lam``
    this equals ``lam * disjoint mean``, so that part would have matched.
* ``task_arithmetic(task_tensors, weights)`` computes ``sum_i w_i * tau_i``. With
  ``w_i = lam`` this equals ``lam * sum_i tau_i`` mathematically but not bit for bit,
  and it costs an extra multiply per task vector, so the one-line formula is written
  out instead. ``uniform`` (a plain mean) has no peft counterpart.

Numerics: everything is computed in float32 (float64 inputs are computed in float64,
so no precision is lost) and cast back to the input dtype (the promoted dtype if the
task vectors differ in dtype for one tensor name). Results are on the inputs' device,
are new tensors (inputs are never modified) and carry no autograd history. Note that
the TIES sign election uses a floating-point sum, so entries that cancel exactly in
real arithmetic (e.g. ``0.1 + 0.2 - 0.3``) may leave a tiny non-zero sum.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence

import torch

__all__ = ["MERGE_METHODS", "merge_task_vectors"]

MERGE_METHODS = ("uniform", "task_arithmetic", "ties")

# Slack used when rounding ``top_k * numel`` up, to absorb float error in the product.
_CEIL_SLACK = 1e-6


def merge_task_vectors(
    task_vectors: list[dict[str, torch.Tensor]],
    method: str,
    *,
    lam: float = 1.0,
    top_k: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Returns the merged delta (to be added to theta_0).

    Args:
        task_vectors: non-empty list of task vectors ``{name: tensor}``; all must have
            the same names, and for each name the same shape and device. Tensors must be
            floating point.
        method: one of :data:`MERGE_METHODS` (see the module docstring for definitions).
        lam: finite scaling factor for ``task_arithmetic`` and ``ties``; ignored by
            ``uniform`` (but still validated, for every method).
        top_k: fraction in ``(0, 1]`` of entries kept per tensor by the TIES trim step;
            ignored by the other methods (but still validated, for every method).

    Returns:
        A new dict with the names in the order of ``task_vectors[0]``.

    Raises:
        ValueError: empty list, unknown method, mismatched names/shapes/devices,
            non-floating-point tensors, ``top_k`` outside ``(0, 1]``, non-finite ``lam``.
        TypeError: arguments of the wrong type (e.g. a single dict instead of a list).
    """
    vectors = _validate_task_vectors(task_vectors)
    if not isinstance(method, str) or method not in MERGE_METHODS:
        raise ValueError(
            f"method: unknown merge method {method!r}; valid methods are: {', '.join(MERGE_METHODS)}"
        )
    lam = _validate_lam(lam)
    top_k = _validate_top_k(top_k)

    merged: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, first in vectors[0].items():
            tensors = [tv[name] for tv in vectors]
            out_dtype = tensors[0].dtype
            for t in tensors[1:]:
                out_dtype = torch.promote_types(out_dtype, t.dtype)
            compute_dtype = torch.promote_types(out_dtype, torch.float32)
            stacked = torch.stack([t.to(compute_dtype) for t in tensors], dim=0)
            if method == "uniform":
                result = stacked.mean(dim=0)
            elif method == "task_arithmetic":
                result = stacked.sum(dim=0) * lam
            else:
                result = _ties(stacked, top_k) * lam
            merged[name] = result.to(dtype=out_dtype, device=first.device)
    return merged


# --------------------------------------------------------------------------- TIES


def _num_kept(top_k: float, numel: int) -> int:
    """Number of entries the TIES trim step keeps (before threshold ties)."""
    k = math.ceil(top_k * numel - _CEIL_SLACK)
    return max(1, min(numel, k))


def _ties(stacked: torch.Tensor, top_k: float) -> torch.Tensor:
    """TIES disjoint mean (without ``lam``) of ``stacked`` (task vectors on dim 0)."""
    from peft.utils.merge_utils import disjoint_merge  # lazy: importing peft is slow

    n_tasks = stacked.shape[0]
    numel = stacked[0].numel()
    if numel == 0:
        return stacked.sum(dim=0)

    # 1. trim: per task vector, keep entries with |x| >= k-th largest |x|.
    k = _num_kept(top_k, numel)
    if k < numel:
        magnitude = stacked.reshape(n_tasks, -1).abs()
        threshold = magnitude.topk(k, dim=1).values[:, -1:]
        keep = (magnitude >= threshold).reshape(stacked.shape)
        trimmed = torch.where(keep, stacked, torch.zeros((), dtype=stacked.dtype, device=stacked.device))
    else:
        trimmed = stacked

    # 2. elect: sign of the sum of the trimmed vectors (0 where the sum is 0).
    elected = torch.sign(trimmed.sum(dim=0))
    # An entry agrees if it is non-zero and has the elected sign; elected == 0 means
    # nobody agrees (zeros have sign 0, so they are excluded by elected != 0 too).
    agree = (torch.sign(trimmed) == elected) & (elected != 0)

    # 3. disjoint mean over the agreeing entries (0 where none agree).
    return disjoint_merge(trimmed, agree)


# --------------------------------------------------------------------- validation


def _validate_task_vectors(task_vectors) -> list[Mapping[str, torch.Tensor]]:
    if isinstance(task_vectors, Mapping):
        raise TypeError(
            "task_vectors: expected a list of task vectors (dicts {name: tensor}), got a single dict; "
            "wrap it in a list"
        )
    if not isinstance(task_vectors, Sequence) or isinstance(task_vectors, (str, bytes)):
        raise TypeError(
            f"task_vectors: expected a list of dicts {{name: tensor}}, got {type(task_vectors).__name__}"
        )
    vectors = list(task_vectors)
    if not vectors:
        raise ValueError("task_vectors: empty list; expected at least one task vector {name: tensor}")

    for i, tv in enumerate(vectors):
        if not isinstance(tv, Mapping):
            raise TypeError(f"task_vectors[{i}]: expected a dict {{name: tensor}}, got {type(tv).__name__}")
        for name, t in tv.items():
            if not isinstance(t, torch.Tensor):
                raise TypeError(
                    f"task_vectors[{i}][{name!r}]: expected a torch.Tensor, got {type(t).__name__}"
                )
            if not t.is_floating_point():
                raise ValueError(
                    f"task_vectors[{i}][{name!r}]: dtype {t.dtype} is not floating point; "
                    "task vectors must be floating point (e.g. float16, bfloat16, float32, float64)"
                )

    ref = vectors[0]
    ref_keys = set(ref)
    for i, tv in enumerate(vectors[1:], start=1):
        keys = set(tv)
        if keys != ref_keys:
            missing = sorted(map(str, ref_keys - keys))
            extra = sorted(map(str, keys - ref_keys))
            raise ValueError(
                f"task_vectors[{i}]: tensor names differ from task_vectors[0]; "
                f"missing {missing}, unexpected {extra}; all task vectors must have the same names"
            )
        for name, t in tv.items():
            if t.shape != ref[name].shape:
                raise ValueError(
                    f"task_vectors[{i}][{name!r}]: shape {tuple(t.shape)} differs from "
                    f"task_vectors[0][{name!r}] shape {tuple(ref[name].shape)}; shapes must match"
                )
            if t.device != ref[name].device:
                raise ValueError(
                    f"task_vectors[{i}][{name!r}]: device {t.device} differs from "
                    f"task_vectors[0][{name!r}] device {ref[name].device}; devices must match"
                )
    return vectors


def _is_real_number(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _validate_lam(lam) -> float:
    if not _is_real_number(lam):
        raise TypeError(f"lam: expected a finite real number, got {type(lam).__name__}")
    lam = float(lam)
    if not math.isfinite(lam):
        raise ValueError(f"lam: got {lam}; lam must be a finite real number")
    return lam


def _validate_top_k(top_k) -> float:
    if not _is_real_number(top_k):
        raise TypeError(f"top_k: expected a real number in (0, 1], got {type(top_k).__name__}")
    top_k = float(top_k)
    if not (0.0 < top_k <= 1.0):  # also rejects NaN
        raise ValueError(f"top_k: got {top_k}; top_k must be a fraction in (0, 1] (1.0 keeps every entry)")
    return top_k
