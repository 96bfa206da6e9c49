"""SD3 and FLUX (flow-matching transformers) offline: tiny random pipelines in their real
layouts (T5 + CLIP text encoders, 16-channel VAE, joint-attention transformers), every method
through one request, export and LoRA files read by plain diffusers, sampling, the command
line, and the published sizes checked on the meta device."""
from __future__ import annotations

import contextlib
import json

import pytest
import torch
import yaml

from obliviate.cli import main
from obliviate.continual import Run
from obliviate.model import (Cond, check_pipeline_dir, concept_spans, denoiser, encode, load_pipeline, predict,
                             select_parameters)
from obliviate.protocols import Catalog
from obliviate.testing import clip_bpe_path, save_random_flow_pipeline
from obliviate.request import Request
from obliviate.trainer import Context

pytestmark = pytest.mark.skipif(
    clip_bpe_path() is None, reason="CLIP's BPE vocabulary is absent: pip install --no-deps open-clip-torch (make setup does)"
)

CATALOG = Catalog(
    name="realnames", styles=["Van Gogh", "Pop Art", "Claude Monet", "Art Nouveau"], objects=["sports car", "tree"],
    template="a painting of a {object} in {style} style", style_only="an image in the style of {style}",
    object_only="an image of a {object}", sampler={"steps": 2, "guidance": 3.0},
)
FAST = {"conabl": {"steps": "2", "anchor_images": "2", "batch_size": "2"},
        "esd": {"steps": "2", "batch_size": "2", "ddim_steps": "2"}}


@pytest.fixture(scope="module")
def flow_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("flow")
    return {f: save_random_flow_pipeline(root / f, f, seed=1) for f in ("sd3", "flux")}


@pytest.fixture
def catalog_run(monkeypatch):
    monkeypatch.setattr(Run, "catalog", lambda self: CATALOG)


def context(pipe, request, tmp_path) -> Context:
    params = select_parameters(denoiser(pipe), request.param_group)
    start = {n: p.detach().clone() for n, p in params.items()}
    return Context(pipe=pipe, request=request, params=params, pretrained=start, start=start, catalog=CATALOG,
                   unlearned_before=[], cache_dir=tmp_path, base_hash="test", restore_base=contextlib.nullcontext, quiet=True)


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_encode_and_predict_are_the_pipelines_own(flow_models, family):
    """encode gives what the pipeline's encode_prompt gives (SD3: CLIP-L + CLIP-G padded to T5's
    width, then T5, along the tokens; FLUX: T5 states + CLIP-L pooled); predict on unpacked
    latents gives exactly what the pipeline's own transformer call returns at a sampling step."""
    pipe = load_pipeline(flow_models[family], device="cpu")
    assert type(pipe).__name__ == {"sd3": "StableDiffusion3Pipeline", "flux": "FluxPipeline"}[family]
    text = "a painting of a tree in Van Gogh style"
    cond = encode(pipe, [text, ""])
    tokens, pooled = {"sd3": (77 + 256, 64), "flux": (512, 32)}[family]
    assert cond.hidden.shape == (2, tokens, 32) and cond.pooled.shape == (2, pooled)
    # the concept's positions: SD3's CLIP run and its T5 run; FLUX's T5 run (Van, Go, g, h: pieces of a T5 vocabulary)
    spans = concept_spans(pipe, text, "Van Gogh")
    t5 = pipe.tokenizer_2 if family == "flux" else pipe.tokenizer_3
    a, b = spans[-1]
    offset = 77 if family == "sd3" else 0
    assert t5.convert_ids_to_tokens(t5(text).input_ids[a - offset:b - offset])[0] == "▁Van"
    if family == "sd3":
        assert spans[0] == (7, 9)  # <start> a painting of a tree in | van gogh

    captured = {}

    def grab(module, args, kwargs, output):
        captured.setdefault("call", (kwargs, output[0].detach().clone()))

    handle = denoiser(pipe).register_forward_hook(grab, with_kwargs=True)
    try:
        from obliviate.diffusion import unpacked

        start = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(3))
        latents = start
        if family == "flux":
            from diffusers import FluxPipeline

            latents = FluxPipeline._pack_latents(start, 1, 16, 8, 8)
        # FLUX: guidance is the embedding's input; SD3 at 1: no classifier-free guidance, one batch
        pipe([text], num_inference_steps=2, guidance_scale=1.5 if family == "flux" else 1.0, latents=latents, output_type="latent",
             **({"height": 64, "width": 64} if family == "flux" else {}))
    finally:
        handle.remove()
    kwargs, out = captured["call"]
    t = kwargs["timestep"][0] * (1000 if family == "flux" else 1)
    ours = predict(denoiser(pipe), start, t, cond[0], guidance=1.5)  # FLUX: the guidance embedding's input
    theirs = unpacked(pipe, out) if family == "flux" else out
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_flow_noising_and_velocity_target(flow_models):
    from obliviate.diffusion import add_noise, scheduler_for_training, target_for

    pipe = load_pipeline(flow_models["sd3"], device="cpu")
    sched = scheduler_for_training(pipe)
    x0 = torch.randn(64, 16, 4, 4, generator=torch.Generator().manual_seed(0))
    x_t, t, noise = add_noise(sched, x0, torch.Generator().manual_seed(1))
    s = t.float() / 1000
    assert torch.allclose(x_t, (1 - s.view(-1, 1, 1, 1)) * x0 + s.view(-1, 1, 1, 1) * noise, atol=1e-6)
    assert torch.equal(target_for(sched, x0, noise, t), noise - x0)
    # SD3's static shift 3.0: shifted sigmas sit above the unshifted uniform draw on average
    assert float(s.mean()) > 0.55 and 0 < float(s.min()) and float(s.max()) <= 1


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_every_method_on_flow_models(flow_models, family, tmp_path, catalog_run):
    """One request of each method (and the SP add-ons and projection where they apply), each
    changing only the tensors of its group."""
    run = Run.open_or_create(tmp_path / "train", flow_models[family])
    regs = {"flux": [("l2sp", {})], "sd3": [("l1sp", {}), ("selft", {}), ("replay", {"images_per_concept": "1", "batch_size": "2"})]}
    other = {"flux": Request("Claude Monet", "style", "sculpmem", {"steps": "2", "anchor_images": "2", "batch_size": "2",
                                                                 "warmup": "1", "swap_every": "1"}),
             "sd3": Request("Claude Monet", "style", "erasediff", {"steps": "2", "batch_size": "2", "forget_images": "2",
                                                                  "remain_images": "2"})}
    first = run.unlearn(Request("Van Gogh", "style", "conabl", FAST["conabl"], regs[family]), quiet=True)
    second = run.unlearn(Request("Pop Art", "style", "esd", FAST["esd"]), quiet=True)
    fourth = run.unlearn(other[family], quiet=True)
    third = run.unlearn(Request("tree", "object", "conabl", FAST["conabl"],
                                [("projection", {"mode": "update", "dedup": "1.0", "source": "catalog"})],
                                param_group="context"), quiet=True)
    assert all(m["drift"]["parent"]["l2"] > 0 for m in (first, second, third, fourth))
    pipe = load_pipeline(flow_models[family], device="cpu")
    base, after = dict(denoiser(pipe).named_parameters()), dict(denoiser(run.load(device="cpu")).named_parameters())
    moved = sorted(n for n in base if not torch.equal(base[n], after[n]))
    assert moved and all(n == "context_embedder.weight" or ".attn.add_k_proj." in n or ".attn.add_v_proj." in n for n in moved)
    # the projection kept the protected concepts' text states fixed under the last request's change
    name = "context_embedder.weight"
    before_last = base[name] + run.cumulative_delta(3).get(name, torch.zeros_like(base[name]))
    from obliviate.model import concept_token_embeddings

    names = list(dict.fromkeys(c.split("@")[0] for c in third["projection_concepts"]))  # SD3: X@clip, X@t5
    assert len(third["projection_concepts"]) == len(names) * (2 if family == "sd3" else 1)
    C = torch.cat([concept_token_embeddings(pipe, CATALOG.single(c, "object" if c in CATALOG.objects else "style"), c)
                   for c in names]).T  # every run's state of every protected concept
    assert torch.allclose((after[name] - before_last) @ C, torch.zeros(1), atol=1e-5)

    closed = Run.open_or_create(tmp_path / "closed", flow_models[family])
    for concept, method in (("Van Gogh", "uce"), ("Pop Art", "rece"), ("Claude Monet", "uce-null")):
        meta = closed.unlearn(Request(concept, "style", method, {"anchor": "previous"}, param_group="context"), quiet=True)
        assert meta["drift"]["parent"]["l2"] > 0
    with pytest.raises(ValueError, match="param-group context"):
        closed.unlearn(Request("tree", "object", "uce", {"anchor": "previous"}), quiet=True)


def test_uce_on_flux_moves_the_concepts_text_keys_and_values_only(flow_models, tmp_path):
    """UCE on FLUX edits context_embedder (the map from T5 states to the text stream): every
    block's text-token keys and values of the erased prompt move (double-stream add_k/add_v,
    and the text rows of the single-stream blocks' shared to_k/to_v), a preserved unrelated
    prompt's stay (to the solve's tolerance), and the image tokens' keys of the first block,
    which read no text, do not change at all."""
    from obliviate.methods.uce import UCE, UCESettings

    pipe = load_pipeline(flow_models["flux"], device="cpu")
    request = Request("Van Gogh", "style", "uce", param_group="context")
    ctx = context(pipe, request, tmp_path)
    method = UCE(UCESettings(preserve="others+empty+file", preserve_prompts=str(_write(tmp_path, "a photo of a sports car"))))
    method.setup(ctx)
    solved = method.solve(ctx)
    model = denoiser(pipe)
    layers = {"double.add_k": model.transformer_blocks[0].attn.add_k_proj, "double.add_v": model.transformer_blocks[0].attn.add_v_proj,
              "double.to_k": model.transformer_blocks[0].attn.to_k, "single.to_k": model.single_transformer_blocks[0].attn.to_k,
              "single.to_v": model.single_transformer_blocks[0].attn.to_v}

    def keys(prompt):
        out = {}
        handles = [m.register_forward_hook(lambda m, a, o, n=n: out.__setitem__(n, o.detach().clone())) for n, m in layers.items()]
        x = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            predict(model, x, 500, encode(pipe, [prompt]))
        for h in handles:
            h.remove()
        text = 512  # single-stream blocks see [text tokens, image tokens]
        return {n: (v[:, :text] if n.startswith("single") else v) for n, v in out.items()}

    erased, other = "an image in the style of Van Gogh", "a photo of a sports car"
    before = {p: keys(p) for p in (erased, other)}
    with torch.no_grad():
        ctx.params["context_embedder.weight"].copy_(solved["context_embedder.weight"])
    after = {p: keys(p) for p in (erased, other)}

    def change(p, n):
        return float((after[p][n] - before[p][n]).norm() / before[p][n].norm())

    assert torch.equal(after[erased]["double.to_k"], before[erased]["double.to_k"])  # image tokens, first block
    for n in ("double.add_k", "double.add_v", "single.to_k", "single.to_v"):
        assert change(erased, n) > 10 * change(other, n), n
        assert change(erased, n) > 1e-3 and change(other, n) < 1e-2, n


def _write(tmp_path, text):
    path = tmp_path / "preserve.txt"
    path.write_text(text + "\n")
    return path


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_export_lora_and_sampling_with_plain_diffusers(flow_models, family, tmp_path, catalog_run):
    """export writes a directory the family's pipeline class loads with our weights; a LoRA run
    exports a file load_lora_weights reads, whose fused weights are the run's; the evaluation
    sampler gives each image its own seed."""
    import diffusers

    from obliviate.evaluate.sampler import SamplerConfig, generate
    from obliviate.lora import export_lora

    cls = getattr(diffusers, {"sd3": "StableDiffusion3Pipeline", "flux": "FluxPipeline"}[family])
    run = Run.open_or_create(tmp_path / "run", flow_models[family])
    run.unlearn(Request("Van Gogh", "style", "esd", FAST["esd"]), quiet=True)
    out = run.export(tmp_path / "exported")
    plain = cls.from_pretrained(out, local_files_only=True)
    pipe = run.load(device="cpu")
    ours = dict(denoiser(pipe).named_parameters())
    assert all(torch.equal(p, ours[n]) for n, p in plain.transformer.named_parameters())
    images = generate(pipe, ["a tree in Pop Art style"] * 3, [5, 5, 6], SamplerConfig(steps=2, guidance=3.0, batch_size=3))
    assert images[0].shape == (64, 64, 3) and (images[0] == images[1]).all() and not (images[0] == images[2]).all()

    lora_run = Run.open_or_create(tmp_path / "lora", flow_models[family])
    lora_run.unlearn(Request("Van Gogh", "style", "esd", {**FAST["esd"], "lr": "1e-2"}, param_group="lora:r=2"), quiet=True)
    files = export_lora(lora_run, tmp_path / "lora-out")
    plain = cls.from_pretrained(flow_models[family], local_files_only=True)
    base = {n: p.detach().clone() for n, p in plain.transformer.named_parameters()}
    plain.load_lora_weights(files)
    plain.fuse_lora()
    plain.unload_lora_weights()
    ours = dict(denoiser(lora_run.load(device="cpu")).named_parameters())
    theirs = dict(plain.transformer.named_parameters())
    assert set(theirs) == set(ours)
    assert all(torch.allclose(theirs[n], ours[n], atol=1e-6) for n in ours)
    assert any(not torch.equal(base[n], ours[n]) for n in ours if ".add_k_proj." in n)


def test_pipelines_obliviate_cannot_use_are_refused(tmp_path):
    for kind, words in (("FluxFillPipeline", "FLUX Fill, Redux, Kontext"), ("FluxKontextPipeline", "FluxPipeline"),
                        ("FluxPriorReduxPipeline", "text-to-image FluxPipeline"), ("FluxControlNetPipeline", "ControlNet"),
                        ("StableDiffusion3Img2ImgPipeline", "StableDiffusion3Pipeline of the same model"),
                        ("StableDiffusion3ControlNetPipeline", "SD3 img2img, inpainting and ControlNet")):
        d = tmp_path / kind
        d.mkdir()
        (d / "model_index.json").write_text(json.dumps({"_class_name": kind}))
        with pytest.raises(ValueError, match=f"holds a {kind}.*{words}"):
            check_pipeline_dir(d)


def test_flux_without_guidance_embedding_like_schnell(tmp_path, catalog_run):
    """A timestep-distilled FLUX layout (no guidance embedding, as FLUX.1-schnell): trained
    (ESD walks its trajectory with classifier-free guidance), exported, sampled."""
    from obliviate.evaluate.sampler import SamplerConfig, generate

    model = save_random_flow_pipeline(tmp_path / "schnell", "flux", seed=2, guidance_embeds=False)
    run = Run.open_or_create(tmp_path / "run", model)
    assert run.unlearn(Request("Van Gogh", "style", "esd", FAST["esd"]), quiet=True)["drift"]["parent"]["l2"] > 0
    pipe = run.load(device="cpu")
    assert pipe.transformer.config.guidance_embeds is False
    assert generate(pipe, ["a tree"], [1], SamplerConfig(steps=2, guidance=1.0))[0].shape == (64, 64, 3)


# ---------------------------------------------------------------- a FLUX pipeline the tests did not build
def plain_flux_pipeline(out):
    """A FluxPipeline written with plain diffusers and transformers from configuration dicts
    (other widths and depths than testing.py's), with its own small T5 vocabulary; only CLIP's
    BPE merges come from the open-clip wheel, as every CLIP tokenizer here."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel, T5Tokenizer

    from obliviate.testing import clip_tokenizer

    words = "a an the of in by image photo painting picture style art tree car sports Van Gogh Pop Art Claude Monet".split()
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [("▁" + w, -5.0) for w in dict.fromkeys(words)] + [(c, -12.0) for c in "abcdefghijklmnopqrstuvwxyz,."]
    tokenizer_2 = T5Tokenizer(vocab=pieces + [(f"<extra_id_{i}>", 0.0) for i in range(99, -1, -1)], model_max_length=512)
    torch.manual_seed(7)
    transformer = FluxTransformer2DModel.from_config({
        "patch_size": 1, "in_channels": 64, "num_layers": 2, "num_single_layers": 2, "attention_head_dim": 8,
        "num_attention_heads": 3, "joint_attention_dim": 16, "pooled_projection_dim": 24, "guidance_embeds": True,
        "axes_dims_rope": [2, 2, 4]})
    vae = AutoencoderKL.from_config({
        "in_channels": 3, "out_channels": 3, "latent_channels": 16, "sample_size": 32, "block_out_channels": [8, 8, 8, 8],
        "norm_num_groups": 4, "layers_per_block": 1, "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4, "scaling_factor": 0.3611, "shift_factor": 0.1159,
        "use_quant_conv": False, "use_post_quant_conv": False})
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=24, intermediate_size=48, num_hidden_layers=1,
                                        num_attention_heads=2, max_position_embeddings=77, projection_dim=24))
    t5 = T5EncoderModel(T5Config(vocab_size=len(tokenizer_2), d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4,
                                 feed_forward_proj="gated-gelu", is_encoder_decoder=False))
    scheduler = FlowMatchEulerDiscreteScheduler.from_config({
        "num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15,
        "base_image_seq_len": 256, "max_image_seq_len": 4096})
    FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=clip, tokenizer=clip_tokenizer(), text_encoder_2=t5,
                 tokenizer_2=tokenizer_2, transformer=transformer).save_pretrained(out)
    return out


def test_command_line_on_a_plain_diffusers_flux_pipeline(tmp_path, capsys):
    """`obliviate unlearn --method uce` and `--method esd` on a FLUX directory nobody here
    prepared for obliviate (no catalog: the generic prompts), then `export`, which
    FluxPipeline.from_pretrained loads with the edited weights."""
    from diffusers import FluxPipeline

    model = plain_flux_pipeline(tmp_path / "flux")
    for method, extra in (("uce", []), ("esd", ["--steps", "1", "--method-setting", "ddim_steps=2",
                                                "--method-setting", "batch_size=1"])):
        run = str(tmp_path / f"run-{method}")
        code = main(["--quiet", "unlearn", "--run", run, "--model", str(model), "--concept", "Van Gogh", "--domain", "style",
                     "--method", method, *extra])
        assert code == 0, capsys.readouterr().err
        assert main(["--quiet", "export", run, "--out", str(tmp_path / f"exported-{method}")]) == 0
        plain = FluxPipeline.from_pretrained(tmp_path / f"exported-{method}", local_files_only=True)
        base = FluxPipeline.from_pretrained(model, local_files_only=True)
        name = "context_embedder.weight" if method == "uce" else "transformer_blocks.0.attn.add_k_proj.weight"
        assert not torch.equal(plain.transformer.get_parameter(name), base.transformer.get_parameter(name))
        steps = json.loads(next((tmp_path / f"run-{method}" / "steps").glob("001-*/step.json")).read_text())
        assert steps["request"]["param_group"] == ("context" if method == "uce" else "kv-xattn")
    # a closed-form method asked for another group on FLUX: one line naming the group to use, no run created
    code = main(["--quiet", "unlearn", "--run", str(tmp_path / "r2"), "--model", str(model), "--concept", "Van Gogh",
                 "--domain", "style", "--method", "uce", "--param-group", "kv-xattn"])
    err = capsys.readouterr().err
    assert code == 2 and "--param-group context" in err


# ---------------------------------------------------------------- `obliviate run`, attacks
TINY_VIT = dict(image_size=32, patch_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


@pytest.fixture(scope="module")
def judges(tmp_path_factory):
    from obliviate.protocols.unlearncanvas import build_vit_classifier, to_timm_state_dict, unlearncanvas_catalog

    root = tmp_path_factory.mktemp("judges")
    p = unlearncanvas_catalog()
    paths = {}
    for seed, (name, labels) in enumerate((("style", p.styles), ("object", p.objects)), start=1):
        torch.manual_seed(seed)
        model = build_vit_classifier(len(labels), **TINY_VIT)
        paths[name] = root / f"{name}.pth"
        torch.save({"model_state_dict": to_timm_state_dict(model.state_dict())}, paths[name])
    return paths, p


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_obliviate_run_and_paraphrase_on_flow_models(flow_models, judges, family, tmp_path, capsys):
    """`obliviate run` end to end (unlearn, evaluate with the user's judges, paraphrase attack,
    report); a learned-token attack is refused before any work."""
    paths, p = judges
    raw = {
        "name": "flow", "protocol": "unlearncanvas", "domain": "style", "sequence": ["Van_Gogh"],
        "retained": p.retained_styles[:1], "partners": p.retained_objects[:1],
        "eval": {"seeds": [188], "probe_seeds": [1], "sampler": {"steps": 2, "guidance": 3.0, "batch_size": 4}},
        "classifiers": {"arch": TINY_VIT}, "grid": {"prompts": 3}, "attacks": ["paraphrase:phrasings=1"],
        "variants": [{"name": "esd", "method": "esd", "method_settings": {"steps": 1, "batch_size": 1, "ddim_steps": 2}}],
    }
    args = ["--style-classifier", str(paths["style"]), "--object-classifier", str(paths["object"]), "--device", "cpu"]
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    code = main(["--quiet", "run", str(cfg), "--out", str(out), "--model", str(flow_models[family]), *args])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    rows = summary["variants"]["esd"]["steps"]
    assert [r["step"] for r in rows] == [0, 1] and rows[1]["drift_l2"] > 0
    assert all(r[k] is None or 0 <= r[k] <= 100 for r in rows for k in ("UA", "RA_I", "RA_C"))
    attack_files = list(out.rglob("attack.json"))
    assert attack_files and all(0 <= json.loads(f.read_text())["mean_asr"] <= 100 for f in attack_files)

    raw["attacks"] = ["inversion:steps=1"]
    cfg.write_text(yaml.safe_dump(raw))
    code = main(["--quiet", "run", str(cfg), "--out", str(tmp_path / "out2"), "--model", str(flow_models[family]), *args])
    err = capsys.readouterr().err
    assert code == 2 and "does not support" in err and "use attack paraphrase" in err and not (tmp_path / "out2").exists()
    raw["attacks"], raw["variants"] = [], [{"name": "uce", "method": "uce"}]
    cfg.write_text(yaml.safe_dump(raw))
    code = main(["--quiet", "run", str(cfg), "--out", str(tmp_path / "out3"), "--model", str(flow_models[family]), *args])
    err = capsys.readouterr().err
    assert code == 2 and "variant 'uce'" in err and "param_group: context" in err and not (tmp_path / "out3").exists()


# ---------------------------------------------------------------- real size, on the meta device
def test_real_size_transformers_have_the_published_parameter_counts():
    """FLUX.1-dev's and SD3-medium's transformers (their published config.json, written out
    here) built without memory (accelerate's init_empty_weights): 11.9 B and 2.0 B parameters.
    testing.transformer_config("...", "full") is the same configuration."""
    from accelerate import init_empty_weights
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    from obliviate.testing import transformer_config

    flux_dev = {"patch_size": 1, "in_channels": 64, "num_layers": 19, "num_single_layers": 38, "attention_head_dim": 128,
                "num_attention_heads": 24, "joint_attention_dim": 4096, "pooled_projection_dim": 768, "guidance_embeds": True,
                "axes_dims_rope": [16, 56, 56]}
    sd3_medium = {"sample_size": 128, "patch_size": 2, "in_channels": 16, "num_layers": 24, "attention_head_dim": 64,
                  "num_attention_heads": 24, "joint_attention_dim": 4096, "caption_projection_dim": 1536,
                  "pooled_projection_dim": 2048, "out_channels": 16, "pos_embed_max_size": 192}
    with init_empty_weights():
        flux = FluxTransformer2DModel.from_config(flux_dev)
        sd3 = SD3Transformer2DModel.from_config(sd3_medium)
        ours = FluxTransformer2DModel(**transformer_config("flux", "full")), SD3Transformer2DModel(**transformer_config("sd3", "full"))

    def count(m):
        return sum(p.numel() for p in m.parameters())

    assert count(flux) == 11_901_408_320 and count(sd3) == 2_028_328_000
    assert [count(m) for m in ours] == [count(flux), count(sd3)]
    assert flux.context_embedder.weight.device.type == "meta"
    # what uce solves at real size: one 4096 x 4096 system for a 3072 x 4096 (FLUX) / 1536 x 4096 (SD3) weight
    assert tuple(select_parameters(flux, "context")["context_embedder.weight"].shape) == (3072, 4096)
    kv = select_parameters(flux, "kv-xattn")
    assert len(kv) == 2 * 19 and all(".add_k_proj." in n or ".add_v_proj." in n for n in kv)
    assert len(select_parameters(sd3, "kv-xattn")) == 2 * 24
