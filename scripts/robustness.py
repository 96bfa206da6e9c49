"""The robustness table: clean UA, robust UA per attack, steps-to-revival, RA-I and
RA-C, with 95% bootstrap intervals over images, for closed-form and fine-tuning variants after
the last request of an experiment file's sequence (or its first --requests).

    OMP_NUM_THREADS=1 python scripts/robustness.py configs/uce-styles.yaml --out runs/robust-styles \
        --json docs/results/robustness-styles.json
    OMP_NUM_THREADS=1 python scripts/robustness.py configs/styles.yaml --out runs/robust-conabl-styles \
        --variants conabl,conabl+adversarial --json docs/results/robustness-conabl-styles.json

Variants (VARIANTS): `uce`, `rece`, `uce-null` (closed form); `conabl` (the style study's published
variant: recipe reference, the config's `defaults.method_settings`, e.g. 60 steps) and
`conabl+adversarial` (the same plus the `adversarial` add-on, regularizers/adversarial.py).
Settings after ':' go to the variant's add-on when it has one, else to its method
(`rece:rounds=2`, `conabl+adversarial:weight=2`); `METHOD.key` and `ADDON.key` name the owner
(`conabl+l1sp+adversarial:conabl.steps=30,l1sp.weight=10`).

Per variant: the sequence is unlearned in a run (OUT/VARIANT/run; training images cached in
OUT/train-cache, shared by variants), the final model is evaluated on the config's grid (every
concept of the domain x every partner x `eval.seeds`, images cached under OUT/cache), and every
attack runs on it (OUT/VARIANT/ATTACK/attack.json). Everything finished is reused on rerun, so
after a new bundled model, regenerating the table is the same command with a fresh --out.
The attack grid is the first `--attack-partners` partners x the attack seeds (its clean images
are the evaluation's when the seeds agree, cached). Intervals: evaluate/resample.py over
evaluate/power.py (stratified by concept, 1000 resamples, seed 0). Prints one JSON object
(what --json writes) and the Markdown rows of docs/RESULTS.md. Per attack, `seconds_per_concept`
is its measured cost (wall clock, on whatever machine and load it ran). Every variant after the
first also gets `robust_UA_minus_first` per attack: its robust UA minus the first variant's,
paired image by image on the same attack grid, with the interval and a verdict.
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
from obliviate.evaluate.resample import attack_interval, attack_paired, metric_intervals
from obliviate.evaluate.sampler import generate
from obliviate.minicanvas import bundled_path
from obliviate.model import load_pipeline, model_hash

# method -> its settings in this table ("defaults" of the config come first for trained methods)
METHODS = {"uce": {}, "rece": {}, "uce-null": {}, "conabl": {"recipe": "reference"}}  # conabl: the study's published recipe
TRAINED = {"conabl"}  # methods that take the config's defaults.method_settings (steps, ...)
VARIANTS = ("uce", "rece", "uce-null", "conabl", "conabl+ADDON[+ADDON...]")
# defaults of each attack here = the attack's own defaults; relearn checks 2 partners and
# skips its yardstick on every variant but the first (the yardstick never sees the variant:
# it fine-tunes the pretrained model)
ATTACKS = ("paraphrase", "inversion", "prefix", "relearn")
RELEARN = {"check_partners": 2, "max_steps": 50}  # the table's relearn: 2 check partners, at most 50 steps


def parse_variant(text: str, defaults: dict | None = None):
    """`METHOD[+ADDON...][:key=value,...]` -> (text, method, method settings, [(add-on, settings)]).
    A key `ADDON.key` goes to that add-on, `METHOD.key` to the method; a plain key to the last
    add-on, or to the method when there is none (`rece:rounds=2`, `conabl+adversarial:weight=2`,
    `conabl+selft+adversarial:selft.top_k=0.01`, `conabl+adversarial:conabl.steps=30`). Checked
    before any work."""
    from obliviate.continual import build_hooks

    head, _, rest = text.partition(":")
    method, *addons = head.split("+")
    if method not in METHODS or (addons and method not in TRAINED):
        raise ValueError(f"variant {text!r}: valid variants {', '.join(VARIANTS)} (settings after ':', e.g. rece:rounds=2)")
    settings = {**((defaults or {}) if method in TRAINED else {}), **METHODS[method]}
    regs = {a: {} for a in addons}
    for kv in filter(None, rest.split(",")):
        k, eq, v = kv.partition("=")
        if not eq:
            raise ValueError(f"variant {text!r}: settings must look like key=value")
        owner, dot, key = k.rpartition(".")
        if dot and owner == method:  # `conabl.steps=30`: the method's, beside add-ons
            settings[key] = v
        elif dot and owner not in regs:
            raise ValueError(f"variant {text!r}: {owner!r} is neither its method ({method}) nor one of its add-ons "
                             f"({', '.join(regs) or 'none'})")
        elif dot:
            regs[owner][key] = v
        elif addons:
            regs[addons[-1]][k] = v
        else:
            settings[k] = v
    regs = list(regs.items())
    build_hooks(Request("fire", "style", method, method_settings=settings, regularizers=regs))  # refuse bad settings now
    return text, method, settings, regs


def final_model(out: Path, model, exp: dict, method: str, settings: dict, regs: list, sequence: list[str], cache: Path):
    run = Run.open_or_create(out / "run", model)
    for concept in sequence:
        run.unlearn(Request(concept, exp["domain"], method, method_settings=settings, regularizers=regs), quiet=True,
                    cache_dir=cache)
    return run, run.cumulative_delta(len(sequence))


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
    ap.add_argument("--variants", default="uce,rece", help=f"';'-separated: {', '.join(VARIANTS)} [:key=value,...] "
                    "(',' also separates variants without settings)")
    ap.add_argument("--requests", type=int, help="only the first N requests of the sequence (small measurements)")
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
    sequence = list(exp["sequence"])[: args.requests] if args.requests else list(exp["sequence"])
    variants = [parse_variant(v, (exp.get("defaults") or {}).get("method_settings")) for v in split_variants(args.variants)]
    plan = make_plan(protocol, exp["domain"], sequence=sequence, retained=exp["retained"], seeds=seeds)
    out, cache = Path(args.out), Path(args.out) / "cache"
    attack_seeds = [int(k) for k in args.attack_seeds.split(",")] if args.attack_seeds else plan.seeds
    figures = {"config": args.config, "domain": exp["domain"], "sequence": sequence, "retained": exp["retained"],
               "eval_partners": plan.partners, "eval_seeds": plan.seeds, "attack_partners": plan.partners[: args.attack_partners],
               "attack_seeds": attack_seeds,
               "intervals": "95% percentile bootstrap over images, stratified by concept, 1000 resamples, seed 0 (evaluate/power.py)", "variants": {}}
    models = {}
    for name, method, settings, regs in variants:  # every model and its clean evaluation first
        vdir = out / name.replace(":", "-").replace("=", "").replace(",", "-")
        t0 = time.time()
        run, delta = final_model(vdir, model, exp, method, settings, regs, sequence, out / "train-cache")
        row = {"method": method, "settings": settings, "regularizers": [{"name": n, **r} for n, r in regs],
               "unlearn_seconds": round(time.time() - t0, 1),
               # per request, as step.json recorded them (setup: anchors, base images, hooks; train: the loop)
               "request_seconds": [{k: round(v, 1) for k, v in m.get("timings", {}).items()} for m in run.steps()]}
        eval_path = vdir / "eval.json"
        if not eval_path.exists():
            timer = Timer()
            records = evaluate_records(model, base_hash, delta, protocol, plan, cache)
            unlearned = list(sequence)
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
        for i, (name, *_) in enumerate(variants):
            vdir, delta = models[name]
            apath = vdir / name_a / "attack.json"
            if not apath.exists():
                settings_a = dict(RELEARN, yardstick=(i == 0)) if name_a == "relearn" else {}
                target = load_target(model, delta, list(sequence), exp["domain"], protocol,
                                     plan.partners[: args.attack_partners], attack_seeds, plan.sampler, base_hash=base_hash,
                                     cache_dir=cache, quiet=False)
                run_attack(target, build_attack(name_a, settings_a), vdir / name_a, variant=name, step=len(sequence))
            res = json.loads(apath.read_text())
            entry = {"settings": res["settings"], "clean_UA": attack_interval(res, key="clean_hits"),
                     "seconds_per_concept": res["timings"]["per_concept_seconds"],
                     "per_concept_asr": {c: e["asr"] for c, e in res["concepts"].items()}}
            if name_a == "relearn":
                entry["steps_to_revival"] = {c: e["steps_to_revival"] for c, e in res["concepts"].items()}
                entry["yardstick_steps"] = {c: e.get("yardstick_steps") for c, e in res["concepts"].items()}
            else:
                entry["robust_UA"] = attack_interval(res)
                if i:  # paired against the first variant on the same attack grid, image by image
                    first = variants[0][0]
                    entry["robust_UA_minus_first"] = attack_paired(
                        res, json.loads((models[first][0] / name_a / "attack.json").read_text()), names=(name, first))
            figures["variants"][name]["attacks"][name_a] = entry
            print(f"[robustness] {name} {name_a}: done", file=sys.stderr, flush=True)
    if args.json:
        atomic_write_json(Path(args.json), figures)
    print(json.dumps(figures, indent=1))
    for line in markdown_rows(figures):
        print(line)
    return 0


def split_variants(text: str) -> list[str]:
    """'uce,rece:rounds=2,norm=1;conabl' -> ['uce', 'rece:rounds=2,norm=1', 'conabl']: ';' always
    separates; ',' separates too, except inside a variant's settings (after ':')."""
    out = []
    for part in filter(None, text.split(";")):
        head, colon, rest = part.partition(":")
        names = head.split(",")
        out += [n for n in names[:-1] if n]
        out.append(names[-1] + colon + rest)
    return [v for v in out if v]


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
            mid = vals[len(vals) // 2]  # the upper median; `never` counts as more than max_steps
            revival = f"{'never' if mid == float('inf') else f'{mid:g}'} ({', '.join('never' if v is None else str(v) for v in rel.values())})"
        lines.append(f"| {name} | {fmt(row['clean'].get('UA'))} | {fmt(a.get('paraphrase', {}).get('robust_UA'))} | "
                     f"{fmt(a.get('inversion', {}).get('robust_UA'))} | {fmt(a.get('prefix', {}).get('robust_UA'))} | "
                     f"{fmt(row['clean'].get('RA_I'))} | {fmt(row['clean'].get('RA_C'))} | {revival} |")
    names = list(figures["variants"])
    if len(names) > 1:
        lines += ["", f"| robust UA, paired against {names[0]} (same attack images) | paraphrase | inversion | prefix |",
                  "|---|---|---|---|"]
        for name in names[1:]:
            a = figures["variants"][name]["attacks"]
            cells = []
            for attack in ("paraphrase", "inversion", "prefix"):
                d = a.get(attack, {}).get("robust_UA_minus_first")
                cells.append("-" if d is None else f"{d['difference']:+.1f} [{d['lo']:+.1f}, {d['hi']:+.1f}] {d['verdict']}")
            lines.append(f"| {name} - {names[0]} | " + " | ".join(cells) + " |")
    return lines


if __name__ == "__main__":
    sys.exit(main())
