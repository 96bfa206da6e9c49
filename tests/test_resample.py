"""Intervals for attacks and evaluation records, through the study's bootstrap (power.py)."""
import pytest

from obliviate.evaluate.metrics import Record, compute_metrics
from obliviate.evaluate.resample import attack_interval, metric_intervals


def test_metric_intervals_match_compute_metrics():
    records = []
    for style in ("fire", "ice", "lava"):
        for obj in ("circle", "ring"):
            for seed in (1, 2, 3):
                right = (seed + len(style) + len(obj)) % 3 != 0
                records.append(Record(style, obj, seed, style if right else "moss", obj if seed != 2 else "star"))
    plain = compute_metrics(records, domain="style", unlearned=["fire"], retained=["ice", "lava"],
                            retained_partners=["circle", "ring"])
    iv = metric_intervals(records, domain="style", unlearned=["fire"], retained=["ice", "lava"], partners=["circle", "ring"],
                          n_boot=300)
    assert iv == metric_intervals(records, domain="style", unlearned=["fire"], retained=["ice", "lava"],
                                  partners=["circle", "ring"], n_boot=300)  # deterministic
    for key in ("UA", "RA_I", "RA_C"):
        assert iv[key]["value"] == pytest.approx(plain[key])
        assert iv[key]["lo"] <= iv[key]["value"] <= iv[key]["hi"]


def test_attack_interval_is_robust_ua_from_hits_with_concepts_weighed_alike():
    result = {"concepts": {"fire": {"hits": [1, 1, 0, 0], "clean_hits": [0, 0, 0, 0]},
                           "ice": {"hits": [1, 0, 0, 0, 0, 0, 0, 0], "clean_hits": [0] * 7 + [1]}}}
    robust = attack_interval(result, n_boot=200)
    assert robust["value"] == pytest.approx(100 - (50 + 12.5) / 2)  # not the pooled 75
    assert robust["lo"] < robust["value"] < robust["hi"]
    assert attack_interval(result, key="clean_hits", n_boot=200)["value"] == pytest.approx(100 - 6.25)
    with pytest.raises(ValueError, match="without 'hits'"):
        attack_interval({"concepts": {"fire": {"hits": []}}})
