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


# ---------------------------------------------------------------- one variant syntax
SHORTHAND = ["--method", "conabl", "--steps", "30", "--method-setting", "recipe=reference", "--reg", "l1sp:weight=10",
             "--reg", "adversarial:mode=prefix,tokens=2", "--param-group", "xattn"]
IN_A_FILE = {"name": "v", "method": "conabl", "method_settings": {"steps": 30, "recipe": "reference"},
             "regularizers": [{"name": "l1sp", "weight": 10}, {"name": "adversarial", "mode": "prefix", "tokens": 2}],
             "param_group": "xattn"}


def unlearn_args(tmp_path, model, extra):
    from obliviate.cli import build_parser

    return build_parser().parse_args(["unlearn", "--run", str(tmp_path / "run"), "--model", str(model), "--concept", "fire",
                                      "--domain", "style", *extra])


def test_the_command_line_shorthand_is_an_experiment_file_variant(random_model, tmp_path):
    """--method/--reg/... are written as the experiment file's variant and checked by its parser:
    the request resolves to exactly what the same variant in an experiment file resolves to."""
    from obliviate.cli import shorthand_request, shorthand_variant
    from obliviate.components import build_hooks, resolved_config
    from obliviate.experiment.config import load_experiment
    from obliviate.request import Request

    args = unlearn_args(tmp_path, random_model, SHORTHAND)
    assert shorthand_variant(args) == {
        "name": "conabl+l1sp+adversarial", "method": "conabl", "method_settings": {"recipe": "reference", "steps": "30"},
        "regularizers": [{"name": "l1sp", "weight": "10"}, {"name": "adversarial", "mode": "prefix", "tokens": "2"}],
        "param_group": "xattn"}
    request = shorthand_request(args)
    v = load_experiment({"domain": "style", "sequence": ["fire"], "variants": [IN_A_FILE]}).variants[0]
    from_file = Request("fire", "style", v.method, v.method_settings, v.regularizers, param_group=v.param_group)
    assert resolved_config(*build_hooks(request)) == resolved_config(*build_hooks(from_file))
    assert [n for n, _ in request.regularizers] == [n for n, _ in from_file.regularizers] == ["l1sp", "adversarial"]
    assert request.param_group == from_file.param_group == "xattn"


@pytest.mark.parametrize("flag, setting, message", [
    ("--reg", {"regularizers": [{"name": "l2sp", "weight": -1}]}, "regularizer l2sp: setting weight=-1"),
    ("--param-group", {"param_group": "everything"}, "param_group 'everything' is not valid"),
])
def test_the_shorthand_and_a_file_variant_are_refused_with_the_same_words(random_model, tmp_path, flag, setting, message):
    from obliviate.cli import shorthand_request
    from obliviate.experiment.config import load_experiment

    extra = [flag, "l2sp:weight=-1" if flag == "--reg" else "everything"]
    with pytest.raises(ValueError) as from_flags:
        shorthand_request(unlearn_args(tmp_path, random_model, extra))
    with pytest.raises(ValueError) as from_file:
        load_experiment({"domain": "style", "sequence": ["fire"], "variants": [{"name": "v", **setting}]})
    assert message in str(from_flags.value) and message in str(from_file.value)
    assert str(from_flags.value).partition("): ")[2] == str(from_file.value).partition("): ")[2]


# ---------------------------------------------------------------- eval of a run: its model from Run.load
def test_eval_of_a_run_loads_it_with_run_load_and_equals_eval_of_its_export(random_model, tmp_path, capsys, monkeypatch):
    from conftest import FAST_CONABL
    from obliviate.continual import Run
    from obliviate.request import Request

    run = Run.open_or_create(tmp_path / "run", random_model)
    run.unlearn(Request("fire", "style", "conabl", FAST_CONABL), quiet=True)
    loads, load = [], Run.load
    monkeypatch.setattr(Run, "load", lambda self, *a, **k: loads.append(a) or load(self, *a, **k))
    grid = ["--seeds", "188", "--partners", "circle"]
    code, out = run_cli(["eval", "--run", str(run.path), *grid, "--out", str(tmp_path / "ev-run")], capsys)
    assert code == 0, out.err
    assert loads == [(None,)]
    code, out = run_cli(["export", str(run.path), "--out", str(tmp_path / "exported")], capsys)
    assert code == 0, out.err
    code, out = run_cli(["eval", "--model", str(tmp_path / "exported"), "--unlearned", "fire", "--domain", "style", *grid,
                         "--out", str(tmp_path / "ev-model")], capsys)
    assert code == 0, out.err
    by_run, by_model = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("ev-run", "ev-model"))
    for key in ("UA", "RA_I", "RA_C", "unlearned", "seeds", "partners", "domain"):
        assert by_run[key] == by_model[key], key
