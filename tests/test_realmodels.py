"""Real model families offline: CLIP's BPE tokenizer with multi-token concept names, random
SD 1.5 / SD 2.1 (v-prediction) / SDXL pipelines in their real architectures (scaled down here,
real size under the `fullsize` marker), user model directories."""
from __future__ import annotations

import contextlib
import json

import pytest
import torch

from obliviate.continual import Run
from obliviate.model import (Cond, check_pipeline_dir, concept_token_embedding, concept_token_span, encode, load_pipeline,
                             predict, select_parameters)
from obliviate.protocols import Catalog
from obliviate.testing import clip_bpe_path, save_random_pipeline
from obliviate.trainer import Context, Request

pytestmark = pytest.mark.skipif(
    clip_bpe_path() is None, reason="CLIP's BPE vocabulary is absent: pip install --no-deps open-clip-torch (make setup does)"
)

# concept names of several BPE tokens, as users have them
CATALOG = Catalog(
    name="realnames", styles=["Van Gogh", "Pop Art", "Claude Monet", "Art Nouveau"], objects=["sports car", "golden retriever", "tree"],
    template="a painting of a {object} in {style} style", style_only="an image in the style of {style}",
    object_only="an image of a {object}", sampler={"steps": 2, "guidance": 3.0},
)
FAST = {"conabl": {"steps": "2", "anchor_images": "2", "batch_size": "2"},
        "sculpmem": {"steps": "3", "anchor_images": "2", "batch_size": "2", "warmup": "1", "swap_every": "1"},
        "esd": {"steps": "2", "batch_size": "2", "ddim_steps": "2"},
        "erasediff": {"steps": "2", "batch_size": "2", "forget_images": "2", "remain_images": "2"}}
REPLAY = ("replay", {"images_per_concept": "1", "batch_size": "2"})


@pytest.fixture(scope="module")
def families(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {f: save_random_pipeline(root / f, f, "tiny", seed=1) for f in ("sd15", "sd21", "sdxl")}


@pytest.fixture
def catalog_run(monkeypatch):
    """Runs on these random models use the multi-token catalog (they carry none of their own)."""
    monkeypatch.setattr(Run, "catalog", lambda self: CATALOG)


def context(pipe, request, tmp_path) -> Context:
    params = select_parameters(pipe.unet, request.param_group)
    for p in params.values():
        p.requires_grad_(True)
    start = {n: p.detach().clone() for n, p in params.items()}
    return Context(pipe=pipe, request=request, params=params, pretrained=start, start=start, catalog=CATALOG,
                   unlearned_before=[], cache_dir=tmp_path, base_hash="test", restore_base=contextlib.nullcontext, quiet=True)


def test_clip_tokenizer_is_clips():
    from obliviate.testing import clip_tokenizer

    tok = clip_tokenizer()
    assert len(tok) == 49408 and tok.model_max_length == 77
    # CLIP's published ids for "a photo of a cat"
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tok.convert_ids_to_tokens(tok("Van Gogh").input_ids[1:-1]) == ["van</w>", "gogh</w>"]


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_multi_token_concept_location(families, family):
    pipe = load_pipeline(families[family], device="cpu")
    for text, concept, tokens in [("an image in the style of Van Gogh", "Van Gogh", ["van</w>", "gogh</w>"]),
                                  ("a painting of a golden retriever in Pop Art style", "Pop Art", ["pop</w>", "art</w>"])]:
        start, end = concept_token_span(pipe.tokenizer, text, concept)
        ids = pipe.tokenizer(text).input_ids
        assert pipe.tokenizer.convert_ids_to_tokens(ids[start:end]) == tokens
        hidden = encode(pipe, [text]).hidden[0]
        assert torch.allclose(concept_token_embedding(pipe, text, concept), hidden[start:end].mean(0))
    width = sum(te.config.hidden_size for te in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if te is not None)
    assert hidden.shape == (77, width)


def test_conabl_whole_word_substitution_and_esd_prompts(families, tmp_path):
    from obliviate.methods import get_method

    pipe = load_pipeline(families["sd15"], device="cpu")
    conabl = get_method("conabl")(get_method("conabl").Settings(anchor_images=4))
    ctx = context(pipe, Request("golden retriever", "object", "conabl"), tmp_path)
    anchors, targets = conabl.build_prompts(ctx, "golden retriever", "object", 4)
    assert conabl.anchor == "sports car"  # first catalog object that is not the target
    assert all("sports car" in a for a in anchors)
    assert all(t == [a.replace("sports car", "golden retriever")] for a, t in zip(anchors, targets))
    esd = get_method("esd")(get_method("esd").Settings())
    esd.setup(context(pipe, Request("Pop Art", "style", "esd"), tmp_path))
    assert esd.prompts == [f"a painting of a {o} in Pop Art style" for o in CATALOG.objects]


@pytest.mark.parametrize("family", ["sd15", "sd21"])
def test_every_method_and_regularizer_with_multi_token_names(families, family, tmp_path, catalog_run):
    """A sequence that uses every method and every regularizer, concepts of two or three tokens."""
    run = Run.open_or_create(tmp_path / "run", families[family])
    requests = [
        Request("Van Gogh", "style", "conabl", FAST["conabl"], [("projection", {"mode": "update", "dedup": "1.0", "source": "catalog"}), ("l2sp", {"weight": "10"})]),
        Request("Pop Art", "style", "esd", FAST["esd"], [("l1sp", {"weight": "1"}), REPLAY]),
        Request("golden retriever", "object", "sculpmem", FAST["sculpmem"], [("projection", {"mode": "grad", "dedup": "1.0", "source": "catalog"})]),
        Request("Claude Monet", "style", "erasediff", FAST["erasediff"], [("selft", {"top_k": "0.1"})]),
    ]
    metas = [run.unlearn(r, quiet=True) for r in requests]
    assert [m["step"] for m in metas] == [1, 2, 3, 4]
    assert all(m["drift"]["parent"]["l2"] > 0 for m in metas)
    assert metas[0]["projection_concepts"] == ["Pop Art", "Claude Monet", "Art Nouveau"]
    # an object request protects the catalog's other objects and its styles (the reference's object
    # recipe), which include the styles unlearned earlier
    assert metas[2]["projection_concepts"] == ["sports car", "tree", "Van Gogh", "Pop Art", "Claude Monet", "Art Nouveau"]
    # projection (mode=update) keeps the keys/values of the protected multi-token names exactly
    base, after = load_pipeline(families[family], device="cpu"), run.load(1, device="cpu")
    C = torch.stack([concept_token_embedding(base, CATALOG.single(c, "style"), c) for c in metas[0]["projection_concepts"]], 1)
    b, a = dict(base.unet.named_parameters()), dict(after.unet.named_parameters())
    kv = [n for n in a if ".attn2." in n and n.endswith(("to_k.weight", "to_v.weight"))]
    assert kv and all(torch.allclose((a[n] - b[n]) @ C, torch.zeros(1), atol=1e-5) for n in kv)
    assert any(float((a[n] - b[n]).abs().max()) > 0 for n in kv)


def test_sd21_v_prediction_export_loads_with_plain_diffusers(families, tmp_path, catalog_run):
    from diffusers import StableDiffusionPipeline

    run = Run.open_or_create(tmp_path / "run", families["sd21"])
    run.unlearn(Request("Van Gogh", "style", "conabl", FAST["conabl"]), quiet=True)
    out = run.export(tmp_path / "exported")
    plain = StableDiffusionPipeline.from_pretrained(out, local_files_only=True)
    assert plain.scheduler.config.prediction_type == "v_prediction"
    ours = dict(run.load(device="cpu").unet.named_parameters())
    assert all(torch.equal(p, ours[n]) for n, p in plain.unet.named_parameters())


def test_sdxl_conabl_esd_projection_sampler_export(families, tmp_path, catalog_run):
    from diffusers import StableDiffusionXLPipeline

    from obliviate.evaluate.sampler import SamplerConfig, generate

    pipe = load_pipeline(families["sdxl"], device="cpu")
    cond = encode(pipe, ["a painting of a tree in Van Gogh style", ""])
    assert cond.hidden.shape == (2, 77, 64) and cond.pooled.shape == (2, 32) and cond.time_ids.shape == (2, 6)
    assert float(cond.hidden[1].abs().max()) == 0  # the pipeline's unconditional branch: zeros
    # the helper reproduces the pipeline's own UNet call
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    direct = pipe.unet(x, 10, encoder_hidden_states=cond.hidden,
                       added_cond_kwargs={"text_embeds": cond.pooled, "time_ids": cond.time_ids}).sample
    assert torch.equal(predict(pipe.unet, x, 10, Cond.cat([cond[0], cond[1]])), direct)

    run = Run.open_or_create(tmp_path / "run", families["sdxl"])
    first = run.unlearn(Request("Van Gogh", "style", "conabl", FAST["conabl"], [("projection", {"mode": "update", "dedup": "1.0", "source": "catalog"})]), quiet=True)
    second = run.unlearn(Request("Pop Art", "style", "esd", FAST["esd"]), quiet=True)
    assert first["drift"]["parent"]["l2"] > 0 and second["drift"]["parent"]["l2"] > 0
    # the projection acts on k/v weights whose input is the concatenated width (64 here, 2048 in SDXL)
    base, after = load_pipeline(families["sdxl"], device="cpu"), run.load(1, device="cpu")
    C = torch.stack([concept_token_embedding(base, CATALOG.single(c, "style"), c) for c in first["projection_concepts"]], 1)
    b, a = dict(base.unet.named_parameters()), dict(after.unet.named_parameters())
    kv = [n for n in a if ".attn2." in n and n.endswith(("to_k.weight", "to_v.weight"))]
    assert C.shape[0] == 64 and all(a[n].shape[1] == 64 for n in kv)
    assert all(torch.allclose((a[n] - b[n]) @ C, torch.zeros(1), atol=1e-5) for n in kv)

    images = generate(after, ["a tree in Pop Art style"] * 2, [5, 5], SamplerConfig(steps=2, guidance=3.0, batch_size=2))
    assert images[0].shape == (64, 64, 3) and (images[0] == images[1]).all()  # one generator per image

    out = run.export(tmp_path / "exported")
    plain = StableDiffusionXLPipeline.from_pretrained(out, local_files_only=True)
    ours = dict(run.load(device="cpu").unet.named_parameters())
    assert all(torch.equal(p, ours[n]) for n, p in plain.unet.named_parameters())


def test_model_directories_as_users_have_them(families, tmp_path):
    with pytest.raises(FileNotFoundError, match="Hub id.*local directory"):
        check_pipeline_dir("runwayml/stable-diffusion-v1-5")
    ckpt = tmp_path / "v1-5-pruned-emaonly.safetensors"
    ckpt.write_bytes(b"0")
    with pytest.raises(ValueError, match=r"from_single_file\(.*\)\.save_pretrained"):
        check_pipeline_dir(ckpt)
    refiner = tmp_path / "refiner"
    refiner.mkdir()
    (refiner / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLImg2ImgPipeline"}))
    with pytest.raises(ValueError, match="refiner"):
        check_pipeline_dir(refiner)
    # fp16 variant files only (as `variant="fp16"` downloads leave them): loaded, upcast to float32
    from diffusers import StableDiffusionPipeline

    fp16 = tmp_path / "fp16"
    StableDiffusionPipeline.from_pretrained(families["sd15"], torch_dtype=torch.float16).save_pretrained(fp16, variant="fp16")
    assert not (fp16 / "unet" / "diffusion_pytorch_model.safetensors").exists()
    pipe = load_pipeline(fp16, device="cpu")
    ref = load_pipeline(families["sd15"], device="cpu")
    assert pipe.unet.dtype == torch.float32
    w, w_ref = pipe.unet.conv_in.weight, ref.unet.conv_in.weight
    assert torch.equal(w, w_ref.half().float())


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_uce_closed_form_with_multi_token_names(families, family, tmp_path, catalog_run):
    run = Run.open_or_create(tmp_path / "run", families[family])
    meta = run.unlearn(Request("Van Gogh", "style", "uce"), quiet=True)
    assert meta["drift"]["parent"]["l2"] > 0
    assert run.unlearn(Request("Pop Art", "style", "uce"), quiet=True)["step"] == 2

@pytest.mark.parametrize("family", ["sdxl"])
def test_command_line_on_a_user_model(families, family, tmp_path, capsys):
    """`obliviate unlearn` / `export` on a model with no catalog (the generic prompts), no code change."""
    from obliviate.cli import main

    run = str(tmp_path / "run")
    code = main(["--quiet", "unlearn", "--run", run, "--model", str(families[family]), "--concept", "Van Gogh",
                 "--domain", "style", "--method", "esd", "--steps", "1", "--method-setting", "ddim_steps=2",
                 "--method-setting", "batch_size=1"])
    assert code == 0, capsys.readouterr().err
    assert main(["--quiet", "export", run, "--out", str(tmp_path / "exported")]) == 0
    index = json.loads((tmp_path / "exported" / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline"
    code = main(["--quiet", "unlearn", "--run", str(tmp_path / "r2"), "--model", "runwayml/stable-diffusion-v1-5",
                 "--concept", "x", "--domain", "other"])
    err = capsys.readouterr().err
    assert code == 2 and "pass that local directory" in err and not (tmp_path / "r2").exists()

# ---------------------------------------------------------------- real size (marked)
@pytest.mark.fullsize
@pytest.mark.parametrize("family", ["sd15", "sd21"])
def test_fullsize_every_method_one_step(family, tmp_path, catalog_run):
    """SD 1.5 / SD 2.1 shapes (768/1024-wide text encoders, 860M-parameter UNet): one short
    request of each method, then the export loads with plain diffusers."""
    from diffusers import StableDiffusionPipeline

    model = save_random_pipeline(tmp_path / family, family, "full")
    one = {"steps": "1", "batch_size": "1"}
    run = Run.open_or_create(tmp_path / "run", model)
    requests = [
        Request("Van Gogh", "style", "conabl", {**one, "anchor_images": "1", "sampler_steps": "1"}, [("projection", {})]),
        Request("Pop Art", "style", "esd", {**one, "ddim_steps": "1"}),
        Request("golden retriever", "object", "sculpmem", {**one, "anchor_images": "1", "sampler_steps": "1", "warmup": "1"}),
        Request("Claude Monet", "style", "erasediff", {**one, "forget_images": "1", "remain_images": "1", "sampler_steps": "1"}),
    ]
    for r in requests:
        assert run.unlearn(r, quiet=True)["drift"]["parent"]["l2"] > 0
    out = run.export(tmp_path / "exported")
    plain = StableDiffusionPipeline.from_pretrained(out, local_files_only=True)
    assert plain.text_encoder.config.hidden_size == {"sd15": 768, "sd21": 1024}[family]
    assert plain.unet.config.cross_attention_dim == plain.text_encoder.config.hidden_size
    assert plain.tokenizer.model_max_length == 77 and plain.vae_scale_factor == 8
