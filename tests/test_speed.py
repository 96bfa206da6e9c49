"""speed: the null-space closed form, its exactness (protected inputs unchanged, erased inputs on
their targets), anchor=base order independence, kill-then-rerun bytes, refusals, SD3/FLUX."""
import contextlib

import pytest
import torch

from obliviate.continual import Run, build_hooks
from obliviate.delta import load_delta
from obliviate.methods.speed import SPEED, SPEEDSettings, invariant_rows, null_space_edit
from obliviate.methods.uce import apply_edit, erase_rows, solve_edit, text_states
from obliviate.model import denoiser, load_pipeline, select_parameters
from obliviate.protocols import catalog_for_model
from obliviate.request import Request
from obliviate.trainer import Context


def speed(concept, **settings):
    return Request(concept, "style", "speed", settings)


def rel(a, b):
    return float((a - b).norm() / b.norm())


def test_without_protected_inputs_it_is_uce_without_preservation():
    g = torch.Generator().manual_seed(0)
    E, G = torch.randn(5, 8, generator=g, dtype=torch.float64), torch.randn(5, 8, generator=g, dtype=torch.float64)
    w = torch.rand(5, generator=g, dtype=torch.float64)
    a = null_space_edit(E, G, None, lam=0.3, erase_scale=2.0, erase_weights=w)
    b = solve_edit(E, G, None, lam=0.3, erase_scale=2.0, erase_weights=w)
    assert torch.allclose(a, b, atol=1e-12)


def test_protected_directions_do_not_move_and_it_is_the_constrained_minimiser():
    g = torch.Generator().manual_seed(1)
    d, lam = 10, 0.4
    W0 = torch.randn(7, d, generator=g, dtype=torch.float64)
    E, G = torch.randn(4, d, generator=g, dtype=torch.float64), torch.randn(4, d, generator=g, dtype=torch.float64)
    Q, _ = torch.linalg.qr(torch.randn(d, 3, generator=g, dtype=torch.float64))
    W = apply_edit({"w": W0}, null_space_edit(E, G, Q, lam=lam))["w"]
    assert float((W @ Q - W0 @ Q).abs().max()) < 1e-12
    assert float((W - W0).abs().max()) > 1e-2

    def objective(w):
        return (E @ w.T - G @ W0.T).pow(2).sum() + lam * (w - W0).pow(2).sum()

    # any other edit that keeps Q fixed (Delta = X (I - Q Q^T)) scores worse
    free = torch.eye(d, dtype=torch.float64) - Q @ Q.T
    for _ in range(5):
        other = W + 1e-3 * torch.randn(7, d, generator=g, dtype=torch.float64) @ free
        assert objective(other) > objective(W)
    # lam -> 0 with fewer erase rows than free directions: every erase row lands on its target
    W = apply_edit({"w": W0}, null_space_edit(E, G, Q, lam=1e-10))["w"]
    assert float((E @ W.T - G @ W0.T).abs().max()) < 1e-6


def _write(tmp_path, lines):
    path = tmp_path / "keep.txt"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_retained_inputs_keep_their_keys_and_values_and_erased_inputs_reach_their_targets(bundled_model, tmp_path):
    """On MiniCanvas, through a run: every position of the kept prompts (and of the empty prompt's
    start token) has the same keys and values in every edited layer to 1e-6 relative; every
    erase row's keys and values are the guide's (lam -> 0)."""
    kept = ["A circle image in autumn style", "A star image in sky style"]
    settings = {"preserve": "file", "preserve_prompts": _write(tmp_path, kept), "threshold": "0", "prior_filter": "false",
                "positions": "concept", "lam": "1e-9", "invariant_dims": "0"}
    run = Run.open_or_create(tmp_path / "run", bundled_model)
    meta = run.unlearn(speed("fire", **settings), quiet=True)
    delta = load_delta(f"{meta['dir']}/delta.safetensors")
    pipe = load_pipeline(bundled_model, device="cpu")
    weights = {n: p.detach() for n, p in denoiser(pipe).named_parameters() if n in delta}
    ctx = Context(pipe=pipe, request=speed("fire"), params={}, pretrained=weights, start=weights,
                  catalog=catalog_for_model(bundled_model), unlearned_before=[], cache_dir=None, base_hash="t")
    states = text_states(ctx, kept + [""])
    e, g, _ = erase_rows(ctx, "fire", "style", SPEEDSettings(**{"positions": "concept"}))
    assert meta["closed_form"]["kept_motion_max"] < 1e-6 and meta["closed_form"]["protected_dims"] < 64
    for name, w0 in weights.items():
        w1 = w0 + delta[name]
        for s in states[:2]:
            assert rel(s @ w1.T, s @ w0.T) < 1e-6, name
        assert rel(states[2, :1] @ w1.T, states[2, :1] @ w0.T) < 1e-6, name  # the start token
        assert rel(e @ w1.T, g @ w0.T) < 1e-5, name
        assert rel(e @ w0.T, g @ w0.T) > 0.1  # and they were not there before


def test_anchor_base_is_order_independent_and_rerun_after_kill_matches(bundled_model, tmp_path):
    weights = {}
    for order in (("fire", "ice", "forest"), ("forest", "fire", "ice")):
        run = Run.open_or_create(tmp_path / "-".join(order), bundled_model)
        for concept in order:
            run.unlearn(speed(concept), quiet=True)
        weights[order] = run.cumulative_delta()
    a, b = weights.values()
    assert a.keys() == b.keys()
    # the solve is the same; the ledger's chain of float32 deltas rounds differently
    assert max(float((a[n] - b[n]).abs().max()) for n in a) < 1e-5
    assert max(float(a[n].abs().max()) for n in a) > 1e-2
    killed = Run.open_or_create(tmp_path / "killed", bundled_model)
    killed.unlearn(speed("fire"), quiet=True)
    assert killed.unlearn(speed("ice"), quiet=True, stop_after=0)["interrupted"]
    assert len(killed.steps()) == 1
    meta = killed.unlearn(speed("ice"), quiet=True)
    clean = Run.open_or_create(tmp_path / "clean", bundled_model)
    clean.unlearn(speed("fire"), quiet=True)
    other = clean.unlearn(speed("ice"), quiet=True)
    a, b = load_delta(f"{meta['dir']}/delta.safetensors"), load_delta(f"{other['dir']}/delta.safetensors")
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert meta["delta_hash"] == other["delta_hash"]
    info = meta["closed_form"]
    assert info["erased"] == ["fire", "ice"] and info["kept"] > 0 and info["augmented"] > 0
    assert info["empty_motion_max"] < 1 and info["erase_residual_mean"] < 1


@pytest.mark.parametrize("settings, message", [
    ({"threshold": "1.5"}, "threshold"),
    ({"threshold": "-0.1"}, "threshold"),
    ({"augment": "-1"}, "augment"),
    ({"invariant_dims": "-2"}, "invariant_dims"),
    ({"lam": "0"}, "lam"),
    ({"retain_positions": "everywhere"}, "retain_positions"),
    ({"preserve_scale": "-2"}, "preserve_scale"),
    ({"positions": "everywhere"}, "positions"),
])
def test_bad_settings_are_refused_before_any_work(settings, message):
    with pytest.raises(ValueError, match=message):
        build_hooks(speed("fire", **settings))


def test_speed_refuses_to_follow_another_method_in_an_anchor_base_run(bundled_model, tmp_path):
    run = Run.open_or_create(tmp_path / "run", bundled_model)
    run.unlearn(Request("fire", "style", "uce", {}), quiet=True)
    with pytest.raises(ValueError, match="anchor=base"):
        run.unlearn(speed("ice"), quiet=True)
    assert len(run.steps()) == 1


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_speed_on_flow_models_edits_the_context_embedder_and_keeps_the_invariants(tmp_path, family):
    """SD3/FLUX: the same solve on context_embedder; the invariant inputs' text stream does not move."""
    from obliviate.protocols import Catalog
    from obliviate.testing import clip_bpe_path, save_random_flow_pipeline

    if clip_bpe_path() is None:
        pytest.skip("CLIP's BPE vocabulary is absent")
    catalog = Catalog(name="realnames", styles=["Van Gogh", "Pop Art"], objects=["sports car", "tree"],
                      template="a painting of a {object} in {style} style", style_only="an image in the style of {style}",
                      object_only="an image of a {object}", sampler={"steps": 2, "guidance": 3.0})
    pipe = load_pipeline(save_random_flow_pipeline(tmp_path / family, family, seed=1), device="cpu")
    request = Request("Van Gogh", "style", "speed", param_group="context")
    params = select_parameters(denoiser(pipe), "context")
    start = {n: p.detach().clone() for n, p in params.items()}
    ctx = Context(pipe=pipe, request=request, params=params, pretrained=start, start=start, catalog=catalog,
                  unlearned_before=[], cache_dir=tmp_path, base_hash="test", restore_base=contextlib.nullcontext, quiet=True)
    # a tiny model's text width is smaller than one prompt's positions: the invariants (the empty
    # prompt's start token and leading directions, per tokenizer run) are what is kept exactly here
    method = SPEED(SPEEDSettings(preserve="none"))
    method.setup(ctx)
    solved = method.solve(ctx)
    name = "context_embedder.weight"
    w0, w1 = start[name], solved[name]
    invariants = invariant_rows(ctx, 3).float()
    assert len(invariants) == (8 if family == "sd3" else 4)  # SD3: a CLIP run and a T5 run
    assert rel(invariants @ w1.T, invariants @ w0.T) < 1e-5
    states = text_states(ctx, ["an image in the style of Van Gogh"])
    assert rel(states[0] @ w1.T, states[0] @ w0.T) > 1e-3
