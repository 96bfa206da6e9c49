"""scripts/study.py: runs whose finished summary.json is committed are skipped; finished runs are kept."""
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


study = load_script("study")
STUDY = [("sweep-styles", "configs/sweep-styles.yaml", None), ("styles-s0", "configs/styles.yaml", 0),
         ("objects-s0", "configs/objects.yaml", 0)]


def write(path: Path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data))


class FakeProc:
    def __init__(self, rc):
        self.rc = rc

    def wait(self):
        return self.rc


def test_committed_finished_runs_are_skipped_and_the_rest_run_and_are_kept(tmp_path):
    runs, results = tmp_path / "runs", tmp_path / "docs" / "results" / "study"
    write(results / "sweep-styles" / "summary.json", {"variants": {}, "wall_seconds": 10.0})  # finished: skipped
    write(results / "styles-s0" / "summary.json", {"variants": {}})  # partial (no wall_seconds): runs again
    launched = []

    def launch(cmd, env):
        name = Path(cmd[cmd.index("--out") + 1]).name
        launched.append((name, cmd, env.get("OMP_NUM_THREADS")))
        if name == "objects-s0":
            return FakeProc(1)  # a failed run is not kept
        write(runs / name / "summary.json", {"variants": {"a": {}}, "wall_seconds": 5.0,
                                              "base_model": {"path": "/somewhere/on/this/machine/model", "hash": "h"}})
        write(runs / name / "experiment.json", {"model": "/somewhere/model", "seed": 0})
        return FakeProc(0)

    logs = []
    out = study.run_study(STUDY, runs, results, jobs=2, launch=launch, log=logs.append)
    assert out["skipped"] == ["sweep-styles"] and out["ran"] == ["styles-s0", "objects-s0"]
    assert out["failed"] == ["objects-s0"] and [Path(k).name for k in out["kept"]] == ["styles-s0"]
    assert [n for n, *_ in launched] == ["styles-s0", "objects-s0"]
    styles_cmd = launched[0][1]
    assert styles_cmd[styles_cmd.index("--seed") + 1] == "0" and launched[0][2] == "1"  # one thread per parallel job
    kept = json.loads((results / "styles-s0" / "summary.json").read_text())
    assert kept["wall_seconds"] == 5.0 and kept["base_model"]["path"] == "model"  # no machine paths committed
    assert json.loads((results / "styles-s0" / "experiment.json").read_text())["model"] == "model"
    assert not (results / "objects-s0").exists()
    # next time only the failed run is left
    assert [t[0] for t in study.plan(STUDY, results)[0]] == ["objects-s0"]
    assert any("skipped" in line for line in logs)


def test_unreadable_or_partial_summaries_do_not_count_as_finished(tmp_path):
    write(tmp_path / "a" / "summary.json", "{not json")
    write(tmp_path / "b" / "summary.json", {"wall_seconds": None})
    write(tmp_path / "c" / "summary.json", [1, 2])
    write(tmp_path / "d" / "summary.json", {"wall_seconds": 3})
    assert [study.finished(tmp_path / x / "summary.json") for x in "abcde"] == [False, False, False, True, False]


def test_the_bundled_model_path_becomes_a_name():
    from obliviate.minicanvas import bundled_path

    s = study.portable({"base_model": {"path": str(bundled_path()), "hash": "h"}})
    assert s["base_model"]["path"] == "minicanvas (bundled)"


def test_results_reads_committed_summaries(tmp_path):
    results = load_script("results")
    runs, committed = tmp_path / "runs", tmp_path / "committed"
    write(runs / "styles-s0" / "summary.json", {"name": "live", "wall_seconds": 1})
    write(committed / "styles-s0" / "summary.json", {"name": "old", "wall_seconds": 1})
    write(committed / "styles-s1" / "summary.json", {"name": "committed", "wall_seconds": 1})
    loaded = results.load([runs, committed], "styles")
    assert {k: v["name"] for k, v in loaded.items()} == {0: "live", 1: "committed"}  # the first folder wins
    with pytest.raises(SystemExit, match="unknown runs"):
        import sys
        argv, sys.argv = sys.argv, ["study.py", "--only", "nope", "--dry-run"]
        try:
            study.main()
        finally:
            sys.argv = argv


def test_runs_of_one_seed_go_side_by_side_and_the_sweep_alone(tmp_path):
    items = STUDY + [("styles-s1", "configs/styles.yaml", 1), ("objects-s1", "configs/objects.yaml", 1)]
    running, batches = [], []

    class Proc:
        def __init__(self, name):
            self.name = name
            running.append(name)

        def wait(self):
            if running:
                batches.append(list(running))
                running.clear()
            return 1

    study.run_study(items, tmp_path / "runs", tmp_path / "results", jobs=2,
                    launch=lambda cmd, env: Proc(Path(cmd[cmd.index("--out") + 1]).name), log=lambda m: None)
    assert batches == [["sweep-styles"], ["styles-s0", "objects-s0"], ["styles-s1", "objects-s1"]]
