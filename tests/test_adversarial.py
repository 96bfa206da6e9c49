"""adversarial: the inner attack changes nothing but its own soft tokens, the add-on is
deterministic given the seed, and bad settings are refused before any work."""
import contextlib
import re

import pytest
import torch

from obliviate.continual import Run
from obliviate.model import load_pipeline, select_parameters
from obliviate.protocols import minicanvas_catalog
from obliviate.regularizers.adversarial import Adversarial, AdversarialSettings
from obliviate.parsing import parse_settings
from obliviate.request import Request
from obliviate.trainer import Context

FAST = {"every": "2", "attack_steps": "2", "images": "2", "batch_size": "2"}
FAST_CONABL = {"steps": "4", "anchor_images": "4", "sampler_steps": "2", "batch_size": "2"}


def context(pipe, request, tmp_path, unlearned_before=()):
    params = select_parameters(pipe.unet, request.param_group)
    for p in params.values():
        p.requires_grad_(True)
    start = {n: p.detach().clone() for n, p in params.items()}
    return Context(pipe=pipe, request=request, params=params, pretrained=start, start=start, catalog=minicanvas_catalog(),
                   unlearned_before=list(unlearned_before), cache_dir=tmp_path, base_hash="test",
                   restore_base=contextlib.nullcontext, quiet=True)


def snapshot(pipe):
    return {"unet": {n: p.detach().clone() for n, p in pipe.unet.named_parameters()},
            "text": {n: p.detach().clone() for n, p in pipe.text_encoder.named_parameters()},
            "vocab": dict(pipe.tokenizer.get_vocab())}


def test_inner_attack_changes_only_its_own_soft_tokens(random_model, tmp_path):
    pipe = load_pipeline(random_model)
    req = Request("fire", "style", "conabl", regularizers=[("adversarial", FAST)])
    ctx = context(pipe, req, tmp_path, unlearned_before=[("ice", "style")])
    hook = Adversarial(parse_settings(AdversarialSettings, {**FAST, "attack_steps": "3"}, "--reg adversarial"))
    before = snapshot(pipe)
    hook.setup(ctx)  # builds the adversaries and runs one refresh
    # concepts=all: the earlier style too; mode=both: one token in the concept's place, 3 prefix tokens
    assert hook.concepts == ["ice", "fire"] and len(hook.adversaries) == 4
    rows0 = [a.rows.clone() for a in hook.adversaries]
    for _ in range(len(hook.adversaries)):  # one refresh of every adversary
        hook.refresh(ctx)
    after = snapshot(pipe)
    # the model's tokenizer, text encoder and UNet are bit-identical; no trained tensor got a gradient
    assert after["vocab"] == before["vocab"]
    for part in ("unet", "text"):
        assert all(torch.equal(before[part][n], after[part][n]) for n in before[part])
    assert all(p.grad is None for p in ctx.params.values())
    # ... and every adversary's own rows moved
    assert all(not torch.equal(r0, a.rows) for r0, a in zip(rows0, hook.adversaries))
    # the outer loss trains the model: a gradient on the trained tensors only, through the adversarial prompt
    loss = hook.loss(ctx)
    loss.backward()
    assert loss.item() > 0 and any(p.grad is not None and p.grad.abs().sum() > 0 for p in ctx.params.values())
    assert all(not p.requires_grad for p in pipe.text_encoder.parameters())


def test_replace_adversary_starts_at_the_plain_prompt(random_model, tmp_path):
    """The replace adversary's row starts as the concept's own word: same text states as the plain prompt."""
    pipe = load_pipeline(random_model)
    req = Request("fire", "style", "conabl")
    ctx = context(pipe, req, tmp_path)
    hook = Adversarial(parse_settings(AdversarialSettings, {**FAST, "mode": "replace", "concepts": "current"}, "x"))
    hook.refresh = lambda ctx: None  # look at the initial rows
    hook.setup(ctx)
    adv = hook.adversaries[0]
    from obliviate.model import encode_prompts

    plain = encode_prompts(pipe, [ctx.catalog.prompt_with("fire", "style", "circle")])
    with torch.no_grad():
        mine = adv.hidden(pipe.text_encoder, [ctx.catalog.prompt_with(adv.tokenizer.convert_ids_to_tokens(adv.ids)[0],
                                                                         "style", "circle")], adv.rows, hook.all_rows())
    torch.testing.assert_close(mine, plain)


def test_same_seed_same_delta_and_another_seed_differs(random_model, tmp_path):
    deltas = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        run = Run.open_or_create(tmp_path / name, random_model)
        meta = run.unlearn(Request("fire", "style", "conabl", FAST_CONABL, regularizers=[("adversarial", FAST)], seed=seed),
                           quiet=True, cache_dir=tmp_path / "cache")
        assert meta["adversarial"]["refreshes"] == 2  # one at setup, one after step 2 of 4 (none after the last)
        deltas[name] = run.cumulative_delta()
    assert all(torch.equal(deltas["a"][n], deltas["b"][n]) for n in deltas["a"])
    assert any(not torch.equal(deltas["a"][n], deltas["c"][n]) for n in deltas["a"])


@pytest.mark.parametrize("settings, message", [
    ({"mode": "all"}, "mode"), ({"concepts": "some"}, "concepts"), ({"target": "x"}, "target"),
    ({"every": "0"}, "every"), ({"attack_steps": "0"}, "attack_steps"), ({"attack_lr": "-1"}, "attack_lr"),
    ({"tokens": "0"}, "tokens"), ({"weight": "-1"}, "weight"), ({"images": "0"}, "images"), ({"nope": "1"}, "nope"),
])
def test_bad_settings_are_refused_before_any_work(random_model, tmp_path, settings, message):
    run = Run.open_or_create(tmp_path / "run", random_model)
    with pytest.raises(ValueError, match=message):
        run.unlearn(Request("fire", "style", "conabl", FAST_CONABL, regularizers=[("adversarial", settings)]), quiet=True)
    assert run.steps() == [] and not (tmp_path / "run" / "cache").exists()


def _robustness_script():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "robustness.py"
    spec = importlib.util.spec_from_file_location("robustness_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ROBUSTNESS_FILE = {"domain": "style", "sequence": ["fire", "ice"], "retained": ["lava"],
                   "defaults": {"method": "conabl", "method_settings": {"steps": 60}},
                   "variants": [{"name": "conabl", "method_settings": {"recipe": "reference"}},
                                {"name": "conabl+l1sp", "regularizers": [{"name": "l1sp", "weight": 10}]},
                                {"name": "together", "setting": "simultaneous"}]}


def test_robustness_variants_are_the_experiment_file_s():
    """scripts/robustness.py has no variant syntax of its own: a name picks one of the file's
    variants, a YAML mapping is a variant in the file's syntax, over the file's defaults, and
    the same mapping inside the file gives the same variant."""
    from obliviate.experiment.config import load_experiment

    r = _robustness_script()
    exp = load_experiment(ROBUSTNESS_FILE)
    # default: the file's variants the table can run (it unlearns request by request)
    assert [v.name for v in r.parse_variants(None, exp)] == ["conabl", "conabl+l1sp"]
    written = ("{name: conabl+l1sp+adversarial, method_settings: {recipe: reference}, "
               "regularizers: [{name: l1sp, weight: 10}, {name: adversarial, mode: prefix}]}")
    chosen = r.parse_variants(f"conabl+l1sp, conabl; {written}", exp)
    assert [v.name for v in chosen] == ["conabl+l1sp", "conabl", "conabl+l1sp+adversarial"]
    extra = chosen[2]
    assert extra.method == "conabl" and extra.method_settings == {"steps": 60, "recipe": "reference"}
    assert extra.regularizers == [("l1sp", {"weight": 10}), ("adversarial", {"mode": "prefix"})]
    import yaml

    in_file = load_experiment({**ROBUSTNESS_FILE, "variants": [yaml.safe_load(written)]}).variants[0]
    assert extra == in_file
    for bad, message in (("nope", "not a variant of the experiment file"),
                         ("{name: x, regularizers: [{name: adversarial, mode: x}]}", "(x): regularizer adversarial: setting mode='x' is not a valid choice"),
                         ("{name: x, regularizers: [{name: l2sp, strength: 1}]}", "unknown setting(s) ['strength']"),
                         ("{name: x, method: nope}", "unknown method 'nope'"),
                         ("{name: x", "not a valid YAML mapping"), ("{method: conabl}", "a mapping with a 'name'"),
                         ("{name: s, setting: simultaneous}", "request by request"), ("together", "request by request"),
                         ("conabl;conabl", "unique")):
        with pytest.raises(ValueError, match=re.escape(message)):
            r.parse_variants(bad, exp)


def test_the_documented_robustness_commands_parse():
    """Every `scripts/robustness.py` command in docs/ (docs/archive is history) and in the script's
    docstring names an experiment file and variants the script accepts."""
    import shlex
    from pathlib import Path

    from obliviate.experiment.config import load_experiment

    r = _robustness_script()
    root = Path(__file__).resolve().parents[1]
    commands = []
    for f in (*sorted((root / "docs").glob("*.md")), root / "scripts" / "robustness.py"):
        text = f.read_text().replace("\\\n", "")  # a shell line continuation, also inside quotes
        commands += [line.split("python scripts/robustness.py", 1)[1] for line in text.splitlines()
                     if "python scripts/robustness.py" in line]
    assert len(commands) >= 7
    for command in commands:
        args = r.build_parser().parse_args(shlex.split(command))
        variants = r.parse_variants(args.variants, load_experiment(root / args.config))
        assert variants and all(v.setting == "sequential" for v in variants), command


def test_robustness_table_says_never_when_most_concepts_do_not_revive():
    r = _robustness_script()
    iv = {"value": 90.0, "lo": 85.0, "hi": 95.0}
    row = {"clean": {"UA": iv, "RA_I": iv, "RA_C": iv},
           "attacks": {"relearn": {"steps_to_revival": {"a": 0, "b": None, "c": None, "d": 20}}}}
    line = r.markdown_rows({"variants": {"x": row}})[2]
    assert line.endswith("| never (0, never, never, 20) |"), line  # the upper median of 0, 20, never, never
    row["attacks"]["relearn"]["steps_to_revival"] = {"a": 10, "b": 30, "c": None}
    assert r.markdown_rows({"variants": {"x": row}})[2].endswith("| 30 (10, 30, never) |")
