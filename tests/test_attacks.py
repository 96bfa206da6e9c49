"""Attacks on erased concepts: they recover concepts the base model knows, are refused where
nothing was erased, leave the original vocabulary untouched and are deterministic."""
import json

import pytest
import torch

from obliviate.attacks import build_attack, load_target, parse_attack, run_attack
from obliviate.attacks.common import NewTokens
from obliviate.cli import main
from obliviate.continual import Run
from obliviate.evaluate.evaluator import load_protocol
from obliviate.evaluate.sampler import SamplerConfig
from obliviate.model import model_hash
from obliviate.request import Request

from conftest import FAST_CONABL

FAST_SAMPLER = SamplerConfig(steps=10, guidance=5.0)


def base_target(model, concept="fire", domain="style", partners=("circle", "square", "heart", "star", "moon"), seeds=(188, 288),
                sampler=FAST_SAMPLER, tmp=None):
    protocol = load_protocol("minicanvas", model)
    return load_target(model, {}, [concept], domain, protocol, list(partners), list(seeds), sampler,
                       base_hash=model_hash(model), cache_dir=tmp)


# fast settings: the recovery claim is about the attack's mechanism, not its default budget
FAST = {"paraphrase": {}, "inversion": {"steps": 30, "images": 8, "batch_size": 4, "lr": 2e-2},
        "prefix": {"steps": 30, "images": 8, "batch_size": 4, "lr": 2e-2}}


@pytest.mark.parametrize("name", ["paraphrase", "inversion", "prefix"])
def test_attack_recovers_the_concept_on_the_pretrained_model(bundled_model, tmp_path, name):
    target = base_target(bundled_model, tmp=tmp_path / "cache")
    result = run_attack(target, build_attack(name, FAST[name]), tmp_path / "out")
    assert result["concepts"]["fire"]["asr"] >= 90.0, result["concepts"]["fire"]
    assert result["robust_UA"] == pytest.approx(100.0 - result["mean_asr"])
    assert (tmp_path / "out" / "attack.json").exists()


def test_inversion_leaves_the_text_side_bit_identical_and_learns_its_own_row(random_model, tmp_path):
    """The learned token lives outside the model (soft_tokens.NewTokens): after the attack the
    pipeline has the same tokenizer and text encoder objects, every tensor bit-identical, and
    the token's row moved away from its starting word."""
    model = random_model
    target = base_target(model, concept="fire", partners=("circle",), seeds=(188,), sampler=SamplerConfig(steps=3))
    pipe = target.pipe
    tok, enc = pipe.tokenizer, pipe.text_encoder
    vocab = dict(tok.get_vocab())
    before = {n: p.detach().clone() for n, p in enc.named_parameters()}
    art = enc.get_input_embeddings().weight[tok.convert_tokens_to_ids("art")].detach().clone()
    attack = build_attack("inversion", {"steps": 5, "images": 4, "batch_size": 2, "lr": 0.5})
    result = attack.attack_concept(target, "fire")
    assert pipe.tokenizer is tok and pipe.text_encoder is enc and dict(tok.get_vocab()) == vocab
    assert all(torch.equal(p, before[n]) for n, p in enc.named_parameters())  # the embedding table included
    assert result["token_norm"] != pytest.approx(float(art.norm()))  # the new row did learn


def test_new_tokens_refuse_a_word_already_in_the_vocabulary(random_model):
    model = random_model
    target = base_target(model, partners=("circle",), seeds=(188,))
    with pytest.raises(ValueError, match="already in the tokenizer"):
        NewTokens(target.pipe, ["fire"], torch.zeros(1, 64))


def test_run_attack_keeps_the_model_and_text_side_unchanged(random_model, tmp_path):
    model = random_model
    target = base_target(model, partners=("circle",), seeds=(188,), sampler=SamplerConfig(steps=3))
    vocab_size = len(target.pipe.tokenizer)
    unet = {n: p.detach().clone() for n, p in target.pipe.unet.named_parameters()}
    run_attack(target, build_attack("prefix", {"steps": 2, "images": 2, "batch_size": 2}))
    run_attack(target, build_attack("relearn", {"max_steps": 2, "check_every": 1, "images": 2, "batch_size": 2,
                                                "check_partners": 1}))
    assert len(target.pipe.tokenizer) == vocab_size
    assert all(torch.equal(p, unet[n]) for n, p in target.pipe.unet.named_parameters())


@pytest.fixture(scope="module")
def tiny_run(random_model, tmp_path_factory):
    model = random_model
    run = Run.open_or_create(tmp_path_factory.mktemp("attacked") / "run", model)
    run.unlearn(Request("fire", "style", "conabl", FAST_CONABL), quiet=True)
    return run


def cli(*args):
    return main(["--quiet", *map(str, args)])


def test_attack_refused_on_a_step_that_unlearned_nothing(tiny_run, random_model, tmp_path, capsys):
    assert cli("attack", "--run", tiny_run.path, "--step", 0, "--attack", "paraphrase", "--out", tmp_path / "a") == 2
    assert "unlearned nothing" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    empty = Run.open_or_create(tmp_path / "empty", random_model)
    assert cli("attack", "--run", empty.path, "--attack", "paraphrase", "--out", tmp_path / "b") == 2
    assert "no completed request" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unlearned nothing"):
        load_target(random_model, {}, [], "style", load_protocol("minicanvas", random_model), ["circle"], [1],
                    FAST_SAMPLER, base_hash="x")


def test_bad_attack_names_and_settings_are_refused_before_any_work(tiny_run, tmp_path, capsys):
    assert cli("attack", "--run", tiny_run.path, "--attack", "nope", "--out", tmp_path / "a") == 2
    assert "valid attacks: paraphrase, inversion, prefix, relearn" in capsys.readouterr().err
    assert cli("attack", "--run", tiny_run.path, "--attack", "prefix:tokens=0", "--out", tmp_path / "a") == 2
    assert "setting tokens=0 is out of range; valid: [1, inf)" in capsys.readouterr().err
    with pytest.raises(ValueError, match="valid settings"):
        build_attack("inversion", dict([("stepz", "3")]))
    assert parse_attack("prefix:tokens=2,steps=5") == ("prefix", {"tokens": "2", "steps": "5"})


@pytest.mark.parametrize("name,settings", [
    ("prefix", "steps=3,images=2,batch_size=2"),
    ("inversion", "steps=3,images=2,batch_size=2"),
    ("relearn", "max_steps=4,check_every=2,images=2,batch_size=2,check_partners=1"),
])
def test_reruns_with_the_same_seed_give_the_same_attack_json(tiny_run, tmp_path, name, settings):
    outs = []
    for i in range(2):
        out = tmp_path / f"run{i}"
        assert cli("attack", "--run", tiny_run.path, "--attack", f"{name}:{settings}", "--out", out,
                   "--seeds", "188", "--partners", "circle,star", "--seed", 3) == 0
        result = json.loads((out / "attack.json").read_text())
        assert set(result["timings"]["per_concept_seconds"]) == {"fire"}
        result.pop("timings")  # the only wall-clock fields
        outs.append(result)
    assert outs[0] == outs[1]
    assert outs[0]["step"] == 1 and outs[0]["unlearned"] == ["fire"] and outs[0]["settings"]["seed"] == 3
    if name == "relearn":
        entry = outs[0]["concepts"]["fire"]
        assert "steps_to_revival" in entry and "yardstick_steps" in entry and outs[0]["robust_UA"] is None


def test_experiment_attacks_section(random_model, tmp_path):
    from obliviate.experiment import Runner, load_experiment

    model = random_model
    fast = {"steps": 4, "anchor_images": 4, "sampler_steps": 3, "batch_size": 2}
    raw = {"name": "tiny", "model": str(model), "domain": "style", "sequence": ["fire", "ice"], "retained": ["lava"],
           "partners": ["circle"], "eval": {"seeds": [188], "probe_seeds": [5], "sampler": {"steps": 3, "guidance": 3.0}},
           "variants": [{"name": "seq", "method_settings": fast}],
           "attacks": [{"name": "paraphrase", "phrasings": 1}, {"name": "prefix", "at": [1], "steps": 2, "images": 2,
                                                                 "batch_size": 2}]}
    summary = Runner(load_experiment(raw), tmp_path / "exp", quiet=True).run()
    attacks = summary["variants"]["seq"]["attacks"]
    assert set(attacks) == {"paraphrase@2", "prefix@1"}
    assert set(attacks["paraphrase@2"]["per_concept_asr"]) == {"fire", "ice"}
    assert set(attacks["prefix@1"]["per_concept_asr"]) == {"fire"}
    assert attacks["paraphrase@2"]["clean_UA"] == summary["variants"]["seq"]["steps"][2]["UA"]
    assert len(list((tmp_path / "exp" / "variants" / "seq" / "attacks").rglob("attack.json"))) == 2
    bad = dict(raw, attacks=[{"name": "prefix", "at": [0]}])
    with pytest.raises(ValueError, match="`at` is 'last' or a list of steps"):
        load_experiment(bad)
    with pytest.raises(ValueError, match="valid attacks"):
        load_experiment(dict(raw, attacks=["nope"]))
