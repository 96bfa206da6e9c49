"""The images a request trains on follow its seed: a new training seed is a new anchor set
(the reference ConAbl's behaviour), unless `image_seed` holds one set fixed."""
import json


from conftest import FAST_CONABL
from obliviate.continual import Run
from obliviate.diffusion import image_seeds
from obliviate.request import Request


def one_request(model, path, seed, regs=(), **settings):
    run = Run.open_or_create(path, model)
    request = Request("fire", "style", "conabl", {**FAST_CONABL, "steps": "1", **settings}, list(regs), seed=seed)
    meta = run.unlearn(request, quiet=True)
    images = {p.name.split("-")[0]: p for p in (path / "cache").glob("*.safetensors") if "-images-" not in p.name}
    return meta, {purpose: p.read_bytes() for purpose, p in images.items()}


def tensors(raw: bytes):
    from safetensors.torch import load

    return load(raw)


def test_seeds_of_an_image_set_follow_the_request_seed():
    assert image_seeds(10_000, 0, 3) == [10_000, 10_001, 10_002]  # seed 0: the sets used before
    assert image_seeds(10_000, 2, 2) == [2_010_000, 2_010_001]
    assert not set(image_seeds(10_000, 1, 1000)) & set(image_seeds(10_000, 0, 1000))


def test_two_seeds_draw_different_anchor_and_replay_images_and_one_seed_the_same_bytes(random_model, tmp_path):
    replay = [("replay", {"images_per_concept": "1", "batch_size": "2"})]
    meta0, cache0 = one_request(random_model, tmp_path / "seed0", 0, replay)
    meta1, cache1 = one_request(random_model, tmp_path / "seed1", 1, replay)
    again, cache0_again = one_request(random_model, tmp_path / "seed0-again", 0, replay)
    assert set(cache0) == {"anchors", "replay"}
    for purpose in ("anchors", "replay"):
        assert cache0_again[purpose] == cache0[purpose], purpose  # same seed: the same bytes
        a, b = next(iter(tensors(cache0[purpose]).values())), next(iter(tensors(cache1[purpose]).values()))
        assert a.shape == b.shape and not (a == b).all(), purpose  # another seed: other images
    assert meta0["anchor_image_seeds"] == {"first": 10_000, "count": 8}
    assert meta1["anchor_image_seeds"] == {"first": 1_010_000, "count": 8}
    assert meta1["replay_image_seeds"]["first"] == 1_020_000
    recorded = json.loads((tmp_path / "seed1" / "steps" / "001-fire" / "step.json").read_text())
    assert recorded["anchor_image_seeds"]["first"] == 1_010_000


def test_image_seed_holds_the_anchor_set_fixed_across_training_seeds(random_model, tmp_path):
    _, fixed = one_request(random_model, tmp_path / "fixed", 1, image_seed="0")
    _, seed0 = one_request(random_model, tmp_path / "seed0", 0)
    assert fixed["anchors"] == seed0["anchors"]
