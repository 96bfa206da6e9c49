"""The robustness table: clean UA, robust UA per attack, steps-to-revival, RA-I and
RA-C, with 95% bootstrap intervals over images, for closed-form and fine-tuning variants after
the last request of an experiment file's sequence (or its first --requests).

    OMP_NUM_THREADS=1 python scripts/robustness.py configs/uce-styles.yaml --out runs/robust-styles \
        --json docs/results/robustness-styles.json
    OMP_NUM_THREADS=1 python scripts/robustness.py configs/styles.yaml --out runs/robust-conabl-styles \
        --variants "conabl; {name: conabl+adversarial, method_settings: {recipe: reference}, regularizers: [adversarial]}" \
        --json docs/results/robustness-conabl-styles.json

Variants are the experiment file's, in its syntax (docs/GETTING_STARTED.md, experiment files;
experiment.config.parse_variant checks them exactly as `obliviate run` does): `--variants`
lists, separated by ';' (or ',' between names), the names of variants in the file and variants
written out as YAML mappings, `{name: conabl+l1sp, method: conabl, method_settings: {recipe:
reference}, regularizers: [{name: l1sp, weight: 10}]}`; the file's `defaults:` apply to both.
Default: every variant of the file the table can run: it unlearns the sequence request by
request, so a variant must be sequential (no sweep, no early stopping).

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
from obliviate.experiment.config import Experiment, Variant, load_experiment, parse_variant
from obliviate.model import edited, load_pipeline, model_hash

# defaults of each attack here = the attack's own defaults; relearn checks 2 partners and
# skips its yardstick on every variant but the first (the yardstick never sees the variant:
# it fine-tunes the pretrained model)
ATTACKS = ("paraphrase", "inversion", "prefix", "relearn")
RELEARN = {"check_partners": 2, "max_steps": 50}  # the table's relearn: 2 check partners, at most 50 steps


def parse_variants(text: str | None, exp: Experiment, where: str = "--variants") -> list[Variant]:
    """`--variants`: ';'-separated items (',' also separates names), each the name of one of the
    experiment file's variants or a variant in the file's syntax (a YAML mapping), over the
    file's `defaults:` and checked as the file's own variants are; default: every variant of
    the file the table can run (sequential, no sweep, no early stopping). Checked before any work."""
    if not text:
        chosen = [v for v in exp.variants if runnable(v)]
        if not chosen:
            raise ValueError(f"{where}: none of the experiment file's variants is sequential without sweep or "
                             "early_stopping; name or write the variants to run")
    else:
        known = {v.name: v for v in exp.variants}
        chosen = []
        for i, item in enumerate(split_variants(text)):
            if item.startswith("{"):
                try:
                    raw = yaml.safe_load(item)
                except yaml.YAMLError as err:
                    raise ValueError(f"{where} {item!r} is not a valid YAML mapping: {err}") from None
                chosen.append(parse_variant(raw, exp.domain, f"{where}[{i}]", (exp.raw.get("defaults") or {})))
            elif item in known:
                chosen.append(known[item])
            else:
                raise ValueError(f"{where}: {item!r} is not a variant of the experiment file (its variants: "
                                 f"{', '.join(known)}); write one out in the file's syntax, e.g. "
                                 f"'{{name: {item}, method: {item}}}'")
    names = [v.name for v in chosen]
    if len(set(names)) != len(names):
        raise ValueError(f"{where}: variant names must be unique, got {names}")
    for v in chosen:
        if not runnable(v):
            raise ValueError(f"{where}: variant {v.name!r}: the robustness table unlearns the sequence request by request "
                             "(setting sequential, no sweep, no early_stopping)")
    return chosen


def runnable(v: Variant) -> bool:
    """The table unlearns the sequence request by request, one run per variant."""
    return v.setting == "sequential" and not v.sweep and not v.early_stopping


def final_model(out: Path, model, exp: Experiment, variant: Variant, sequence: list[str], cache: Path):
    run = Run.open_or_create(out / "run", model)
    for concept in sequence:
        run.unlearn(Request(concept, exp.domain, variant.method, method_settings=variant.method_settings,
                            regularizers=variant.regularizers, seed=exp.seed, param_group=variant.param_group),
                    quiet=True, cache_dir=cache)
    return run, run.cumulative_delta(len(sequence))


def evaluate_records(model, base_hash, delta, protocol, plan, cache: Path) -> list[Record]:
    cells = plan.grid()
    pipe = load_pipeline(model)
    key = model_key(base_hash, tensors_hash(delta))  # the key attacks' clean images use (attacks/common.py)
    with with_delta(edited(pipe), delta):
        images = generate(pipe, [protocol.prompt(s, o) for s, o, _ in cells], [k for _, _, k in cells], plan.sampler,
                          cache_dir=cache, model_key=key)
    pred = protocol.judge.predict(np.stack(images))
    return [Record(s, o, k, ps, po) for (s, o, k), ps, po in zip(cells, pred["style"], pred["object"])]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", help="an experiment file (sequence, retained, domain, eval.seeds)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--variants", help="';'-separated: names of the experiment file's variants (',' also separates "
                    "names) or variants in its syntax, '{name: X, method: M, method_settings: {...}, regularizers: [...]}' "
                    "(default: every variant of the file)")
    ap.add_argument("--requests", type=int, help="only the first N requests of the sequence (small measurements)")
    ap.add_argument("--attacks", default=",".join(ATTACKS))
    ap.add_argument("--attack-partners", type=int, default=4)
    ap.add_argument("--eval-seeds", help="comma-separated seeds of the clean evaluation (default: the config's eval.seeds)")
    ap.add_argument("--attack-seeds", help="comma-separated seeds of the attack grid (default: the evaluation's)")
    ap.add_argument("--json", help="also write the figures here (atomically)")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    exp = load_experiment(args.config)  # the whole file checked, its variants included
    variants = parse_variants(args.variants, exp)
    model = Path(exp.model)
    base_hash = model_hash(model)
    protocol = load_protocol("minicanvas", model)
    seeds = [int(k) for k in args.eval_seeds.split(",")] if args.eval_seeds else exp.seeds
    sequence = list(exp.sequence)[: args.requests] if args.requests else list(exp.sequence)
    plan = make_plan(protocol, exp.domain, sequence=sequence, retained=exp.retained, seeds=seeds)
    out, cache = Path(args.out), Path(args.out) / "cache"
    attack_seeds = [int(k) for k in args.attack_seeds.split(",")] if args.attack_seeds else plan.seeds
    figures = {"config": args.config, "domain": exp.domain, "sequence": sequence, "retained": exp.retained,
               "eval_partners": plan.partners, "eval_seeds": plan.seeds, "attack_partners": plan.partners[: args.attack_partners],
               "attack_seeds": attack_seeds,
               "intervals": "95% percentile bootstrap over images, stratified by concept, 1000 resamples, seed 0 (evaluate/power.py)", "variants": {}}
    models = {}
    for variant in variants:  # every model and its clean evaluation first
        name = variant.name
        vdir = out / name.replace(":", "-").replace("=", "").replace(",", "-").replace("/", "-")
        t0 = time.time()
        run, delta = final_model(vdir, model, exp, variant, sequence, out / "train-cache")
        row = {"method": variant.method, "settings": variant.method_settings, "param_group": variant.param_group,
               "regularizers": [{"name": n, **r} for n, r in variant.regularizers],
               "unlearn_seconds": round(time.time() - t0, 1),
               # per request, as step.json recorded them (setup: anchors, base images, hooks; train: the loop)
               "request_seconds": [{k: round(v, 1) for k, v in m.get("timings", {}).items()} for m in run.steps()]}
        eval_path = vdir / "eval.json"
        if not eval_path.exists():
            timer = Timer()
            records = evaluate_records(model, base_hash, delta, protocol, plan, cache)
            unlearned = list(sequence)
            retained = [c for c in plan.retained if c not in unlearned]
            clean = metric_intervals(records, domain=exp.domain, unlearned=unlearned, retained=retained,
                                     partners=plan.partners)
            atomic_write_json(eval_path, {"clean": clean, "images": len(records), "eval_seconds": timer.seconds()})
        row.update(json.loads(eval_path.read_text()))
        row["attacks"] = {}
        figures["variants"][name] = row
        models[name] = (vdir, delta)
        print(f"[robustness] {name}: model and evaluation done", file=sys.stderr, flush=True)
    for name_a in [a for a in args.attacks.split(",") if a]:  # then attack by attack, every variant
        for i, name in enumerate(v.name for v in variants):
            vdir, delta = models[name]
            apath = vdir / name_a / "attack.json"
            if not apath.exists():
                settings_a = dict(RELEARN, yardstick=(i == 0)) if name_a == "relearn" else {}
                target = load_target(model, delta, list(sequence), exp.domain, protocol,
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
                    first = variants[0].name
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
    """'uce,uce:previous; {name: x, method: rece}' -> ['uce', 'uce:previous', '{name: x, method: rece}']:
    ';' always separates; ',' separates too, except inside a mapping."""
    out = []
    for part in (p.strip() for p in text.split(";")):
        out += [part] if part.startswith("{") else [n.strip() for n in part.split(",")]
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
