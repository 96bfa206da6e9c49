"""scripts/study.py: the second edition's units, their order, skipping what is committed,
resuming, keeping small summaries, and the cost plan."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def load_script(name):
    spec = importlib.util.spec_from_file_location(f"scripts_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


study = load_script("study")


def write(path: Path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data))


def test_units_come_in_decision_order_and_every_one_parses():
    items = study.units()
    names = [u.name for u in items]
    n_obj = len([u for u in items if u.domain == "objects" and u.seed == 0])
    assert names[0] == "objects-r8-conabl-s0" and names[n_obj] == "styles-r8-conabl-s0"  # objects first, then styles
    phases = [(u.domain, u.requests, u.seed) for u in items]
    assert [p for i, p in enumerate(phases) if i == 0 or p != phases[i - 1]] == study.PHASES
    assert max(i for i, u in enumerate(items) if u.requests == 8) < min(i for i, u in enumerate(items) if u.requests == 12)
    # a 12-request unit grows its 8-request unit's directory
    by_name = {u.name: u for u in items}
    assert by_name["styles-r12-conabl-projection-s1"].run_dir == by_name["styles-r8-conabl-projection-s1"].run_dir
    assert not any(u.domain == "objects" and u.requests == 12 for u in items)  # 8 of 12 objects: no 12-request unit
    # a closed-form solve does not depend on the training seed: uce runs for seed 0 only
    assert "styles-r12-uce-s0" in by_name and not any(u.variant.startswith("uce") and u.seed for u in items)
    # ... but an add-on with it draws from the seed (advunlearn trains the text encoder before the solve)
    assert "objects-r8-speed-advunlearn-s1" in by_name and "objects-r8-speed-s1" not in by_name
    u = by_name["objects-r8-ours-replay-s0"]
    assert [v["name"] for v in u.config["variants"]] == ["ours:replay"] and u.config["requests"] == 8
    assert u.config["grid"]["variant"] == "ours:replay" and u.config["partners"] == "all"
    assert len(u.config["eval"]["seeds"]) >= 3 and not set(u.config["eval"]["seeds"]) & set(u.config["eval"]["probe_seeds"])
    study.check_units(items)  # every derived experiment is valid
    # the published variants follow the reference recipe; uce and esd have none
    for v in items[0].config["variants"] + [x for w in items[:n_obj] for x in w.config["variants"]]:
        if v.get("method", "conabl") in ("conabl", "sculpmem"):
            assert v["method_settings"]["recipe"] == "reference", v["name"]
        assert v["sweep"]["values"], v["name"]  # every variant's strength is chosen at equal forgetting
    assert {"uce", "uce:previous", "ours:replay"} <= {u.variant for u in items}


from obliviate.experiment.executor import Executor, Failure


class FakeExecutor(Executor):
    """Runs each chain's `obliviate` arguments through `on_unit(argv)` (which writes what the run
    would, or raises), and records the waves it was given."""

    name = "fake"

    def __init__(self, on_unit):
        super().__init__()
        self.on_unit, self.waves = on_unit, []

    def run(self, chains, log=print):
        self.waves.append([c.name for c in chains])
        failures = []
        for c in chains:
            try:
                self.on_unit(c.work.argv)
            except Exception as err:  # noqa: BLE001
                failures.append(Failure(c, str(err)))
        return failures


def argument(argv, flag):
    return argv[argv.index(flag) + 1]


def test_committed_units_are_skipped_the_rest_run_never_two_in_one_directory(tmp_path):
    cfg = {"domain": "style", "sequence": ["fire", "ice"], "variants": [{"name": "a"}, {"name": "b"}]}
    files = {"styles": str(tmp_path / "s.yaml")}
    write(tmp_path / "s.yaml", json.dumps(cfg))
    items = study.units(files, phases=[("styles", 1, 0), ("styles", 2, 0)])
    assert [u.name for u in items] == ["styles-r1-a-s0", "styles-r1-b-s0", "styles-r2-a-s0", "styles-r2-b-s0"]
    runs, results = tmp_path / "runs", tmp_path / "docs" / "results" / "study"
    write(results / "styles-r1-a-s0" / "summary.json", {"variants": {}, "wall_seconds": 10.0})  # finished: skipped
    write(results / "styles-r1-b-s0" / "summary.json", {"variants": {}})  # partial (no wall_seconds): runs again
    launched = []

    def unit(argv):
        rd = Path(argument(argv, "--out")).name
        requests = int(Path(argument(argv, "run")).stem.split("-r")[1])
        name = f"styles-r{requests}-{rd.split('-')[1]}-s0"
        launched.append((name, argument(argv, "--seed")))
        assert (runs / rd / "cache").is_symlink()  # units of a domain share one cache
        if name == "styles-r2-b-s0":
            raise RuntimeError("exited with status 1")
        write(runs / rd / "summary.json", {"variants": {"a": {}}, "wall_seconds": 5.0, "requests": requests,
                                           "base_model": {"path": "/somewhere/on/this/machine/model"}})
        write(runs / rd / "experiment.json", {"model": "/somewhere/model", "seed": 0})

    logs = []
    executor = FakeExecutor(unit)
    out = study.run_study(items, runs, results, executor=executor, log=logs.append)
    assert out["skipped"] == ["styles-r1-a-s0"] and out["failed"] == ["styles-r2-b-s0"]
    assert sorted(Path(k).name for k in out["kept"]) == ["styles-r1-b-s0", "styles-r2-a-s0"]
    # a wave never holds two units of one directory: r1-b and r2-a at once, then r2-b (b's directory)
    assert executor.waves == [["styles-r1-b-s0", "styles-r2-a-s0"], ["styles-r2-b-s0"]]
    assert {n for n, _ in launched} == {"styles-r1-b-s0", "styles-r2-a-s0", "styles-r2-b-s0"}
    assert all(s == "0" for _, s in launched)  # the unit's seed
    kept = (results / "styles-r2-a-s0" / "summary.json").read_text()
    assert json.loads(kept)["base_model"]["path"] == "model" and "/somewhere" not in kept and "\n " not in kept
    assert json.loads((results / "styles-r2-a-s0" / "experiment.json").read_text())["model"] == "model"
    derived = (runs / "styles-a-s0" / "unit-r2.yaml").read_text()
    assert "requests: 2" in derived and "name: a" in derived
    assert [u.name for u in study.plan(items, results)[0]] == ["styles-r2-b-s0"]  # next time only the failure
    assert any("skipped" in line for line in logs)
    assert any("styles-r2-b-s0: exited with status 1; log: " in line for line in logs)


def test_a_summary_of_the_wrong_length_is_not_kept(tmp_path):
    """An 8-request unit whose directory already holds a 12-request summary is not finished."""
    cfg = {"domain": "style", "sequence": ["fire", "ice"], "variants": [{"name": "a"}]}
    write(tmp_path / "s.yaml", json.dumps(cfg))
    items = study.units({"styles": str(tmp_path / "s.yaml")}, phases=[("styles", 1, 0)])
    runs, results = tmp_path / "runs", tmp_path / "results"
    write(runs / "styles-a-s0" / "summary.json", {"variants": {}, "wall_seconds": 1.0, "requests": 2})
    out = study.run_study(items, runs, results, executor=FakeExecutor(lambda argv: None), log=lambda m: None)
    assert out["failed"] == ["styles-r1-a-s0"] and not out["kept"]


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


def test_unknown_units_are_refused_by_name():
    argv, sys.argv = sys.argv, ["study.py", "--only", "nope", "--dry-run"]
    try:
        with pytest.raises(SystemExit, match="unknown units"):
            study.main()
    finally:
        sys.argv = argv


COST = {"eval_seconds_per_image": 0.01, "conabl_reference_step_seconds": 0.1, "esd_step_seconds": 0.3, "esd_setup_seconds": 1.0,
        "uce_request_seconds": 0.5, "load_average_after": [1.0, 1.0, 1.0],
        "anchor_setup_seconds": {"style (first request; later style requests reuse the same anchors)": 10.0,
                                 "style, anchors cached": 0.1, "object (per anchor object)": 5.0}}


def test_the_plan_counts_every_value_request_and_image(tmp_path):
    items = [u for u in study.units() if u.seed == 0 and u.variant in ("conabl", "simultaneous", "uce")]
    out = study.plan_costs(items, COST, {"l2sp": 1.1}, tmp_path, jobs=2)
    rows = {r["unit"]: r for r in out["units"]}
    c8 = rows["styles-r8-conabl-s0"]
    # conabl sweeps steps 30, 60, 100, 200: 390 steps per request x 8 requests
    assert c8["train_seconds"] == pytest.approx(390 * 8 * 0.1)
    assert c8["images_per_evaluation"] == 16 * 12 * 3 and c8["images_per_probe"] == 16 * 12 * 1
    assert c8["probe_evaluations"] == 4 * 8 + 1 and c8["reported_evaluations"] == 9
    assert rows["objects-r8-conabl-s0"]["images_per_evaluation"] == 12 * 16 * 3
    c12 = rows["styles-r12-conabl-s0"]  # grows the 8-request directory: only requests 9-12 trained and probed
    assert c12["train_seconds"] == pytest.approx(390 * 4 * 0.1) and c12["probe_evaluations"] == 4 * 4
    sim = rows["styles-r8-simultaneous-s0"]  # request t retrains on t concepts
    assert sim["train_seconds"] == pytest.approx((30 + 60 + 100) * 36 * 0.1)
    assert rows["styles-r8-uce-s0"]["train_seconds"] == pytest.approx(5 * 8 * 0.5)  # 5 erase_scale values x 8 requests
    assert out["anchor_seconds"] == pytest.approx(10.0 + 8 * 5.0)
    assert out["total_seconds"] == pytest.approx(sum(r["seconds"] for r in out["units"]) + out["anchor_seconds"])
    assert out["left_seconds"] == pytest.approx(out["total_seconds"])  # nothing committed


def test_requests_runs_a_prefix_and_merge_strengths_can_be_swept():
    from obliviate.experiment import load_experiment
    from obliviate.experiment.config import Variant
    from obliviate.experiment.strength import with_value

    base = {"domain": "style", "sequence": ["fire", "ice", "forest"], "variants": [{"name": "a"}]}
    exp = load_experiment({**base, "requests": 2})
    assert exp.requested == ["fire", "ice"] and exp.sequence == ["fire", "ice", "forest"]  # the grid keeps all three
    assert load_experiment(base).requested == ["fire", "ice", "forest"]
    with pytest.raises(ValueError, match=r"requests must be in 1..3"):
        load_experiment({**base, "requests": 4})
    v = Variant("m", setting="independent+merge", merge={"method": "ties", "lam": 1.0, "top_k": 0.4})
    assert with_value(v, "merge.lam", 2.0).merge == {"method": "ties", "lam": 2.0, "top_k": 0.4} and v.merge["lam"] == 1.0
    with pytest.raises(ValueError, match="needs setting independent\\+merge"):
        with_value(Variant("s"), "merge.lam", 2.0)
    bad = {**base, "variants": [{"name": "m", "setting": "independent+merge", "sweep": {"key": "merge.top_k", "values": [0.5, 2]}}]}
    with pytest.raises(ValueError, match="swept merge top_k 2 is out of range"):
        load_experiment(bad)


def test_seed_1_runs_at_the_strength_seed_0_chose_and_waits_for_it(tmp_path):
    """A variant's strength is chosen once, on training seed 0: the seed-1 unit's sweep is that
    one value, read from the seed-0 unit's summary, and it starts only once that unit is kept."""
    sweep = {"key": "method_settings.steps", "values": [10, 20, 40]}
    cfg = {"domain": "style", "sequence": ["fire", "ice"],
           "variants": [{"name": "a", "sweep": sweep}, {"name": "b"}]}
    write(tmp_path / "s.yaml", json.dumps(cfg))
    items = study.units({"styles": str(tmp_path / "s.yaml")}, phases=[("styles", 2, 0), ("styles", 2, 1)])
    assert [u.reference for u in items] == [None, None, "styles-r2-a-s0", None]  # b has no sweep: nothing to share
    runs, results = tmp_path / "runs", tmp_path / "results"
    order = []

    def unit(argv):
        rd = Path(argument(argv, "--out")).name
        exp = yaml.safe_load(Path(argument(argv, "run")).read_text())
        order.append((rd, exp["variants"][0].get("sweep", {}).get("values")))
        if rd == "styles-a-s1":  # started only after its seed-0 unit finished and was kept
            assert (results / "styles-r2-a-s0" / "summary.json").exists()
        chosen = {"variants": {"a": {"strength": {"chosen": 20}}}} if rd == "styles-a-s0" else {"variants": {}}
        write(runs / rd / "summary.json", {**chosen, "wall_seconds": 1.0, "requests": 2, "base_model": {}})

    executor = FakeExecutor(unit)
    out = study.run_study(items, runs, results, executor=executor, log=lambda m: None)
    assert not out["failed"] and len(out["kept"]) == 4
    assert order.index(("styles-a-s1", [20])) > order.index(("styles-a-s0", [10, 20, 40]))
    assert executor.waves == [["styles-r2-a-s0", "styles-r2-b-s0", "styles-r2-b-s1"], ["styles-r2-a-s1"]]
    # without its seed-0 summary a seed-1 unit is refused by name, before any work
    alone = [u for u in items if u.name == "styles-r2-a-s1"]
    logs = []
    out = study.run_study(alone, runs, tmp_path / "empty", executor=FakeExecutor(unit), log=logs.append)
    assert out["failed"] == ["styles-r2-a-s1"] and any("run styles-r2-a-s0 first" in m for m in logs)
    assert study.at_reference_strength(alone[0], results).config["variants"][0]["sweep"]["values"] == [20]


def test_units_that_cannot_change_the_answer_run_last(tmp_path):
    """A variant whose seed-0 sweep never kept UA >= 90 (at 8 requests, or at the unit's own number)
    is out of the answer: its later units go after every other unit, which keep the decision order."""
    cfg = {"domain": "style", "sequence": [f"c{i}" for i in range(12)],
           "variants": [{"name": "a", "sweep": {"key": "method_settings.steps", "values": [10, 20]}},
                        {"name": "b", "sweep": {"key": "method_settings.steps", "values": [10, 20]}}]}
    write(tmp_path / "s.yaml", json.dumps(cfg))
    items = study.units({"styles": str(tmp_path / "s.yaml")},
                        phases=[("styles", 8, 0), ("styles", 8, 1), ("styles", 12, 0), ("styles", 12, 1)])
    results = tmp_path / "results"
    for v, meets in (("a", False), ("b", True)):
        write(results / f"styles-r8-{v}-s0" / "summary.json",
              {"variants": {v: {"strength": {"chosen": 10, "meets_ua": meets}}}, "wall_seconds": 1.0})
    todo, skipped = study.plan(items, results)
    assert [u.name for u in skipped] == ["styles-r8-a-s0", "styles-r8-b-s0"]
    assert [u.name for u in todo] == ["styles-r8-b-s1", "styles-r12-b-s0", "styles-r12-b-s1",
                                      "styles-r8-a-s1", "styles-r12-a-s0", "styles-r12-a-s1"]
    # b held the bar through 8 requests but not through 12: its 12-request seed-1 unit goes last too
    write(results / "styles-r12-b-s0" / "summary.json",
          {"variants": {"b": {"strength": {"chosen": 10, "meets_ua": False}}}, "wall_seconds": 1.0})
    todo, _ = study.plan(items, results)
    assert [u.name for u in todo] == ["styles-r8-b-s1", "styles-r8-a-s1", "styles-r12-a-s0", "styles-r12-a-s1",
                                      "styles-r12-b-s1"]
