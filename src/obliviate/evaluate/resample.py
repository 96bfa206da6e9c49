"""95% bootstrap intervals over images for UA, RA-I, RA-C and attack success rates.

Every figure the study reports is a mean over concepts of a per-concept accuracy, each the
share of that concept's images the judge labels correctly (metrics.py). The bootstrap
resamples images *within* each concept (stratified: every concept keeps its number of
images, so the mean over concepts stays the statistic it is) and recomputes the figure; the
interval is the 2.5 and 97.5 percentiles over `n` resamples, drawn from one seeded
generator (deterministic). It measures the uncertainty from the finite set of seeds and
partners, not from the training seed.
"""
from __future__ import annotations

import numpy as np

from .metrics import Record


def bootstrap_mean_of_means(strata: dict[str, list[float]], *, n: int = 2000, seed: int = 0,
                            level: float = 0.95) -> dict:
    """{"value", "low", "high"} for the mean over strata of each stratum's mean (percent in, percent out)."""
    groups = [np.asarray(v, dtype=np.float64) for v in strata.values() if len(v)]
    if not groups:
        raise ValueError("bootstrap: no observations (every concept has zero images)")
    if not 0 < level < 1:
        raise ValueError(f"bootstrap level must be in (0, 1), got {level}")
    value = float(np.mean([g.mean() for g in groups]))
    rng = np.random.default_rng(seed)
    draws = np.zeros(n)
    for g in groups:
        idx = rng.integers(0, len(g), size=(n, len(g)))
        draws += g[idx].mean(axis=1)
    draws /= len(groups)
    tail = (1 - level) / 2
    low, high = np.quantile(draws, [tail, 1 - tail])
    return {"value": value, "low": float(low), "high": float(high)}


def complement(interval: dict) -> dict:
    """100 - x for a percent interval (UA = 100 - accuracy; robust UA = 100 - ASR)."""
    return {"value": 100.0 - interval["value"], "low": 100.0 - interval["high"], "high": 100.0 - interval["low"]}


def metric_intervals(records: list[Record], *, domain: str, unlearned: list[str], retained: list[str],
                     partners: list[str], n: int = 2000, seed: int = 0) -> dict:
    """UA, RA-I and RA-C (as metrics.compute_metrics defines them) with bootstrap intervals."""
    own, other = ("style", "object") if domain == "style" else ("object", "style")
    kept = set(partners)

    def hits(attr, concept, partner_attr, among):
        return [100.0 * (getattr(r, "pred_" + attr) == concept) for r in records
                if getattr(r, attr) == concept and (among is None or getattr(r, partner_attr) in among)]

    out = {}
    if unlearned:
        out["UA"] = complement(bootstrap_mean_of_means({c: hits(own, c, other, kept) for c in unlearned}, n=n, seed=seed))
    if retained:
        out["RA_I"] = bootstrap_mean_of_means({c: hits(own, c, other, kept) for c in retained}, n=n, seed=seed)
    out["RA_C"] = bootstrap_mean_of_means({c: hits(other, c, own, None) for c in partners}, n=n, seed=seed)
    return out


def attack_interval(result: dict, *, key: str = "hits", n: int = 2000, seed: int = 0) -> dict:
    """Robust UA (key="hits") or clean UA (key="clean_hits") of an attack.json, with its interval."""
    return complement(bootstrap_mean_of_means({c: [100.0 * h for h in e[key]] for c, e in result["concepts"].items()},
                                              n=n, seed=seed))
