"""Run the study behind docs/RESULTS.md so that it survives a fresh machine.

A study of this size takes longer than one sitting. Each run (an experiment file, and a
training seed) writes runs/study/NAME/; when it finishes, its summary.json (metrics, the
per-image predictions for paired comparisons, settings; no images, no deltas) and its
experiment.json are copied to docs/results/study/NAME/, to be committed. A run whose finished
summary sits there already is skipped, so on a fresh clone `make study` only runs what is not
committed yet; scripts/results.py reads runs/study and docs/results/study both.

    python scripts/study.py [--jobs 2] [--only styles-s0,...] [--dry-run]

"Finished" means the summary has `wall_seconds` (written once every variant is done); a
partial summary (written after each variant) does not count, and that run resumes.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

# (run name, experiment file, training seed or None): the order they are started in
STUDY = [
    ("sweep-styles", "configs/sweep-styles.yaml", None),
    ("styles-s0", "configs/styles.yaml", 0),
    ("objects-s0", "configs/objects.yaml", 0),
    ("styles-s1", "configs/styles.yaml", 1),
    ("objects-s1", "configs/objects.yaml", 1),
]


def finished(path: Path) -> bool:
    """A complete summary.json: readable, and written after the last variant."""
    try:
        summary = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(summary, dict) and summary.get("wall_seconds") is not None


def plan(study, results: Path) -> tuple[list, list]:
    """(to run, skipped): a run is skipped when its finished summary is committed under `results`."""
    todo, skipped = [], []
    for item in study:
        (skipped if finished(results / item[0] / "summary.json") else todo).append(item)
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


def keep(run_dir: Path, results: Path) -> Path:
    """Copy a finished run's summary.json and experiment.json under `results/NAME/` (atomically)."""
    from obliviate.delta import atomic_write_json

    dest = results / run_dir.name
    summary = json.loads((run_dir / "summary.json").read_text())
    atomic_write_json(dest / "summary.json", portable(summary))
    if (run_dir / "experiment.json").exists():
        exp = json.loads((run_dir / "experiment.json").read_text())
        if isinstance(exp.get("model"), str) and os.path.isabs(exp["model"]):
            exp["model"] = Path(exp["model"]).name
        atomic_write_json(dest / "experiment.json", exp)
    return dest


def command(name: str, config: str, seed, runs: Path) -> list[str]:
    cmd = [sys.executable, "-m", "obliviate.cli", "--quiet", "run", config, "--out", str(runs / name)]
    return cmd + (["--seed", str(seed)] if seed is not None else [])


def run_study(study, runs: Path, results: Path, *, jobs: int = 2, launch=None, log=print) -> dict:
    """Run what is not committed, `jobs` at a time (one torch thread each when > 1), keeping
    each finished summary. `launch(cmd, env) -> Popen-like` is replaceable (tests)."""
    launch = launch or (lambda cmd, env: subprocess.Popen(cmd, env=env))
    todo, skipped = plan(study, results)
    for name, *_ in skipped:
        log(f"[study] {name}: finished summary committed under {results / name}; skipped")
    env = {**os.environ, **({"OMP_NUM_THREADS": "1"} if jobs > 1 else {})}
    kept, failed = [], []
    pending = list(todo)
    while pending:
        # runs of one training seed side by side (as the old Makefile did); the sweep alone, first
        batch = [pending[0]]
        while len(batch) < min(jobs, len(pending)) and pending[len(batch)][2] == pending[0][2]:
            batch.append(pending[len(batch)])
        pending = pending[len(batch):]
        procs = [(item, launch(command(item[0], item[1], item[2], runs), env)) for item in batch]
        for (name, *_), proc in procs:
            rc = proc.wait()
            if rc == 0 and finished(runs / name / "summary.json"):
                kept.append(str(keep(runs / name, results)))
                log(f"[study] {name}: finished; commit {results / name}/summary.json")
            else:
                failed.append(name)
                log(f"[study] {name}: exit code {rc}; rerun to resume it")
    return {"skipped": [s[0] for s in skipped], "ran": [t[0] for t in todo], "kept": kept, "failed": failed}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", default="runs/study")
    ap.add_argument("--results", default="docs/results/study")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--only", help="comma-separated run names (default: all of them)")
    ap.add_argument("--dry-run", action="store_true", help="say what would run and what is skipped")
    args = ap.parse_args()
    study = STUDY
    if args.only:
        names = args.only.split(",")
        bad = [n for n in names if n not in {s[0] for s in STUDY}]
        if bad:
            raise SystemExit(f"--only: unknown runs {bad}; valid: {', '.join(s[0] for s in STUDY)}")
        study = [s for s in STUDY if s[0] in names]
    if args.jobs < 1:
        raise SystemExit(f"--jobs must be >= 1, got {args.jobs}")
    runs, results = Path(args.runs), Path(args.results)
    if args.dry_run:
        todo, skipped = plan(study, results)
        print(json.dumps({"run": [t[0] for t in todo], "skip": [s[0] for s in skipped]}))
        return
    out = run_study(study, runs, results, jobs=args.jobs)
    print(json.dumps(out))
    if out["failed"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
