"""The whole second-edition study path, end to end, on the random-weight MiniCanvas model with a
tiny study: scripts/study.py runs every unit as an `obliviate run` through the local executor (sweep on the probe
seed, equal-forgetting choice, reported evaluation), keeps each finished summary, skips it next
time, grows the 1-request unit to 2 requests in the same directory, and scripts/results.py
writes the section from the kept summaries. Random weights: the numbers mean nothing, the
machinery is what is tested."""
import importlib.util
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_script(name):
    spec = importlib.util.spec_from_file_location(f"scripts_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_study_units_run_resume_skip_and_report(random_model, tmp_path):
    study, results = load_script("study"), load_script("results")
    cfg = {
        "name": "tiny", "model": str(random_model), "protocol": "minicanvas", "domain": "style",
        "sequence": ["fire", "ice"], "retained": ["lava"], "partners": ["circle", "ring"],
        "eval": {"seeds": [188, 288, 588], "probe_seeds": [1], "sampler": {"steps": 2, "guidance": 3.0, "batch_size": 16}},
        "strength": {"policy": "equal-forgetting", "ua_min": 90},
        "variants": [
            {"name": "conabl", "method": "conabl", "method_settings": {"recipe": "reference", "steps": 1, "anchor_images": 2,
                                                                       "sampler_steps": 2, "batch_size": 2},
             "sweep": {"key": "method_settings.steps", "values": [1, 2]}},
        ],
    }
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "styles.yaml").write_text(json.dumps(cfg))
    items = study.units({"styles": str(configs / "styles.yaml")}, phases=[("styles", 1, 0), ("styles", 2, 0)])
    study.check_units(items)
    runs, kept = tmp_path / "runs", tmp_path / "docs" / "results" / "study"
    logs = []
    env_path = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = str(ROOT / "src") + (os.pathsep + env_path if env_path else "")
    try:
        out = study.run_study(items, runs, kept, log=logs.append)  # the local executor: in this process
    finally:
        os.environ["PYTHONPATH"] = env_path
    assert out["failed"] == [], logs
    assert sorted(Path(k).name for k in out["kept"]) == sorted(u.name for u in items)
    for u in items:
        summary = json.loads((kept / u.name / "summary.json").read_text())
        assert summary["requests"] == u.requests and len(summary["variants"][u.variant]["steps"]) == u.requests + 1
        assert summary["variants"][u.variant]["strength"]["probe_seeds"] == [1]
        assert (kept / u.name / "summary.json").stat().st_size < 40_000  # small enough to commit
        assert str(tmp_path) not in (kept / u.name / "summary.json").read_text()
    # the 2-request unit grew the 1-request directory: request 1 was trained once per swept value
    sweep = runs / "styles-conabl-s0" / "variants" / "conabl" / "sweep"
    assert sorted(p.name for p in sweep.iterdir()) == ["1", "2"]
    assert all(len(list((d / "run" / "steps").iterdir())) == 2 for d in sweep.iterdir())
    # everything committed: nothing runs again
    again = study.run_study(items, runs, kept, log=lambda m: None)
    assert again["ran"] == [] and sorted(again["skipped"]) == sorted(u.name for u in items)
    # the report reads the kept summaries: real intervals for the variants run, "not yet run" elsewhere
    text = "\n".join(results.study_section([runs, kept], configs, tmp_path / "docs" / "results",
                                            horizons={"styles": (1, 2), "objects": (8,)}))
    assert "### Styles, after 2 requests" in text and "not yet run" in text.split("### Objects")[1]
    rows = [ln for ln in text.splitlines() if ln.startswith("| conabl | reference | steps=")]
    assert len(rows) == 2 and all(ln.count("[") >= 5 for ln in rows)  # intervals, not placeholders
    assert "| conabl | 0 | method_settings.steps | 1 |" in text  # the sweep table
