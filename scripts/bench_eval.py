"""Cheaper evaluations against the study's reference (20 DPM-Solver++ steps, CFG 5), measured.

Same models, same seeds, same grid (every style x every object x the seeds) for every
candidate sampler; for each (model, domain) every metric (UA, RA-I, RA-I over every concept
not yet unlearned, RA-I over the designed neighbours, RA-C) of each candidate, its difference
from the reference, and a paired bootstrap interval of that difference on the same images
(evaluate/power.py). UNet evaluations per scored image are counted with a hook on the UNet
(rows through its forward, on two freshly generated images), not computed from the settings.
`seconds` per candidate sums the evaluations whose images were generated in this process
(cached images cost only judging), on whatever load the machine had.

The bar: >= 4x fewer UNet evaluations per scored image than the reference, with
every metric of every (model, domain) within 2 points of the reference.

Models: the bundled MiniCanvas model, and closed-form `uce` after 1 and 3 style requests and
after 2 object requests (the study's orders). Images are cached under --work (PNG per model
and sampler), so a rerun only re-judges.

    OMP_NUM_THREADS=1 python scripts/bench_eval.py --out docs/results/bench-eval.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from obliviate.continual import Run
from obliviate.delta import atomic_write_json, with_delta
from obliviate.evaluate.evaluator import evaluate, load_protocol, make_plan, model_key
from obliviate.evaluate.power import compare, protocol_neighbours
from obliviate.evaluate.sampler import SAMPLER_PRESETS, SamplerConfig, generate
from obliviate.minicanvas import bundled_path
from obliviate.model import edited, load_pipeline, model_hash
from obliviate.request import Request

METRICS = ("UA", "RA_I", "RA_I_all", "RA_I_neighbours", "RA_C")
BAR_RATIO, BAR_POINTS = 4.0, 2.0
MODELS = {  # name -> (domain of its requests, the concepts erased in order)
    "base": (None, []),
    "uce-style-1": ("style", ["fire"]),
    "uce-style-3": ("style", ["fire", "ice", "forest"]),
    "uce-object-2": ("object", ["circle", "square"]),
}


def unlearned_model(work: Path, model_dir: str, domain: str, concepts: list[str]):
    """The cumulative delta and its key after `concepts` were erased one by one with uce."""
    run = Run.open_or_create(work / "runs" / f"uce-{domain}", model_dir)
    for c in concepts:
        run.unlearn(Request(c, domain, "uce", {}), quiet=True)
    hashes = [m["delta_hash"] for m in run.steps()[: len(concepts)]]
    return run.cumulative_delta(len(concepts)), hashes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", default="188,288,588")
    ap.add_argument("--candidates", default=",".join(SAMPLER_PRESETS), help="sampler presets; the first is the reference")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--unlearned-candidates", help="a subset of --candidates for the unlearned models (default: all); "
                    "a candidate left out of any model cannot meet the bar")
    ap.add_argument("--work", default="runs/bench-eval")
    ap.add_argument("--out")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    names = args.candidates.split(",")
    for n in names:
        SamplerConfig.named(n)  # bad names fail before any work
    bad = [m for m in args.models.split(",") if m not in MODELS]
    if bad:
        raise SystemExit(f"--models: unknown {bad}; valid: {', '.join(MODELS)}")
    work = Path(args.work)
    model_dir = str(bundled_path())
    base_hash = model_hash(model_dir)
    protocol = load_protocol("minicanvas", model_dir)
    pipe = load_pipeline(model_dir, device="cpu")
    rows = [0]
    pipe.unet.register_forward_pre_hook(lambda module, a: rows.__setitem__(0, rows[0] + a[0].shape[0]))
    report = {"benchmark": "evaluation samplers against the 20-step DPM-Solver++ CFG reference, MiniCanvas",
              "reference": names[0], "seeds": seeds, "bar": {"unet_ratio_min": BAR_RATIO, "max_abs_difference": BAR_POINTS},
              "candidates": {n: {**SAMPLER_PRESETS[n], "unet_evaluations_per_image": None, "seconds": 0.0} for n in names},
              "models": {}, "torch_threads": torch.get_num_threads(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
              "machine": platform.machine(), "torch": torch.__version__}
    for cand in names:  # counted on two fresh images (no cache): what the UNet sees per scored image
        rows[0] = 0
        generate(pipe, [protocol.prompt("fire", "circle")] * 2, [0, 1], SamplerConfig.named(cand))
        report["candidates"][cand]["unet_evaluations_per_image"] = rows[0] / 2
    for mname in args.models.split(","):
        domain, concepts = MODELS[mname]
        delta, hashes = (None, []) if not concepts else unlearned_model(work, model_dir, domain, concepts)
        key = model_key(base_hash, *hashes)
        entry = report["models"][mname] = {"requests": concepts, "domains": {}}
        subset = args.unlearned_candidates.split(",") if concepts and args.unlearned_candidates else names
        for cand in [n for n in names if n in subset]:
            sampler = SamplerConfig.named(cand)
            for dom in ([domain] if domain else ["style", "object"]):
                plan = make_plan(protocol, dom, seeds=seeds, sampler=sampler)  # partners: every concept of the other domain
                rows[0] = 0
                t0 = time.time()
                with with_delta(edited(pipe), delta):
                    res = evaluate(pipe, protocol, plan, concepts, key=key, cache_dir=work / "cache")
                seconds = time.time() - t0
                report["candidates"][cand]["seconds"] += seconds if rows[0] else 0.0  # 0 when read from the cache
                d = entry["domains"].setdefault(dom, {"unlearned": concepts, "images": res["images"], "candidates": {},
                                                      "cells": None})
                d["candidates"][cand] = {"metrics": {m: res.get(m) for m in METRICS}, "intervals": res["intervals"],
                                         "predictions": res["predictions"]}
                d["cells"] = plan.grid()
                print(json.dumps({"model": mname, "domain": dom, "candidate": cand, "seconds": round(seconds, 1),
                                  **{m: None if res.get(m) is None else round(res[m], 1) for m in METRICS}}), flush=True)
        summarise(report, protocol, names)
        if args.out:
            atomic_write_json(Path(args.out), strip(report))
    print(json.dumps({n: c["verdict"] for n, c in report["candidates"].items()}, indent=2))


def summarise(report: dict, protocol, names: list[str]) -> None:
    """Differences from the reference (point and paired interval) and each candidate's verdict."""
    ref = names[0]
    ref_evals = report["candidates"][ref]["unet_evaluations_per_image"]
    for cand in names:
        worst, missing = 0.0, []
        for mname, entry in report["models"].items():
            for dom, d in entry["domains"].items():
                if cand not in d["candidates"] or ref not in d["candidates"]:
                    missing.append(f"{mname}/{dom}")
                    continue
                a, b = d["candidates"][cand], d["candidates"][ref]
                diffs = {m: None if a["metrics"][m] is None else a["metrics"][m] - b["metrics"][m] for m in METRICS}
                plan = make_plan(protocol, dom)
                paired = compare(a, b, [tuple(c) for c in d["cells"]], domain=dom, unlearned=d["unlearned"],
                                 retained=plan.retained, partners=protocol.concepts("object" if dom == "style" else "style"),
                                 neighbours=protocol_neighbours(protocol), styles=protocol.styles, objects=protocol.objects,
                                 names=(cand, ref))
                a["difference"] = diffs
                a["paired_vs_reference"] = {m: paired[m] for m in METRICS}
                worst = max([worst] + [abs(x) for x in diffs.values() if x is not None])
        c = report["candidates"][cand]
        evals = c["unet_evaluations_per_image"]
        c["ratio_to_reference"] = None if not evals or not ref_evals else ref_evals / evals
        c["max_abs_difference"] = worst
        c["not_evaluated_on"] = missing
        c["meets_bar"] = bool(c["ratio_to_reference"] and c["ratio_to_reference"] >= BAR_RATIO and worst <= BAR_POINTS
                              and not missing)
        c["verdict"] = (f"{'meets' if c['meets_bar'] else 'misses'} the bar: {c['ratio_to_reference'] or 0:.1f}x fewer UNet "
                        f"evaluations, largest metric difference {worst:.1f} points"
                        + (f" (not evaluated on {', '.join(missing)})" if missing else ""))


def strip(report: dict) -> dict:
    """The JSON file keeps figures, not per-image predictions or the grid."""
    out = json.loads(json.dumps(report))
    for entry in out["models"].values():
        for d in entry["domains"].values():
            d.pop("cells", None)
            for c in d["candidates"].values():
                c.pop("predictions", None)
    return out


if __name__ == "__main__":
    main()
