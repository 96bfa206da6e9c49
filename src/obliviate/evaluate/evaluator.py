"""Evaluate a model: sample the protocol's grid with per-image seeds, classify, compute metrics."""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..protocols import family, other_family
from .metrics import Record, compute_metrics
from .power import power_metrics, protocol_neighbours
from .sampler import SamplerConfig, generate

PROTOCOLS = ("minicanvas", "unlearncanvas")

# MiniCanvas default orders: each group of look-alike concepts is visited early, so retained
# sets always contain designed neighbours of unlearned concepts.
MINICANVAS_STYLE_ORDER = ["fire", "ice", "forest", "neon", "sunset", "ocean", "meadow", "night", "lava", "winter", "jungle", "galaxy"]
MINICANVAS_OBJECT_ORDER = ["circle", "square", "triangle", "heart", "ring", "diamond", "arrow", "drop"]


@dataclass
class Protocol:
    """What to sample and how to judge it."""

    name: str
    styles: list[str]
    objects: list[str]
    style_order: list[str]
    object_order: list[str]
    retained_styles: list[str]
    retained_objects: list[str]
    prompt_template: str
    seeds: list[int]
    sampler: SamplerConfig
    judge: object = None
    prompt_name: object = None  # label -> the words used in prompts

    def prompt(self, style: str, obj: str) -> str:
        name = self.prompt_name or (lambda x: x)
        return self.prompt_template.format(style=name(style), object=name(obj) if self.name != "unlearncanvas" else obj)

    def concepts(self, domain: str) -> list[str]:
        return self.styles if domain == "style" else self.objects


def minicanvas_protocol(model_dir) -> Protocol:
    from ..minicanvas import world
    from ..minicanvas.classifiers import MiniCanvasJudge

    judge = MiniCanvasJudge(model_dir)
    return Protocol(
        name="minicanvas", styles=list(world.STYLE_NAMES), objects=list(world.OBJECT_NAMES),
        style_order=MINICANVAS_STYLE_ORDER, object_order=MINICANVAS_OBJECT_ORDER,
        retained_styles=[s for s in world.STYLE_NAMES if s not in MINICANVAS_STYLE_ORDER],
        retained_objects=[o for o in world.OBJECT_NAMES if o not in MINICANVAS_OBJECT_ORDER],
        prompt_template=world.PROMPT_TEMPLATE, seeds=[188, 288, 588, 688, 888],
        sampler=SamplerConfig(steps=20, guidance=5.0), judge=judge,
    )


def unlearncanvas_protocol(style_classifier, object_classifier, device="cpu", **arch) -> Protocol:
    from ..protocols.unlearncanvas import UnlearnCanvasJudge, load_protocol, prompt_name

    if not style_classifier or not object_classifier:
        raise ValueError("the unlearncanvas protocol needs --style-classifier and --object-classifier checkpoint files")
    p = load_protocol()
    judge = UnlearnCanvasJudge(style_classifier, object_classifier, device=device, **arch)
    return Protocol(
        name="unlearncanvas", styles=list(p.style_labels), objects=list(p.object_labels),
        style_order=list(p.style_order), object_order=list(p.object_order),
        retained_styles=list(p.retained_styles), retained_objects=list(p.retained_objects),
        prompt_template=p.template, seeds=list(p.seeds),
        sampler=SamplerConfig(steps=p.steps, guidance=p.guidance, scheduler="ddim", batch_size=8), judge=judge,
        prompt_name=prompt_name,
    )


def load_protocol(name: str, model_dir=None, *, style_classifier=None, object_classifier=None, **arch) -> Protocol:
    """`arch` overrides the ViT-L/16 shape of the UnlearnCanvas classifiers (tests use tiny ones)."""
    if name == "minicanvas":
        return minicanvas_protocol(model_dir)
    if name == "unlearncanvas":
        return unlearncanvas_protocol(style_classifier, object_classifier, **arch)
    raise ValueError(f"unknown protocol {name!r}; valid protocols: {', '.join(PROTOCOLS)}")


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
        own = list(dict.fromkeys(self.sequence + self.retained))
        cells = []
        for c in own:
            for p in self.partners:
                style, obj = (c, p) if self.domain == "style" else (p, c)
                cells += [(style, obj, s) for s in self.seeds]
        return cells


def make_plan(protocol: Protocol, domain: str, sequence: list[str] | None = None, retained: list[str] | None = None,
              partners: list[str] | None = None, seeds: list[int] | None = None, sampler: SamplerConfig | None = None) -> EvalPlan:
    if domain not in ("style", "object"):
        raise ValueError(f"evaluation domain must be style or object, got {domain!r}")
    own = protocol.concepts(domain)
    other = protocol.concepts(other_family(domain))
    sequence = list(sequence) if sequence is not None else (protocol.style_order if domain == "style" else protocol.object_order)
    default_retained = protocol.retained_styles if domain == "style" else protocol.retained_objects
    if retained is None:
        retained = [c for c in own if c not in sequence] if protocol.name == "minicanvas" else default_retained
    if partners is None:
        partners = other if protocol.name == "minicanvas" else (protocol.retained_objects if domain == "style" else protocol.retained_styles)
    for label, names, valid in (("sequence", sequence, own), ("retained", retained, own), ("partners", partners, other)):
        bad = [c for c in names if c not in valid]
        if bad:
            raise ValueError(f"{label} has concepts the {protocol.name} protocol does not know: {bad}; valid: {', '.join(valid)}")
    overlap = set(sequence) & set(retained)
    if overlap:
        raise ValueError(f"retained concepts must not be in the sequence: {sorted(overlap)}")
    return EvalPlan(domain, list(sequence), list(retained), list(partners), list(seeds or protocol.seeds[:2]),
                    sampler or protocol.sampler)


def model_key(*parts) -> str:
    return hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()


def evaluate(pipe, protocol: Protocol, plan: EvalPlan, unlearned: list[str], *, key: str, cache_dir: Path | None,
             progress=None) -> dict:
    """Metrics of one model; images cached under cache_dir keyed by `key`."""
    t0 = time.time()
    cells = plan.grid()
    images = generate(pipe, [protocol.prompt(s, o) for s, o, _ in cells], [k for _, _, k in cells], plan.sampler,
                      cache_dir=cache_dir, model_key=key, progress=progress)
    pred = protocol.judge.predict(np.stack(images))
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
