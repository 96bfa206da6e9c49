"""Where attacks meet runs: the `obliviate attack` command and the experiment runner's
`attacks:` section (every variant attacked after the last request, or at chosen steps)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from . import build_attack, load_target, parse_attack, run_attack


# ---------------------------------------------------------------- the command
def cmd_attack(args) -> int:
    from ..continual import Run
    from ..distributed import validate_device
    from ..evaluate.evaluator import load_protocol, make_plan
    from ..parsing import check_output_dir, parse_seeds
    from . import check_model

    name, settings = parse_attack(args.attack)
    attack = build_attack(name, settings)  # name and settings checked before any work
    if args.seed is not None:
        attack.settings.seed = args.seed
    validate_device(args.device)
    check_output_dir(args.out)
    seeds = parse_seeds(args.seeds)
    run = Run(args.run)
    check_model(name, run.base_model)
    steps = run.verify_chain(args.step)
    step = len(steps)
    if not steps:
        raise ValueError(f"step {step} of {args.run} unlearned nothing: there is no erased concept to attack; "
                         f"valid steps: 1..{len(run.steps())}" if run.steps() else f"{args.run} has no completed request yet")
    unlearned = list(dict.fromkeys([m["request"]["concept"] for m in steps] + [a for m in steps for a in m["request"].get("also", [])]))
    domain = steps[0]["request"]["domain"]
    if domain not in ("style", "object"):
        raise ValueError(f"attacks judge a style or an object; this run unlearned a concept of domain {domain!r}")
    protocol = load_protocol(args.protocol, run.base_model, style_classifier=args.style_classifier,
                             object_classifier=args.object_classifier)
    partners = args.partners.split(",") if args.partners else None
    plan = make_plan(protocol, domain, sequence=unlearned, partners=partners, seeds=seeds)
    target = load_target(run.base_model, run.cumulative_delta(step), unlearned, domain, protocol, plan.partners, plan.seeds,
                         plan.sampler, base_hash=run.info["base_hash"], device=args.device,
                         cache_dir=Path(args.out) / "base-images", quiet=args.quiet)
    result = run_attack(target, attack, args.out, run=str(args.run), step=step)
    for concept, entry in result["concepts"].items():
        extra = f", steps-to-revival {entry['steps_to_revival']}, yardstick {entry.get('yardstick_steps')}" if name == "relearn" else ""
        print(f"{concept}: ASR {entry['asr']:.1f}%{extra} ({result['timings']['per_concept_seconds'][concept]:.1f} s)")
    ua = result["robust_UA"]
    print(f"clean UA {result['clean_UA']:.1f} (plain template, same grid)")
    print(f"{name}: mean ASR {result['mean_asr']:.1f}%" + (f", robust UA {ua:.1f}" if ua is not None else "")
          + f" -> {Path(args.out) / 'attack.json'}")
    return 0


def add_command(sub) -> None:
    from . import ATTACKS

    at = sub.add_parser("attack", help="attack the concepts a run unlearned (paraphrase, inversion, prefix, relearn)")
    at.add_argument("--run", required=True, help="a run directory")
    at.add_argument("--step", type=int, help="attack the model after this many requests (default: all)")
    at.add_argument("--attack", required=True, metavar="NAME[:key=value,...]", help=f"one of: {', '.join(ATTACKS)}")
    at.add_argument("--out", required=True, help="directory for attack.json")
    at.add_argument("--seed", type=int, help="the attack's seed (default: its `seed` setting, 0)")
    at.add_argument("--seeds", help="comma-separated evaluation seeds (default: the protocol's first two)")
    at.add_argument("--partners", help="comma-separated partner concepts (default: the protocol's)")
    at.add_argument("--protocol", default="minicanvas", help="minicanvas or unlearncanvas")
    at.add_argument("--style-classifier", help="unlearncanvas: style classifier checkpoint")
    at.add_argument("--object-classifier", help="unlearncanvas: object classifier checkpoint")
    at.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    at.set_defaults(func=cmd_attack)


# ---------------------------------------------------------------- experiment files
def parse_attacks_section(items, where: str) -> list[dict]:
    """`attacks:` entries: a name, or a mapping {name, at: [steps] | last, <settings>}."""
    out = []
    for i, item in enumerate(items or []):
        if isinstance(item, str):
            name, settings = parse_attack(item)
            at = "last"
        elif isinstance(item, dict) and "name" in item:
            name = str(item["name"])
            at = item.get("at", "last")
            settings = {k: v for k, v in item.items() if k not in ("name", "at")}
        else:
            raise ValueError(f"{where}: attacks[{i}] is a name or a mapping with 'name', got {item!r}")
        if at != "last" and not (isinstance(at, list) and all(isinstance(k, int) and k >= 1 for k in at)):
            raise ValueError(f"{where}: attacks[{i}] ({name}): `at` is 'last' or a list of steps >= 1, got {at!r}")
        build_attack(name, settings)  # checked now, not after the training
        out.append({"name": name, "settings": settings, "at": at})
    return out


def variant_delta(runner, variant, vdir: Path, rows: list[dict], t: int) -> dict:
    """The model a variant reports after request t, rebuilt from what the runner left on disk."""
    from ..continual import Run, slug
    from ..merge import merge_task_vectors

    if variant.setting == "sequential":
        return Run(vdir / "run").cumulative_delta(t)
    if variant.setting == "simultaneous":
        return Run(vdir / f"retrain{t:03d}").cumulative_delta(1)
    merge = rows[t]["merge"]
    taus = [Run(vdir / "independent" / slug(c)).cumulative_delta(1) for c in runner.exp.sequence[:t]]
    return merge_task_vectors(taus, merge["method"], lam=merge["lam"], top_k=merge["top_k"])


def attack_variant(runner, variant, vdir: Path, rows: list[dict]) -> dict:
    """Every `attacks:` entry on one variant; results cached as files (reruns reuse them)."""
    results = {}
    last = len(runner.exp.sequence)
    for spec in runner.exp.attacks:
        steps = [last] if spec["at"] == "last" else [k for k in spec["at"] if k <= last]
        digest = hashlib.sha256(json.dumps([spec["name"], spec["settings"]], sort_keys=True).encode()).hexdigest()[:8]
        for t in steps:
            out = vdir / "attacks" / f"{spec['name']}-{digest}-step{t:03d}"
            path = out / "attack.json"
            if path.exists():
                result = json.loads(path.read_text())
            else:
                attack = build_attack(spec["name"], spec["settings"])
                unlearned = runner.exp.sequence[:t]
                plan = runner.plan
                target = load_target(runner.exp.model, variant_delta(runner, variant, vdir, rows, t), unlearned, plan.domain,
                                     runner.protocol, plan.partners, plan.seeds, plan.sampler, base_hash=runner.base_hash,
                                     cache_dir=runner.cache, quiet=runner.quiet)
                result = run_attack(target, attack, out, variant=variant.name, step=t)
                runner.log(f"{variant.name} step {t} attack {spec['name']}: mean ASR {result['mean_asr']:.1f}%")
            results[f"{spec['name']}@{t}"] = {
                "attack": spec["name"], "step": t, "settings": result["settings"], "mean_asr": result["mean_asr"],
                "robust_UA": result["robust_UA"], "clean_UA": rows[t]["UA"],
                "clean_UA_attack_grid": result["clean_UA"],
                "per_concept_asr": {c: e["asr"] for c, e in result["concepts"].items()},
                **({"steps_to_revival": {c: e["steps_to_revival"] for c, e in result["concepts"].items()},
                    "yardstick_steps": {c: e.get("yardstick_steps") for c, e in result["concepts"].items()}}
                   if spec["name"] == "relearn" else {}),
                "seconds": result["timings"]["total_seconds"],
            }
    return results


__all__ = ["add_command", "attack_variant", "cmd_attack", "parse_attacks_section"]
