"""Evaluate a model: sample the protocol's grid with per-image seeds, classify, compute metrics."""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..protocols import Catalog, family, get_protocol, other_family
from .metrics import Record, compute_metrics
from .power import grid, power_metrics, protocol_neighbours
from .sampler import SamplerConfig, generate

# A protocol is a Catalog carrying its judge (Catalog.with_judge); the name stays for callers.
Protocol = Catalog


def load_protocol(name: str, model_dir=None, **options) -> Catalog:
    """The named protocol's catalog with its judge. `options` go to the judge factory:
    UnlearnCanvas's style_classifier / object_classifier checkpoints, device, and overrides of
    the ViT-L/16 shape (tests use tiny ones); MiniCanvas reads the classifiers in `model_dir`."""
    return get_protocol(name).with_judge(model_dir, **options)


@dataclass
class EvalPlan:
    """Which concepts of which domain, which partners and seeds make up the grid."""

    domain: str
    sequence: list[str]
    retained: list[str]
    partners: list[str]  # retained concepts of the other domain (O_r for style sequences)
    seeds: list[int]
    sampler: SamplerConfig = field(default_factory=SamplerConfig)

    def grid(self) -> list[tuple[str, str, int]]:
        return grid(self.domain, self.sequence, self.retained, self.partners, self.seeds)


def make_plan(protocol: Catalog, domain: str, sequence: list[str] | None = None, retained: list[str] | None = None,
              partners: list[str] | None = None, seeds: list[int] | None = None, sampler: SamplerConfig | None = None) -> EvalPlan:
    if domain not in ("style", "object"):
        raise ValueError(f"evaluation domain must be style or object, got {domain!r}")
    own = protocol.concepts(domain)
    other = protocol.concepts(other_family(domain))
    sequence = list(sequence) if sequence is not None else protocol.order(domain)
    retained = protocol.retained(domain, sequence) if retained is None else retained
    partners = protocol.eval_partners(domain) if partners is None else partners
    for label, names, valid in (("sequence", sequence, own), ("retained", retained, own), ("partners", partners, other)):
        bad = [c for c in names if c not in valid]
        if bad:
            raise ValueError(f"{label} has concepts the {protocol.name} protocol does not know: {bad}; valid: {', '.join(valid)}")
    overlap = set(sequence) & set(retained)
    if overlap:
        raise ValueError(f"retained concepts must not be in the sequence: {sorted(overlap)}")
    return EvalPlan(domain, list(sequence), list(retained), list(partners), list(seeds or protocol.seeds[:2]),
                    sampler or SamplerConfig(**protocol.sampler))


def model_key(*parts) -> str:
    return hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()


def judged(pipe, protocol: Protocol, plan: EvalPlan, cells, *, key, cache_dir, progress=None) -> dict[str, list[str]]:
    """The judge's labels of every cell's image: {"style": [...], "object": [...]}.

    Under `accelerate launch` (distributed.py) the cells are split across the processes
    (accelerate's split_between_processes: contiguous shares), each generates and judges its
    own share (an image depends only on its prompt and its seed, never on the other images),
    and the labels are gathered in grid order on every process: the metrics are computed from
    exactly the labels of one process."""
    from ..distributed import current

    dist = current()
    if dist is None:
        return _judge(pipe, protocol, plan, cells, key=key, cache_dir=cache_dir, progress=progress)
    from accelerate.utils import gather_object

    with dist.state.split_between_processes(list(range(len(cells)))) as mine:
        mine = list(mine)
    local = _judge(pipe, protocol, plan, [cells[i] for i in mine], key=key, cache_dir=cache_dir, progress=progress)
    labelled = sorted(gather_object([(i, s, o) for i, s, o in zip(mine, local["style"], local["object"])]))
    if [i for i, _, _ in labelled] != list(range(len(cells))):
        raise RuntimeError(f"sharded evaluation gathered {len(labelled)} labels for {len(cells)} images")
    return {"style": [s for _, s, _ in labelled], "object": [o for _, _, o in labelled]}


def _judge(pipe, protocol: Protocol, plan: EvalPlan, cells, *, key, cache_dir, progress=None) -> dict[str, list[str]]:
    if not cells:  # more processes than images
        return {"style": [], "object": []}
    images = generate(pipe, [protocol.prompt(s, o) for s, o, _ in cells], [k for _, _, k in cells], plan.sampler,
                      cache_dir=cache_dir, model_key=key, progress=progress)
    pred = protocol.judge.predict(np.stack(images))
    return {"style": list(pred["style"]), "object": list(pred["object"])}


def evaluate(pipe, protocol: Protocol, plan: EvalPlan, unlearned: list[str], *, key: str, cache_dir: Path | None,
             progress=None) -> dict:
    """Metrics of one model; images cached under cache_dir keyed by `key`."""
    t0 = time.time()
    cells = plan.grid()
    pred = judged(pipe, protocol, plan, cells, key=key, cache_dir=cache_dir, progress=progress)
    records = [Record(s, o, k, ps, po) for (s, o, k), ps, po in zip(cells, pred["style"], pred["object"])]
    retained = [c for c in plan.retained if c not in unlearned]
    result = compute_metrics(records, domain=plan.domain, unlearned=list(unlearned), retained=retained,
                             retained_partners=plan.partners)
    # RA-I two ways, intervals, per-image predictions for paired comparisons (power.py)
    result.update(power_metrics(cells, pred["style"], pred["object"], domain=plan.domain, unlearned=list(unlearned),
                                retained=retained, partners=plan.partners, neighbours=protocol_neighbours(protocol),
                                styles=protocol.styles, objects=protocol.objects))
    result["eval_seconds"] = time.time() - t0
    own = family(plan.domain)
    result["per_concept_accuracy"] = {
        c: 100.0 * float(np.mean([getattr(r, "pred_" + own) == c for r in records if getattr(r, own) == c]))
        for c in dict.fromkeys(plan.sequence + plan.retained)
    }
    return result
