"""What the reference (CUIG) code does, pinned: projection columns, prompt extraction,
start-token detachment, the masked loss, the reference recipe in step.json."""
import json

import pytest
import torch

from conftest import FAST_CONABL
from obliviate.continual import Run
from obliviate.methods.conabl import ConAblSettings, masked_mse, style_phrasings
from obliviate.minicanvas import world
from obliviate.model import encode_prompts, load_pipeline
from obliviate.regularizers.projection import concept_positions
from obliviate.start_token import key_value_projections, start_token_detached
from obliviate.parsing import parse_settings
from obliviate.request import Request


def request(concept="fire", domain="style", regs=(), **settings):
    return Request(concept=concept, domain=domain, method="conabl", method_settings={**FAST_CONABL, **settings},
                   regularizers=list(regs))


def test_style_request_protects_its_own_anchor_captions_by_default(random_model, tmp_path):
    """Reference: for styles, C comes from the anchor captions ("an image of a X" -> X), deduplicated
    greedily in order, a column dropped when its cosine to a kept one reaches 0.95 -- not from the
    other styles. 16 anchors over 12 objects: the repeats go (cosine 1), and so do near-duplicates."""
    model = random_model
    run = Run.open_or_create(tmp_path / "run", model)
    meta = run.unlearn(request(anchor_images="16", steps="2", regs=[("projection", {})]), quiet=True)
    objects = run.catalog().objects
    pipe = load_pipeline(model, device="cpu")
    states = torch.nn.functional.normalize(encode_prompts(pipe, [f"an image of a {o}" for o in objects])[:, 5], dim=1)
    kept = []
    for i in range(len(objects)):
        if all(float(states[i] @ states[j]) < 0.95 for j in kept):
            kept.append(i)
    assert meta["projection_concepts"] == [objects[i] for i in kept]
    assert 1 < len(kept) <= 12 and not set(meta["projection_concepts"]) & set(world.STYLE_NAMES)
    # the previous default, now an explicit choice of ours: the other styles
    run2 = Run.open_or_create(tmp_path / "run2", model)
    meta2 = run2.unlearn(request(steps="2", regs=[("projection", {"source": "catalog"})]), quiet=True)
    assert set(meta2["projection_concepts"]) <= set(world.STYLE_NAMES) - {"fire"}
    # objects: the reference's dual-domain catalog (other objects and the styles)
    run3 = Run.open_or_create(tmp_path / "run3", model)
    meta3 = run3.unlearn(request("circle", "object", steps="2", regs=[("projection", {})]), quiet=True)
    names = set(meta3["projection_concepts"])
    assert "circle" not in names and names & set(world.STYLE_NAMES) and names & set(world.OBJECT_NAMES)


def test_prompt_file_line_gives_the_word_after_the_prefix(random_model, tmp_path):
    """Reference: the state of the word(s) after "an image of a" / "an image in the style of";
    without a prefix, the last word before the end token. extract=mean (ours) averages all."""
    model = random_model
    pipe = load_pipeline(model, device="cpu")
    tok = pipe.tokenizer
    line = "an image of a circle"
    ids = tok(line).input_ids
    assert [tok.decode([ids[i]]) for i in concept_positions(tok, line)] == ["circle"]
    styled = "an image in the style of fire"
    assert [tok.decode([tok(styled).input_ids[i]]) for i in concept_positions(tok, styled)] == ["fire"]
    fallback = "fire ring"  # no known prefix: the last word
    assert [tok.decode([tok(fallback).input_ids[i]]) for i in concept_positions(tok, fallback)] == ["ring"]

    prompts = tmp_path / "aux.txt"
    prompts.write_text("an image of a circle\nfire ring\n")
    run = Run.open_or_create(tmp_path / "run", model)
    meta = run.unlearn(request(steps="2", regs=[("projection", {"prompts": str(prompts), "mode": "update"})]), quiet=True)
    assert meta["projection_concepts"] == ["circle", "ring"]
    # the update annihilates exactly those states (the word's, not the prompt's mean)
    hidden = encode_prompts(pipe, ["an image of a circle", "fire ring"])
    C = torch.stack([hidden[0, concept_positions(tok, "an image of a circle")].mean(0),
                     hidden[1, concept_positions(tok, "fire ring")].mean(0)], 1)
    from obliviate.delta import load_delta
    delta = load_delta(f"{meta['dir']}/delta.safetensors")
    assert max(float((d @ C).norm() / (d.norm() * C.norm())) for d in delta.values() if d.norm() > 0) < 1e-5


def test_start_token_detachment_removes_token_zero_from_the_weight_gradient(random_model):
    model = random_model
    pipe = load_pipeline(model, device="cpu")
    unet = pipe.unet
    layer = key_value_projections(unet)[0]
    layer.weight.requires_grad_(True)
    g = torch.Generator().manual_seed(0)
    size = unet.config.sample_size
    x = torch.randn(2, unet.config.in_channels, size, size, generator=g)
    emb = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g)
    seen = {}

    def capture(module, inputs, output):  # registered after the detaching hook: sees its output
        seen["input"] = inputs[0].detach()
        output.retain_grad()
        seen["output"] = output

    grads = {}
    for detach in (False, True):
        layer.weight.grad = None
        with start_token_detached(unet, detach):
            handle = layer.register_forward_hook(capture)
            unet(x, torch.tensor([500, 20]), encoder_hidden_states=emb).sample.square().mean().backward()
            handle.remove()
        g_out, inp = seen["output"].grad, seen["input"]
        first = 1 if detach else 0
        expected = torch.einsum("btj,bti->ji", g_out[:, first:], inp[:, first:])
        assert torch.allclose(layer.weight.grad, expected, rtol=1e-4, atol=1e-7)
        grads[detach] = layer.weight.grad.clone()
    assert not torch.allclose(grads[True], grads[False])  # token 0 did contribute before
    assert all(not m._forward_hooks for m in key_value_projections(unet))  # removed after use


def test_masked_loss_ignores_the_border():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    loss = masked_mse(pred, target, 1)
    changed = pred.clone()
    changed[:, :, 0, :] += 5
    changed[:, :, :, -1] -= 5
    assert torch.equal(masked_mse(changed, target, 1), loss)
    inner = pred.clone()
    inner[:, :, 3, 3] += 1
    assert masked_mse(inner, target, 1) > loss
    # the reference's normalisation: summed over channels, averaged over the 6x6 kept pixels
    expected = ((pred - target)[:, :, 1:7, 1:7] ** 2).sum((1, 2, 3)).div(36).mean()
    assert torch.allclose(loss, expected)


def test_reference_recipe_elements_and_phrasings():
    s = parse_settings(ConAblSettings, {"recipe": "reference", "sampler_steps": "4"}, "method conabl")
    assert (s.loss, s.anchor_sampler, s.anchor_store, s.hflip, s.phrasing, s.guidance, s.sampler_steps, s.detach_start) == (
        "masked", "dpm-solver", "images", True, "spec", 6.0, 4, True)
    ours = parse_settings(ConAblSettings, {}, "method conabl")
    assert (ours.loss, ours.anchor_store, ours.hflip, ours.phrasing) == ("mse", "latents", False, "catalog")
    with pytest.raises(ValueError, match="recipe"):
        parse_settings(ConAblSettings, {"recipe": "paper"}, "method conabl")
    assert style_phrasings("Van_Gogh", "A photo of a dog.") == [
        "In Van Gogh Style, a photo of a dog.", "A photo of a dog, in Van Gogh Style."]


def test_reference_recipe_runs_and_is_recorded_in_step_json(random_model, tmp_path):
    model = random_model
    run = Run.open_or_create(tmp_path / "run", model)
    meta = run.unlearn(request(recipe="reference", steps="3"), quiet=True)
    recorded = json.loads((tmp_path / "run" / "steps" / "001-fire" / "step.json").read_text())["config"]["method"]
    for key, value in {"recipe": "reference", "loss": "masked", "mask_border": 1, "anchor_sampler": "dpm-solver",
                       "guidance": 6.0, "anchor_store": "images", "hflip": True, "phrasing": "spec",
                       "detach_start": True, "sampler_steps": 4}.items():
        assert recorded[key] == value, key
    assert meta["drift"]["parent"]["l2"] > 0
    assert any(p.name.startswith("anchors-images-") for p in (tmp_path / "run" / "cache").iterdir())


def test_overlapped_reference_forward_gives_the_same_delta_bit_for_bit(random_model, tmp_path, monkeypatch):
    """The anchor prompt's no-gradient forward runs on a second thread (CPU speed); the trained tensors must be exactly those of the sequential loop."""
    from obliviate import diffusion
    from obliviate.delta import load_delta

    model = random_model
    deltas = {}
    for overlap in ("0", "1"):
        monkeypatch.setenv("OBLIVIATE_OVERLAP", overlap)
        monkeypatch.setattr(diffusion, "_REFERENCE_THREAD", None)
        run = Run.open_or_create(tmp_path / f"run{overlap}", model)
        run.unlearn(request(steps="3"), quiet=True)
        deltas[overlap] = load_delta(next((tmp_path / f"run{overlap}" / "steps").iterdir()) / "delta.safetensors")
        assert (diffusion._REFERENCE_THREAD is not None) == (overlap == "1")  # the path taken
    assert deltas["0"].keys() == deltas["1"].keys()
    assert all(torch.equal(deltas["0"][k], deltas["1"][k]) for k in deltas["0"])
    assert any(bool(d.abs().max() > 0) for d in deltas["1"].values())


def test_stored_posteriors_give_the_latents_of_flipping_and_re_encoding(random_model):
    """The reference recipe re-encodes its anchor images (randomly mirrored) at every step;
    obliviate encodes each image and its mirror once and samples from the stored posterior.
    Same draws from the generator in the same order, same latents (up to float rounding)."""
    import types

    from obliviate.diffusion import image_posteriors, sample_image_latents

    pipe = load_pipeline(random_model, device="cpu")
    ctx = types.SimpleNamespace(pipe=pipe)
    images = torch.randint(0, 256, (6, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    idx = torch.tensor([5, 0, 0, 3, 2, 5, 1, 4])
    for hflip in (True, False):
        gen_a, gen_b = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
        stored = sample_image_latents(ctx, image_posteriors(ctx, images, hflip), idx, gen_a, hflip)
        # what the reference does at every step
        x = images[idx].float() / 127.5 - 1.0
        if hflip:
            flip = torch.rand(len(x), generator=gen_b) < 0.5
            assert 0 < flip.sum() < len(flip)  # both views are exercised
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        with torch.no_grad():
            posterior = pipe.vae.encode(x).latent_dist
        noise = torch.randn(posterior.mean.shape, generator=gen_b)
        re_encoded = (posterior.mean + posterior.std * noise) * pipe.vae.config.scaling_factor
        assert torch.allclose(stored, re_encoded, atol=1e-5), hflip
        assert torch.equal(gen_a.get_state(), gen_b.get_state())  # the loop's later draws are unchanged
