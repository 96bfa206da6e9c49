"""The three continual settings as small named policies: which model a request starts from.

- sequential: request t starts from the model after request t-1 (one run ledger);
- simultaneous: request t retrains from the base model on concepts 1..t together, with
  optional early stopping chosen on *probe* seeds, disjoint from the reported seeds;
- independent+merge: each concept is unlearned alone from the base model; the model after t
  requests merges task vectors 1..t (uniform / task_arithmetic / ties); lambda and top-k
  are chosen on the probe seeds only.

A policy is a function `(runner, variant, vdir) -> rows` registered by name with
`@setting("name")`; it asks the runner for requests (`runner.request`), evaluations
(`runner.evaluate`, cached) and table rows (`runner.step0`, `runner.row`).
"""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Callable

import torch

from ..continual import slug
from ..delta import drift, tensors_hash
from ..evaluate.evaluator import model_key
from ..merge import merge_task_vectors

SETTINGS: dict[str, Callable] = {}


def setting(name: str):
    """Register a setting policy under `name` (the `setting:` of a variant)."""
    def register(fn):
        SETTINGS[name] = fn
        return fn
    return register


def probe_score(res: dict) -> float:
    """What early stopping and the merge's hyperparameter choice maximise, on probe seeds:
    the mean of UA, RA-I and RA-C."""
    return (res["UA"] + res["RA_I"] + res["RA_C"]) / 3


@setting("sequential")
def sequential(runner, variant, vdir: Path) -> list[dict]:
    run = runner.open_run(vdir / "run")
    rows = [runner.step0()]
    for t, concept in enumerate(runner.exp.requested, start=1):
        meta = run.unlearn(runner.request(variant, concept), quiet=runner.quiet, cache_dir=runner.anchors, **runner.train_options)
        hashes = [m["delta_hash"] for m in run.steps()[:t]]
        res = runner.evaluate(run.cumulative_delta(t), runner.exp.sequence[:t], model_key(runner.base_hash, *hashes),
                              vdir / "eval" / f"step{t:03d}.json")
        rows.append(runner.row(t, concept, res, meta["drift"]["pretrained"]["l2"], meta["timings"]["train_seconds"]))
        runner.log(f"{variant.name} step {t} -{concept}: UA {res['UA']:.1f} RA-I {res['RA_I']:.1f} RA-C {res['RA_C']:.1f}")
        if runner.stops_sweep(res, variant.name, t):
            break
    return rows


@setting("simultaneous")
def simultaneous(runner, variant, vdir: Path) -> list[dict]:
    rows = [runner.step0()]
    for t, concept in enumerate(runner.exp.requested, start=1):
        run = runner.open_run(vdir / f"retrain{t:03d}")
        req = runner.request(variant, concept, also=runner.exp.sequence[: t - 1], steps_scale=t)
        chooser = early_stop_chooser(runner, vdir, t) if variant.early_stopping else None
        meta = run.unlearn(req, quiet=runner.quiet, choose=chooser, cache_dir=runner.anchors, **runner.train_options)
        delta = run.cumulative_delta(1)
        res = runner.evaluate(delta, runner.exp.sequence[:t], model_key(runner.base_hash, meta["delta_hash"]),
                              vdir / "eval" / f"step{t:03d}.json")
        rows.append(runner.row(t, concept, res, drift(delta)["l2"], meta["timings"]["train_seconds"],
                               chosen_step=meta.get("early_stopping", {}).get("chosen_step")))
        runner.log(f"{variant.name} step {t} (retrain on {t}): UA {res['UA']:.1f} RA-I {res['RA_I']:.1f} RA-C {res['RA_C']:.1f}")
        if runner.stops_sweep(res, variant.name, t):
            break
    return rows


def early_stop_chooser(runner, vdir: Path, t: int):
    """Pick the training length with the best probe score (never the reported seeds)."""
    def choose(ctx, snapshots: dict[int, dict[str, torch.Tensor]]) -> tuple[int, dict]:
        scores = {}
        for step, values in sorted(snapshots.items()):
            delta = {n: values[n] - ctx.pretrained[n] for n in values}
            key = model_key(runner.base_hash, "snapshot", tensors_hash(delta))  # the snapshot's content, not its name
            res = runner.evaluate(delta, runner.exp.sequence[:t], key, vdir / "probe" / f"step{t:03d}-at{step}.json", runner.probe)
            scores[step] = probe_score(res)
        best = max(scores, key=lambda s: (scores[s], s))
        return best, {"probe_scores": scores}
    return choose


@setting("independent+merge")
def independent_merge(runner, variant, vdir: Path) -> list[dict]:
    rows = [runner.step0()]
    taus, hashes, train_seconds = [], [], []
    merge = variant.merge
    method = merge.get("method", "ties")
    lams = merge.get("lam", [1.0])
    tops = merge.get("top_k", [1.0])
    lams = lams if isinstance(lams, list) else [lams]
    tops = tops if isinstance(tops, list) else [tops]
    for t, concept in enumerate(runner.exp.requested, start=1):
        run = runner.open_run(vdir / "independent" / slug(concept))
        meta = run.unlearn(runner.request(variant, concept), quiet=runner.quiet, cache_dir=runner.anchors, **runner.train_options)
        taus.append(run.cumulative_delta(1))
        hashes.append(meta["delta_hash"])
        train_seconds.append(meta["timings"]["train_seconds"])
        candidates = list(itertools.product(lams, tops)) if method != "uniform" else [(1.0, 1.0)]
        if len(candidates) > 1:  # hyperparameters chosen on probe seeds only
            scores = {}
            for lam, top in candidates:
                merged = merge_task_vectors(taus, method, lam=lam, top_k=top)
                key = model_key(runner.base_hash, method, lam, top, *hashes)
                res = runner.evaluate(merged, runner.exp.sequence[:t], key, vdir / "probe" / f"step{t:03d}-l{lam}-k{top}.json",
                                      runner.probe)
                scores[(lam, top)] = probe_score(res)
            lam, top = max(scores, key=lambda c: scores[c])
        else:
            lam, top = candidates[0]
        merged = merge_task_vectors(taus, method, lam=lam, top_k=top)
        res = runner.evaluate(merged, runner.exp.sequence[:t], model_key(runner.base_hash, method, lam, top, *hashes),
                              vdir / "eval" / f"step{t:03d}.json")
        rows.append(runner.row(t, concept, res, drift(merged)["l2"], train_seconds[-1],
                               merge={"method": method, "lam": lam, "top_k": top}))
        runner.log(f"{variant.name} step {t} (merge {method} lam={lam} top_k={top}): "
                   f"UA {res['UA']:.1f} RA-I {res['RA_I']:.1f} RA-C {res['RA_C']:.1f}")
        if runner.stops_sweep(res, variant.name, t):
            break
    return rows
