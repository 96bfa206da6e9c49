"""The study's statistics (evaluate/power.py: SeedPool and what is computed on it) on tiny
hand-built unit summaries whose answers are known: training seeds pooled with equal weight,
retention as the mean of RA-I and RA-C, paired differences whose interval must exclude 0 or
must span it, training seeds that disagree in sign, a closed-form variant standing for every
seed, and grids that cannot be pooled."""
import pytest

from obliviate.evaluate import power

# one request (a) unlearned; retained b, c; partners x, y; 5 evaluation seeds: 10 images per
# style concept, 15 per partner (the unlearned concept's images count for RA-C too)
SEQ, RETAINED, PARTNERS, SEEDS = ["a"], ["b", "c"], ["x", "y"], [1, 2, 3, 4, 5]
STYLES, OBJECTS = ["a", "b", "c", "z"], ["x", "y", "w"]


def chosen(spec, k):
    """spec: n (the first n images right) or a set of image indices right."""
    return k < spec if isinstance(spec, int) else k in spec


def row(style_right, object_right, seeds):
    """An evaluation row whose predictions are right exactly where the specs say: style_right
    per style concept, object_right per partner, indexing that concept's images in grid order."""
    cells = power.grid("style", SEQ, RETAINED, PARTNERS, seeds)
    count: dict = {}
    ps, po = [], []
    for style, obj, _ in cells:
        k = count[style] = count.get(style, -1) + 1
        j = count[obj] = count.get(obj, -1) + 1
        ps.append(style if chosen(style_right.get(style, 0), k) else "z")
        po.append(obj if chosen(object_right.get(obj, 0), j) else "w")
    return {"predictions": {"style": power.encode_labels(ps, STYLES), "object": power.encode_labels(po, OBJECTS)}}


def unit(variant, *, b=10, c=10, a=0, x=15, y=15, method=None, seeds=SEEDS):
    """A one-variant unit summary after 1 request; a, b, c: images of each style judged right;
    x, y: images of each partner judged right (all right by default)."""
    r = row({"a": a, "b": b, "c": c}, {"x": x, "y": y}, seeds)
    return {"domain": "style", "sequence": SEQ, "retained": RETAINED, "partners": PARTNERS, "seeds": seeds,
            "labels": {"style": STYLES, "object": OBJECTS},
            "variants": {variant: {"method": method, "steps": [r, r]}}}


def pool_of(*seeds_units):
    """pool_of({"v": unit(...)}, {"v": unit(...)}) -> a SeedPool after 1 request, training seeds 0, 1, ..."""
    return power.SeedPool({seed: dict(units) for seed, units in enumerate(seeds_units)}, 1)


def test_summary_hits_read_the_predictions_back():
    h = power.summary_hits(unit("v", b=3, c=0, x=15, y=0), "v", 1)
    assert h["own"].sum() == 3 and len(h["own"]) == 30  # 3 images of b judged b, nothing else (a is never right)
    assert h["other"].sum() == 15  # every x image, no y image


def test_one_seed_metrics_are_the_hand_counted_accuracies():
    pool = pool_of({"v": unit("v", b=10, c=5, a=2, x=15, y=6)})
    assert power.pooled_interval(pool, "v", "RA_I")["value"] == pytest.approx(75.0)  # (100 + 50) / 2
    assert power.pooled_interval(pool, "v", "UA")["value"] == pytest.approx(80.0)  # 100 - 2 of 10
    assert power.pooled_interval(pool, "v", "RA_C")["value"] == pytest.approx(70.0)  # (100 + 40) / 2
    # no designed neighbours in these summaries: that metric has no images, so no interval
    assert power.pooled_interval(pool, "v", "RA_I_neighbours") is None


def test_training_seeds_are_pooled_with_equal_weight():
    # seed 0 keeps b only (RA-I 50), seed 1 keeps both (100): pooled, the mean of the two
    pool = pool_of({"v": unit("v", b=10, c=0)}, {"v": unit("v", b=10, c=10)})
    assert pool.rows([("v", 1)])[2] == [0, 1]
    ci = power.pooled_interval(pool, "v", "RA_I")
    assert ci["value"] == pytest.approx(75.0)
    assert ci["lo"] < 75.0 < ci["hi"]  # c's 20 pooled images are half right: they vary under resampling
    # a seed all right and a seed all wrong: 50, and neither seed counts for more
    assert power.pooled_interval(pool_of({"v": unit("v")}, {"v": unit("v", b=0, c=0)}), "v", "RA_I")["value"] == 50.0


def test_a_seed_with_another_grid_is_left_out_of_the_pool():
    pool = pool_of({"v": unit("v")}, {"v": unit("v", b=0, c=0, seeds=[1, 2, 3, 4, 6])})
    assert pool.rows([("v", 1)])[2] == [0]
    assert power.pooled_interval(pool, "v", "RA_I")["value"] == 100.0


def test_retention_is_the_mean_of_ra_i_and_ra_c_with_its_interval():
    # every stratum all right or all wrong: every resample gives the same retention
    ci = power.retention_interval(pool_of({"v": unit("v", b=10, c=10, x=15, y=0)}), ("v", 1))
    assert ci == {"value": 75.0, "lo": 75.0, "hi": 75.0}
    noisy = power.retention_interval(pool_of({"v": unit("v", b=5, c=10, x=15, y=15)}), ("v", 1))
    assert noisy["value"] == pytest.approx(87.5) and noisy["lo"] < 87.5 < noisy["hi"] <= 100.0
    assert power.retention_interval(pool_of({"v": unit("v")}), ("missing", 1)) is None


def test_a_clear_paired_retention_difference_excludes_zero():
    pool = pool_of({"a": unit("a", b=10, c=10), "b": unit("b", b=5, c=5)})
    p = power.paired_retention(pool, ("a", 1), ("b", 1))
    assert p["difference"] == pytest.approx(25.0)  # RA-I 100 vs 50, RA-C 100 for both: (100 - 50) / 2
    assert 0 < p["lo"] <= 25.0 <= p["hi"] and p["verdict"] == "A higher"
    assert power.paired_retention(pool, ("b", 1), ("a", 1))["verdict"] == "B higher"
    same = power.paired_retention(pool, ("a", 1), ("a", 1))
    assert same == {"difference": 0.0, "lo": 0.0, "hi": 0.0, "verdict": "inconclusive"}


def test_a_difference_of_a_few_images_either_way_is_inconclusive():
    # on concept b, a is right on images 0-5 and b on 3-8: each is right on 3 images the other misses
    pool = pool_of({"a": unit("a", b={0, 1, 2, 3, 4, 5}), "b": unit("b", b={3, 4, 5, 6, 7, 8})})
    p = power.paired_over_seeds(pool, ("a", 1), ("b", 1), "RA_I")
    assert p["difference"] == 0.0 and p["lo"] < 0 < p["hi"] and p["verdict"] == "inconclusive"
    r = power.paired_retention(pool, ("a", 1), ("b", 1))
    assert r["lo"] < 0 < r["hi"] and r["verdict"] == "inconclusive"


def test_paired_over_seeds_gives_each_seed_its_difference_and_a_verdict_when_they_agree():
    pool = pool_of({"a": unit("a"), "b": unit("b", b=0, c=10)}, {"a": unit("a"), "b": unit("b", b=5, c=10)})
    p = power.paired_over_seeds(pool, ("a", 1), ("b", 1), "RA_I")
    assert p["seeds"] == [0, 1] and p["per_seed"] == [50.0, 25.0]
    assert p["difference"] == pytest.approx(37.5) and p["lo"] > 0 and p["verdict"] == "A higher" and "note" not in p
    # UA is 100 minus accuracy: the variant that draws the unlearned concept less forgets more
    ua = power.paired_over_seeds(pool_of({"a": unit("a", a=0), "b": unit("b", a=10)}), ("a", 1), ("b", 1), "UA")
    assert ua["difference"] == 100.0 and ua["verdict"] == "A higher"


def test_training_seeds_that_disagree_in_sign_are_inconclusive():
    # pooled, a is well above b (seed 0: +100), but on seed 1 b is above a (-20)
    pool = pool_of({"a": unit("a"), "b": unit("b", b=0, c=0)}, {"a": unit("a", b=4, c=4), "b": unit("b", b=6, c=6)})
    p = power.paired_over_seeds(pool, ("a", 1), ("b", 1), "RA_I")
    assert p["per_seed"] == [100.0, -20.0] and p["difference"] == pytest.approx(40.0) and p["lo"] > 0
    assert p["verdict"] == "inconclusive" and p["note"] == "training seeds disagree"


def test_a_closed_form_variant_stands_for_every_seed_of_the_variant_it_is_paired_with():
    # uce is closed-form: run for training seed 0 only
    pool = pool_of({"uce": unit("uce", b=10, c=10, method="uce"), "v": unit("v", b=0, c=0)},
                   {"v": unit("v", b=5, c=5)})
    assert power.closed_form_variant(pool.by_seed, "uce") and not power.closed_form_variant(pool.by_seed, "v")
    assert pool.rows([("uce", 1)])[2] == [0]  # alone, its images count once
    assert pool.rows([("uce", 1), ("v", 1)])[2] == [0, 1]  # paired, its one model stands for seed 1 too
    p = power.paired_over_seeds(pool, ("uce", 1), ("v", 1), "RA_I")
    assert p["seeds"] == [0, 1] and p["per_seed"] == [100.0, 50.0] and p["verdict"] == "A higher"


def test_the_verdict_on_an_interval():
    assert power.verdict(0.5, 3.0) == "A higher" and power.verdict(-3.0, -0.5, ("x", "y")) == "y higher"
    assert power.verdict(-1.0, 1.0) == power.verdict(0.0, 2.0) == power.verdict(-2.0, 0.0) == "inconclusive"
