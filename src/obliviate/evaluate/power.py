"""Statistical power: RA-I two ways, 95% bootstrap intervals on every metric, paired comparisons.

Every metric here is a mean over concepts of a concept's accuracy (the fraction of its images
the judge labels correctly), UA being 100 minus such a mean. An evaluation keeps each image's
predicted labels (compactly, `encode_labels`), so two evaluations of the same grid (same cells:
style, object, seed) can be compared image by image long after the images are gone.

- RA-I is reported two ways: `RA_I_all`, over every concept of the domain not yet unlearned
  (the UnlearnCanvas definition: concepts later in the sequence count until their turn), and
  `RA_I_neighbours`, over the designed neighbours of the unlearned concepts only (the concepts
  an unlearning request is most likely to damage). `RA_I` stays the study's retained set.
- Intervals: a stratified percentile bootstrap. Within each concept its images are resampled
  with replacement (the concept set is the design, fixed; the images are the sample), 1000
  times from a fixed seed, so the interval is deterministic.
- `paired`: both variants' hits on the *same* resampled images, the interval of the
  difference (A - B), and a verdict that is "inconclusive" whenever that interval contains 0.
- The study's statistics (scripts/results.py writes them into docs/RESULTS.md): a `SeedPool`
  pools the images of every training seed of a study's unit summaries, and on it
  `pooled_interval` (one metric), `retention_interval` (retention, the mean of RA-I and RA-C),
  `paired_retention` and `paired_over_seeds` (one metric, with each training seed's own
  difference: training seeds that disagree in sign make the verdict inconclusive).
"""
from __future__ import annotations

import numpy as np

N_BOOT = 1000
LEVEL = 0.95
# One character per label (up to 92 labels per domain; UnlearnCanvas has 60 styles): an
# evaluation of 576 images keeps its predictions in about 1.2 kB of summary.json.
ALPHABET = "".join(chr(c) for c in range(33, 127) if chr(c) not in '"\\')  # printable, nothing JSON escapes


def encode_labels(labels, vocab: list[str]) -> str:
    index = {c: i for i, c in enumerate(vocab)}
    if len(vocab) > len(ALPHABET):
        raise ValueError(f"{len(vocab)} labels do not fit the {len(ALPHABET)}-character alphabet")
    return "".join(ALPHABET[index[x]] for x in labels)


def decode_labels(text: str, vocab: list[str]) -> list[str]:
    return [vocab[ALPHABET.index(ch)] for ch in text]


def metric_groups(cells, domain: str, unlearned, retained, partners, neighbours: dict | None = None) -> dict:
    """Which images each metric averages over, per concept: {metric: (side, flip, [index arrays])}.

    `cells` are (style, object, seed) per image; `side` is "own" (judged in the sequence's
    domain) or "other"; `flip` marks UA (100 minus the mean). `retained` is the study's
    retained set (RA_I), `partners` the other domain's concepts paired with them."""
    if domain not in ("style", "object"):
        raise ValueError(f"metrics need domain style or object, got {domain!r}")
    own_i, other_i = (0, 1) if domain == "style" else (1, 0)
    ordered = list(dict.fromkeys(partners))  # list order, not set order: the bootstrap draws go group by group
    partners, unlearned = set(ordered), list(unlearned)

    def own_groups(concepts):
        out = []
        for c in concepts:
            idx = np.array([i for i, cell in enumerate(cells) if cell[own_i] == c and cell[other_i] in partners], dtype=int)
            if len(idx):
                out.append(idx)
        return out

    present = list(dict.fromkeys(cell[own_i] for cell in cells))
    kept = [c for c in retained if c not in unlearned]
    every = [c for c in present if c not in unlearned]
    near = sorted({n for c in unlearned for n in (neighbours or {}).get(c, [])} - set(unlearned))
    groups = {
        "UA": ("own", True, own_groups(unlearned)),
        "RA_I": ("own", False, own_groups(kept)),
        "RA_I_all": ("own", False, own_groups(every)),
        "RA_I_neighbours": ("own", False, own_groups([c for c in every if c in near]) if neighbours else []),
        "RA_C": ("other", False, [np.array([i for i, cell in enumerate(cells) if cell[other_i] == p], dtype=int)
                                  for p in ordered if any(cell[other_i] == p for cell in cells)]),
    }
    return groups


def hits(cells, pred_style, pred_object, domain: str) -> dict[str, np.ndarray]:
    """Per image: judged correctly in the sequence's domain ("own") and in the other ("other")."""
    style_hit = np.array([p == c[0] for c, p in zip(cells, pred_style)], dtype=float)
    object_hit = np.array([p == c[1] for c, p in zip(cells, pred_object)], dtype=float)
    return {"own": style_hit, "other": object_hit} if domain == "style" else {"own": object_hit, "other": style_hit}


def _value(hit: np.ndarray, groups: list[np.ndarray], flip: bool) -> float | None:
    if not groups:
        return None
    m = 100.0 * float(np.mean([hit[g].mean() for g in groups]))
    return 100.0 - m if flip else m


def _resampled(hit_columns: np.ndarray, groups: list[np.ndarray], rng: np.random.Generator, n_boot: int) -> np.ndarray:
    """(n_boot, columns) bootstrap means over groups; every column uses the same draws (paired)."""
    total = np.zeros((n_boot, hit_columns.shape[1]))
    for g in groups:
        draws = g[rng.integers(0, len(g), size=(n_boot, len(g)))]  # (n_boot, n_g) image indices
        total += hit_columns[draws].mean(axis=1)
    return 100.0 * total / len(groups)


def _bounds(boot: np.ndarray, level: float) -> tuple[float, float]:
    """The percentile interval of bootstrap draws at `level`."""
    q = (1 - level) / 2
    return float(np.quantile(boot, q)), float(np.quantile(boot, 1 - q))


def verdict(lo: float, hi: float, names=("A", "B")) -> str:
    """The verdict on an interval of A - B: "inconclusive" whenever it contains 0."""
    return "inconclusive" if lo <= 0 <= hi else (f"{names[0]} higher" if lo > 0 else f"{names[1]} higher")


def interval(hit: np.ndarray, groups: list[np.ndarray], flip: bool = False, *, n_boot: int = N_BOOT, seed: int = 0,
             level: float = LEVEL) -> dict | None:
    """{"value", "lo", "hi"}: the metric and its percentile bootstrap interval."""
    if not groups:
        return None
    boot = _resampled(np.asarray(hit, dtype=float)[:, None], groups, np.random.default_rng(seed), n_boot)[:, 0]
    if flip:
        boot = 100.0 - boot
    lo, hi = _bounds(boot, level)
    return {"value": _value(hit, groups, flip), "lo": lo, "hi": hi}


def paired(hit_a: np.ndarray, hit_b: np.ndarray, groups: list[np.ndarray], flip: bool = False, *, names=("A", "B"),
           n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL) -> dict | None:
    """A - B on the same images: the difference, its bootstrap interval and a verdict
    ("A higher", "B higher", or "inconclusive" when the interval contains 0)."""
    if len(hit_a) != len(hit_b):
        raise ValueError(f"a paired comparison needs the same images: {len(hit_a)} vs {len(hit_b)}")
    if not groups:
        return None
    cols = np.stack([np.asarray(hit_a, dtype=float), np.asarray(hit_b, dtype=float)], axis=1)
    boot = _resampled(cols, groups, np.random.default_rng(seed), n_boot)
    diff = boot[:, 0] - boot[:, 1]
    if flip:  # UA = 100 - mean: the difference changes sign
        diff = -diff
    lo, hi = _bounds(diff, level)
    d = _value(cols[:, 0], groups, flip) - _value(cols[:, 1], groups, flip)
    return {"difference": d, "lo": lo, "hi": hi, "verdict": verdict(lo, hi, names)}


def protocol_neighbours(protocol) -> dict:
    """Designed neighbourhoods of a protocol's concepts ({} when it has none)."""
    return dict(getattr(protocol, "neighbours", None) or {})


def power_metrics(cells, pred_style, pred_object, *, domain: str, unlearned, retained, partners, neighbours=None,
                  styles: list[str], objects: list[str]) -> dict:
    """What an evaluation adds to its metrics: RA-I two ways, an interval per metric, and the
    per-image predictions (in grid order) that later paired comparisons read back."""
    groups = metric_groups(cells, domain, unlearned, retained, partners, neighbours)
    h = hits(cells, pred_style, pred_object, domain)
    out = {name: _value(h[side], g, flip) for name, (side, flip, g) in groups.items() if name in ("RA_I_all", "RA_I_neighbours")}
    out["intervals"] = {name: interval(h[side], g, flip) for name, (side, flip, g) in groups.items()}
    out["predictions"] = {"style": encode_labels(pred_style, styles), "object": encode_labels(pred_object, objects)}
    return out


def compare(a: dict, b: dict, cells, *, domain: str, unlearned, retained, partners, neighbours=None,
            styles: list[str], objects: list[str], names=("A", "B")) -> dict:
    """Paired comparison of two evaluations of the same grid (their `predictions`), per metric."""
    groups = metric_groups(cells, domain, unlearned, retained, partners, neighbours)
    ha = hits(cells, decode_labels(a["predictions"]["style"], styles), decode_labels(a["predictions"]["object"], objects), domain)
    hb = hits(cells, decode_labels(b["predictions"]["style"], styles), decode_labels(b["predictions"]["object"], objects), domain)
    return {name: paired(ha[side], hb[side], g, flip, names=names) for name, (side, flip, g) in groups.items()}


def grid(domain: str, sequence, retained, partners, seeds) -> list[tuple[str, str, int]]:
    """An evaluation's cells (style, object, seed): every concept of the sequence and the
    retained set, with every partner of the other domain, at every seed (evaluator.EvalPlan)."""
    cells = []
    for c in dict.fromkeys(list(sequence) + list(retained)):
        for p in partners:
            style, obj = (c, p) if domain == "style" else (p, c)
            cells += [(style, obj, s) for s in seeds]
    return cells


def compare_variants(summary: dict, a: str, b: str, step: int, *, seed: int = 0) -> dict:
    """Paired comparison of two variants of one experiment's summary.json after `step`
    requests, on the same images (the summary's grid and each row's predictions)."""
    rows = {}
    for name in (a, b):
        if name not in summary["variants"]:
            raise ValueError(f"variant {name!r} is not in the summary; variants: {', '.join(summary['variants'])}")
        steps = summary["variants"][name]["steps"]
        if step >= len(steps) or "predictions" not in steps[step]:
            raise ValueError(f"variant {name!r} has no per-image predictions after request {step}")
        rows[name] = steps[step]
    cells = grid(summary["domain"], summary["sequence"], summary["retained"], summary["partners"], summary["seeds"])
    labels = summary["labels"]
    return compare(rows[a], rows[b], cells, domain=summary["domain"], unlearned=summary["sequence"][:step],
                   retained=summary["retained"], partners=summary["partners"], neighbours=summary.get("neighbours"),
                   styles=labels["style"], objects=labels["object"], names=(a, b))


# ---------------------------------------------------------------- the study: training seeds pooled
# scripts/study.py keeps one summary.json per unit (one variant, one training seed, N requests);
# `by_seed` below is {training seed: {variant: that unit's summary}} for one domain and N.


def grid_key(summary: dict) -> tuple:
    """What makes two summaries' evaluations the same images: domain, sequence, retained, partners, seeds."""
    return (summary["domain"], tuple(summary["sequence"]), tuple(summary["retained"]), tuple(summary["partners"]),
            tuple(summary["seeds"]))


def summary_hits(summary: dict, variant: str, step: int) -> dict[str, np.ndarray]:
    """`hits` of one variant after `step` requests, read back from its row's predictions."""
    row = summary["variants"][variant]["steps"][step]
    labels = summary["labels"]
    cells = grid(summary["domain"], summary["sequence"], summary["retained"], summary["partners"], summary["seeds"])
    return hits(cells, decode_labels(row["predictions"]["style"], labels["style"]),
                decode_labels(row["predictions"]["object"], labels["object"]), summary["domain"])


def closed_form_variant(by_seed: dict, variant: str) -> bool:
    """A closed-form variant (uce) does not depend on the training seed: it runs once (scripts/study.py)."""
    # imported here, not at the top: the methods bring torch and the trainer; the rest of this module needs numpy only
    from obliviate.methods import METHODS

    method = next((vs[variant]["variants"][variant].get("method") for vs in by_seed.values() if variant in vs), None)
    return method in METHODS and bool(METHODS[method].closed_form)


class SeedPool:
    """Images of several training seeds pooled: each seed's grid once per seed, hits per row.
    `step` is the number of requests the metrics count as unlearned."""

    def __init__(self, by_seed: dict[int, dict], step: int):
        self.by_seed, self.step = by_seed, step

    def rows(self, entries):
        """entries: [(variant, step)]; -> (groups, [hits per entry], seeds used), over the seeds where
        every entry exists (with predictions). A closed-form variant runs for the first training seed
        only (its solve does not depend on the seed): paired with a variant that has another seed, its
        one model stands for that seed too, so the pair uses every seed of the other; alone, its
        images are counted once."""
        seeds, cells, hit_rows = [], [], [[] for _ in entries]
        ref = None
        first = min(self.by_seed, default=None)
        fixed = [v for v, _ in entries if closed_form_variant(self.by_seed, v)]
        for seed, variants in sorted(self.by_seed.items()):
            if any(v in variants and v not in fixed for v, _ in entries):
                variants = {**{v: self.by_seed[first][v] for v in fixed if v in self.by_seed[first]}, **variants}
            ok = all(v in variants and len(variants[v]["variants"][v]["steps"]) > st and
                     "predictions" in variants[v]["variants"][v]["steps"][st] for v, st in entries)
            if not ok:
                continue
            s0 = variants[entries[0][0]]
            if ref is None:
                ref = s0
            if any(grid_key(variants[v]) != grid_key(ref) for v, _ in entries):
                continue  # a different grid cannot be paired
            seeds.append(seed)
            cells += grid(s0["domain"], s0["sequence"], s0["retained"], s0["partners"], s0["seeds"])
            for i, (v, st) in enumerate(entries):
                hit_rows[i].append(summary_hits(variants[v], v, st))
        if not seeds:
            return None, None, []
        groups = metric_groups(cells, ref["domain"], ref["sequence"][: self.step], ref["retained"], ref["partners"],
                               ref.get("neighbours"))
        joined = [{side: np.concatenate([h[side] for h in hs]) for side in ("own", "other")} for hs in hit_rows]
        return groups, joined, seeds

    def one_seed(self, seed: int) -> "SeedPool":
        """The pool of training seed `seed` alone; a closed-form variant's one model (from the first
        seed) stands for that seed, as it does in the whole pool."""
        first = min(self.by_seed)
        fixed = {v: s for v, s in self.by_seed[first].items() if closed_form_variant(self.by_seed, v)}
        return SeedPool({seed: {**fixed, **self.by_seed[seed]}}, self.step)


def pooled_interval(pool: SeedPool, variant: str, key: str) -> dict | None:
    """`interval` of one metric of `variant` after the pool's step, over the pooled training seeds."""
    groups, hit_rows, _ = pool.rows([(variant, pool.step)])
    if groups is None or not groups[key][2]:
        return None
    side, flip, g = groups[key]
    return interval(hit_rows[0][side], g, flip)


def _retention_draws(pool: SeedPool, entries, n_boot: int, seed: int):
    """Retention (the mean of RA-I and RA-C) of each entry and its bootstrap draws, (n_boot,
    entries). RA-I's and RA-C's images are resampled in their own strata (concepts, partners)
    with the same draws for every entry."""
    groups, hit_rows, _ = pool.rows(entries)
    if groups is None or not groups["RA_I"][2] or not groups["RA_C"][2]:
        return None, None
    rng = np.random.default_rng(seed)
    own = _resampled(np.stack([h["own"] for h in hit_rows], 1), groups["RA_I"][2], rng, n_boot)
    other = _resampled(np.stack([h["other"] for h in hit_rows], 1), groups["RA_C"][2], rng, n_boot)
    point = [(_value(h["own"], groups["RA_I"][2], False) + _value(h["other"], groups["RA_C"][2], False)) / 2
             for h in hit_rows]
    return point, (own + other) / 2


def retention_interval(pool: SeedPool, entry, *, n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL) -> dict | None:
    """entry: (variant, step). Retention, the mean of RA-I and RA-C, with its bootstrap interval
    ({"value", "lo", "hi"}), over the pooled training seeds."""
    point, boot = _retention_draws(pool, [entry], n_boot, seed)
    if point is None:
        return None
    lo, hi = _bounds(boot[:, 0], level)
    return {"value": point[0], "lo": lo, "hi": hi}


def paired_retention(pool: SeedPool, a, b, *, n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL) -> dict | None:
    """a, b: (variant, step). The paired retention difference a - b on the same pooled images:
    {"difference", "lo", "hi", "verdict"} ("A higher", "B higher" or "inconclusive")."""
    point, boot = _retention_draws(pool, [a, b], n_boot, seed)
    if point is None:
        return None
    lo, hi = _bounds(boot[:, 0] - boot[:, 1], level)
    return {"difference": point[0] - point[1], "lo": lo, "hi": hi, "verdict": verdict(lo, hi)}


def paired_over_seeds(pool: SeedPool, a, b, key: str) -> dict | None:
    """a, b: (variant, step). The paired difference a - b of one metric over pooled seeds (`paired`),
    with each training seed's own point difference (`per_seed`, `seeds`): a verdict needs them to
    agree in sign, else it is "inconclusive" with the note "training seeds disagree"."""
    groups, hit_rows, seeds = pool.rows([a, b])
    if groups is None or not groups[key][2]:
        return None
    side, flip, g = groups[key]
    p = paired(hit_rows[0][side], hit_rows[1][side], g, flip, names=("A", "B"))
    per_seed = []
    for seed in seeds:
        gs, hs, _ = pool.one_seed(seed).rows([a, b])
        s_, f_, g_ = gs[key]
        per_seed.append(_value(hs[0][s_], g_, f_) - _value(hs[1][s_], g_, f_))
    p["per_seed"] = per_seed
    p["seeds"] = seeds
    if p["verdict"] != "inconclusive" and any(np.sign(d) != np.sign(p["difference"]) for d in per_seed):
        p["verdict"] = "inconclusive"
        p["note"] = "training seeds disagree"
    return p
