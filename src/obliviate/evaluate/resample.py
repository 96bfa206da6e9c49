"""Bootstrap intervals for attack results and for an evaluation's records, through the study's
one bootstrap (evaluate/power.py: stratified by concept, percentile, fixed seed).

An attack.json keeps every image's verdict (`hits`, `clean_hits` per concept), so robust UA and
the attack grid's clean UA get their interval from the file alone; a list of `metrics.Record`
gets UA, RA-I and RA-C with intervals, exactly as `metrics.compute_metrics` defines them.
"""
from __future__ import annotations

import numpy as np

from .metrics import Record
from .power import N_BOOT, hits, interval, metric_groups, paired


def metric_intervals(records: list[Record], *, domain: str, unlearned: list[str], retained: list[str],
                     partners: list[str], n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """{"UA", "RA_I", "RA_C"}: each {"value", "lo", "hi"} (a metric without images is left out)."""
    cells = [(r.style, r.object, r.seed) for r in records]
    hit = hits(cells, [r.pred_style for r in records], [r.pred_object for r in records], domain)
    groups = metric_groups(cells, domain, unlearned, retained, partners)
    out = {}
    for key in ("UA", "RA_I", "RA_C"):
        side, flip, idx = groups[key]
        if idx:
            out[key] = interval(hit[side], idx, flip, n_boot=n_boot, seed=seed)
    return out


def attack_interval(result: dict, *, key: str = "hits", n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """Robust UA (key="hits") or the attack grid's clean UA (key="clean_hits") of an attack.json."""
    hit, groups = _attack_hits(result, key)
    return interval(hit, groups, flip=True, n_boot=n_boot, seed=seed)


def _attack_hits(result: dict, key: str) -> tuple[np.ndarray, list[np.ndarray]]:
    columns = [np.asarray(entry[key], dtype=float) for entry in result["concepts"].values()]
    if not columns or not all(len(c) for c in columns):
        raise ValueError(f"attack result has a concept without {key!r}: no images to resample")
    ends = np.cumsum([len(c) for c in columns])
    return np.concatenate(columns), [np.arange(end - len(c), end) for c, end in zip(columns, ends)]


def attack_paired(result_a: dict, result_b: dict, *, names=("A", "B"), n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """Robust UA of A minus B on the same attack grid (concepts, partners, seeds), paired
    image by image: the difference, its interval and a verdict (power.paired)."""
    grid_a = (list(result_a["concepts"]), result_a["partners"], result_a["seeds"])
    grid_b = (list(result_b["concepts"]), result_b["partners"], result_b["seeds"])
    if grid_a != grid_b:
        raise ValueError(f"a paired comparison needs the same attack grid: {grid_a} vs {grid_b}")
    hit_a, groups = _attack_hits(result_a, "hits")
    hit_b, _ = _attack_hits(result_b, "hits")
    return paired(hit_a, hit_b, groups, flip=True, names=names, n_boot=n_boot, seed=seed)
