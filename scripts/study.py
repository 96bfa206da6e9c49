"""Run the second-edition study behind docs/RESULTS.md, one unit at a time, so that
it survives interruptions and fresh machines.

A *unit* is one variant of one study file (configs/study/*.yaml), one training seed, and a
number of requests: the runner sweeps the variant's strength on the probe seeds, picks it by
the equal-forgetting policy (best retention among the values keeping UA >= 90 after every
request; experiment/strength.py), then evaluates the chosen value on the reported seeds (every
partner x 3 seeds). Units run in this order, the most decision-relevant first:

  1. objects, 8 requests, training seed 0      (answers "what to run for 8 objects")
  2. styles, 8 requests, training seed 0       (answers "what to run for 8 styles")
  3. objects and styles, 8 requests, seed 1    (the second training seed of both answers)
  4. styles, 12 requests, seeds 0 and 1        (grows each 8-request run to 12, same directory)

and within each, in the study file's variant order (the claims' variants first). A variant
whose seed-0, 8-request sweep kept UA >= 90 at no value cannot be at equal forgetting for
another seed or a longer sequence, so its later units cannot change the answer: they run
last, after every other unit.

A variant's strength is chosen once per domain and number of requests, on training seed 0:
a seed-1 unit runs at the value its seed-0 unit chose (read from that unit's committed
summary; its "sweep" is that one value, still probed, so its record says whether the value
kept UA >= 90 for this seed too). So the seeds replicate one recipe rather than each picking
its own, and a seed-1 unit costs one value's training instead of the sweep's. A closed-form
variant (uce) has no seed-1 unit: its solve does not depend on the training seed. A seed-1 unit
waits for its seed-0 unit when both are to run.

A 12-request unit reruns the same directory with `requests: 12`: its first 8 requests' training and probe
evaluations are reused (the evaluation grid is the whole sequence either way), so on the same
machine it only adds requests 9-12 and the reported evaluations of its chosen value.

When a unit finishes, its summary.json (metrics with intervals, per-image predictions for
paired comparisons, the sweep table; no images, no deltas; a few tens of kB) and its
experiment.json are copied to docs/results/study/UNIT/, to be committed. A unit whose finished
summary is there is skipped, so on a fresh clone `make study` only runs what is not committed
yet. An interrupted unit resumes from runs/study/ (the runner's own files) when rerun. Units of
one domain share one image and anchor cache (runs/study/_cache/DOMAIN), which is safe: every
cached file is keyed by its content's inputs, written atomically, and generated under a lock.

The units run through an executor (obliviate.experiment.executor; docs/SCALING.md): local, one
after the other in this process (the default), or Ray / SLURM, each unit one task or job, in
waves (`waves`: never two units of one directory, a seed-1 unit after its seed-0 unit).

    python scripts/study.py [--executor ray --workers 2] [--only NAME,...]   # run what is not committed
    python scripts/study.py --plan                           # list every unit with its estimated time
    python scripts/study.py --measure             # measure the figures --plan uses (~5 min)
    python scripts/study.py --dry-run                        # what would run, what is skipped
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
FILES = {"objects": "configs/study/objects.yaml", "styles": "configs/study/styles.yaml"}
TRAINING_SEEDS = (0, 1)
# (domain, requests, training seed), in the order they run
PHASES = [("objects", 8, 0), ("styles", 8, 0), ("objects", 8, 1), ("styles", 8, 1), ("styles", 12, 0), ("styles", 12, 1)]
COST = "docs/results/study-cost.json"
PLAN = "docs/results/study-plan.json"


@dataclass
class Unit:
    name: str      # the committed folder: DOMAIN-rREQUESTS-VARIANT-sSEED
    run_dir: str   # under --runs: DOMAIN-VARIANT-sSEED, shared by the 8- and 12-request units
    domain: str
    requests: int
    seed: int
    variant: str
    config: dict   # the experiment: the study file with this one variant and `requests`

    @property
    def reference(self) -> str | None:
        """The seed-0 unit whose chosen strength this unit runs at (None for seed 0 or no sweep)."""
        if self.seed == 0 or not self.config["variants"][0].get("sweep"):
            return None
        return f"{self.domain}-r{self.requests}-{slug(self.variant)}-s0"


def slug(text: str) -> str:
    from obliviate.continual import slug as _slug

    return _slug(text)


def seed_free(method: str, regularizers=()) -> bool:
    """A closed-form method (uce) solves without randomness: a training seed changes nothing (a
    seed-1 run of styles uce reproduced seed 0's figures exactly), so it runs for seed 0 only. An
    add-on that comes with a closed form (advunlearn, before the solve) draws from the seed."""
    from obliviate.methods import get_method

    return bool(get_method(method).closed_form) and not regularizers


def units(files: dict[str, str] | None = None, phases=None, root: Path = ROOT) -> list[Unit]:
    """Every unit of the study, in execution order (no seed-1 unit for a closed-form variant
    without add-ons)."""
    files = files or FILES
    raws = {}
    for domain, path in files.items():
        p = Path(path) if Path(path).is_absolute() else root / path
        raws[domain] = yaml.safe_load(p.read_text())  # YAML anchors resolved here
    out = []
    for domain, requests, seed in phases or PHASES:
        if domain not in raws:
            continue
        raw = raws[domain]
        if requests > len(raw["sequence"]):
            continue
        for v in raw["variants"]:
            defaults = raw.get("defaults") or {}
            if seed > 0 and seed_free(v.get("method", defaults.get("method", "conabl")),
                                      v.get("regularizers", defaults.get("regularizers", ()))):
                continue
            cfg = copy.deepcopy(raw)
            cfg["variants"] = [copy.deepcopy(v)]
            cfg["requests"] = requests
            cfg["name"] = f"{raw.get('name', domain)}-{slug(v['name'])}"
            cfg["grid"] = {**(cfg.get("grid") or {}), "variant": v["name"]}
            out.append(Unit(f"{domain}-r{requests}-{slug(v['name'])}-s{seed}", f"{domain}-{slug(v['name'])}-s{seed}",
                            domain, requests, seed, v["name"], cfg))
    return out


def check_units(items: list[Unit]) -> None:
    """Every derived experiment parses (names, settings, sweeps) before any work."""
    from obliviate.experiment import load_experiment

    for u in items:
        try:
            load_experiment(u.config)
        except ValueError as err:
            raise SystemExit(f"study unit {u.name}: {err}") from None


def at_reference_strength(unit: Unit, results: Path) -> Unit | None:
    """`unit` with its sweep narrowed to the value its seed-0 unit chose (from that unit's
    committed summary); the unit itself when it has no reference; None when the reference's
    summary is not committed yet (or does not record a choice)."""
    if unit.reference is None:
        return unit
    try:
        summary = json.loads((results / unit.reference / "summary.json").read_text())
        chosen = summary["variants"][unit.variant]["strength"]["chosen"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    cfg = copy.deepcopy(unit.config)
    cfg["variants"][0]["sweep"] = {**cfg["variants"][0]["sweep"], "values": [chosen]}
    return Unit(unit.name, unit.run_dir, unit.domain, unit.requests, unit.seed, unit.variant, cfg)


def finished(path: Path) -> bool:
    """A complete summary.json: readable, and written after the last variant."""
    try:
        summary = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(summary, dict) and summary.get("wall_seconds") is not None


def out_of_the_answer(unit: Unit, results: Path) -> bool:
    """True when a committed seed-0 summary of the unit's variant and domain, for 8 requests or for
    the unit's own number of requests, says no swept value kept UA >= 90 (`meets_ua` false): the
    variant is then not at equal forgetting for any seed or a longer sequence (equal forgetting
    needs the bar after every request), so this unit's results cannot change which variant to run."""
    if unit.seed == 0 and unit.requests <= 8:
        return False
    for requests in sorted({8, unit.requests}):
        if requests == unit.requests and unit.seed == 0:
            continue  # the unit itself
        try:
            summary = json.loads((results / f"{unit.domain}-r{requests}-{slug(unit.variant)}-s0" / "summary.json").read_text())
            if summary["variants"][unit.variant]["strength"]["meets_ua"] is False:
                return True
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return False


def plan(items: list[Unit], results: Path) -> tuple[list, list]:
    """(to run, skipped): a unit is skipped when its finished summary is committed under `results`.
    Units that cannot change the answer (`out_of_the_answer`) run after the others, which keep
    their order."""
    todo, skipped = [], []
    for u in items:
        (skipped if finished(results / u.name / "summary.json") else todo).append(u)
    todo.sort(key=lambda u: out_of_the_answer(u, results))  # stable: the decision order otherwise
    return todo, skipped


def portable(summary: dict) -> dict:
    """No machine paths in committed files: the bundled model is named, others by folder name."""
    out = json.loads(json.dumps(summary))
    base = out.get("base_model") or {}
    if base.get("path"):
        from obliviate.minicanvas import bundled_path

        same = Path(base["path"]).resolve() == Path(bundled_path()).resolve()
        base["path"] = "minicanvas (bundled)" if same else Path(base["path"]).name
    return out


def compact(obj) -> bytes:
    return (json.dumps(obj, separators=(",", ":")) + "\n").encode()


def keep(run_dir: Path, dest: Path) -> Path:
    """Copy a finished unit's summary.json and experiment.json to `dest` (atomically, compact JSON)."""
    from obliviate.delta import atomic_write_bytes

    summary = json.loads((run_dir / "summary.json").read_text())
    atomic_write_bytes(dest / "summary.json", compact(portable(summary)))
    if (run_dir / "experiment.json").exists():
        exp = json.loads((run_dir / "experiment.json").read_text())
        if isinstance(exp.get("model"), str) and os.path.isabs(exp["model"]):
            exp["model"] = Path(exp["model"]).name
        atomic_write_bytes(dest / "experiment.json", compact(exp))
    return dest


def prepare(unit: Unit, runs: Path) -> Path:
    """The unit's directory, its experiment file, and its link to the domain's shared cache."""
    from obliviate.delta import atomic_write_bytes

    rd = runs / unit.run_dir
    rd.mkdir(parents=True, exist_ok=True)
    shared = runs / "_cache" / unit.domain
    shared.mkdir(parents=True, exist_ok=True)
    link = rd / "cache"
    if not link.exists() and not link.is_symlink():
        link.symlink_to(Path("..") / "_cache" / unit.domain, target_is_directory=True)
    path = rd / f"unit-r{unit.requests}.yaml"
    atomic_write_bytes(path, yaml.safe_dump(unit.config, sort_keys=False).encode())
    return path


def command(unit: Unit, runs: Path) -> list[str]:
    """The unit as an `obliviate` command line (its arguments after `obliviate`)."""
    exp = prepare(unit, runs)
    return ["--quiet", "run", str(exp), "--out", str(runs / unit.run_dir), "--seed", str(unit.seed)]


def waves(pending: list[Unit]) -> list[list[Unit]]:
    """`pending` in waves of units that can run at once, each wave in decision order: never two
    units of one directory (an 8-request unit and the 12-request unit that grows it), never a
    seed-1 unit with or before the seed-0 unit whose chosen strength it reads."""
    out, pending = [], list(pending)
    while pending:
        names = {u.name for u in pending}
        wave, busy = [], set()
        for u in pending:
            if u.run_dir not in busy and u.reference not in names:
                wave.append(u)
                busy.add(u.run_dir)
            else:
                busy.add(u.run_dir)  # a later unit of this directory waits for the earlier one
        if not wave:  # cannot happen (a reference has no reference); refuse rather than loop
            raise RuntimeError(f"units wait for each other: {sorted(names)}")
        out.append(wave)
        pending = [u for u in pending if u not in wave]
    return out


def run_study(items: list[Unit], runs: Path, results: Path, *, executor=None, log=print) -> dict:
    """Run what is not committed through `executor` (obliviate.experiment.executor: local, one
    unit after the other in this process, unless given; Ray or SLURM run a wave's units at
    once), wave by wave (`waves`); after each wave keep the finished units' summaries, so the
    next wave's seed-1 units read the strengths they run at. Schedules nothing itself."""
    from obliviate.command import Command
    from obliviate.experiment.executor import Chain, LocalExecutor

    executor = executor or LocalExecutor()
    todo, skipped = plan(items, results)
    for u in skipped:
        log(f"[study] {u.name}: finished summary committed under {results / u.name}; skipped")
    kept, failed = [], []
    for i, wave in enumerate(waves(todo), start=1):
        ready = []
        for u in wave:
            fixed = at_reference_strength(u, results)
            if fixed is None:
                failed.append(u.name)
                log(f"[study] {u.name}: runs at the strength {u.reference} chose, and {results / u.reference}/summary.json "
                    f"is not there; run {u.reference} first")
                continue
            ready.append(fixed)
        if not ready:
            continue
        log(f"[study] wave {i}: {', '.join(u.name for u in ready)} on {executor.describe()}")
        chains = [Chain(u.name, Command(command(u, runs)), runs / u.run_dir / f"unit-r{u.requests}.log") for u in ready]
        broken = {f.chain.name: f for f in executor.run(chains, log=log)}
        for u in ready:
            summary = runs / u.run_dir / "summary.json"
            ok = u.name not in broken and finished(summary) and \
                json.loads(summary.read_text()).get("requests", u.requests) == u.requests
            if ok:
                kept.append(str(keep(runs / u.run_dir, results / u.name)))
                log(f"[study] {u.name}: finished; commit {results / u.name}/")
            else:
                failed.append(u.name)
                why = broken[u.name].error if u.name in broken else "its summary is not a finished one of this length"
                log(f"[study] {u.name}: {why}; log: {runs / u.run_dir / f'unit-r{u.requests}.log'}; rerun to resume it")
    executor.close()
    return {"skipped": [u.name for u in skipped], "ran": [u.name for u in todo], "kept": kept, "failed": failed}


# ------------------------------------------------------------------ cost: measure, estimate
def measure(out: Path, *, eval_images: int = 64, conabl_steps: int = 20, esd_steps: int = 10) -> dict:
    """Seconds per scored image (the study's sampler and judge), per ConAbl step in the
    reference recipe, per ESD step, per uce request, and the reference recipe's anchor
    generation, on the bundled model in this one process (run it niced, alone)."""
    import torch

    from obliviate.continual import Run
    from obliviate.delta import atomic_write_json
    from obliviate.evaluate.evaluator import EvalPlan, evaluate, load_protocol
    from obliviate.evaluate.sampler import SamplerConfig
    from obliviate.experiment import load_experiment
    from obliviate.minicanvas import bundled_path
    from obliviate.model import load_pipeline
    from obliviate.request import Request

    model = str(bundled_path())
    exp = load_experiment(ROOT / FILES["styles"])
    sampler = exp.sampler or SamplerConfig()
    protocol = load_protocol("minicanvas", model)
    pipe = load_pipeline(model, device="cpu")
    styles, objects = list(protocol.styles), list(protocol.objects)
    per = max(1, eval_images // len(styles))
    plan = EvalPlan("style", styles, [], objects[:per], [188], sampler)
    t0 = time.time()
    evaluate(pipe, protocol, plan, [], key="measure", cache_dir=None)
    eval_s = (time.time() - t0) / len(plan.grid())
    del pipe
    fig = {"eval_seconds_per_image": eval_s, "eval_images_timed": len(plan.grid()), "sampler": sampler.__dict__}
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        run = Run.open_or_create(Path(tmp) / "conabl", model)
        first = run.unlearn(Request("fire", "style", "conabl", {"recipe": "reference", "steps": conabl_steps}), quiet=True,
                            cache_dir=cache, device="cpu")
        second = run.unlearn(Request("ice", "style", "conabl", {"recipe": "reference", "steps": conabl_steps}), quiet=True,
                             cache_dir=cache, device="cpu")
        obj = Run.open_or_create(Path(tmp) / "object", model).unlearn(
            Request("circle", "object", "conabl", {"recipe": "reference", "steps": conabl_steps}), quiet=True,
            cache_dir=cache, device="cpu")
        esd = Run.open_or_create(Path(tmp) / "esd", model).unlearn(
            Request("fire", "style", "esd", {"steps": esd_steps}), quiet=True, cache_dir=cache, device="cpu")
        t0 = time.time()
        Run.open_or_create(Path(tmp) / "uce", model).unlearn(Request("fire", "style", "uce", {}), quiet=True,
                                                            cache_dir=cache, device="cpu")
        uce_s = time.time() - t0
    t = lambda m: m["timings"]
    fig.update({
        "conabl_reference_step_seconds": t(second)["train_seconds"] / conabl_steps,
        "anchor_setup_seconds": {"style (first request; later style requests reuse the same anchors)": t(first)["setup_seconds"],
                                 "style, anchors cached": t(second)["setup_seconds"], "object (per anchor object)": t(obj)["setup_seconds"]},
        "esd_step_seconds": t(esd)["train_seconds"] / esd_steps, "esd_setup_seconds": t(esd)["setup_seconds"],
        "uce_request_seconds": uce_s,
        "conabl_steps_timed": conabl_steps, "esd_steps_timed": esd_steps,
        "torch_threads": torch.get_num_threads(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "load_average_after": list(os.getloadavg()), "machine": platform.machine(), "torch": torch.__version__,
        "command": "python scripts/study.py --measure",
    })
    atomic_write_json(out, fig)
    return fig


# what a request costs relative to plain ConAbl (docs/results/bench-requests.json, wall seconds
# per request with setup; obliviate's recipe, 60 steps): regularizers add per-step work
FACTOR_KEYS = {"l1sp": "conabl+l1sp", "l2sp": "conabl+l2sp", "selft": "conabl+selft", "replay": "ours:replay",
               "projection": "conabl+projection", "sculpmem": "sculpmem"}


def factors(bench: Path) -> dict:
    try:
        b = json.loads(bench.read_text())["variants"]
    except (OSError, ValueError, KeyError):
        return {}
    return {k: b[v]["ratio_to_base"] for k, v in FACTOR_KEYS.items() if v in b}


def estimate(unit: Unit, cost: dict, facs: dict, *, extends: bool = False) -> dict:
    """Seconds of one unit from the measured figures: every swept value trained over the
    requests and probe-evaluated after each, then the chosen value evaluated on the reported
    seeds. `extends`: a 12-request unit growing an 8-request one in the same directory (only
    the new requests are trained and probed; the reported evaluation is counted in full, the
    case where the chosen value changes)."""
    from obliviate.experiment import load_experiment

    exp = load_experiment(unit.config)
    v = exp.variants[0]
    n_other = 12 if unit.domain == "styles" else 16  # partners: all (MiniCanvas: 16 styles, 12 objects)
    if isinstance(exp.partners, list):
        n_other = len(exp.partners)
    concepts = len(dict.fromkeys(exp.sequence + (exp.retained or [])))
    report_images, probe_images = concepts * n_other * len(exp.seeds), concepts * n_other * len(exp.probe_seeds)
    values = v.sweep.get("values") or [None]
    start = 8 if extends else 0
    new = range(start + 1, unit.requests + 1)  # requests trained and probed by this unit
    step_s = cost["conabl_reference_step_seconds"]
    factor = 1.0
    for name, _ in v.regularizers:
        factor *= facs.get(name, 1.0)
    if v.method == "sculpmem":
        factor *= facs.get("sculpmem", 1.0)
    train = 0.0
    for value in values:
        steps = value if v.sweep.get("key") == "method_settings.steps" else v.method_settings.get("steps", 100)
        for t in new:
            if v.method == "uce":
                train += cost["uce_request_seconds"]
            elif v.method == "esd":
                train += steps * cost["esd_step_seconds"] + cost.get("esd_setup_seconds", 0.0)
            else:
                train += steps * step_s * factor * (t if v.setting == "simultaneous" else 1)
    probe_evals = len(values) * len(new) * (v.sweep != {}) + (0 if extends else 1)
    report_evals = unit.requests + (0 if extends else 1)
    ev = cost["eval_seconds_per_image"] * (probe_evals * probe_images + report_evals * report_images)
    return {"unit": unit.name, "seconds": train + ev, "train_seconds": train, "eval_seconds": ev,
            "probe_evaluations": probe_evals, "reported_evaluations": report_evals, "images_per_probe": probe_images,
            "images_per_evaluation": report_images, "values": len(values)}


def plan_costs(items: list[Unit], cost: dict, facs: dict, results: Path, jobs: int) -> dict:
    rows, seen = [], set()
    for u in items:
        u = at_reference_strength(u, results) or u  # seed 1 at seed 0's value; the whole sweep until it is known
        row = estimate(u, cost, facs, extends=u.run_dir in seen and u.requests > 8)
        seen.add(u.run_dir)
        row["committed"] = finished(results / u.name / "summary.json")
        rows.append(row)
    # the reference recipe's anchors: generated once per style study (shared captions) and once
    # per object request (its anchor object), then read from the shared cache
    anchors = cost["anchor_setup_seconds"]
    style_key = next(k for k in anchors if k.startswith("style (first"))
    obj_key = next(k for k in anchors if k.startswith("object"))
    n_obj = max((u.requests for u in items if u.domain == "objects"), default=0)
    extra = (anchors[style_key] if any(u.domain == "styles" for u in items) else 0.0) + anchors[obj_key] * n_obj
    total = sum(r["seconds"] for r in rows) + extra
    left = sum(r["seconds"] for r in rows if not r["committed"]) + (extra if not all(r["committed"] for r in rows) else 0.0)
    return {"units": rows, "anchor_seconds": extra, "total_seconds": total, "left_seconds": left, "jobs": jobs,
            "wall_hours_at_jobs": left / 3600 / jobs,
            "basis": {"cost": COST, "regularizer_factors": facs, "eval_seconds_per_image": cost["eval_seconds_per_image"],
                      "conabl_reference_step_seconds": cost["conabl_reference_step_seconds"],
                      "measured_load_average": cost.get("load_average_after")},
            "caveats": ["an upper bound: every swept value is counted for every request, but the equal-forgetting "
                        "policy stops a value after the first request whose probe UA is under the bar (early_stop), "
                        "which depends on results not known ahead",
                        "one-process CPU seconds on the measuring machine; with 2 units at once on 2 cores a unit runs at one "
                        "thread, and any other load slows it", "regularizer factors come from bench-requests.json "
                        "(obliviate's recipe, 60 steps, 2 threads), applied to the measured reference-recipe step",
                        "a seed-1 unit is counted at the one value its seed-0 unit chose once that unit is committed, "
                        "and at the whole sweep before", "12-request units are counted as extending their 8-request directory on the same machine; "
                        "on a fresh machine they retrain and re-probe requests 1-8 too",
                        "measured on the bundled model of the day: a rebuilt MiniCanvas changes every figure; "
                        "rerun --measure, then --plan", "measured on a shared machine: the load average at "
                        "measurement is in `basis`; on idle cores every figure is smaller (bench-conabl.json measured "
                        "an obliviate-recipe ConAbl step at 0.13-0.19 s on an idle machine)"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", default="runs/study")
    ap.add_argument("--results", default="docs/results/study")
    ap.add_argument("--executor", default="local", help="where units run: local (one after the other, this process), "
                    "ray (a Ray on this machine), ray:ADDRESS, slurm, slurm:local (obliviate run --executor; "
                    "docs/SCALING.md)")
    ap.add_argument("--workers", type=int, help="ray without an address, slurm: units at once (--plan: the wall-time "
                    "estimate's parallelism; default 1)")
    ap.add_argument("--cpus", type=int, help="ray, slurm: CPUs per unit (one torch thread each; default 1)")
    ap.add_argument("--gpus", type=float, help="ray, slurm: GPUs per unit")
    ap.add_argument("--retries", type=int, help="ray, slurm: restarts of a unit whose worker died (default 2)")
    ap.add_argument("--partition", help="slurm: partition")
    ap.add_argument("--time", type=int, help="slurm: wall-time limit per unit, minutes")
    ap.add_argument("--only", help="comma-separated unit names (default: all of them)")
    ap.add_argument("--dry-run", action="store_true", help="say what would run and what is skipped")
    ap.add_argument("--plan", action="store_true", help=f"every unit with its estimated seconds (from {COST}); writes {PLAN}")
    ap.add_argument("--measure", action="store_true", help=f"measure the per-image and per-step figures into {COST}")
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(ROOT / COST), indent=1))
        return
    items = units()
    if args.only:
        names = args.only.split(",")
        bad = [n for n in names if n not in {u.name for u in items}]
        if bad:
            raise SystemExit(f"--only: unknown units {bad}; valid: {', '.join(u.name for u in items)}")
        items = [u for u in items if u.name in names]
    check_units(items)
    runs, results = Path(args.runs), Path(args.results)
    if args.plan:
        cost_path = ROOT / COST
        if not cost_path.exists():
            raise SystemExit(f"{COST} is missing: run `python scripts/study.py --measure` first")
        out = plan_costs(items, json.loads(cost_path.read_text()), factors(ROOT / "docs/results/bench-requests.json"),
                         results, args.workers or 1)
        for r in out["units"]:
            print(f"{r['unit']:45s} {r['seconds'] / 3600:6.2f} h  (train {r['train_seconds'] / 60:5.1f} min, "
                  f"{r['probe_evaluations']} probe x {r['images_per_probe']} + {r['reported_evaluations']} reported x "
                  f"{r['images_per_evaluation']} images){'  committed' if r['committed'] else ''}")
        print(f"anchors (shared cache): {out['anchor_seconds'] / 60:.1f} min")
        print(f"total {out['total_seconds'] / 3600:.1f} CPU hours; left {out['left_seconds'] / 3600:.1f}; "
              f"about {out['wall_hours_at_jobs']:.1f} h of wall time at {args.workers or 1} unit(s) at once, at the speed measured "
              f"(load average {', '.join(f'{x:.1f}' for x in out['basis']['measured_load_average'] or [])})")
        if not args.only:
            from obliviate.delta import atomic_write_json

            atomic_write_json(ROOT / PLAN, out)
        return
    if args.dry_run:
        todo, skipped = plan(items, results)
        print(json.dumps({"run": [u.name for u in todo], "skip": [u.name for u in skipped]}))
        return
    from obliviate.experiment.executor import make_executor

    try:  # an unknown executor, a stray option, an unreachable cluster: refused before any work
        executor = make_executor(args.executor, {k: getattr(args, k) for k in
                                                 ("workers", "cpus", "gpus", "retries", "partition", "time")},
                                 folder=args.runs)
    except ValueError as err:
        raise SystemExit(f"study.py: error: {err}") from None
    out = run_study(items, runs, results, executor=executor)
    print(json.dumps(out))
    if out["failed"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
