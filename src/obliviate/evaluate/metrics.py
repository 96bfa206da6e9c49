"""UnlearnCanvas-style metrics from a table of classifier predictions.

For a *style* sequence with unlearned styles S_u (every style requested so far), retained
styles S_r and retained objects O_r:
  UA   = 100 - mean over s in S_u of style-accuracy(s), over O_r x seeds
  RA-I = mean over s in S_r of style-accuracy(s), over O_r x seeds
  RA-C = mean over o in O_r of object-accuracy(o), over every style in the grid x seeds
For an *object* sequence the roles of style and object swap. Accuracies are percents.
A concept's accuracy is the fraction of its images that the classifier labels correctly.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Record:
    style: str
    object: str
    seed: int
    pred_style: str
    pred_object: str


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def concept_accuracy(records: list[Record], attribute: str, concept: str, partners_attr: str, partners: set[str] | None) -> float | None:
    hits = [getattr(r, "pred_" + attribute) == concept for r in records
            if getattr(r, attribute) == concept and (partners is None or getattr(r, partners_attr) in partners)]
    return 100.0 * sum(hits) / len(hits) if hits else None


def compute_metrics(records: list[Record], *, domain: str, unlearned: list[str], retained: list[str],
                    retained_partners: list[str]) -> dict:
    """`retained` are concepts of `domain` that must survive; `retained_partners` the retained
    concepts of the other domain (O_r for a style sequence, S_r for an object sequence)."""
    if domain not in ("style", "object"):
        raise ValueError(f"metrics need domain style or object, got {domain!r}")
    own, other = ("style", "object") if domain == "style" else ("object", "style")
    partners = set(retained_partners)
    overlap = set(unlearned) & set(retained)
    if overlap:
        raise ValueError(f"concepts cannot be both unlearned and retained: {sorted(overlap)}")
    unlearned_acc = {c: concept_accuracy(records, own, c, other, partners) for c in unlearned}
    retained_acc = {c: concept_accuracy(records, own, c, other, partners) for c in retained}
    cross_acc = {c: concept_accuracy(records, other, c, own, None) for c in retained_partners}
    ua_terms = [a for a in unlearned_acc.values() if a is not None]
    ua = 100.0 - _mean(ua_terms) if ua_terms else None
    return {
        "UA": ua,
        "RA_I": _mean([a for a in retained_acc.values() if a is not None]),
        "RA_C": _mean([a for a in cross_acc.values() if a is not None]),
        "unlearned_accuracy": unlearned_acc, "retained_accuracy": retained_acc, "cross_accuracy": cross_acc,
        "images": len(records),
    }
