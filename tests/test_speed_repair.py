"""speed-repair: speed's solve, then a short repair that may not move the erased concepts' own
keys and values; order independence, kill-then-resume bytes, refusals."""
import pytest
import torch

from obliviate.continual import Run, build_hooks
from obliviate.delta import load_delta
from obliviate.methods.speed import SPEEDSettings
from obliviate.methods.uce import erase_rows
from obliviate.model import denoiser, encode, load_pipeline, predict
from obliviate.protocols import catalog_for_model
from obliviate.request import Request
from obliviate.trainer import Context

QUICK = {"steps": "4", "batch_size": "2", "images_per_concept": "1", "augment": "2"}


def repair(concept, **settings):
    return Request(concept, "style", "speed-repair", {**QUICK, **settings})


def rel(a, b):
    return float((a - b).norm() / b.norm())


def _base(bundled_model, names):
    pipe = load_pipeline(bundled_model, device="cpu")
    weights = {n: p.detach().clone() for n, p in denoiser(pipe).named_parameters() if n in names}
    ctx = Context(pipe=pipe, request=repair("fire"), params={}, pretrained=weights, start=weights,
                  catalog=catalog_for_model(bundled_model), unlearned_before=[], cache_dir=None, base_hash="t")
    return pipe, weights, ctx


def test_the_repair_keeps_the_erased_tokens_where_the_solve_put_them_and_pulls_retained_prompts_back(bundled_model, tmp_path):
    exact = {"freeze_threshold": "0"}  # every direction of the erased concept's own token rows is frozen
    solved = Run.open_or_create(tmp_path / "speed", bundled_model)
    s_meta = solved.unlearn(Request("fire", "style", "speed", {"augment": "2"}), quiet=True)
    run = Run.open_or_create(tmp_path / "repair", bundled_model)
    meta = run.unlearn(repair("fire", steps="12", forget_weight="0", **exact), quiet=True)
    d_solve = load_delta(f"{s_meta['dir']}/delta.safetensors")
    d_repair = load_delta(f"{meta['dir']}/delta.safetensors")
    pipe, w0, ctx = _base(bundled_model, d_repair)
    e, _, _ = erase_rows(ctx, "fire", "style", SPEEDSettings(positions="concept"))
    moved = 0.0
    for n in d_repair:
        ws, wr = w0[n] + d_solve[n], w0[n] + d_repair[n]
        assert rel(e @ wr.T, e @ ws.T) < 1e-5, n  # the erased concept's own tokens: as solved
        moved = max(moved, float((wr - ws).abs().max()))
    assert moved > 1e-5  # and the repair did change the weights elsewhere
    assert meta["repair"]["frozen_dims"] > 0 and meta["closed_form"]["erased"] == ["fire"]
    # retained prompts' predictions are closer to the base model's after the repair than after the solve
    # (forget_weight 0 here: the retained term alone, the one the claim is about)
    prompts = [ctx.catalog.prompt_with(c, "style", ctx.catalog.objects[i]) for i, c in enumerate(("autumn", "sky", "moss", "storm"))]
    unet = denoiser(pipe)
    x = torch.randn(len(prompts), unet.config.in_channels, 8, 8, generator=torch.Generator().manual_seed(0))
    cond = encode(pipe, prompts)
    err = {"solve": 0.0, "repair": 0.0}
    with torch.no_grad():
        for t in (200, 500, 800):
            base = predict(unet, x, t, cond)
            for k, d in (("solve", d_solve), ("repair", d_repair)):
                err[k] += float((predict(unet, x, t, cond, params={n: w0[n] + d[n] for n in d}) - base).pow(2).mean())
    assert err["repair"] < err["solve"], err


def test_order_independent_and_a_killed_repair_resumes_to_the_same_bytes(bundled_model, tmp_path):
    weights = {}
    for order in (("fire", "ice"), ("ice", "fire")):
        run = Run.open_or_create(tmp_path / "-".join(order), bundled_model)
        for concept in order:
            run.unlearn(repair(concept), quiet=True)
        weights[order] = run.cumulative_delta()
    a, b = weights.values()
    assert max(float((a[n] - b[n]).abs().max()) for n in a) < 1e-5
    killed = Run.open_or_create(tmp_path / "killed", bundled_model)
    assert killed.unlearn(repair("fire"), quiet=True, stop_after=3, checkpoint_every=2)["interrupted"]
    meta = killed.unlearn(repair("fire"), quiet=True, checkpoint_every=2)
    clean = Run.open_or_create(tmp_path / "clean", bundled_model).unlearn(repair("fire"), quiet=True)
    a, b = load_delta(f"{meta['dir']}/delta.safetensors"), load_delta(f"{clean['dir']}/delta.safetensors")
    assert all(torch.equal(a[n], b[n]) for n in a)


@pytest.mark.parametrize("settings, message", [
    ({"weight_decay": "0.01"}, "weight_decay"),
    ({"forget_weight": "-1"}, "forget_weight"),
    ({"steps": "0"}, "steps"),
    ({"threshold": "2"}, "threshold"),
    ({"freeze_threshold": "-1"}, "freeze_threshold"),
    ({"lam": "0"}, "lam"),
])
def test_bad_settings_are_refused_before_any_work(settings, message):
    with pytest.raises(ValueError, match=message):
        build_hooks(repair("fire", **settings))


def test_lora_and_a_mixed_run_are_refused_before_any_work(bundled_model, tmp_path):
    with pytest.raises(ValueError, match="kv-xattn"):
        build_hooks(Request("fire", "style", "speed-repair", {}, param_group="lora"))
    run = Run.open_or_create(tmp_path / "run", bundled_model)
    run.unlearn(Request("fire", "style", "speed", {}), quiet=True)
    with pytest.raises(ValueError, match="anchor=base"):
        run.unlearn(repair("ice"), quiet=True)
    assert len(run.steps()) == 1 and not list((tmp_path / "run" / "steps").glob(".*.partial"))


def test_on_flux_it_solves_and_repairs_the_context_embedder_and_refuses_other_groups(tmp_path, monkeypatch):
    from obliviate.protocols import Catalog
    from obliviate.testing import clip_bpe_path, save_random_flow_pipeline

    if clip_bpe_path() is None:
        pytest.skip("CLIP's BPE vocabulary is absent")
    catalog = Catalog(name="realnames", styles=["Van Gogh", "Pop Art", "Claude Monet"], objects=["sports car", "tree"],
                      template="a painting of a {object} in {style} style", style_only="an image in the style of {style}",
                      object_only="an image of a {object}", sampler={"steps": 2, "guidance": 3.0})
    monkeypatch.setattr(Run, "catalog", lambda self: catalog)
    model = save_random_flow_pipeline(tmp_path / "flux", "flux", seed=1)
    run = Run.open_or_create(tmp_path / "run", model)
    with pytest.raises(ValueError, match="param-group context"):
        run.unlearn(Request("Van Gogh", "style", "speed-repair", dict(QUICK)), quiet=True)
    assert not list((tmp_path / "run" / "steps").iterdir())  # refused before any work
    meta = run.unlearn(Request("Van Gogh", "style", "speed-repair", dict(QUICK), param_group="context"), quiet=True)
    delta = load_delta(f"{meta['dir']}/delta.safetensors")
    assert list(delta) == ["context_embedder.weight"] and float(delta["context_embedder.weight"].abs().max()) > 0
    assert meta["repair"]["prompts"] == 3 and meta["repair"]["erased_prompts"] == 1
