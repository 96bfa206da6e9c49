"""docs/EXTENDING.md made true: a method, an add-on, an attack and a protocol, each defined in a
file outside the package (tests/plugins/toy_components.py) and registered from there, used from
the command line and from an experiment file; LoRA and several processes work or are refused by
what each component declares. No file of the package knows their names."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

PLUGIN = Path(__file__).parent / "plugins" / "toy_components.py"
SRC = str(Path(__file__).resolve().parents[1] / "src")


def obliviate(*args, cwd):
    # COLUMNS: argparse wraps help at the terminal's width and may break a name at its hyphen
    env = {**os.environ, "OBLIVIATE_PLUGINS": str(PLUGIN), "OMP_NUM_THREADS": "1", "COLUMNS": "250",
           "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    res = subprocess.run([sys.executable, "-m", "obliviate.cli", "--quiet", *map(str, args)], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=600)
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    return res


def test_no_package_file_names_the_plugin_components():
    package = Path(SRC) / "obliviate"
    for path in package.rglob("*.py"):
        text = path.read_text()
        for name in ("to-empty", "toy-shrink", "tinycanvas", "toy_components"):
            assert name not in text, f"{path} names {name}"


def test_plugin_components_from_the_command_line(random_model, tmp_path):
    listed = obliviate("unlearn", "--help", cwd=tmp_path)
    assert "to-empty" in listed.stdout and "toy-shrink" in listed.stdout
    run = tmp_path / "run"
    done = obliviate("unlearn", "--run", run, "--model", random_model, "--concept", "fire", "--domain", "style",
                     "--method", "to-empty", "--reg", "toy-shrink:weight=2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    step = json.loads(next((run / "steps").glob("001-*/step.json")).read_text())
    assert step["config"]["method"]["name"] == "to-empty" and step["config"]["regularizers"][0]["weight"] == 2.0
    assert step["drift"]["parent"]["l2"] > 0
    # LoRA: the method declares nothing against it (Method's default), the add-on has no LoRA form
    lora = obliviate("unlearn", "--run", tmp_path / "lora", "--model", random_model, "--concept", "fire", "--domain",
                     "style", "--method", "to-empty", "--param-group", "lora:r=2", cwd=tmp_path)
    assert lora.returncode == 0, lora.stderr
    refused = obliviate("unlearn", "--run", tmp_path / "lora2", "--model", random_model, "--concept", "fire",
                        "--domain", "style", "--method", "to-empty", "--reg", "toy-shrink", "--param-group", "lora:r=2",
                        cwd=tmp_path)
    assert refused.returncode == 2 and "'toy-shrink' has no LoRA meaning yet" in refused.stderr
    assert not (tmp_path / "lora2").exists()
    attacked = obliviate("attack", "--run", run, "--attack", "plain", "--out", tmp_path / "attack", "--seeds", "188",
                         "--partners", "circle", cwd=tmp_path)
    assert attacked.returncode == 0, attacked.stderr
    assert json.loads((tmp_path / "attack" / "attack.json").read_text())["attack"] == "plain"


def test_plugin_components_from_an_experiment_file(random_model, tmp_path):
    exp = {"name": "toy", "model": str(random_model), "protocol": "tinycanvas", "domain": "style", "sequence": ["fire"],
           "retained": ["lava"], "partners": ["circle"],
           "eval": {"seeds": [188], "probe_seeds": [5], "sampler": {"steps": 2, "guidance": 3.0}},
           "variants": [{"name": "toy", "method": "to-empty", "regularizers": [{"name": "toy-shrink", "weight": 1}]}],
           "attacks": [{"name": "plain"}]}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(exp))
    res = obliviate("run", path, "--out", tmp_path / "out", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["protocol"] == "tinycanvas"
    variant = summary["variants"]["toy"]
    assert variant["method"] == "to-empty" and variant["config"]["regularizers"][0]["name"] == "toy-shrink", variant
    assert variant["attacks"]["plain@1"]["attack"] == "plain"


def test_several_processes_are_refused_by_the_add_on_s_declaration():
    import importlib.util

    from obliviate.distributed import Distributed

    spec = importlib.util.spec_from_file_location("toy_components_inproc", PLUGIN)
    toy = importlib.util.module_from_spec(spec)
    from obliviate.attacks import ATTACKS
    from obliviate.methods import METHODS
    from obliviate.protocols import PROTOCOLS
    from obliviate.regularizers import REGULARIZERS

    registries = (METHODS, REGULARIZERS, ATTACKS, PROTOCOLS)
    saved = [dict(r) for r in registries]  # the plugin registers into all four; later tests must not see it
    try:
        spec.loader.exec_module(toy)
        two = Distributed.__new__(Distributed)
        two.world = 2
        method = toy.ToEmpty(toy.ToEmptySettings())
        two.check(method, [])  # the method declares nothing against it
        with pytest.raises(ValueError, match="'toy-shrink' cannot run on 2 processes: the toy add-on declares one process"):
            two.check(method, [toy.Shrink(toy.ShrinkSettings())])
    finally:
        for registry, before in zip(registries, saved):
            registry.clear()
            registry.update(before)
