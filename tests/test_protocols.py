"""Protocols plug into the evaluator: the UnlearnCanvas one with user classifier checkpoints."""
import pytest
from safetensors.torch import save_file

from obliviate.evaluate.evaluator import evaluate, load_protocol, make_plan
from obliviate.evaluate.sampler import SamplerConfig
from obliviate.model import load_pipeline
from obliviate.protocols.unlearncanvas import build_vit_classifier

TINY = dict(image_size=32, patch_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def test_unlearncanvas_protocol_loads_user_checkpoints_and_evaluates(quick_model, tmp_path):
    model, _ = quick_model
    paths = {}
    for name, n in (("style", 51), ("object", 20)):
        net = build_vit_classifier(n, **TINY)
        paths[name] = tmp_path / f"{name}.safetensors"
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(paths[name]))
    protocol = load_protocol("unlearncanvas", style_classifier=paths["style"], object_classifier=paths["object"], **TINY)
    assert protocol.prompt("Van_Gogh", "Dogs") == "A Dogs image in Van Gogh style."
    plan = make_plan(protocol, "style", sequence=["Abstractionism"], retained=["Rust"], partners=["Horses"], seeds=[188],
                     sampler=SamplerConfig(steps=2, guidance=2.0, batch_size=4))
    result = evaluate(load_pipeline(model, device="cpu"), protocol, plan, ["Abstractionism"], key="x" * 16, cache_dir=None)
    assert result["images"] == 2 and 0 <= result["UA"] <= 100


def test_unlearncanvas_needs_both_classifiers():
    with pytest.raises(ValueError, match="--style-classifier and --object-classifier"):
        load_protocol("unlearncanvas")
    with pytest.raises(ValueError, match="valid protocols"):
        load_protocol("imagenet")


def test_plan_rejects_unknown_and_overlapping_concepts(quick_model):
    model, _ = quick_model
    protocol = load_protocol("minicanvas", model)
    with pytest.raises(ValueError, match="does not know"):
        make_plan(protocol, "style", sequence=["plaid"])
    with pytest.raises(ValueError, match="must not be in the sequence"):
        make_plan(protocol, "style", sequence=["fire"], retained=["fire"])


def test_family_maps_every_domain_to_a_catalog_side():
    from obliviate.protocols import DOMAINS, family, other_family

    assert {d: family(d) for d in DOMAINS} == {"style": "style", "object": "object", "other": "style"}
    assert {d: other_family(d) for d in DOMAINS} == {"style": "object", "object": "style", "other": "object"}
