"""The engine's defining properties on MiniCanvas models (untrained unless a property needs learning)."""
import math

import pytest
import torch

from conftest import FAST_CONABL
from obliviate.continual import Run
from obliviate.delta import load_delta
from obliviate.methods import METHODS
from obliviate.model import concept_token_embedding, encode_prompts, load_pipeline
from obliviate.protocols import minicanvas_catalog
from obliviate.regularizers import REGULARIZERS
from obliviate.regularizers.projection import projector
from obliviate.request import Request


def request(concept="fire", domain="style", method="conabl", regs=(), **settings):
    merged = {**FAST_CONABL, **settings} if method in ("conabl", "sculpmem") else settings
    return Request(concept=concept, domain=domain, method=method, method_settings=merged, regularizers=list(regs))


def protected_ratio(pipe, meta):
    """max over k/v tensors of ||dW C|| / (||dW|| ||C||) for the step's auxiliary concepts."""
    cat = minicanvas_catalog()
    C = torch.stack([concept_token_embedding(pipe, cat.single(c, cat.domain_of(c)), c) for c in meta["projection_concepts"]], 1)
    delta = load_delta(f"{meta['dir']}/delta.safetensors")
    ratios = [float((d @ C).norm() / (d.norm() * C.norm())) for n, d in delta.items() if d.norm() > 0]
    return max(ratios)


def test_projector_is_symmetric_idempotent_and_annihilates_C():
    C = torch.randn(16, 5, dtype=torch.float64)
    C[:, 4] = C[:, 0] + 1e-9 * torch.randn(16, dtype=torch.float64)  # near-duplicate column
    for solver in ("svd", "ridge"):
        P = projector(C, solver)
        assert torch.allclose(P, P.T, atol=1e-12)
        tol = 1e-10 if solver == "svd" else 1e-3
        assert torch.allclose(P @ P, P, atol=tol)
        # directions below the rank cutoff (the 1e-9 near-duplicate) may leave ~1e-10
        assert (P @ C).norm() / C.norm() < max(tol, 1e-8)


def test_projection_update_mode_is_exact_and_grad_mode_reduces_leakage(random_model, tmp_path):
    model = random_model
    metas = {}
    for mode in ("none", "grad", "update"):
        regs = [] if mode == "none" else [("projection", {"mode": mode, "concepts": "ice+ocean+sunset+lava+forest"})]
        run = Run.open_or_create(tmp_path / mode, model)
        # the projection alone (start-token detachment, on by default, is measured elsewhere)
        metas[mode] = run.unlearn(request(regs=regs, detach_start="false"), quiet=True)
    pipe = load_pipeline(model, device="cpu")
    metas["none"]["projection_concepts"] = metas["grad"]["projection_concepts"]
    ratio = {m: protected_ratio(pipe, metas[m]) for m in metas}
    assert ratio["update"] < 1e-5
    assert ratio["grad"] < 0.5 * ratio["none"]
    assert metas["update"]["drift"]["parent"]["l2"] > 0


def test_template_context_protects_the_states_generation_uses(random_model, tmp_path):
    """context=template annihilates each protected concept's state inside the prompt template
    (averaged over partners); the published neutral-prefix columns do not."""
    model = random_model
    pipe = load_pipeline(model, device="cpu")
    cat = minicanvas_catalog()
    concepts = ["ice", "ocean", "lava"]
    C = torch.stack([torch.stack([concept_token_embedding(pipe, cat.prompt(c, o), c) for o in cat.objects]).mean(0)
                     for c in concepts], 1)
    ratio = {}
    for context in ("neutral", "template"):
        run = Run.open_or_create(tmp_path / context, model)
        regs = [("projection", {"mode": "update", "concepts": "+".join(concepts), "context": context})]
        meta = run.unlearn(request(regs=regs), quiet=True)
        delta = load_delta(f"{meta['dir']}/delta.safetensors")
        ratio[context] = max(float((d @ C).norm() / (d.norm() * C.norm())) for d in delta.values() if d.norm() > 0)
    assert ratio["template"] < 1e-5
    assert ratio["neutral"] > 100 * ratio["template"], ratio


def test_selft_leaves_masked_elements_bit_identical(random_model, tmp_path):
    model = random_model
    run = Run.open_or_create(tmp_path / "run", model)
    # weight decay on: AdamW would move masked weights if the update were not undone
    meta = run.unlearn(request(regs=[("selft", {"top_k": "0.1"}), ("projection", {"mode": "update"})], weight_decay="0.1"), quiet=True)
    delta = load_delta(f"{meta['dir']}/delta.safetensors")
    changed = sum(int((d != 0).sum()) for d in delta.values())
    total = sum(d.numel() for d in delta.values())
    assert 0 < changed <= math.ceil(0.1 * total) + 2  # exactly the top-k elements may move (ties aside)


def test_l2sp_drift_shrinks_as_the_weight_grows(random_model, tmp_path):
    model = random_model
    drifts = []
    for weight in (0.0, 10.0, 100.0, 1000.0):
        run = Run.open_or_create(tmp_path / f"w{weight}", model)
        meta = run.unlearn(request(regs=[("l2sp", {"weight": str(weight)})]), quiet=True)
        drifts.append(meta["drift"]["parent"]["l2"])
    assert all(a > b for a, b in zip(drifts, drifts[1:])), drifts


def test_replay_keeps_protected_predictions_closer_to_the_start(quick_model, tmp_path):
    # a trained model: this property failed on the untrained one (random_model)
    model, _ = quick_model
    protected = ["A circle image in ice style", "A ring image in ocean style"]
    target = ["A circle image in fire style", "A ring image in fire style"]
    pipe = load_pipeline(model, device="cpu")
    gen = torch.Generator().manual_seed(0)
    cfg = pipe.unet.config
    x = torch.randn(len(protected), cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=gen)
    t = torch.tensor([300, 600])
    emb, target_emb = encode_prompts(pipe, protected), encode_prompts(pipe, target)
    with torch.no_grad():
        base = pipe.unet(x, t, encoder_hidden_states=emb).sample
        base_target = pipe.unet(x, t, encoder_hidden_states=target_emb).sample
    change, target_change = {}, {}
    for weight in ("0", "30"):
        run = Run.open_or_create(tmp_path / f"w{weight}", model)
        regs = [("replay", {"weight": weight, "concepts": "ice+ocean", "images_per_concept": "4", "batch_size": "4"})]
        meta = run.unlearn(request(regs=regs, steps="30"), quiet=True)
        delta = load_delta(f"{meta['dir']}/delta.safetensors")
        unet = load_pipeline(model, device="cpu").unet
        state = unet.state_dict()
        with torch.no_grad():
            for n, d in delta.items():
                state[n] += d
            change[weight] = float((unet(x, t, encoder_hidden_states=emb).sample - base).pow(2).mean())
            target_change[weight] = float((unet(x, t, encoder_hidden_states=target_emb).sample - base_target).pow(2).mean())
    assert change["30"] < 0.7 * change["0"], change
    # and the target still moves: replay constrains the protected prompts, not everything
    assert target_change["30"] > 5 * change["30"], (change, target_change)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_runs_alone_and_with_all_regularizers(random_model, tmp_path, method):
    """Every registered method, alone and with every registered add-on at once, each at its
    declared quick settings: a new method or add-on is covered without editing this test."""
    model = random_model
    fast = dict(METHODS[method].quick_settings)
    run = Run.open_or_create(tmp_path / "run", model)
    every_addon = [(name, dict(cls.quick_settings)) for name, cls in REGULARIZERS.items()]
    if METHODS[method].closed_form:  # no training loop: only add-ons that train before the method apply (tests/test_uce.py)
        meta = run.unlearn(Request("fire", "style", method), quiet=True)
        assert meta["drift"]["parent"]["l2"] > 0
        after = [(name, s) for name, s in every_addon if REGULARIZERS[name].trains_before_method]
        combo = run.unlearn(Request("ice", "style", method, {}, after), quiet=True)
        assert combo["drift"]["parent"]["l2"] > 0 and len(run.steps()) == 2
        return
    alone = run.unlearn(Request("fire", "style", method, dict(fast)), quiet=True)
    combo = run.unlearn(Request("ice", "style", method, dict(fast), every_addon), quiet=True)
    for meta in (alone, combo):
        assert math.isfinite(meta["loss_last"]) and meta["drift"]["parent"]["l2"] > 0
    assert combo["drift"]["pretrained"]["l2"] > 0 and len(run.steps()) == 2
