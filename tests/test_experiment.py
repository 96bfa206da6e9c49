"""Sampler seeding, experiment files end to end, resume, report."""
import json

import numpy as np
import pytest
import yaml

from obliviate.evaluate.sampler import SamplerConfig, generate
from obliviate.experiment import Runner, load_experiment
from obliviate.model import load_pipeline


def test_an_image_does_not_depend_on_its_batch(random_model, tmp_path):
    model = random_model
    pipe = load_pipeline(model, device="cpu")
    cfg = SamplerConfig(steps=4, guidance=3.0)
    alone = generate(pipe, ["A star image in fire style"], [7], cfg)[0]
    prompts = ["A ring image in ice style", "A star image in fire style", "A moon image in neon style"]
    in_grid = generate(pipe, prompts, [1, 7, 3], cfg)[1]
    assert np.abs(alone.astype(int) - in_grid.astype(int)).max() <= 1  # float noise of batched kernels at most
    # cached images are reused, not regenerated
    first = generate(pipe, prompts, [1, 7, 3], cfg, cache_dir=tmp_path, model_key="k" * 16)
    files = sorted(p.name for p in (tmp_path).rglob("*.png"))
    assert len(files) == 3 and any("seed7" in f for f in files)
    again = generate(pipe, prompts, [1, 7, 3], cfg, cache_dir=tmp_path, model_key="k" * 16)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))


def tiny_experiment(model):
    fast = {"steps": 4, "anchor_images": 4, "sampler_steps": 3, "batch_size": 2}
    return {
        "name": "tiny", "model": str(model), "protocol": "minicanvas", "domain": "style",
        "sequence": ["fire", "ice"], "retained": ["lava", "ocean"], "partners": ["circle", "star"],
        "eval": {"seeds": [188], "probe_seeds": [5], "sampler": {"steps": 3, "guidance": 3.0}},
        "grid": {"variant": "seq", "prompts": 3},
        "variants": [
            {"name": "seq", "method_settings": fast, "regularizers": [{"name": "projection", "mode": "update"}]},
            {"name": "sim", "setting": "simultaneous", "method_settings": fast, "early_stopping": True},
            {"name": "ties", "setting": "independent+merge", "method_settings": fast,
             "merge": {"method": "ties", "lam": [1.0, 1.5], "top_k": [0.5]}},
        ],
    }


def test_tiny_experiment_runs_end_to_end_and_resumes(random_model, tmp_path, monkeypatch):
    model = random_model
    exp = load_experiment(tiny_experiment(model))
    out = tmp_path / "exp"
    # interrupt during the second variant
    calls = {"n": 0}
    original = Runner.evaluate

    def flaky(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Runner, "evaluate", flaky)
    with pytest.raises(KeyboardInterrupt):
        Runner(exp, out, quiet=True).run()
    monkeypatch.setattr(Runner, "evaluate", original)
    first_step = out / "variants" / "seq" / "run" / "steps" / "001-fire" / "delta.safetensors"
    mtime = first_step.stat().st_mtime_ns
    summary = Runner(exp, out, quiet=True).run()
    assert first_step.stat().st_mtime_ns == mtime  # completed work is reused, not redone

    assert set(summary["variants"]) == {"seq", "sim", "ties"}
    for name, v in summary["variants"].items():
        steps = v["steps"]
        assert [s["step"] for s in steps] == [0, 1, 2] and steps[0]["concept"] is None
        for s in steps:
            for key in ("UA", "RA_I", "RA_C", "drift_l2", "train_seconds", "eval_seconds"):
                assert key in s
        assert steps[0]["UA"] is None and steps[2]["UA"] is not None
    assert summary["variants"]["ties"]["steps"][2]["merge"]["lam"] in (1.0, 1.5)
    assert summary["variants"]["sim"]["steps"][2]["chosen_step"] in (2, 4, 6, 8)  # 4 steps x 2 concepts
    saved = json.loads((out / "summary.json").read_text())
    assert saved["variants"].keys() == summary["variants"].keys()
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    for name in ("seq", "sim", "ties", "fire", "ice"):
        assert name in md and name in html


def test_experiment_file_errors_name_the_problem(tmp_path, random_model):
    model = random_model
    base = tiny_experiment(model)
    bad_cases = [
        ({"variants": [{"name": "a", "method": "nope"}]}, "unknown method"),
        ({"variants": [{"name": "a", "regularizers": ["nope"]}]}, "unknown regularizer"),
        ({"variants": [{"name": "a", "setting": "parallel"}]}, "setting 'parallel'"),
        ({"eval": {"seeds": [1], "probe_seeds": [1]}}, "disjoint"),
        ({"colour": 1}, "unknown keys"),
    ]
    for patch, message in bad_cases:
        cfg = {**base, **patch}
        path = tmp_path / "exp.yaml"
        path.write_text(yaml.safe_dump(cfg))
        with pytest.raises(ValueError, match=message):
            load_experiment(path)


def test_defaults_apply_to_every_variant_unless_overridden():
    spelled = {
        "domain": "style", "sequence": ["fire"], "eval": {"seeds": [188], "probe_seeds": [1]},
        "variants": [
            {"name": "a", "method": "conabl", "method_settings": {"steps": 7, "lr": 1e-4}},
            {"name": "b", "method": "conabl", "method_settings": {"steps": 7, "lr": 2e-4}, "regularizers": ["l2sp"]},
            {"name": "c", "method": "esd", "method_settings": {"steps": 3, "lr": 1e-4}},
        ],
    }
    shared = {**spelled, "defaults": {"method": "conabl", "method_settings": {"steps": 7, "lr": 1e-4}},
              "variants": [{"name": "a"},
                           {"name": "b", "method_settings": {"lr": 2e-4}, "regularizers": ["l2sp"]},  # key by key
                           {"name": "c", "method": "esd", "method_settings": {"steps": 3}}]}
    got = load_experiment(shared).variants
    assert got == load_experiment(spelled).variants
    assert [(v.method, v.method_settings) for v in got] == [
        ("conabl", {"steps": 7, "lr": 1e-4}), ("conabl", {"steps": 7, "lr": 2e-4}), ("esd", {"steps": 3, "lr": 1e-4})]
    # a default is checked like a variant field, before any work; a variant name cannot be a default
    with pytest.raises(ValueError, match="defaults: unknown keys \\['name'\\]"):
        load_experiment({**spelled, "defaults": {"name": "x"}})
    with pytest.raises(ValueError, match="defaults: method_settings must be a mapping"):
        load_experiment({**spelled, "defaults": {"method_settings": "steps=3"}})
    with pytest.raises(ValueError, match="unknown method"):
        load_experiment({**spelled, "defaults": {"method": "nope"}, "variants": [{"name": "a"}]})
