"""How much of a ConAbl result is the anchor draw? (docs/RESULTS.md, "Anchor sets")

For each domain of the study (configs/study/*.yaml): ConAbl in the reference recipe at the
training length the study chose for it (its seed-0, 8-request unit), 8 requests, then one
evaluation on the study's reported grid (every partner x seeds 188, 288, 588; the study's
retained set). Two kinds of chain per training seed:

  follows  the anchor images follow the training seed (the default): seed = a new anchor set
  fixed    image_seed=0: one anchor set (seed 0's) for every training seed

so the spread of UA, RA-I and RA-C across `follows` chains is the anchor draw plus the training
seed, and across `fixed` chains the training seed alone. Seed 0's two chains are the same
model (trained once). Each chain resumes from its run directory; finished evaluations are kept
in it (metrics-r8.json), so rerunning the command only does what is missing.

    OMP_NUM_THREADS=1 python scripts/anchor_variance.py --domains styles --seeds 0,1,2,3
    OMP_NUM_THREADS=1 python scripts/anchor_variance.py --domains objects --seeds 0,1,2,3
    python scripts/anchor_variance.py --report        # the table, from what is finished
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import yaml

from obliviate.continual import Run
from obliviate.delta import atomic_write_json
from obliviate.evaluate.evaluator import evaluate, load_protocol, make_plan, model_key
from obliviate.minicanvas import bundled_path
from obliviate.request import Request

ROOT = Path(__file__).resolve().parents[1]
REQUESTS = 8
OUT = ROOT / "docs/results/anchor-variance.json"


def study_setup(domain: str) -> dict:
    exp = yaml.safe_load((ROOT / f"configs/study/{domain}.yaml").read_text())
    chosen = json.loads((ROOT / f"docs/results/study/{domain}-r8-conabl-s0/summary.json").read_text())
    steps = chosen["variants"]["conabl"]["strength"]["chosen"]
    return {"domain": exp["domain"], "sequence": exp["sequence"][:REQUESTS], "retained": exp["retained"],
            "seeds": exp["eval"]["seeds"], "steps": steps}


def chain(runs: Path, domain: str, mode: str, seed: int) -> Path:
    if mode == "fixed" and seed == 0:
        mode = "follows"  # image_seed=0 on training seed 0 is the default chain itself
    return runs / f"{domain}-{mode}-s{seed}"


def run_chain(path: Path, setup: dict, mode: str, seed: int, protocol) -> dict:
    done = path / f"metrics-r{REQUESTS}.json"
    if done.exists():
        return json.loads(done.read_text())
    run = Run.open_or_create(path, bundled_path())
    settings = {"recipe": "reference", "steps": setup["steps"], **({"image_seed": 0} if mode == "fixed" else {})}
    t0 = time.time()
    for i, concept in enumerate(setup["sequence"], 1):
        run.unlearn(Request(concept, setup["domain"], "conabl", dict(settings), seed=seed), quiet=True)
        print(f"  {path.name}: request {i}/{len(setup['sequence'])} ({concept}) done, {time.time() - t0:.0f} s", flush=True)
    steps = run.verify_chain()
    partners = protocol.concepts("object" if setup["domain"] == "style" else "style")
    plan = make_plan(protocol, setup["domain"], sequence=setup["sequence"], retained=setup["retained"],
                     partners=partners, seeds=setup["seeds"])
    pipe = run.load()
    key = model_key(run.info["base_hash"], *[m["delta_hash"] for m in steps])
    result = evaluate(pipe, protocol, plan, setup["sequence"], key=key, cache_dir=None)
    metrics = {"UA": result["UA"], "RA_I": result["RA_I"], "RA_C": result["RA_C"], "images": result.get("images"),
               "seed": seed, "mode": mode, "anchor_image_seeds": steps[-1].get("anchor_image_seeds"),
               "seconds": time.time() - t0}
    atomic_write_json(done, metrics)
    print(f"  {path.name}: UA {metrics['UA']:.1f} RA-I {metrics['RA_I']:.1f} RA-C {metrics['RA_C']:.1f}", flush=True)
    return metrics


def spread(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}


def report(runs: Path, domains: list[str], seeds: list[int]) -> dict:
    out = {"requests": REQUESTS, "training_seeds": seeds, "domains": {}}
    lines = ["| domain | anchors | seeds | UA mean (sd) [min, max] | RA-I mean (sd) [min, max] | RA-C mean (sd) [min, max] |",
             "|---|---|---|---|---|---|"]
    for domain in domains:
        setup = study_setup(domain)
        out["domains"][domain] = {"steps": setup["steps"], "retained": setup["retained"], "chains": {}, "spread": {}}
        for mode in ("follows", "fixed"):
            found = [json.loads(p.read_text()) for s in seeds
                     if (p := chain(runs, domain, mode, s) / f"metrics-r{REQUESTS}.json").exists()]
            if not found:
                continue
            out["domains"][domain]["chains"][mode] = found
            stats = {m: spread([f[m] for f in found]) for m in ("UA", "RA_I", "RA_C")}
            out["domains"][domain]["spread"][mode] = stats
            cell = lambda s: f"{s['mean']:.1f} ({s['sd']:.1f}) [{s['min']:.1f}, {s['max']:.1f}]"
            label = "follow the seed" if mode == "follows" else "one set (image_seed=0)"
            lines.append(f"| {domain} | {label} | {', '.join(str(f['seed']) for f in found)} | {cell(stats['UA'])} | "
                         f"{cell(stats['RA_I'])} | {cell(stats['RA_C'])} |")
    out["table"] = "\n".join(lines)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--domains", default="styles,objects")
    parser.add_argument("--seeds", default="0,1,2,3")
    parser.add_argument("--runs", default="runs/anchor-variance")
    parser.add_argument("--report", action="store_true", help="only write the table from finished chains")
    args = parser.parse_args()
    domains = [d for d in args.domains.split(",") if d]
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = Path(args.runs)
    if not args.report:
        protocol = load_protocol("minicanvas", bundled_path())
        for domain in domains:
            setup = study_setup(domain)
            for mode in ("follows", "fixed"):
                for seed in seeds:
                    if mode == "fixed" and seed == 0:
                        continue
                    run_chain(chain(runs, domain, mode, seed), setup, mode, seed, protocol)
    result = report(runs, ["styles", "objects"], seeds)
    atomic_write_json(OUT, result)
    print(result["table"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
