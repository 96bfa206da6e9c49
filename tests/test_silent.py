"""Silently wrong or lost work: each test failed before its fix."""
import errno
import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import FAST_CONABL
from obliviate.cli import main
from obliviate.continual import Run
from obliviate.delta import load_delta
from obliviate.experiment import Runner, load_experiment
from obliviate.locking import BusyError, exclusive
from obliviate.request import Request

TINY = {"steps": "3", "anchor_images": "4", "sampler_steps": "3", "batch_size": "2"}
SRC = str(Path(__file__).resolve().parents[1] / "src")


def cli(args, capsys):
    code = main(["--quiet", *args])
    return code, capsys.readouterr()


def subprocess_env():
    return {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}


# 1 ------------------------------------------------------------- evaluation cache keys
def one_variant_experiment(model, seeds):
    return {"name": "t", "model": str(model), "domain": "style", "sequence": ["fire"], "retained": ["lava"],
            "partners": ["circle"], "eval": {"seeds": seeds, "probe_seeds": [5], "sampler": {"steps": 2, "guidance": 3.0}},
            "variants": [{"name": "seq", "method_settings": {k: int(v) for k, v in TINY.items()}}]}


def test_rerun_with_other_seeds_recomputes_the_evaluations(random_model, tmp_path):
    model = random_model
    out = tmp_path / "exp"
    Runner(load_experiment(one_variant_experiment(model, [188])), out, quiet=True).run()
    delta = out / "variants" / "seq" / "run" / "steps" / "001-fire" / "delta.safetensors"
    mtime = delta.stat().st_mtime_ns
    summary = Runner(load_experiment(one_variant_experiment(model, [288])), out, quiet=True).run()
    assert delta.stat().st_mtime_ns == mtime  # training is reused: it does not depend on the seeds
    assert summary["seeds"] == [288]
    for name in ("base.json", "step001.json"):
        folder = out / "eval" if name == "base.json" else out / "variants" / "seq" / "eval"
        assert json.loads((folder / name).read_text())["seeds"] == [288]
    # the new seed's images were generated: the metrics are of the new seeds, not the old file
    assert list((out / "cache" / "images").rglob("*seed288.png"))


# 2 ------------------------------------------------------------- YAML types
@pytest.mark.parametrize("patch, message", [
    ({"eval": {"seeds": "188", "probe_seeds": [5]}}, "eval: seeds must be a non-empty list of integers, got '188'"),
    ({"eval": {"seeds": [188, "2"], "probe_seeds": [5]}}, "seeds must be a non-empty list of integers"),
    ({"eval": {"seeds": [True], "probe_seeds": [5]}}, "seeds must be a non-empty list of integers"),
    ({"sequence": "fire"}, "sequence must be a list of names, got 'fire'"),
    ({"retained": "lava"}, "retained must be a list of names"),
    ({"seed": "0"}, "seed must be an integer"),
    ({"domain": "colour"}, "domain 'colour' is not valid"),
    ({"grid": {"prompts": "6"}}, "grid: prompts must be an integer"),
    ({"eval": {"seeds": [188], "sampler": {"steps": "many"}}}, "eval.sampler: setting steps='many'"),
    ({"variants": [{"name": "a", "early_stopping": "yes"}]}, "early_stopping must be true or false"),
    ({"variants": [{"name": "a", "method_settings": "steps=3"}]}, "method_settings must be a mapping"),
    ({"variants": [{"name": "a", "setting": "independent+merge", "merge": {"lam": "big"}}]}, "merge: lam must be a number"),
    ({"variants": [{"name": "a", "setting": "independent+merge", "merge": {"top_k": [0.5, 2]}}]}, "top_k 2 is out of range"),
    ({"variants": [{"name": "a", "param_group": "everything"}]}, "param_group 'everything' is not valid"),
])
def test_experiment_field_types_are_checked(tmp_path, patch, message):
    cfg = {**one_variant_experiment("minicanvas", [188]), **patch}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ValueError) as err:
        load_experiment(path)
    assert message in str(err.value)


# 3 ------------------------------------------------------------- ranges and device before any work
@pytest.mark.parametrize("args, message", [
    (["--steps", "0"], "steps=0 is out of range; valid: [1, inf)"),
    (["--steps", "-5"], "steps=-5 is out of range"),
    (["--method-setting", "lr=-1e-3"], "lr=-0.001 is out of range; valid: (0, inf)"),
    (["--method-setting", "batch_size=0"], "batch_size=0 is out of range"),
    (["--method-setting", "anchor_images=0"], "anchor_images=0 is out of range"),
    (["--reg", "l2sp:weight=-1"], "weight"),
    (["--reg", "projection:dedup=0"], "dedup=0.0 is out of range; valid: (0, 1]"),
    (["--method", "sculpmem", "--method-setting", "density=1.5"], "density=1.5 is out of range"),
    (["--device", "gpu7"], "--device 'gpu7' is not valid"),
    *([] if torch.cuda.is_available() else [(["--device", "cuda"], "no CUDA GPU is available")]),
])
def test_bad_ranges_and_devices_fail_before_any_work(random_model, tmp_path, capsys, args, message):
    model = random_model
    code, out = cli(["unlearn", "--run", str(tmp_path / "run"), "--model", str(model), "--concept", "fire",
                     "--domain", "style", *args], capsys)
    assert code == 2 and message in out.err
    assert not (tmp_path / "run").exists()


def test_a_partial_that_never_trained_does_not_block_a_corrected_request(random_model, tmp_path, monkeypatch):
    model = random_model
    run = Run.open_or_create(tmp_path / "run", model)
    from obliviate.methods.conabl import ConAbl

    original = ConAbl.setup

    def failing_setup(self, ctx, method=None):
        raise RuntimeError("out of memory")  # e.g. a device failure during setup

    monkeypatch.setattr(ConAbl, "setup", failing_setup)
    with pytest.raises(RuntimeError):
        run.unlearn(Request("fire", "style", "conabl", {**TINY, "batch_size": "64"}), quiet=True)
    assert list((tmp_path / "run" / "steps").glob(".*.partial"))
    monkeypatch.setattr(ConAbl, "setup", original)
    meta = run.unlearn(Request("fire", "style", "conabl", TINY), quiet=True)  # corrected: other settings
    assert meta["step"] == 1 and not list((tmp_path / "run" / "steps").glob(".*.partial"))


# 4 ------------------------------------------------------------- locks
def test_a_second_process_is_refused_while_a_run_is_busy(random_model, tmp_path):
    model = random_model
    run = Run.open_or_create(tmp_path / "run", model)
    cmd = [sys.executable, "-m", "obliviate.cli", "unlearn", "--quiet", "--run", str(run.path), "--concept", "fire",
           "--domain", "style", *[a for k, v in TINY.items() for a in ("--method-setting", f"{k}={v}")]]
    with exclusive(run.path, "run"):  # this process is in the middle of a request
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=subprocess_env())
    assert res.returncode == 75, res.stderr[-2000:]
    assert f"run {run.path} is busy (another obliviate process holds it)" in res.stderr
    assert "Traceback" not in res.stderr
    assert list((run.path / "steps").iterdir()) == []  # nothing was started


def test_an_experiment_output_directory_is_locked(random_model, tmp_path):
    model = random_model
    out = tmp_path / "exp"
    out.mkdir()
    fd = os.open(out / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as another process would hold it
    try:
        with pytest.raises(BusyError, match="experiment output directory .* is busy"):
            Runner(load_experiment(one_variant_experiment(model, [188])), out, quiet=True).run()
    finally:
        os.close(fd)
    assert not (out / "variants").exists()


# 5 ------------------------------------------------------------- base model and anchor cache verified
def test_eval_of_a_run_checks_the_base_model(random_model, tmp_path, capsys):
    model = random_model
    copy = tmp_path / "model"
    shutil.copytree(model, copy)
    run = Run.open_or_create(tmp_path / "run", copy)
    weights = next((copy / "unet").glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x40  # one flipped bit in the last weight
    weights.write_bytes(bytes(data))
    code, out = cli(["eval", "--run", str(run.path), "--seeds", "188", "--partners", "circle",
                     "--out", str(tmp_path / "ev")], capsys)
    assert code == 2 and "changed since the run was created" in out.err
    assert not (tmp_path / "ev" / "metrics.json").exists()


def test_a_damaged_anchor_cache_is_regenerated(random_model, tmp_path):
    model = random_model
    cache = tmp_path / "cache"
    request = Request("fire", "style", "conabl", TINY, seed=1)
    first = Run.open_or_create(tmp_path / "a", model).unlearn(request, quiet=True, cache_dir=cache)
    expected = load_delta(Path(first["dir"]) / "delta.safetensors")
    [anchor] = list(cache.glob("anchors-*.safetensors"))
    good = anchor.read_bytes()
    flipped = bytearray(good)
    flipped[-7] ^= 0x7F  # a flipped byte inside the latents
    for name, damaged in (("b", bytes(flipped)), ("c", good[: len(good) // 2])):
        anchor.write_bytes(damaged)
        meta = Run.open_or_create(tmp_path / name, model).unlearn(request, quiet=True, cache_dir=cache)
        got = load_delta(Path(meta["dir"]) / "delta.safetensors")
        assert all(torch.equal(got[k], expected[k]) for k in expected), name
        assert anchor.read_bytes() == good  # regenerated identically


# 6 ------------------------------------------------------------- deterministic bytes
def test_delta_bytes_are_the_same_in_every_process(tmp_path):
    code = (
        "import sys, torch; from obliviate.delta import save_delta, file_hash;"
        "g = torch.Generator().manual_seed(0);"
        "d = {f't{i}.weight': torch.randn(3, 2, generator=g) for i in range(5)};"
        "save_delta(sys.argv[1], d, metadata={f'key{i}': str(i) for i in range(12)});"
        "print(file_hash(sys.argv[1]))"
    )
    hashes = []
    for i in range(2):
        res = subprocess.run([sys.executable, "-c", code, str(tmp_path / f"d{i}.safetensors")], capture_output=True,
                             text=True, timeout=300, env=subprocess_env())
        assert res.returncode == 0, res.stderr[-2000:]
        hashes.append(res.stdout.split()[-1])
    assert hashes[0] == hashes[1]
    from safetensors import safe_open

    with safe_open(str(tmp_path / "d0.safetensors"), "pt") as f:  # still an ordinary safetensors file
        assert f.metadata()["key11"] == "11" and len(f.keys()) == 5


# 7 ------------------------------------------------------------- OS errors at the command line
def test_a_file_where_a_directory_belongs_is_a_clean_error(random_model, tmp_path, capsys):
    model = random_model
    a_file = tmp_path / "file"
    a_file.write_text("x")
    code, out = cli(["unlearn", "--run", str(a_file), "--model", str(model), "--concept", "fire", "--domain", "style"], capsys)
    assert code == 2 and f"--run {a_file} is a file" in out.err
    run = Run.open_or_create(tmp_path / "run", model)
    code, out = cli(["export", str(run.path), "--out", str(a_file)], capsys)
    assert code == 2 and f"--out {a_file} is a file" in out.err
    code, out = cli(["eval", "--run", str(run.path), "--out", str(a_file)], capsys)
    assert code == 2 and f"--out {a_file} is a file" in out.err
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump(one_variant_experiment(model, [188])))
    code, out = cli(["run", str(exp), "--out", str(a_file)], capsys)
    assert code == 2 and f"--out {a_file} is a file" in out.err
    assert "Traceback" not in out.err


def test_export_checks_its_destination_before_loading(random_model, tmp_path, capsys, monkeypatch):
    model = random_model
    run = Run.open_or_create(tmp_path / "run", model)
    (tmp_path / "file").write_text("x")

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before the destination was checked")

    monkeypatch.setattr(Run, "load", no_load)
    code, out = cli(["export", str(run.path), "--out", str(tmp_path / "file" / "sub")], capsys)
    assert code == 1 and str(tmp_path / "file") in out.err and "Traceback" not in out.err


def test_a_full_disk_names_the_file(random_model, tmp_path, capsys, monkeypatch):
    model = random_model

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("obliviate.delta.os.fsync", full)
    code, out = cli(["unlearn", "--run", str(tmp_path / "run"), "--model", str(model), "--concept", "fire",
                     "--domain", "style"], capsys)
    assert code == 1
    assert f"{tmp_path / 'run' / 'run.json'}: No space left on device" in out.err
    assert not list((tmp_path / "run").glob(".run.json*"))  # no temp file left behind


# 8 ------------------------------------------------------------- typed settings compare equal
def test_the_same_request_with_typed_settings_is_not_refused(random_model, tmp_path, capsys):
    model = random_model
    run_dir = tmp_path / "run"
    code, out = cli(["unlearn", "--run", str(run_dir), "--model", str(model), "--concept", "fire", "--domain", "style",
                     "--steps", "3", *[a for k, v in TINY.items() if k != "steps" for a in ("--method-setting", f"{k}={v}")],
                     "--reg", "projection:mode=update"], capsys)
    assert code == 0, out.err
    typed = {"steps": 3, "anchor_images": 4, "sampler_steps": 3, "batch_size": 2, "lr": 5e-4}  # lr spelled at its default
    meta = Run(run_dir).unlearn(Request("fire", "style", "conabl", typed, [("projection", {"mode": "update"})]), quiet=True)
    assert meta["step"] == 1 and len(Run(run_dir).steps()) == 1
    with pytest.raises(ValueError, match="other settings"):  # a real difference is still refused
        Run(run_dir).unlearn(Request("fire", "style", "conabl", {**typed, "steps": 4}), quiet=True)


def test_a_step_made_under_other_defaults_is_not_reused_silently(bundled_model, tmp_path):
    run = Run.open_or_create(tmp_path / "run", bundled_model)
    meta = run.unlearn(Request("fire", "style", "uce", {}), quiet=True)
    assert run.unlearn(Request("fire", "style", "uce", {}), quiet=True)["step"] == 1  # same defaults: reused
    # the step as an older version would have recorded it, when uce's lam defaulted to 1.0
    path = tmp_path / "run" / "steps" / "001-fire" / "step.json"
    recorded = json.loads(path.read_text())
    recorded["config"]["method"]["lam"] = 1.0
    path.write_text(json.dumps(recorded))
    with pytest.raises(ValueError, match=r"uce\.lam: 1\.0 -> 0\.5.*a default changed"):
        Run(tmp_path / "run").unlearn(Request("fire", "style", "uce", {}), quiet=True)
    # spelling the recorded value out is the same work again
    assert Run(tmp_path / "run").unlearn(Request("fire", "style", "uce", {"lam": 1.0}), quiet=True)["step"] == meta["step"]


# the report a person reads: the command line ------------------------------------------
def test_every_argument_has_help_and_version_and_quiet_after_the_command(capsys):
    import argparse

    from obliviate import __version__
    from obliviate.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in sub.choices.items():
        for action in command._actions:
            assert action.help, f"obliviate {name} {action.dest} has no help text"
    with pytest.raises(SystemExit):
        parser.parse_args(["--version"])
    assert capsys.readouterr().out.strip() == f"obliviate {__version__}"
    assert parser.parse_args(["export", "r", "--out", "o", "--quiet"]).quiet
    assert parser.parse_args(["--quiet", "export", "r", "--out", "o"]).quiet
    assert not parser.parse_args(["export", "r", "--out", "o"]).quiet
    eval_help = sub.choices["eval"].format_help()
    assert "188,288" in eval_help and "--partners" in eval_help


def test_library_warnings_are_not_all_hidden():
    import warnings

    from obliviate.cli import _quiet_libraries

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _quiet_libraries()
        warnings.warn("`torch_dtype` is deprecated and will be removed", FutureWarning)
        warnings.warn("`resume_download` is deprecated", FutureWarning)
    assert [str(w.message) for w in caught] == ["`torch_dtype` is deprecated and will be removed"]


def test_thread_count_is_chosen_unless_the_user_chose(monkeypatch):
    from obliviate.cli import pick_threads

    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert pick_threads() is None
        monkeypatch.delenv("OMP_NUM_THREADS")
        n = pick_threads()
        assert 1 <= n <= 4 and torch.get_num_threads() == n
    finally:
        torch.set_num_threads(before)
