"""Tests for obliviate.merge (task-vector merging: uniform, task arithmetic, TIES)."""

from __future__ import annotations

import math

import pytest
import torch

from obliviate.merge import MERGE_METHODS, merge_task_vectors

# Three task vectors of length 5, chosen by hand.
#   element:     0     1     2     3     4
TAU1 = [1.0, -2.0, 3.0, 0.5, -1.0]
TAU2 = [2.0, 1.0, -1.0, 0.0, -3.0]
TAU3 = [-4.0, 2.0, 0.5, 1.5, -0.5]


def _tvs(*rows, name="w", dtype=torch.float32):
    return [{name: torch.tensor(r, dtype=dtype)} for r in rows]


def _close(actual, expected, atol=1e-6):
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0)


# ------------------------------------------------------------------ hand-computed


def test_uniform_is_the_plain_mean_per_tensor():
    out = merge_task_vectors(_tvs(TAU1, TAU2, TAU3), "uniform", lam=7.0, top_k=0.2)  # both ignored
    _close(out["w"], [-1 / 3, 1 / 3, 2.5 / 3, 2 / 3, -1.5])
    _close(merge_task_vectors(_tvs(TAU1), "uniform")["w"], TAU1)


def test_task_arithmetic_is_lam_times_the_sum():
    out = merge_task_vectors(_tvs(TAU1, TAU2, TAU3), "task_arithmetic", lam=0.5, top_k=0.2)
    # sum = [-1, 1, 2.5, 2, -4.5]
    _close(out["w"], [-0.5, 0.5, 1.25, 1.0, -2.25])
    out = merge_task_vectors(_tvs(TAU1, TAU2, TAU3), "task_arithmetic")  # default lam 1: the plain sum
    _close(out["w"], [-1.0, 1.0, 2.5, 2.0, -4.5])
    _close(merge_task_vectors(_tvs(TAU1), "task_arithmetic", lam=2.0)["w"], [2 * v for v in TAU1])


def test_ties_elects_sign_and_takes_the_disjoint_mean():
    # e0: 1, 2,-4   sum -1 -> '-'; agreeing {-4}        -> -4     (plain mean would be -1/3)
    # e1: -2, 1, 2  sum  1 -> '+'; agreeing {1, 2}      ->  1.5   (plain mean  1/3)
    # e2: 3,-1,0.5  sum 2.5-> '+'; agreeing {3, 0.5}    ->  1.75  (plain mean  5/6)
    # e3: 0.5,0,1.5 sum  2 -> '+'; agreeing {0.5, 1.5}  ->  1.0   (zero does not count: not 2/3)
    # e4: -1,-3,-.5 all '-'                             -> -1.5   (= plain mean)
    out = merge_task_vectors(_tvs(TAU1, TAU2, TAU3), "ties", top_k=1.0)
    _close(out["w"], [-4.0, 1.5, 1.75, 1.0, -1.5])
    uniform = merge_task_vectors(_tvs(TAU1, TAU2, TAU3), "uniform")["w"]
    assert not torch.allclose(out["w"], uniform)  # sign conflicts: disjoint mean != plain mean
    assert torch.isclose(out["w"][4], uniform[4])  # no conflict: same as plain mean
    # scaled by lam, any sign
    _close(merge_task_vectors(_tvs(TAU1, TAU2, TAU3), "ties", lam=-2.0, top_k=1.0)["w"], [8.0, -3.0, -3.5, -2.0, 3.0])
    _close(merge_task_vectors(_tvs(TAU1), "ties", lam=2.0)["w"], [2 * v for v in TAU1])
    # e0: sum 4 -> '+'; mean of {3, 2} = 2.5 (plain mean 4/3); e1: all agree -> 1
    _close(merge_task_vectors(_tvs([3.0, 1.0], [-1.0, 1.0], [2.0, 1.0]), "ties", top_k=1.0)["w"], [2.5, 1.0])
    # e0: sum 0 -> nobody agrees; e1: all zero
    _close(merge_task_vectors(_tvs([1.0, 0.0], [-1.0, 0.0]), "ties", top_k=1.0)["w"], [0.0, 0.0])


def test_ties_trims_each_tensor_to_its_top_k():
    # k = 0.4 * 5 = 2 entries kept per task vector:
    #   tau1 |.| = [1,2,3,.5,1]   -> keep idx 2,1 -> [ 0,-2, 3, 0, 0]
    #   tau2 |.| = [2,1,1,0,3]    -> keep idx 4,0 -> [ 2, 0, 0, 0,-3]
    #   tau3 |.| = [4,2,.5,1.5,.5]-> keep idx 0,1 -> [-4, 2, 0, 0, 0]
    # e0: 0,2,-4 sum -2 -> -4 ; e1: -2,0,2 sum 0 -> elected sign 0 -> 0 ;
    # e2: 3 -> 3 ; e3: all trimmed -> 0 ; e4: -3 -> -3
    _close(merge_task_vectors(_tvs(TAU1, TAU2, TAU3), "ties", top_k=0.4)["w"], [-4.0, 0.0, 3.0, 0.0, -3.0])
    _close(merge_task_vectors(_tvs(TAU1, TAU2, TAU3), "ties", lam=2.0, top_k=0.4)["w"], [-8.0, 0.0, 6.0, 0.0, -6.0])
    # k = ceil(0.5 * 4) = 2, but |3| > |-1| = |1| = threshold: ties at the threshold are kept (3 entries).
    _close(merge_task_vectors(_tvs([3.0, -1.0, 1.0, 0.5]), "ties", top_k=0.5)["w"], [3.0, -1.0, 1.0, 0.0])
    _close(merge_task_vectors(_tvs([1.0, 1.0, 1.0, 1.0]), "ties", top_k=0.25)["w"], [1.0, 1.0, 1.0, 1.0])
    # 0.3 * 10 == 3.0000000000000004 in floating point: still keeps exactly 3.
    vals = [float(v) for v in range(1, 11)]  # distinct magnitudes
    out = merge_task_vectors(_tvs(vals), "ties", top_k=0.3)["w"]
    assert int((out != 0).sum()) == 3
    _close(out, [0.0] * 7 + [8.0, 9.0, 10.0])
    # Rounded up, and at least one entry survives: 0.1 * 5 = 0.5 -> 1 entry; 0.45 * 5 = 2.25 -> 3.
    _close(merge_task_vectors(_tvs([1.0, -5.0, 2.0, 3.0, 4.0]), "ties", top_k=0.1)["w"], [0.0, -5.0, 0.0, 0.0, 0.0])
    _close(merge_task_vectors(_tvs([1.0, -5.0, 2.0, 3.0, 4.0]), "ties", top_k=0.45)["w"], [0.0, -5.0, 0.0, 3.0, 4.0])


# ---------------------------------------------------------------- multi-tensor dicts


def test_multi_tensor_dicts_are_merged_per_tensor():
    a = [
        torch.tensor([[10.0, -20.0, 30.0], [5.0, 1.0, -2.0]]),
        torch.tensor([[-10.0, 20.0, 40.0], [-6.0, 1.0, 2.0]]),
    ]
    b = [torch.tensor([0.1, -0.2, 0.3]), torch.tensor([0.2, 0.1, -0.4])]
    tvs = [{"layer.weight": a[i], "layer.bias": b[i]} for i in range(2)]

    out = merge_task_vectors(tvs, "uniform")
    assert list(out) == ["layer.weight", "layer.bias"]
    _close(out["layer.weight"], (a[0] + a[1]) / 2)
    _close(out["layer.bias"], (b[0] + b[1]) / 2)

    out = merge_task_vectors(tvs, "task_arithmetic", lam=0.3)
    _close(out["layer.weight"], 0.3 * (a[0] + a[1]), atol=1e-5)
    _close(out["layer.bias"], 0.3 * (b[0] + b[1]))

    # top_k is applied per tensor: the small-magnitude bias keeps its own top entry
    # (a global trim over all tensors would zero it entirely).
    # weight: k = ceil(0.34 * 6) = 3 per task vector
    #   a0 keeps 30, -20, 10 ; a1 keeps 40, 20, -10
    #   -> [[0 (10-10: sum 0), 20 (-20+20: sum 0 -> 0), 35], [0, 0, 0]]
    # bias: k = ceil(0.34 * 3) = 2: b0 keeps 0.3, -0.2 ; b1 keeps 0.2, -0.4
    #   -> e0: 0.2 ; e1: -0.2 ; e2: 0.3 - 0.4 = -0.1 -> '-' -> -0.4
    out = merge_task_vectors(tvs, "ties", top_k=0.34)
    _close(out["layer.weight"], [[0.0, 0.0, 35.0], [0.0, 0.0, 0.0]])
    _close(out["layer.bias"], [0.2, -0.2, -0.4])
    assert out["layer.weight"].shape == (2, 3)


def test_scalar_and_empty_tensors():
    tvs = [{"s": torch.tensor(2.0), "e": torch.zeros(0, 3)}, {"s": torch.tensor(-1.0), "e": torch.zeros(0, 3)}]
    for method in MERGE_METHODS:
        out = merge_task_vectors(tvs, method, top_k=0.5)
        assert out["s"].shape == () and out["e"].shape == (0, 3)
    assert merge_task_vectors(tvs, "ties", top_k=0.5)["s"].item() == 2.0


def test_inputs_not_modified_and_outputs_are_new_tensors():
    tvs = _tvs(TAU1, TAU2, TAU3)
    before = [tv["w"].clone() for tv in tvs]
    for method in MERGE_METHODS:
        out = merge_task_vectors(tvs, method, lam=0.5, top_k=0.4)
        assert all(out["w"].data_ptr() != tv["w"].data_ptr() for tv in tvs)
    for tv, b in zip(tvs, before):
        assert torch.equal(tv["w"], b)


# ------------------------------------------------------------------------- dtypes


def test_dtype_and_float32_accumulation():
    for method in MERGE_METHODS:
        ref = merge_task_vectors(_tvs(TAU1, TAU2, TAU3), method, lam=0.5, top_k=0.4)["w"]
        for dtype in (torch.float16, torch.bfloat16, torch.float64):
            out = merge_task_vectors(_tvs(TAU1, TAU2, TAU3, dtype=dtype), method, lam=0.5, top_k=0.4)["w"]
            assert out.dtype == dtype, (method, dtype)
            torch.testing.assert_close(out.float(), ref.to(dtype).float())
    # 60000 + 60000 overflows float16 (max 65504); the mean must not.
    tvs = _tvs([60000.0], [60000.0], dtype=torch.float16)
    out = merge_task_vectors(tvs, "uniform")["w"]
    assert out.dtype == torch.float16 and out.item() == 60000.0
    assert merge_task_vectors(tvs, "ties")["w"].item() == 60000.0
    # mixed dtypes promote
    tvs = [{"w": torch.tensor([1.0], dtype=torch.float16)}, {"w": torch.tensor([2.0], dtype=torch.float32)}]
    assert merge_task_vectors(tvs, "uniform")["w"].dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_device_preserved():
    tvs = [{k: v.cuda() for k, v in tv.items()} for tv in _tvs(TAU1, TAU2, TAU3, dtype=torch.float16)]
    for method in MERGE_METHODS:
        out = merge_task_vectors(tvs, method, lam=0.5, top_k=0.4)["w"]
        assert out.is_cuda and out.dtype == torch.float16
        ref = merge_task_vectors(_tvs(TAU1, TAU2, TAU3), method, lam=0.5, top_k=0.4)["w"]
        torch.testing.assert_close(out.cpu().float(), ref.half().float())


# ---------------------------------------------------------------------- property


def test_property_ties_top_k_1_same_sign_equals_lam_mean():
    gen = torch.Generator().manual_seed(0)
    for trial in range(20):
        n_tasks = int(torch.randint(1, 6, (1,), generator=gen))
        shape = (int(torch.randint(1, 8, (1,), generator=gen)), int(torch.randint(1, 8, (1,), generator=gen)))
        # one sign per element, shared by every task vector (no zeros)
        sign = torch.where(torch.rand(shape, generator=gen) < 0.5, -1.0, 1.0)
        if trial % 3 == 0:
            sign = torch.ones(shape) * (1.0 if trial % 2 == 0 else -1.0)  # globally one sign
        taus = [sign * (torch.rand(shape, generator=gen) + 0.05) for _ in range(n_tasks)]
        lam = float(torch.empty(()).uniform_(-2.0, 2.0, generator=gen))
        tvs = [{"p": t} for t in taus]
        out = merge_task_vectors(tvs, "ties", lam=lam, top_k=1.0)["p"]
        torch.testing.assert_close(out, lam * torch.stack(taus).mean(0), atol=1e-6, rtol=1e-5)


def test_matches_peft_ties_where_semantics_coincide():
    """Cross-check against peft.ties where the definitions agree: distinct magnitudes,
    top_k * numel integral, no zero sums, equal weights (= lam)."""
    merge_utils = pytest.importorskip("peft.utils.merge_utils")
    gen = torch.Generator().manual_seed(1)
    taus = [torch.randn(4, 5, generator=gen) for _ in range(3)]
    lam = 0.7
    ours = merge_task_vectors([{"p": t} for t in taus], "ties", lam=lam, top_k=0.5)["p"]
    theirs = merge_utils.ties(taus, torch.full((3,), lam), density=0.5)
    torch.testing.assert_close(ours, theirs)


# ------------------------------------------------------------------------- errors


def test_bad_structure_is_refused_naming_the_input():
    with pytest.raises(ValueError, match="task_vectors.*empty"):
        merge_task_vectors([], "uniform")
    with pytest.raises(ValueError, match="method") as exc:
        merge_task_vectors(_tvs(TAU1), "dare")
    assert "'dare'" in str(exc.value) and all(m in str(exc.value) for m in MERGE_METHODS)
    tvs = [{"a": torch.zeros(2), "b": torch.zeros(2)}, {"a": torch.zeros(2), "c": torch.zeros(2)}]
    with pytest.raises(ValueError, match=r"task_vectors\[1\].*missing \['b'\].*unexpected \['c'\]"):
        merge_task_vectors(tvs, "uniform")
    with pytest.raises(ValueError, match=r"task_vectors\[1\].*missing \['b'\]"):
        merge_task_vectors([{"a": torch.zeros(2), "b": torch.zeros(2)}, {"a": torch.zeros(2)}], "ties")
    tvs = [{"a": torch.zeros(2, 3)}, {"a": torch.zeros(2, 3)}, {"a": torch.zeros(3, 2)}]
    with pytest.raises(ValueError, match=r"task_vectors\[2\]\['a'\].*\(3, 2\).*\(2, 3\)"):
        merge_task_vectors(tvs, "task_arithmetic")
    with pytest.raises(ValueError, match=r"task_vectors\[1\]\['a'\].*device"):
        merge_task_vectors([{"a": torch.zeros(2)}, {"a": torch.zeros(2, device="meta")}], "uniform")
    with pytest.raises(TypeError, match="single dict"):
        merge_task_vectors({"w": torch.zeros(2)}, "uniform")
    with pytest.raises(TypeError, match=r"task_vectors\[0\]\['w'\].*Tensor"):
        merge_task_vectors([{"w": [1.0, 2.0]}], "uniform")
    with pytest.raises(TypeError, match="lam"):
        merge_task_vectors(_tvs(TAU1), "uniform", lam="1.0")
    with pytest.raises(ValueError, match="floating point"):
        merge_task_vectors([{"w": torch.tensor([1, 2])}], "uniform")


def test_numbers_out_of_range_are_refused_by_every_method():
    for method in MERGE_METHODS:
        for top_k in (0.0, -0.1, 1.0001, 2.0, math.nan, math.inf):
            with pytest.raises(ValueError, match=r"top_k.*\(0, 1\]"):
                merge_task_vectors(_tvs(TAU1), method, top_k=top_k)
        for lam in (math.inf, -math.inf, math.nan):
            with pytest.raises(ValueError, match="lam.*finite"):
                merge_task_vectors(_tvs(TAU1), method, lam=lam)
