"""The robustness table (issue 12): clean UA, robust UA per attack, steps-to-revival, RA-I and
RA-C, with 95% bootstrap intervals over images, for closed-form variants after the last
request of an experiment file's sequence.

    OMP_NUM_THREADS=1 python scripts/robustness.py configs/uce-styles.yaml --out runs/robust-styles \
        --json docs/results/robustness-styles.json

Per variant: the sequence is unlearned in a run (OUT/VARIANT/run; closed form, seconds), the
final model is evaluated on the config's grid (every concept of the domain x every partner x
`eval.seeds`, images cached under OUT/cache), and every attack runs on it (OUT/VARIANT/ATTACK/
attack.json). Everything finished is reused on rerun. The attack grid is the first
`--attack-partners` partners x the eval seeds (its clean images are the evaluation's, cached).
Intervals: evaluate/resample.py over evaluate/power.py (stratified by concept, 1000 resamples, seed 0).
Prints one JSON object (what --json writes) and the Markdown rows of docs/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from obliviate import Request, Run
from obliviate.attacks import build_attack, load_target, run_attack
from obliviate.attacks.common import Timer
from obliviate.delta import atomic_write_json, tensors_hash, with_delta
from obliviate.evaluate.evaluator import load_protocol, make_plan, model_key
from obliviate.evaluate.metrics import Record
from obliviate.evaluate.resample import attack_interval, metric_intervals
from obliviate.evaluate.sampler import generate
from obliviate.minicanvas import bundled_path
from obliviate.model import load_pipeline, model_hash

VARIANTS = {"uce": ("uce", {}), "rece": ("rece", {})}
# defaults of each attack here = the attack's own defaults; relearn checks 2 partners and
# skips its yardstick on every variant but the first (the yardstick never sees the variant:
# it fine-tunes the pretrained model)
ATTACKS = ("paraphrase", "inversion", "prefix", "relearn")
RELEARN = {"check_partners": 2, "max_steps": 50}  # the table's relearn: 2 check partners, at most 50 steps


def parse_variant(text: str):
    name, _, rest = text.partition(":")
    if name not in VARIANTS:
        raise ValueError(f"variant {text!r}: valid names {', '.join(VARIANTS)} (settings after ':', e.g. rece:rounds=2)")
    method, settings = VARIANTS[name]
    settings = dict(settings)
    for kv in filter(None, rest.split(",")):
        k, _, v = kv.partition("=")
        settings[k] = v
    return text, method, settings


def final_model(out: Path, model, exp: dict, method: str, settings: dict):
    run = Run.open_or_create(out / "run", model)
    for concept in exp["sequence"]:
        run.unlearn(Request(concept, exp["domain"], method, method_settings=settings), quiet=True)
    return run, run.cumulative_delta(len(exp["sequence"]))


def evaluate_records(model, base_hash, delta, protocol, plan, cache: Path) -> list[Record]:
    cells = plan.grid()
    pipe = load_pipeline(model)
    key = model_key(base_hash, tensors_hash(delta))  # the key attacks' clean images use (attacks/common.py)
    with with_delta(pipe.unet, delta):
        images = generate(pipe, [protocol.prompt(s, o) for s, o, _ in cells], [k for _, _, k in cells], plan.sampler,
                          cache_dir=cache, model_key=key)
    pred = protocol.judge.predict(np.stack(images))
    return [Record(s, o, k, ps, po) for (s, o, k), ps, po in zip(cells, pred["style"], pred["object"])]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", help="an experiment file (sequence, retained, domain, eval.seeds)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--variants", default="uce,rece", help="comma-separated: uce, rece[:key=value...]")
    ap.add_argument("--attacks", default=",".join(ATTACKS))
    ap.add_argument("--attack-partners", type=int, default=4)
    ap.add_argument("--eval-seeds", help="comma-separated seeds of the clean evaluation (default: the config's eval.seeds)")
    ap.add_argument("--attack-seeds", help="comma-separated seeds of the attack grid (default: the evaluation's)")
    ap.add_argument("--json", help="also write the figures here (atomically)")
    args = ap.parse_args(argv)
    exp = yaml.safe_load(Path(args.config).read_text())
    model = bundled_path() if exp.get("model", "minicanvas") == "minicanvas" else Path(exp["model"])
    base_hash = model_hash(model)
    protocol = load_protocol("minicanvas", model)
    seeds = [int(k) for k in args.eval_seeds.split(",")] if args.eval_seeds else exp.get("eval", {}).get("seeds")
    plan = make_plan(protocol, exp["domain"], sequence=exp["sequence"], retained=exp["retained"], seeds=seeds)
    out, cache = Path(args.out), Path(args.out) / "cache"
    attack_seeds = [int(k) for k in args.attack_seeds.split(",")] if args.attack_seeds else plan.seeds
    figures = {"config": args.config, "domain": exp["domain"], "sequence": exp["sequence"], "retained": exp["retained"],
               "eval_partners": plan.partners, "eval_seeds": plan.seeds, "attack_partners": plan.partners[: args.attack_partners],
               "attack_seeds": attack_seeds,
               "intervals": "95% percentile bootstrap over images, stratified by concept, 1000 resamples, seed 0 (evaluate/power.py)", "variants": {}}
    variants = [parse_variant(v) for v in args.variants.split(",") if v]
    models = {}
    for name, method, settings in variants:  # every model and its clean evaluation first
        vdir = out / name.replace(":", "-").replace("=", "").replace(",", "-")
        t0 = time.time()
        run, delta = final_model(vdir, model, exp, method, settings)
        row = {"method": method, "settings": settings, "unlearn_seconds": round(time.time() - t0, 1)}
        eval_path = vdir / "eval.json"
        if not eval_path.exists():
            timer = Timer()
            records = evaluate_records(model, base_hash, delta, protocol, plan, cache)
            unlearned = list(exp["sequence"])
            retained = [c for c in plan.retained if c not in unlearned]
            clean = metric_intervals(records, domain=exp["domain"], unlearned=unlearned, retained=retained,
                                     partners=plan.partners)
            atomic_write_json(eval_path, {"clean": clean, "images": len(records), "eval_seconds": timer.seconds()})
        row.update(json.loads(eval_path.read_text()))
        row["attacks"] = {}
        figures["variants"][name] = row
        models[name] = (vdir, delta)
        print(f"[robustness] {name}: model and evaluation done", file=sys.stderr, flush=True)
    for name_a in [a for a in args.attacks.split(",") if a]:  # then attack by attack, every variant
        for i, (name, _, _) in enumerate(variants):
            vdir, delta = models[name]
            apath = vdir / name_a / "attack.json"
            if not apath.exists():
                settings_a = dict(RELEARN, yardstick=(i == 0)) if name_a == "relearn" else {}
                target = load_target(model, delta, list(exp["sequence"]), exp["domain"], protocol,
                                     plan.partners[: args.attack_partners], attack_seeds, plan.sampler, base_hash=base_hash,
                                     cache_dir=cache, quiet=False)
                run_attack(target, build_attack(name_a, settings_a), vdir / name_a, variant=name, step=len(exp["sequence"]))
            res = json.loads(apath.read_text())
            entry = {"settings": res["settings"], "clean_UA": attack_interval(res, key="clean_hits"),
                     "seconds_per_concept": res["timings"]["per_concept_seconds"],
                     "per_concept_asr": {c: e["asr"] for c, e in res["concepts"].items()}}
            if name_a == "relearn":
                entry["steps_to_revival"] = {c: e["steps_to_revival"] for c, e in res["concepts"].items()}
                entry["yardstick_steps"] = {c: e.get("yardstick_steps") for c, e in res["concepts"].items()}
            else:
                entry["robust_UA"] = attack_interval(res)
            figures["variants"][name]["attacks"][name_a] = entry
            print(f"[robustness] {name} {name_a}: done", file=sys.stderr, flush=True)
    if args.json:
        atomic_write_json(Path(args.json), figures)
    print(json.dumps(figures, indent=1))
    for line in markdown_rows(figures):
        print(line)
    return 0


def fmt(iv: dict | None) -> str:
    return "-" if iv is None else f"{iv['value']:.1f} [{iv['lo']:.1f}, {iv['hi']:.1f}]"


def markdown_rows(figures: dict) -> list[str]:
    lines = ["| variant | clean UA | robust UA: paraphrase | inversion | prefix | RA-I | RA-C | steps-to-revival (median; never = >max) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, row in figures["variants"].items():
        a = row["attacks"]
        rel = a.get("relearn", {}).get("steps_to_revival")
        revival = "-"
        if rel:
            vals = sorted(v if v is not None else float("inf") for v in rel.values())
            revival = f"{vals[len(vals) // 2]:g} ({', '.join('never' if v is None else str(v) for v in rel.values())})"
        lines.append(f"| {name} | {fmt(row['clean'].get('UA'))} | {fmt(a.get('paraphrase', {}).get('robust_UA'))} | "
                     f"{fmt(a.get('inversion', {}).get('robust_UA'))} | {fmt(a.get('prefix', {}).get('robust_UA'))} | "
                     f"{fmt(row['clean'].get('RA_I'))} | {fmt(row['clean'].get('RA_C'))} | {revival} |")
    return lines


if __name__ == "__main__":
    sys.exit(main())
