import numpy as np
import pytest

from obliviate.minicanvas import world


def test_render_is_deterministic():
    a = np.asarray(world.render("fire", "star", 3))
    b = np.asarray(world.render("fire", "star", 3))
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)


def test_renders_vary_with_seed_and_concept():
    seeds = [np.asarray(world.render("ice", "circle", k)).astype(int) for k in range(6)]
    # position, size, rotation and colour jitter: no two seeds give the same image
    for i in range(len(seeds)):
        for j in range(i + 1, len(seeds)):
            assert np.abs(seeds[i] - seeds[j]).mean() > 1.0
    by_style = np.asarray(world.render("neon", "circle", 0)).astype(int)
    assert np.abs(by_style - seeds[0]).mean() > 20


def test_render_does_not_depend_on_call_order():
    first = np.asarray(world.render("moss", "leaf", 9))
    for s in world.STYLE_NAMES[:4]:
        world.render(s, "ring", 1)
    assert np.array_equal(first, np.asarray(world.render("moss", "leaf", 9)))


def test_catalog_and_neighbourhoods():
    cat = world.catalog()
    assert len(cat["styles"]) >= 16 and len(cat["objects"]) >= 10
    for name, near in cat["neighbours"].items():
        assert near and name not in near
        for other in near:  # symmetric, same domain
            assert name in cat["neighbours"][other]
            assert (other in cat["styles"]) == (name in cat["styles"])


def test_prompts_follow_the_unlearncanvas_template():
    assert world.prompt("fire", "star") == "A star image in fire style"


def test_unknown_names_are_rejected_with_the_valid_ones():
    with pytest.raises(ValueError, match="valid styles"):
        world.render("plaid", "star", 0)
    with pytest.raises(ValueError, match="valid objects"):
        world.render("fire", "zebra", 0)
