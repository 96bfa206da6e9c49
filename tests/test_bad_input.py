"""Bad input and faults a new user meets: one clear line before any work, nothing left on disk.
Each test failed on the code before its fix."""
import json
import os
import shutil
import stat

import pytest
import yaml

from obliviate.cli import main
from obliviate.continual import Run
from obliviate.request import Request

TINY = {"steps": "2", "anchor_images": "2", "sampler_steps": "2", "batch_size": "2"}
TINY_FLAGS = [a for k, v in TINY.items() for a in ("--method-setting", f"{k}={v}")]


def cli(args, capsys):
    code = main(["--quiet", *args])
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return code, out.err


def experiment(model, **extra):
    return {"name": "t", "model": str(model), "domain": "style", "sequence": ["fire"], "retained": ["lava"],
            "partners": ["circle"], "eval": {"seeds": [188], "probe_seeds": [5], "sampler": {"steps": 2, "guidance": 3.0}},
            "variants": [{"name": "seq", "method_settings": {k: int(v) for k, v in TINY.items()}}], **extra}


def finished_run(model, path, **request):
    run = Run.open_or_create(path, model)
    run.unlearn(Request("fire", "style", "conabl", dict(TINY), **request), quiet=True)
    return run


def test_an_experiment_without_variants_is_refused_and_leaves_nothing(random_model, tmp_path, capsys):
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump(experiment(random_model, variants=[])))
    code, err = cli(["run", str(exp), "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and f"{exp}: variants is empty" in err
    assert not (tmp_path / "out").exists()


def test_yaml_errors_name_the_file_and_the_variant_in_the_file_s_words(random_model, tmp_path, capsys):
    bad = experiment(random_model)
    bad["variants"] = [{"name": "strong", "regularizers": [{"name": "l2sp", "weight": -1}]}]
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump(bad))
    code, err = cli(["run", str(exp), "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and f"{exp}: variants[0] (strong): regularizer l2sp: setting weight=-1.0 is out of range; valid: [0, inf)" in err
    assert "--reg" not in err and not (tmp_path / "out").exists()


def test_attack_refuses_a_missing_gpu_a_file_as_out_and_bad_seeds_before_loading(random_model, tmp_path, capsys):
    run = finished_run(random_model, tmp_path / "run")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    base = ["attack", "--run", str(run.path), "--attack", "paraphrase"]
    if not __import__("torch").cuda.is_available():
        code, err = cli([*base, "--out", str(tmp_path / "a"), "--device", "cuda"], capsys)
        assert code == 2 and "--device cuda: no CUDA GPU" in err
    code, err = cli([*base, "--out", str(a_file)], capsys)
    assert code == 2 and f"--out {a_file} is a file, not a directory" in err
    code, err = cli([*base, "--out", str(tmp_path / "b"), "--seeds", "x"], capsys)
    assert code == 2 and "--seeds 'x': expected comma-separated integers" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_failed_safetensors_write_is_a_clean_error(random_model, tmp_path, capsys, monkeypatch):
    """A full disk makes safetensors raise its own SafetensorError, not an OSError."""
    from safetensors import SafetensorError
    import safetensors.torch

    run = finished_run(random_model, tmp_path / "run")

    def full_disk(*args, **kwargs):
        raise SafetensorError("Error while serializing: IoError(No space left on device (os error 28))")

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    code, err = cli(["export", str(run.path), "--out", str(tmp_path / "exported")], capsys)
    assert code == 1 and "writing a safetensors file failed" in err and "No space left" in err
    assert not (tmp_path / "exported").exists()  # the atomic directory never appeared


def test_a_damaged_model_config_creates_no_run_and_the_repaired_model_works(random_model, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(random_model, model)
    config = model / "unet" / "config.json"
    good = config.read_text()
    config.write_text(good[: len(good) // 2])
    args = ["unlearn", "--run", str(tmp_path / "run"), "--model", str(model), "--concept", "fire", "--domain", "style",
            *TINY_FLAGS]
    code, err = cli(args, capsys)
    assert code == 2 and f"{config} is not valid JSON" in err
    assert not (tmp_path / "run").exists()
    config.write_text(good)
    code, err = cli(args, capsys)
    assert code == 0, err


def test_a_refused_concept_word_leaves_no_run_no_lock_no_partial(random_model, tmp_path, capsys):
    code, err = cli(["unlearn", "--run", str(tmp_path / "run"), "--model", str(random_model), "--method", "uce",
                     "--domain", "other", "--concept", "qqqzzz"], capsys)
    assert code == 2 and "uce concept 'qqqzzz'" in err and "vocabulary" in err
    assert not (tmp_path / "run").exists()


def test_a_damaged_earlier_delta_is_refused_before_a_partial_directory_exists(random_model, tmp_path, capsys):
    run = finished_run(random_model, tmp_path / "run")
    delta = next((run.path / "steps").glob("001-*")) / "delta.safetensors"
    delta.write_bytes(delta.read_bytes()[:-8] + b"\0" * 8)
    code, err = cli(["unlearn", "--run", str(run.path), "--concept", "ice", "--domain", "style", *TINY_FLAGS], capsys)
    assert code == 2 and "does not match the hash recorded" in err
    assert not list((run.path / "steps").glob(".*.partial"))


def test_the_precision_is_recorded_and_another_precision_is_not_the_same_request(random_model, tmp_path):
    run = Run.open_or_create(tmp_path / "run", random_model)
    meta = run.unlearn(Request("fire", "style", "conabl", dict(TINY)), quiet=True, precision="bf16")
    assert meta["precision"] == "bf16"
    assert run.unlearn(Request("fire", "style", "conabl", dict(TINY)), quiet=True, precision="bf16")["step"] == 1
    with pytest.raises(ValueError, match="in bf16, and this request trains in fp32"):
        run.unlearn(Request("fire", "style", "conabl", dict(TINY)), quiet=True, precision="fp32")


def test_weak_messages_name_the_input(random_model, tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    code, err = cli(["unlearn", "--run", str(tmp_path / "r"), "--model", str(a_file), "--concept", "fire",
                     "--domain", "style"], capsys)
    assert code == 2 and f"model '{a_file}' is a file, not a diffusers pipeline directory" in err
    missing = tmp_path / "missing"
    code, err = cli(["eval", "--model", str(missing), "--out", str(tmp_path / "e")], capsys)
    assert code == 2 and f"model directory '{missing}' does not exist" in err and "classifiers" not in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_a_finished_request_on_a_read_only_run_returns_its_step(random_model, tmp_path, capsys):
    run = finished_run(random_model, tmp_path / "run")
    (run.path / ".lock").unlink()
    modes = {p: p.stat().st_mode for p in [run.path, *run.path.rglob("*")] if p.is_dir()}
    try:
        for p in modes:
            p.chmod(stat.S_IREAD | stat.S_IEXEC)
        code, err = cli(["unlearn", "--run", str(run.path), "--concept", "fire", "--domain", "style", *TINY_FLAGS], capsys)
        assert code == 0, err
    finally:
        for p, mode in modes.items():
            p.chmod(mode)


def test_a_finished_request_is_returned_without_taking_the_lock(random_model, tmp_path, monkeypatch):
    """What the read-only case rests on, checkable as root: a repeat never opens RUN/.lock."""
    import obliviate.continual as continual

    run = finished_run(random_model, tmp_path / "run")

    def no_lock(*args, **kwargs):
        raise AssertionError("the lock was taken to return a finished step")

    monkeypatch.setattr(continual, "exclusive", no_lock)
    assert run.unlearn(Request("fire", "style", "conabl", dict(TINY)), quiet=True)["step"] == 1


def test_an_add_on_is_refused_on_a_model_family_it_does_not_declare(tmp_path):
    from obliviate.testing import save_random_pipeline

    sdxl = save_random_pipeline(tmp_path / "sdxl", "sdxl", "tiny", seed=1)
    run = Run.open_or_create(tmp_path / "run", sdxl, write_now=False)
    with pytest.raises(ValueError, match="'adversarial' does not support SDXL pipelines"):
        run.unlearn(Request("fire", "other", "conabl", dict(TINY), [("adversarial", {})]), quiet=True)
    assert not (tmp_path / "run").exists()
