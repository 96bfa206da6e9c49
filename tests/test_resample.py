"""Bootstrap intervals over images: deterministic, stratified by concept, the metrics' own value."""
import pytest

from obliviate.evaluate.metrics import Record, compute_metrics
from obliviate.evaluate.resample import attack_interval, bootstrap_mean_of_means, metric_intervals


def test_interval_contains_the_mean_of_concept_means_and_is_deterministic():
    strata = {"a": [100.0] * 3 + [0.0] * 1, "b": [0.0] * 8}  # concept means 75 and 0: mean of means 37.5
    first = bootstrap_mean_of_means(strata, n=500, seed=3)
    assert first == bootstrap_mean_of_means(strata, n=500, seed=3)
    assert first["value"] == pytest.approx(37.5)  # not the pooled mean (25): concepts weigh alike
    assert first["low"] <= first["value"] <= first["high"]
    assert first["high"] - first["low"] > 5  # four images of "a" leave real uncertainty
    constant = bootstrap_mean_of_means({"a": [100.0] * 5, "b": [0.0] * 5}, n=200)
    assert constant["low"] == constant["high"] == 50.0  # nothing to resample within a constant concept


def test_metric_intervals_match_compute_metrics():
    records = []
    for style in ("fire", "ice", "lava"):
        for obj in ("circle", "ring"):
            for seed in (1, 2, 3):
                right = (seed + len(style) + len(obj)) % 3 != 0
                records.append(Record(style, obj, seed, style if right else "moss", obj if seed != 2 else "star"))
    kwargs = dict(domain="style", unlearned=["fire"], retained=["ice", "lava"], retained_partners=["circle", "ring"])
    plain = compute_metrics(records, **kwargs)
    iv = metric_intervals(records, domain="style", unlearned=["fire"], retained=["ice", "lava"], partners=["circle", "ring"],
                          n=300)
    for key in ("UA", "RA_I", "RA_C"):
        assert iv[key]["value"] == pytest.approx(plain[key])
        assert iv[key]["low"] <= iv[key]["value"] <= iv[key]["high"]


def test_attack_interval_is_robust_ua_from_hits():
    result = {"concepts": {"fire": {"hits": [1, 1, 0, 0], "clean_hits": [0, 0, 0, 0]},
                           "ice": {"hits": [1, 0, 0, 0], "clean_hits": [0, 0, 0, 1]}}}
    robust = attack_interval(result, n=200)
    assert robust["value"] == pytest.approx(100 - (50 + 25) / 2)
    assert robust["low"] <= robust["value"] <= robust["high"]
    assert attack_interval(result, key="clean_hits", n=200)["value"] == pytest.approx(100 - 12.5)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="no observations"):
        bootstrap_mean_of_means({"a": []})
    with pytest.raises(ValueError, match="level"):
        bootstrap_mean_of_means({"a": [1.0]}, level=1.5)
