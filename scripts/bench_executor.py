"""Executors and sharded evaluation, measured (docs/results/bench-executor.json).

1. One small experiment on the bundled MiniCanvas model (2 variants x 2 swept values x 2 style
   requests, ConAbl at --steps), run from an empty directory by `obliviate run` under the
   local executor (one process, one torch thread) and under `--executor ray --workers 2` (two
   one-CPU workers, one torch thread each), each as the command a user types (imports and
   Ray's start included). The two summaries must be equal apart from timing keys. Goal:
   local / ray >= 1.7 on a 2-core machine (the limit is 2).
2. Ray's fixed cost: starting an embedded Ray, a task's round trip on a warm worker, and a
   first task on a fresh worker that imports obliviate (what each worker pays once).
3. Sharded evaluation: `obliviate eval` of 256 images (the protocol's sampler) in one process,
   then in two processes joined with gloo (as `accelerate launch` starts them), one torch
   thread each; the metrics must be equal. Goal: 1 / 2 processes >= 1.7 on evaluation seconds.

Every ratio compares figures measured in the same run on the same machine; the load average
at the start and end of each part is recorded with it: figures taken on a loaded machine are
provisional and should be taken again on idle cores.

    OMP_NUM_THREADS=1 python scripts/bench_executor.py --out docs/results/bench-executor.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT_GOAL = EVAL_GOAL = 1.7


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def env(**extra) -> dict:
    src = str(ROOT / "src")
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(p for p in [src, os.environ.get("PYTHONPATH")] if p),
            **extra}


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def obliviate(*args, **extra) -> float:
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "obliviate.cli", "--quiet", *args], env=env(**extra), capture_output=True,
                       text=True)
    if r.returncode:
        raise SystemExit(f"obliviate {' '.join(args)} failed:\n{r.stderr[-3000:]}")
    return time.time() - t0


def without_timings(obj):
    if isinstance(obj, dict):
        return {k: without_timings(v) for k, v in obj.items() if not k.endswith("_seconds")}
    return [without_timings(v) for v in obj] if isinstance(obj, list) else obj


def experiment(steps: int) -> dict:
    from obliviate.minicanvas import bundled_path

    return {
        "name": "bench-executor", "model": str(bundled_path()), "protocol": "minicanvas", "domain": "style",
        "sequence": ["fire", "ice"], "retained": ["lava", "ocean"], "partners": ["circle", "star", "square", "triangle"],
        "eval": {"seeds": [188, 288], "probe_seeds": [5]}, "grid": {"prompts": 2},
        "defaults": {"method_settings": {"steps": steps, "anchor_images": 8}},
        "variants": [{"name": "conabl", "sweep": {"key": "method_settings.lr", "values": [0.0002, 0.0005]}},
                     {"name": "conabl+l2sp", "regularizers": ["l2sp"],
                      "sweep": {"key": "regularizers.l2sp.weight", "values": [100.0, 1000.0]}}],
    }


def bench_experiment(work: Path, steps: int) -> dict:
    exp = work / "experiment.yaml"
    exp.write_text(yaml.safe_dump(experiment(steps), sort_keys=False))
    out = {"experiment": "2 variants x 2 swept values x 2 requests, MiniCanvas (bundled), ConAbl "
                         f"{steps} steps; evaluations: 32 images reported, 16 probed", "load_before": load()}
    cpu0 = children_cpu()
    local = obliviate("run", str(exp), "--out", str(work / "local"))
    # the one process is not one core: with one torch thread it still keeps more than one core
    # busy part of the time (the cores it used bound what two one-CPU workers can gain)
    local_cpu = children_cpu() - cpu0
    ray = obliviate("run", str(exp), "--out", str(work / "ray"), "--executor", "ray", "--workers", "2")
    a, b = (without_timings(json.loads((work / d / "summary.json").read_text())) for d in ("local", "ray"))
    out.update({"local_seconds": local, "local_cpu_seconds": local_cpu, "local_cores_busy": local_cpu / local,
                "ray_2_workers_seconds": ray, "ratio": local / ray, "goal": EXPERIMENT_GOAL,
                "same_summary": a == b, "ray_chains_span_seconds": chains_span(work / "ray" / "logs"),
                "load_after": load()})
    return out


def chains_span(logs: Path) -> float:
    """From the first chain's start to the last chain's end, from the chains' logs (1 s resolution):
    the rest of the Ray command is its fixed cost (imports, Ray's start, the summary and report)."""
    import datetime as dt

    stamps = []
    for log in logs.glob("*.log"):
        for line in log.read_text().splitlines():
            if line.startswith("[obliviate] ") and (" start on " in line or line.endswith(" finished")):
                stamps.append(dt.datetime.strptime(" ".join(line.split()[1:3]), "%Y-%m-%d %H:%M:%S"))
    return (max(stamps) - min(stamps)).total_seconds() if stamps else float("nan")


def _import_obliviate():
    t0 = time.time()
    import obliviate.experiment  # noqa: F401 - what a chain's worker imports first

    return time.time() - t0


def _nothing():
    return None


def bench_ray(tasks: int = 20) -> dict:
    import ray

    out = {"load_before": load()}
    t0 = time.time()
    os.environ["PYTHONPATH"] = env()["PYTHONPATH"]
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    out["start_seconds"] = time.time() - t0
    nothing = ray.remote(num_cpus=1)(_nothing)
    t0 = time.time()
    ray.get(nothing.remote())
    out["first_task_seconds"] = time.time() - t0  # a worker process started
    t0 = time.time()
    for _ in range(tasks):
        ray.get(nothing.remote())
    out["task_round_trip_seconds"] = (time.time() - t0) / tasks
    importer = ray.remote(num_cpus=1)(_import_obliviate)  # on a warm worker that has not imported obliviate yet
    t0 = time.time()
    inside = ray.get(importer.remote())
    out["worker_import_obliviate_seconds"] = inside
    out["first_chain_overhead_seconds"] = time.time() - t0
    ray.shutdown()
    out["load_after"] = load()
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def eval_args(out: Path) -> list[str]:
    from obliviate.evaluate.evaluator import load_protocol, make_plan
    from obliviate.minicanvas import bundled_path

    protocol = load_protocol("minicanvas", bundled_path())
    partners = list(protocol.objects)[:8]
    plan = make_plan(protocol, "style", ["fire"], partners=partners, seeds=[188, 288])
    if len(plan.grid()) != 256:
        raise SystemExit(f"the evaluation grid has {len(plan.grid())} images, not 256: the bundled catalog changed")
    return ["eval", "--model", str(bundled_path()), "--unlearned", "fire", "--partners", ",".join(partners),
            "--seeds", "188,288", "--out", str(out)]


def bench_eval(work: Path) -> dict:
    out = {"images": 256, "load_before": load()}
    one = obliviate(*eval_args(work / "eval-1"))
    port = str(_free_port())
    t0 = time.time()
    procs = [subprocess.Popen([sys.executable, "-m", "obliviate.cli", "--quiet", *eval_args(work / "eval-2")],
                              env=env(ACCELERATE_USE_CPU="1", RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2",
                                      LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    for p in procs:
        _, err = p.communicate()
        if p.returncode:
            raise SystemExit(f"sharded evaluation failed:\n{err[-3000:]}")
    two = time.time() - t0
    a, b = (json.loads((work / d / "metrics.json").read_text()) for d in ("eval-1", "eval-2"))
    ea, eb = a.pop("eval_seconds"), b.pop("eval_seconds")
    out.update({"one_process": {"eval_seconds": ea, "command_seconds": one},
                "two_processes": {"eval_seconds": eb, "command_seconds": two},
                "ratio": ea / eb, "command_ratio": one / two, "goal": EVAL_GOAL, "same_metrics": a == b,
                "load_after": load()})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="docs/results/bench-executor.json")
    ap.add_argument("--work", default="runs/bench-executor", help="scratch directory (emptied first)")
    ap.add_argument("--steps", type=int, default=60, help="ConAbl steps per request in the experiment")
    ap.add_argument("--only", choices=["experiment", "ray", "eval"], help="one part only (the others' figures in --out stay)")
    args = ap.parse_args()
    work = Path(args.work).resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    import torch

    result = {"command": "OMP_NUM_THREADS=1 python scripts/bench_executor.py", "cores": os.cpu_count(),
              "machine": platform.machine(), "torch": torch.__version__}
    if args.only and Path(args.out).exists():  # one part again: the others' figures stay
        result = {**json.loads(Path(args.out).read_text()), **result}
    try:
        import ray

        result["ray"] = ray.__version__
    except ImportError:
        raise SystemExit('scripts/bench_executor.py needs Ray: pip install "obliviate[ray]"') from None
    parts = {"experiment": lambda: bench_experiment(work, args.steps), "ray": bench_ray, "eval": lambda: bench_eval(work)}
    for name, part in parts.items():
        if args.only in (None, name):
            result[{"experiment": "experiment_local_vs_ray", "ray": "ray_fixed_cost", "eval": "sharded_eval"}[name]] = part()
            print(json.dumps(result, indent=1), flush=True)
    # other work shows in the load before the first part; before a later part, the 1-minute
    # average still holds the previous part's own processes (Ray's workers)
    before = next(v["load_before"][0] for v in result.values() if isinstance(v, dict) and "load_before" in v)
    result["provisional"] = before > 0.5
    if result["provisional"]:
        result["note"] = (f"taken while other jobs ran (1-minute load average {before:.1f} before the first part, on "
                          f"{os.cpu_count()} cores): the ratios are provisional; take them again on idle cores")
        autogroup = Path("/proc/sys/kernel/sched_autogroup_enabled")
        if autogroup.exists() and autogroup.read_text().strip() == "1":
            result["note"] += (". This kernel shares CPU time between sessions (sched_autogroup): with other sessions "
                               "busy, this run's processes together get one session's share however many there are, "
                               "so the parallel ratios cannot be measured fairly here")
    from obliviate.delta import atomic_write_json

    atomic_write_json(Path(args.out), result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
