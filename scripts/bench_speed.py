"""Seconds per request of `uce`, `speed` and `speed-repair` on MiniCanvas (bundled model, CPU).

Each method runs the same sequence of style requests in its own fresh run, in this one
process, so the ratios against uce are taken under the same load. A request's time is the
wall time of Run.unlearn (pipeline load, solve, repair, writing the step). The first request
of a speed-repair run also generates the base model's repair images (cached for the run's
later requests): it is reported apart, and the per-request figure is the median of the
later ones. Prints JSON; --out writes it too. Take figures on idle cores, with
OMP_NUM_THREADS=1 (what the study runs at), and state the load (the JSON records `loadavg`).

    OMP_NUM_THREADS=1 python scripts/bench_speed.py [--requests 5] [--out docs/results/bench_speed.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

SEQUENCE = ["fire", "ice", "forest", "neon", "sunset", "ocean", "meadow", "night", "lava", "winter", "jungle", "galaxy"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=5)
    ap.add_argument("--methods", default="uce,speed,speed-repair")
    ap.add_argument("--out")
    args = ap.parse_args()
    if not 2 <= args.requests <= len(SEQUENCE):
        raise SystemExit(f"--requests must be in [2, {len(SEQUENCE)}], got {args.requests}")
    from obliviate.continual import Run
    from obliviate.minicanvas import bundled_path
    from obliviate.request import Request

    model = bundled_path()
    load_before = os.getloadavg()
    out = {"requests": args.requests, "methods": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods.split(","):
            run = Run.open_or_create(Path(tmp) / method, model)
            seconds, timings = [], []
            for concept in SEQUENCE[: args.requests]:
                t0 = time.time()
                meta = run.unlearn(Request(concept, "style", method, {}), quiet=True)
                seconds.append(time.time() - t0)
                timings.append(meta["timings"])  # setup (solve, repair images) and training (repair) seconds
            out["methods"][method] = {"first_request_seconds": seconds[0],
                                      "median_later_request_seconds": statistics.median(seconds[1:]),
                                      "seconds": seconds, "timings": timings}
    if "uce" in out["methods"]:
        ref = out["methods"]["uce"]["median_later_request_seconds"]
        for m in out["methods"].values():
            m["ratio_to_uce"] = m["median_later_request_seconds"] / ref
    out.update({"loadavg": {"before": load_before, "after": os.getloadavg()}, "cpus": os.cpu_count(),
                "threads": os.environ.get("OMP_NUM_THREADS"), "machine": platform.machine(),
                "python": platform.python_version()})
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
