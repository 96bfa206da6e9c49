"""Device-hours of each chain of an experiment file, from per-image and per-step figures.

A chain (obliviate.experiment.chains) is what one Ray task or SLURM job runs: a variant, or
one swept value of a variant's strength sweep. Its cost is counted from the file, not guessed:

    training    steps per request (the method's, or the swept value) x requests (x t for the
                simultaneous setting's retraining on t concepts), times --step-seconds
    images      every evaluation's grid (concepts x partners x seeds; the probe seeds for swept
                values, early-stopping snapshots and merge candidates), plus the anchor images
                ConAbl-family methods generate per request, times --image-seconds

The figures: measured ones from a benchmark file (--bench: scripts/bench_gpu.py's
`sampling.images_per_second`, rescaled to the protocol's sampler steps, and `train.step_seconds`;
or scripts/study.py --measure's `eval_seconds_per_image` and `conabl_reference_step_seconds`), or
given (--image-seconds, --step-seconds). One step figure serves every method: an ESD step, which
samples its own latents, costs more (study-cost.json, CPU: ESD 1.15 s, ConAbl 0.16 s). An upper
bound otherwise: swept values that stop early under the UA bar, and anchors that later requests
read from the cache, cost less.

    python scripts/gpu_hours.py configs/unlearncanvas-styles.yaml --bench docs/results/bench-gpu.json
    python scripts/gpu_hours.py configs/study/styles.yaml --bench docs/results/study-cost.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

SNAPSHOTS = 4  # early stopping's snapshots per request (continual.Run.unlearn)


def figures(bench: dict, sampler_steps: int) -> tuple[float, float, str]:
    """(seconds per evaluated image, seconds per training step, where they come from)."""
    if "sampling" in bench:  # scripts/bench_gpu.py
        s = bench["sampling"]
        per_image = sampler_steps / s["steps"] / s["images_per_second"]  # sampling time is linear in the steps
        return per_image, bench["train"]["step_seconds"], f"bench_gpu.py on {bench.get('device_name', 'a GPU')}"
    if "eval_seconds_per_image" in bench:  # scripts/study.py --measure (CPU, MiniCanvas)
        return bench["eval_seconds_per_image"], bench["conabl_reference_step_seconds"], "study.py --measure (CPU)"
    raise SystemExit("--bench: not a scripts/bench_gpu.py or scripts/study.py --measure file")


def chains(path: str, image_s: float, step_s: float) -> list[dict]:
    from obliviate.continual import build_hooks
    from obliviate.evaluate.evaluator import make_plan
    from obliviate.experiment import load_experiment
    from obliviate.experiment.runner import resolve_partners
    from obliviate.experiment.strength import with_value
    from obliviate.protocols import get_protocol
    from obliviate.request import Request

    exp = load_experiment(path)
    protocol = get_protocol(exp.protocol)
    plan = make_plan(protocol, exp.domain, exp.sequence, exp.retained, resolve_partners(protocol, exp.domain, exp.partners),
                     exp.seeds, exp.sampler)
    reported = len(plan.grid())
    probe = reported // len(exp.seeds) * len(exp.probe_seeds)
    n = len(exp.requested)
    rows = []

    def cost(name, variant, evaluation_images):
        method, _ = build_hooks(Request(exp.sequence[0], exp.domain, variant.method, variant.method_settings,
                                        variant.regularizers, param_group=variant.param_group))
        steps = 0 if method.closed_form else int(getattr(method.settings, "steps", 0))
        retrain = n * (n + 1) // 2 if variant.setting == "simultaneous" else n
        anchors = int(getattr(method.settings, "anchor_images", 0) or 0) * n
        extra = 0
        if variant.setting == "simultaneous" and variant.early_stopping:
            extra = SNAPSHOTS * n * probe
        if variant.setting == "independent+merge":
            lams, tops = variant.merge.get("lam", [1.0]), variant.merge.get("top_k", [1.0])
            candidates = len(lams if isinstance(lams, list) else [lams]) * len(tops if isinstance(tops, list) else [tops])
            extra = (candidates if candidates > 1 else 0) * n * probe
        images = evaluation_images + extra + anchors
        train = steps * retrain * step_s
        rows.append({"chain": name, "train_steps": steps * retrain, "images": images, "train_hours": train / 3600,
                     "image_hours": images * image_s / 3600, "hours": (train + images * image_s) / 3600})

    for v in exp.variants:
        if v.sweep:
            for value in v.sweep["values"]:
                cost(f"{v.name} {v.sweep['key']}={value}", with_value(v, v.sweep["key"], value), (n + 1) * probe)
            rows.append({"chain": f"{v.name} (chosen value, reported)", "train_steps": 0, "images": (n + 1) * reported,
                         "train_hours": 0.0, "image_hours": (n + 1) * reported * image_s / 3600,
                         "hours": (n + 1) * reported * image_s / 3600})
        else:
            cost(v.name, v, (n + 1) * reported)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("experiment", help="an experiment file (configs/...)")
    ap.add_argument("--bench", help="figures: scripts/bench_gpu.py output or docs/results/study-cost.json")
    ap.add_argument("--image-seconds", type=float, help="seconds per evaluated image at the file's sampler")
    ap.add_argument("--step-seconds", type=float, help="seconds per training step")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a Markdown table")
    args = ap.parse_args()
    from obliviate.experiment import load_experiment
    from obliviate.evaluate.sampler import SamplerConfig
    from obliviate.protocols import get_protocol

    exp = load_experiment(args.experiment)
    sampler = exp.sampler or SamplerConfig(**get_protocol(exp.protocol).sampler)
    source = "given"
    if args.bench:
        image_s, step_s, source = figures(json.loads(Path(args.bench).read_text()), sampler.steps)
    if args.image_seconds is not None:
        image_s = args.image_seconds
    if args.step_seconds is not None:
        step_s = args.step_seconds
    if not args.bench and (args.image_seconds is None or args.step_seconds is None):
        raise SystemExit("give --bench FILE, or both --image-seconds and --step-seconds")
    rows = chains(args.experiment, image_s, step_s)
    if args.json:
        print(json.dumps({"experiment": args.experiment, "image_seconds": image_s, "step_seconds": step_s,
                          "source": source, "chains": rows, "total_hours": sum(r["hours"] for r in rows)}, indent=1))
        return
    print(f"{args.experiment}: {image_s:.3g} s per image, {step_s:.3g} s per step ({source})\n")
    print("| chain | training steps | images | training h | images h | total h |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['chain']} | {r['train_steps']} | {r['images']} | {r['train_hours']:.2f} | {r['image_hours']:.2f} | "
              f"{r['hours']:.2f} |")
    print(f"| **all chains** | | | | | **{sum(r['hours'] for r in rows):.1f}** |")


if __name__ == "__main__":
    main()
