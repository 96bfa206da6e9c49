"""Wall time of `obliviate demo` against the demo as it was before its own evaluation grid,
as whole processes, in one run, on the same machine.

    python scripts/bench_demo.py --out docs/results/bench-demo.json            # one round each
    python scripts/bench_demo.py --rounds 2 --out docs/results/bench-demo.json

"before" is the same experiment (configs/demo.yaml: the same variants, sequence and training)
on the MiniCanvas protocol's grid: two seeds, eight partner objects, every other style retained,
256 images per evaluation at 20 sampler steps. "after" is `obliviate demo` itself (36 images
per evaluation at 10 steps). Each
process starts with an empty output directory (no cached images or anchors), as a first
`make demo` does; setup (.venv) is not counted. Rounds alternate the two, so a change in the
machine's load touches both. The load average before and after each process is recorded:
compare figures only from an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

import yaml

# the demo's grid before it had its own: the protocol's seeds, eight partners, every other style retained
BEFORE_GRID = {"eval": {"seeds": [188, 288], "probe_seeds": [1, 2]},  # and the protocol's 20-step sampler
               "partners": ["circle", "ring", "square", "cross", "triangle", "star", "heart", "leaf"]}


def before_config(path: Path) -> Path:
    config = yaml.safe_load(resources.files("obliviate").joinpath("configs/demo.yaml").read_text())
    config.pop("retained", None)
    config.update(BEFORE_GRID)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def timed(command: list[str]) -> dict:
    """Wall time, and CPU time (user + system, every thread), of one whole process. The CPU time
    moves less with the machine's load than the wall time does, but does not replace it."""
    load_before = os.getloadavg()
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return {"wall_seconds": round(wall, 1),
            "cpu_seconds": round(cpu.ru_utime + cpu.ru_stime - cpu_before.ru_utime - cpu_before.ru_stime, 1),
            "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in os.getloadavg()]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--out", help="write the figures here as JSON (e.g. docs/results/bench-demo.json)")
    ap.add_argument("--work", help="keep the runs' output directories here (default: a temporary directory, deleted)")
    args = ap.parse_args()
    python = [sys.executable, "-m", "obliviate.cli"]
    runs = {"after": [], "before": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(args.work or tmp)
        for r in range(args.rounds):  # every process starts from an empty directory
            if any((tmp / f"{name}-{r}").exists() for name in runs):
                raise SystemExit(f"{tmp} already holds runs of an earlier benchmark; give an empty --work directory")
        tmp.mkdir(parents=True, exist_ok=True)
        config = before_config(tmp / "demo-before.yaml")
        for r in range(args.rounds):
            commands = {"after": python + ["demo", "--out", str(tmp / f"after-{r}")],
                        "before": python + ["run", str(config), "--out", str(tmp / f"before-{r}")]}
            for name in ("after", "before") if r % 2 == 0 else ("before", "after"):
                runs[name].append(timed(commands[name]))
                print(f"round {r + 1}: {name}: {runs[name][-1]}", flush=True)
        images = {name: json.loads((tmp / f"{name}-0" / "summary.json").read_text())["images_per_evaluation"]
                  for name in runs}
    best = {k: min(x["wall_seconds"] for x in v) for k, v in runs.items()}
    best_cpu = {k: min(x["cpu_seconds"] for x in v) for k, v in runs.items()}
    result = {"benchmark": "make demo (obliviate demo) as a whole process, fresh output directory, after setup",
              "command": "python scripts/bench_demo.py" + (f" --rounds {args.rounds}" if args.rounds != 1 else ""),
              "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
              "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
              "images_per_evaluation": images,
              "runs": runs, "best_wall_seconds": best, "best_cpu_seconds": best_cpu,
              "speedup": round(best["before"] / best["after"], 2),
              "cpu_ratio": round(best_cpu["before"] / best_cpu["after"], 2)}
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
