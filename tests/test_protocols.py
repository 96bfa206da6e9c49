"""Protocols plug into the evaluator: the UnlearnCanvas one with user classifier checkpoints."""
import pytest
from safetensors.torch import save_file

from obliviate.evaluate.evaluator import evaluate, load_protocol, make_plan
from obliviate.evaluate.sampler import SamplerConfig
from obliviate.model import load_pipeline
from obliviate.protocols.unlearncanvas import build_vit_classifier

TINY = dict(image_size=32, patch_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def test_unlearncanvas_protocol_loads_user_checkpoints_and_evaluates(random_model, tmp_path):
    model = random_model
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


def test_plan_rejects_unknown_and_overlapping_concepts():
    from obliviate.protocols import get_protocol

    protocol = get_protocol("minicanvas")  # a plan needs the catalog only, not the judge
    with pytest.raises(ValueError, match="does not know"):
        make_plan(protocol, "style", sequence=["plaid"])
    with pytest.raises(ValueError, match="must not be in the sequence"):
        make_plan(protocol, "style", sequence=["fire"], retained=["fire"])


def test_family_maps_every_domain_to_a_catalog_side():
    from obliviate.protocols import DOMAINS, family, other_family

    assert {d: family(d) for d in DOMAINS} == {"style": "style", "object": "object", "other": "style"}
    assert {d: other_family(d) for d in DOMAINS} == {"style": "object", "object": "style", "other": "object"}


def test_default_plans_keep_each_protocols_retained_sets_and_partners():
    from obliviate.minicanvas import world
    from obliviate.protocols import get_protocol

    mc = get_protocol("minicanvas")
    plan = make_plan(mc, "style")  # MiniCanvas: retained = every style not in the order, partners = every object
    assert plan.sequence == list(world.STYLE_ORDER) and plan.seeds == [188, 288]
    assert plan.retained == [s for s in world.STYLE_NAMES if s not in world.STYLE_ORDER]
    assert plan.partners == list(world.OBJECT_NAMES)
    assert make_plan(mc, "object", sequence=["star"]).retained == [o for o in world.OBJECT_NAMES if o != "star"]
    assert (plan.sampler.steps, plan.sampler.guidance) == (20, 5.0)
    uc = get_protocol("unlearncanvas")  # UnlearnCanvas: the fixed S_r / O_r lists, partners = the other domain's
    plan = make_plan(uc, "object")
    assert plan.sequence == uc.object_order and plan.retained == uc.retained_objects and plan.partners == uc.retained_styles
    assert plan.sampler == SamplerConfig(steps=100, guidance=9.0, scheduler="ddim", batch_size=8)
    assert uc.prompt("Van_Gogh", "Dogs") == "A Dogs image in Van Gogh style." and uc.anchors["Bears"] == "Horses"


def test_a_protocol_registered_by_name_reaches_the_evaluator(monkeypatch):
    from obliviate import protocols
    from obliviate.protocols import Catalog

    seen = {}

    class Judge:
        def predict(self, images):
            return {"style": ["red"] * len(images), "object": ["cup"] * len(images)}

    def toy_judge(catalog, model_dir, **options):
        seen.update(model_dir=model_dir, **options)
        return Judge()

    def toy():
        return Catalog("toy", ["red", "blue"], ["cup", "pot"], style_order=["red"], judge_factory=toy_judge)

    monkeypatch.setitem(protocols.PROTOCOLS, "toy", toy)
    protocol = load_protocol("toy", "somewhere", device="cpu")
    assert protocol.judge.predict([0, 0]) == {"style": ["red", "red"], "object": ["cup", "cup"]}
    assert seen == {"model_dir": "somewhere", "device": "cpu"}
    assert make_plan(protocol, "style").retained == ["blue"]
    with pytest.raises(ValueError, match="no judge"):
        protocols.generic_catalog().with_judge("x")


def test_inconsistent_catalogs_are_refused_by_name():
    from obliviate.protocols import Catalog

    with pytest.raises(ValueError, match=r"invalid toy catalog: style_order has unknown labels \['green'\]"):
        Catalog("toy", ["red"], ["cup"], style_order=["green"])
    with pytest.raises(ValueError, match="style_order and retained_styles overlap"):
        Catalog("toy", ["red", "blue"], ["cup"], style_order=["red"], retained_styles=["red"])
    with pytest.raises(ValueError, match="objects without an anchor"):
        Catalog("toy", ["red"], ["cup", "pot"], object_order=["cup"], anchors={"pot": "pot"})
