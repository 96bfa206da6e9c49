"""Metric definitions on hand-made prediction tables (UnlearnCanvas's definitions)."""
import pytest

from obliviate.evaluate.metrics import Record, compute_metrics

STYLES = ["a", "b", "c", "d"]
OBJECTS = ["x", "y"]


def table(wrong_style=(), wrong_object=()):
    """Every image classified correctly except the listed (style, object, seed) cells."""
    rows = []
    for s in STYLES:
        for o in OBJECTS:
            for seed in (1, 2):
                ps = "d" if (s, o, seed) in wrong_style else s
                po = "y" if (s, o, seed) in wrong_object else o
                rows.append(Record(s, o, seed, ps, po))
    return rows


def test_perfect_model_before_unlearning():
    m = compute_metrics(table(), domain="style", unlearned=[], retained=["b", "c", "d"], retained_partners=OBJECTS)
    assert m["UA"] is None and m["RA_I"] == 100 and m["RA_C"] == 100


def test_cumulative_ua_covers_every_unlearned_concept():
    # style a forgotten on all 4 images, style b on 1 of 4
    wrong = {("a", o, k) for o in OBJECTS for k in (1, 2)} | {("b", "x", 1)}
    m = compute_metrics(table(wrong_style=wrong), domain="style", unlearned=["a", "b"], retained=["c", "d"], retained_partners=OBJECTS)
    assert m["unlearned_accuracy"] == {"a": 0.0, "b": 75.0}
    assert m["UA"] == pytest.approx(100 - (0 + 75) / 2)
    assert m["RA_I"] == 100


def test_ra_i_and_cross_domain_ra_c_over_all_styles_in_the_grid():
    # style c hurt on 2 of 4 images; object x misread on images of the *unlearned* style a
    wrong_s = {("c", "x", 1), ("c", "y", 2)}
    wrong_o = {("a", "x", 1), ("a", "x", 2)}
    m = compute_metrics(table(wrong_s, wrong_o), domain="style", unlearned=["a"], retained=["b", "c", "d"], retained_partners=OBJECTS)
    assert m["retained_accuracy"] == {"b": 100.0, "c": 50.0, "d": 100.0}
    assert m["RA_I"] == pytest.approx(250 / 3)
    # object x: 8 images over all 4 styles, 2 wrong -> 75; object y: 100
    assert m["cross_accuracy"] == {"x": 75.0, "y": 100.0}
    assert m["RA_C"] == pytest.approx(87.5)


def test_object_domain_swaps_roles():
    wrong_o = {(s, "x", k) for s in STYLES for k in (1, 2)}
    m = compute_metrics(table(wrong_object=wrong_o), domain="object", unlearned=["x"], retained=["y"], retained_partners=["a", "b"])
    assert m["UA"] == 100 and m["RA_I"] == 100 and m["RA_C"] == 100


def test_ua_uses_only_retained_partners():
    # style a is still generated with object y, which is not a retained partner
    wrong = {("a", "x", 1), ("a", "x", 2)}
    m = compute_metrics(table(wrong_style=wrong), domain="style", unlearned=["a"], retained=["b"], retained_partners=["x"])
    assert m["UA"] == 100


def test_a_concept_cannot_be_both_unlearned_and_retained():
    with pytest.raises(ValueError, match="both unlearned and retained"):
        compute_metrics(table(), domain="style", unlearned=["a"], retained=["a"], retained_partners=OBJECTS)
