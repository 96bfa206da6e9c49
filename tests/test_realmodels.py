"""Real model families offline: CLIP's BPE tokenizer with multi-token concept names, random
SD 1.5 / SD 2.1 (v-prediction) / SDXL pipelines in their real architectures (scaled down here,
real size under the `fullsize` marker), user model directories."""
from __future__ import annotations

import contextlib
import json
import shutil

import pytest
import torch
import yaml

from obliviate.cli import main
from obliviate.continual import Run
from obliviate.model import (Cond, check_pipeline_dir, concept_token_embedding, concept_token_span, encode, load_pipeline,
                             predict, select_parameters)
from obliviate.protocols import Catalog
from obliviate.testing import clip_bpe_path, save_random_pipeline
from obliviate.request import Request
from obliviate.trainer import Context

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

# ---------------------------------------------------------------- `obliviate run` on a user's model
TINY_VIT = dict(image_size=32, patch_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


@pytest.fixture(scope="module")
def judges(tmp_path_factory):
    """The user's two UnlearnCanvas judges: tiny ViTs saved in the timm naming of the official files."""
    from obliviate.protocols.unlearncanvas import build_vit_classifier, to_timm_state_dict, unlearncanvas_catalog

    root = tmp_path_factory.mktemp("user")
    p = unlearncanvas_catalog()
    judges = {}
    for seed, (name, labels) in enumerate((("style", p.styles), ("object", p.objects)), start=1):
        torch.manual_seed(seed)
        model = build_vit_classifier(len(labels), **TINY_VIT)
        judges[name] = root / f"{name}.pth"
        torch.save({"model_state_dict": to_timm_state_dict(model.state_dict())}, judges[name])
    return judges, p


def experiment(p, sequence: list[str], **extra) -> dict:
    return {
        "name": "user-model", "protocol": "unlearncanvas", "domain": "style", "sequence": sequence,
        "retained": p.retained_styles[:2], "partners": p.retained_objects[:1],
        "eval": {"seeds": [188], "probe_seeds": [1], "sampler": {"steps": 2, "guidance": 3.0, "scheduler": "ddim", "batch_size": 4}},
        "classifiers": {"arch": TINY_VIT}, "grid": {"prompts": 3},
        "variants": [{"name": "conabl+projection", "method": "conabl",
                      "method_settings": {"steps": 2, "anchor_images": 2, "batch_size": 2, "sampler_steps": 2},
                      "regularizers": [{"name": "projection", "mode": "update", "dedup": 1.0, "concepts": "Monet+Cold_Warm+Neon_Lines"}]}],
        **extra,
    }


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_obliviate_run_on_a_user_model(families, judges, family, tmp_path, capsys):
    """`obliviate run` on a user's pipeline directory: unlearn multi-token styles (Van_Gogh ->
    "Van Gogh", Pop_Art -> "Pop Art"), evaluate every step with the user's judges, write the
    report; one command, no change to the code. (A non-MiniCanvas model has no judge of its own:
    the UnlearnCanvas protocol judges it with the user's two classifier checkpoints.)"""
    judges, p = judges
    models = families
    sequence = ["Van_Gogh", "Pop_Art"] if family == "sd15" else ["Van_Gogh"]  # SDXL: one step (time)
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(yaml.safe_dump(experiment(p, sequence)))
    out = tmp_path / "out"
    code = main(["--quiet", "run", str(cfg), "--out", str(out), "--model", str(models[family]),
                 "--style-classifier", str(judges["style"]), "--object-classifier", str(judges["object"]), "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    rows = summary["variants"]["conabl+projection"]["steps"]
    assert [r["step"] for r in rows] == list(range(len(sequence) + 1)) and [r["concept"] for r in rows[1:]] == sequence
    assert all(r["drift_l2"] > 0 for r in rows[1:])
    for r in rows:
        assert all(r[k] is None or 0 <= r[k] <= 100 for k in ("UA", "RA_I", "RA_C"))
    # (sequence + 2 retained styles) x 1 partner x 1 seed images per evaluation, at the pipeline's own size
    assert summary["images_per_evaluation"] == len(sequence) + 2
    images = sorted((out / "cache" / "images").rglob("*.png"))
    assert images and any("Van_Gogh" in i.name for i in images)
    from PIL import Image

    assert Image.open(images[0]).size == (64, 64)
    # the projection protected the named multi-token styles (their tokens located in the BPE prompt)
    steps = sorted((out / "variants" / "conabl-projection" / "run" / "steps").glob("0*/step.json"))
    first = json.loads(steps[0].read_text())
    assert first["request"]["concept"] == "Van_Gogh"
    assert first["projection_concepts"][:3] == ["Monet", "Cold_Warm", "Neon_Lines"]
    from obliviate.continual import Run

    run = Run(out / "variants" / "conabl-projection" / "run")
    assert run.info["catalog"] == "unlearncanvas" and len(run.steps()) == len(sequence)
    assert "Van_Gogh" in (out / "report.md").read_text()


def test_minicanvas_protocol_on_a_user_model_is_refused(families, judges, tmp_path, capsys):
    """MiniCanvas's judge ships inside the MiniCanvas model: another model has none, which is
    said before any work (no output directory, no model loaded)."""
    models, (_, p) = families, judges
    raw = experiment(p, ["Van Gogh"], protocol="minicanvas")
    del raw["classifiers"], raw["retained"], raw["partners"]
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    code = main(["--quiet", "run", str(cfg), "--out", str(out), "--model", str(models["sd15"])])
    err = capsys.readouterr().err
    assert code == 2 and "protocol minicanvas" in err and "unlearncanvas" in err and "obliviate unlearn" in err
    assert not out.exists()


# ---------------------------------------------------------------- attacks with multi-token names
ATTACK_SETTINGS = {"paraphrase": {}, "inversion": {"steps": 2, "images": 2, "batch_size": 2},
                   "prefix": {"steps": 2, "images": 2, "batch_size": 2, "tokens": 2, "project": "true"},
                   "relearn": {"images": 2, "max_steps": 2, "check_every": 1, "batch_size": 2, "check_partners": 1}}


@pytest.mark.parametrize("name", list(ATTACK_SETTINGS))
def test_attacks_with_multi_token_names_on_a_clip_tokenizer(families, judges, name):
    """Each attack's prompts on CLIP's BPE tokenizer: the label Van_Gogh is written "Van Gogh"
    (van</w> gogh</w>, never van _ gogh), and a learned token (<inv>, <adv0>.., <new>) is one
    new id after the 49408 of the vocabulary, in the concept's place or before the prompt."""
    from obliviate.attacks import build_attack, load_target, run_attack
    from obliviate.evaluate.evaluator import load_protocol
    from obliviate.evaluate.sampler import SamplerConfig
    from obliviate.model import model_hash

    (style, obj), p = (judges[0]["style"], judges[0]["object"]), judges[1]
    protocol = load_protocol("unlearncanvas", style_classifier=style, object_classifier=obj, **TINY_VIT)
    model = families["sd15"]
    target = load_target(model, {}, ["Van_Gogh"], "style", protocol, p.retained_objects[:1], [188],
                         SamplerConfig(steps=2, guidance=3.0, scheduler="ddim"), base_hash=model_hash(model))
    seen = []  # (prompt, its token ids, vocabulary size) as the attacked model's tokenizer reads them
    generate = target.generate

    def recording(prompts, seeds):
        tok = target.pipe.tokenizer  # the attack's private copy, with its new tokens
        seen.extend((q, tok(q).input_ids, len(tok)) for q in prompts)
        return generate(prompts, seeds)

    target.generate = recording
    result = run_attack(target, build_attack(name, ATTACK_SETTINGS[name]))
    entry = result["concepts"]["Van_Gogh"]
    assert 0 <= entry["asr"] <= 100 and 0 <= entry["clean_accuracy"] <= 100
    van, gogh, style_word = target.pipe.tokenizer.convert_tokens_to_ids(["van</w>", "gogh</w>", "style</w>"])
    attacked = [(q, ids, n) for q, ids, n in seen if "<" in q or name == "paraphrase"]
    assert attacked and all("_" not in q for q, _, _ in seen)
    for q, ids, n in attacked:
        new = [i for i in ids if i >= 49408]
        if name in ("paraphrase", "prefix") or "Van Gogh" in q:
            k = ids.index(van)
            assert ids[k + 1] == gogh, q
        if name == "paraphrase":
            assert not new and n == 49408
        elif name == "inversion":
            assert q.count("<inv>") == 1 and new == [49408] and van not in ids and n == 49409
        elif name == "prefix":
            assert q.startswith("<adv0> <adv1> ") and ids[1:3] == [49408, 49409] and n == 49410
        elif "<new>" in q:  # relearn's yardstick: a never-shown word in the concept's place
            assert new == [49408] and van not in ids
    if name == "inversion":  # initialised from the word "art" (art</w>), not the word piece "art"
        tok = target.pipe.tokenizer
        assert tok.convert_tokens_to_ids("art</w>") != tok.convert_tokens_to_ids("art")
        row = target.pipe.text_encoder.get_input_embeddings().weight[tok.convert_tokens_to_ids("art</w>")]
        from obliviate.attacks.common import word_rows

        assert torch.equal(word_rows(target.pipe, ["art"])[0], row)
    if name == "prefix":
        assert len(entry["init_words"]) == 2 and len(entry["projected_words"]) == 2
    if name == "relearn":
        assert [s for s, _ in entry["curve"]] == [0, 1, 2] and entry["yardstick_curve"]
        assert any("<new>" in q for q, _, _ in seen)


def test_attacks_on_sdxl_paraphrase_runs_learned_token_attacks_are_refused(families, judges, tmp_path, capsys):
    """Paraphrase only prompts the pipeline, so it runs on SDXL; inversion, prefix and relearn
    train through one text encoder and are refused with a clear message (also by `obliviate run`
    before any training)."""
    from obliviate.attacks import build_attack, load_target, run_attack
    from obliviate.evaluate.evaluator import load_protocol
    from obliviate.evaluate.sampler import SamplerConfig
    from obliviate.model import model_hash

    (style, obj), p = (judges[0]["style"], judges[0]["object"]), judges[1]
    protocol = load_protocol("unlearncanvas", style_classifier=style, object_classifier=obj, **TINY_VIT)
    model = families["sdxl"]
    target = load_target(model, {}, ["Van_Gogh"], "style", protocol, p.retained_objects[:1], [188],
                         SamplerConfig(steps=2, guidance=3.0, scheduler="ddim"), base_hash=model_hash(model))
    assert 0 <= run_attack(target, build_attack("paraphrase", {"phrasings": "1"}))["mean_asr"] <= 100
    for name in ("inversion", "prefix", "relearn"):
        with pytest.raises(ValueError, match=f"attack '{name}' does not support SDXL.*use attack paraphrase"):
            run_attack(target, build_attack(name, ATTACK_SETTINGS[name]))
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(yaml.safe_dump(experiment(p, ["Van_Gogh"], attacks=["inversion:steps=1"])))
    out = tmp_path / "out"
    code = main(["--quiet", "run", str(cfg), "--out", str(out), "--model", str(model), "--style-classifier", str(style),
                 "--object-classifier", str(obj)])
    assert code == 2 and "does not support SDXL" in capsys.readouterr().err and not out.exists()


def test_full_size_configs_are_the_published_architectures():
    """size="full" reproduces the published parameter counts of each family, SDXL included (built
    on the meta device: no memory; full-size SDXL weights are 13.9 GB in float32, never built)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from obliviate.testing import text_configs, unet_config, vae_config

    published = {"sd15": (859_520_964, [123_060_480]), "sd21": (865_910_724, [340_387_840]),
                 "sdxl": (2_567_463_684, [123_060_480, 694_659_840])}

    def count(m):
        return sum(p.numel() for p in m.parameters())

    with torch.device("meta"):
        for family, (unet, encoders) in published.items():
            configs = text_configs(family, "full")
            models = [CLIPTextModel(configs[0])] + [CLIPTextModelWithProjection(c) for c in configs[1:]]
            assert count(UNet2DConditionModel(**unet_config(family, "full"))) == unet, family
            assert [count(m) for m in models] == encoders, family
            assert count(AutoencoderKL(**vae_config(family, "full"))) == 83_653_863
            # the lower sampling resolution of the full-size tests changes no weight
            assert count(UNet2DConditionModel(**unet_config(family, "full", latent_size=8))) == unet


# ---------------------------------------------------------------- real size (marked)
# The published weight shapes at a 64x64 sample resolution (8x8 latents): no weight's shape
# depends on the resolution, and one CPU training step of the 860M-parameter UNet takes minutes
# at 512-768 px against 5-8 CPU-seconds at 64 px (docs/results/bench-realsize*.json).
FULL_UNET_PARAMETERS = {"sd15": 859_520_964, "sd21": 865_910_724}  # the published SD 1.5 / SD 2.1 UNets


@pytest.mark.fullsize
@pytest.mark.parametrize("family", ["sd15", "sd21"])
def test_fullsize_every_method_one_step(family, tmp_path, catalog_run):
    """SD 1.5 / SD 2.1 shapes (768/1024-wide text encoders, 77 tokens, f=8 VAE, 860M-parameter
    UNet, v-prediction for 2.1): one short request of each method with multi-token names, the
    export loads with plain diffusers and samples through the evaluation sampler."""
    try:
        fullsize_requests_and_export(family, tmp_path)
    finally:  # 9-10 GB of model files per family: not left for pytest's retention of temporary directories
        for big in (tmp_path / family, tmp_path / "exported"):
            shutil.rmtree(big, ignore_errors=True)


def fullsize_requests_and_export(family, tmp_path):
    import gc

    from diffusers import StableDiffusionPipeline
    from safetensors import safe_open

    from obliviate.evaluate.sampler import SamplerConfig, generate

    model = save_random_pipeline(tmp_path / family, family, "full", latent_size=8)
    one = {"steps": "1", "batch_size": "1"}
    run = Run.open_or_create(tmp_path / "run", model)
    requests = [
        Request("Van Gogh", "style", "conabl", {**one, "anchor_images": "1", "sampler_steps": "1"}, [("projection", {})]),
        Request("Pop Art", "style", "esd", {**one, "ddim_steps": "1"}),
        Request("golden retriever", "object", "sculpmem", {**one, "anchor_images": "1", "sampler_steps": "1", "warmup": "1"}),
        Request("Claude Monet", "style", "erasediff", {**one, "forget_images": "1", "remain_images": "1", "sampler_steps": "1"}),
        Request("Art Nouveau", "style", "uce", {"anchor": "previous"}),  # after trained steps: from the current weights
    ]
    for r in requests:
        meta = run.unlearn(r, quiet=True)
        assert meta["drift"]["parent"]["l2"] > 0, r.method
        gc.collect()  # one 4-5 GB pipeline alive at a time
    out = run.export(tmp_path / "exported")
    gc.collect()
    plain = StableDiffusionPipeline.from_pretrained(out, local_files_only=True, safety_checker=None)
    assert sum(p.numel() for p in plain.unet.parameters()) == FULL_UNET_PARAMETERS[family]
    assert plain.text_encoder.config.hidden_size == {"sd15": 768, "sd21": 1024}[family]
    assert plain.unet.config.cross_attention_dim == plain.text_encoder.config.hidden_size
    assert plain.tokenizer.model_max_length == 77 and plain.vae_scale_factor == 8
    assert plain.scheduler.config.prediction_type == {"sd15": "epsilon", "sd21": "v_prediction"}[family]
    # the exported UNet is the base plus the five deltas (read tensor by tensor, not a second model)
    delta = run.cumulative_delta()
    exported = dict(plain.unet.named_parameters())
    with safe_open(str(model / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as base:
        assert all(torch.equal(exported[n], base.get_tensor(n) + d) for n, d in delta.items())
    images = generate(plain, ["a painting of a tree in Van Gogh style"] * 2, [3, 3], SamplerConfig(steps=2, guidance=3.0, batch_size=2))
    assert images[0].shape == (64, 64, 3) and (images[0] == images[1]).all()
