"""The command line: bad inputs fail before any work, nothing is written."""
import json

import pytest

from obliviate.cli import main, parse_reg


def run_cli(args, capsys):
    code = main(["--quiet", *args])
    return code, capsys.readouterr()


@pytest.mark.parametrize("args, message", [
    (["--method", "forget-it"], "unknown method 'forget-it'; valid methods: conabl"),
    (["--reg", "dropout"], "unknown regularizer 'dropout'; valid regularizers"),
    (["--reg", "l2sp:weight=heavy"], "weight='heavy' is not a valid float"),
    (["--reg", "l2sp:strength=3"], "unknown setting(s) ['strength']; valid settings: weight, reference"),
    (["--reg", "l2sp:weight"], "settings must look like"),
    (["--reg", "projection:mode=sideways"], "mode='sideways'"),
    (["--reg", "selft:top_k=2"], "setting top_k=2.0 is out of range; valid: (0, 1]"),
    (["--concept", "plaid"], "unknown style 'plaid'"),
    (["--concept", "star"], "(it is a object)"),
    (["--param-group", "everything"], "valid groups"),
])
def test_bad_unlearn_inputs_fail_cleanly(random_model, tmp_path, capsys, args, message):
    model = random_model
    base = ["unlearn", "--run", str(tmp_path / "run"), "--model", str(model), "--concept", "fire", "--domain", "style"]
    # later flags override earlier ones
    code, out = run_cli(base + args, capsys)
    assert code == 2
    assert message in out.err
    assert not (tmp_path / "run").exists()  # nothing written


def test_bad_model_directory(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, out = run_cli(["unlearn", "--run", str(tmp_path / "r"), "--model", str(tmp_path / "empty"),
                         "--concept", "x", "--domain", "other"], capsys)
    assert code == 2 and "model_index.json is missing" in out.err and not (tmp_path / "r").exists()


def test_unlearn_and_export_from_the_command_line(random_model, tmp_path, capsys):
    model = random_model
    run = str(tmp_path / "run")
    for concept in ("fire", "ice"):
        code, out = run_cli(["unlearn", "--run", run, "--model", str(model), "--concept", concept, "--domain", "style",
                             "--reg", "projection:mode=update,source=catalog", "--steps", "4", "--method-setting", "anchor_images=4",
                             "--method-setting", "sampler_steps=3"], capsys)
        assert code == 0, out.err
    assert sorted(p.name for p in (tmp_path / "run" / "steps").iterdir()) == ["001-fire", "002-ice"]
    step = json.loads((tmp_path / "run" / "steps" / "002-ice" / "step.json").read_text())
    # source=catalog: earlier unlearned concepts stay protected (the reference's style default,
    # source=anchors, protects the anchor captions only)
    assert "fire" in step["projection_concepts"]
    code, out = run_cli(["export", run, "--out", str(tmp_path / "exported")], capsys)
    assert code == 0 and (tmp_path / "exported" / "model_index.json").exists()


def test_parse_reg():
    assert parse_reg("projection:mode=update,dedup=0.9") == ("projection", {"mode": "update", "dedup": "0.9"})
    assert parse_reg("l1sp") == ("l1sp", {})
