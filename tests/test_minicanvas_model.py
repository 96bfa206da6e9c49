"""The bundled MiniCanvas model and the quick build."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from obliviate.minicanvas import world
from obliviate.minicanvas.classifiers import MiniCanvasJudge


def test_tokenizer_round_trip(bundled_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(bundled_model / "tokenizer")
    text = world.prompt("galaxy", "arrow")
    ids = tok(text).input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert tok.unk_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True) == text.lower()
    assert len(tok(text, padding="max_length", max_length=tok.model_max_length).input_ids) == tok.model_max_length


def test_bundled_pipeline_loads_with_plain_diffusers(bundled_model):
    # a fresh interpreter that never imports obliviate
    code = (
        "import sys, torch; from diffusers import StableDiffusionPipeline;"
        f"p = StableDiffusionPipeline.from_pretrained({str(bundled_model)!r}, local_files_only=True);"
        "p.set_progress_bar_config(disable=True);"
        "im = p('A star image in fire style', num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type='np').images;"
        "print(tuple(im.shape))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "(1, 32, 32, 3)"


def test_bundled_assets_are_small(bundled_model):
    total = sum(p.stat().st_size for p in bundled_model.rglob("*") if p.is_file())
    assert total <= 25 * 2**20
    assert not list(bundled_model.rglob("*.bin")) and list(bundled_model.rglob("*.safetensors"))


def test_classifiers_beat_chance_on_fresh_renders(bundled_model):
    judge = MiniCanvasJudge(bundled_model)
    triples = [(s, o, 900_000 + i) for i, (s, o) in enumerate((s, o) for s in world.STYLE_NAMES for o in world.OBJECT_NAMES)]
    pred = judge.predict(world.render_array(triples))
    style_acc = np.mean([p == t[0] for p, t in zip(pred["style"], triples)])
    object_acc = np.mean([p == t[1] for p, t in zip(pred["object"], triples)])
    assert style_acc > 0.9 and object_acc > 0.9  # chance: 1/16 and 1/12


def test_quick_build_runs_end_to_end_and_its_loss_falls(quick_model):
    path, info = quick_model
    for part in ("model_index.json", "unet", "vae", "text_encoder", "tokenizer", "scheduler", "classifiers"):
        assert (path / part).exists()
    assert info["unet_loss_last"] < 0.8 * info["unet_loss_first"]
    saved = json.loads((path / "minicanvas.json").read_text())
    assert saved["catalog"]["styles"] == list(world.STYLE_NAMES)


def test_build_refuses_a_non_empty_directory(tmp_path):
    import pytest

    from obliviate.minicanvas.build import build

    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        build(tmp_path, quick=True, quiet=True)
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_the_untrained_model_stands_in_for_the_quick_one(random_model, quick_model):
    """Tests of the machinery use random_model: it must be the quick model's architecture,
    tokenizer, judge and catalog, only untrained."""
    from obliviate.protocols import catalog_for_model

    quick, _ = quick_model
    for part in ("unet", "vae", "text_encoder"):
        a, b = (json.loads((m / part / "config.json").read_text()) for m in (random_model, quick))
        drop = {"_name_or_path", "scaling_factor", "transformers_version", "_diffusers_version"}
        assert {k: v for k, v in a.items() if k not in drop} == {k: v for k, v in b.items() if k not in drop}, part
    vocab = [json.loads((m / "tokenizer" / "tokenizer.json").read_text())["model"]["vocab"] for m in (random_model, quick)]
    assert vocab[0] == vocab[1]
    assert catalog_for_model(random_model).name == "minicanvas"
    pred = MiniCanvasJudge(random_model).predict(np.zeros((2, 32, 32, 3), np.uint8))
    assert set(pred) == {"style", "object"} and all(p in world.STYLE_NAMES for p in pred["style"])


def test_family_soft_targets_give_neighbours_partial_credit():
    import torch

    from obliviate.minicanvas.build import FAMILY_CREDIT, _soft_targets

    groups = torch.tensor([0, 0, 1, 1, 1])
    target = _soft_targets(torch.tensor([0, 2]), torch.arange(5), groups)
    assert torch.allclose(target.sum(1), torch.ones(2))
    assert target[0, 0] > target[0, 1] > 0 and target[0, 2:].eq(0).all()  # itself > its neighbour > the rest
    assert torch.isclose(target[1, 3] / target[1, 2], torch.tensor(FAMILY_CREDIT))


def test_trained_text_states_keep_their_identity_across_contexts(quick_model, random_model):
    """The 1.1 text encoder's consistency term: a concept's state inside the prompt template is
    close to its state after the neutral prefix, far more than at random init."""
    import types

    from transformers import CLIPTextModel, PreTrainedTokenizerFast

    from obliviate.evaluate.minicanvas_card import text_state_stability
    from obliviate.protocols import minicanvas_catalog

    def stability(path):
        pipe = types.SimpleNamespace(tokenizer=PreTrainedTokenizerFast.from_pretrained(path / "tokenizer"),
                                     text_encoder=CLIPTextModel.from_pretrained(path / "text_encoder").eval())
        return text_state_stability(pipe, minicanvas_catalog())

    trained, untrained = stability(quick_model[0]), stability(random_model)
    assert set(trained["per_concept"]) == set(world.STYLE_NAMES) | set(world.OBJECT_NAMES)
    assert trained["mean"] > 0.85 and trained["mean"] > untrained["mean"] + 0.2


def test_the_unet_trains_on_the_reference_style_phrasings_conabl_uses():
    """1.2: the builder's extra caption kinds are, word for word, the prompts ConAbl's reference
    recipe trains a style request on, and the tokenizer knows every word of them."""
    from obliviate.methods.conabl import style_phrasings
    from obliviate.minicanvas import world
    from obliviate.minicanvas.build import CAPTION_KINDS, UNK, build_tokenizer, caption_for

    for si, oi in [(0, 0), (5, 7), (15, 11)]:
        s, o = world.STYLE_NAMES[si], world.OBJECT_NAMES[oi]
        assert [caption_for(si, oi, 4), caption_for(si, oi, 5)] == style_phrasings(s, world.OBJECT_ONLY_TEMPLATE.format(object=o))
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        tok = build_tokenizer(Path(d))
    captions = {caption_for(si, oi, k) for si in range(len(world.STYLE_NAMES)) for oi in range(len(world.OBJECT_NAMES))
                for k in range(CAPTION_KINDS)}
    unk = tok.convert_tokens_to_ids(UNK)
    assert all(unk not in tok(c).input_ids for c in captions)


def test_caption_mix_adds_the_reference_phrasings_and_zero_draws_the_old_mix():
    from dataclasses import replace

    from obliviate.minicanvas.build import FULL, draw_caption_kinds

    old = torch.bucketize(torch.rand(20_000, generator=torch.Generator().manual_seed(3)), torch.tensor([0.7, 0.8, 0.9]))
    new0 = draw_caption_kinds(20_000, replace(FULL, reference_phrasings=0.0), torch.Generator().manual_seed(3))
    assert torch.equal(old, new0)  # 1.1's kinds, draw for draw
    kinds = draw_caption_kinds(20_000, FULL, torch.Generator().manual_seed(3))
    share = torch.bincount(kinds, minlength=6).float() / len(kinds)
    expected = torch.tensor([0.7 - FULL.reference_phrasings, 0.1, 0.1, 0.1, FULL.reference_phrasings / 2, FULL.reference_phrasings / 2])
    assert FULL.reference_phrasings > 0
    assert torch.allclose(share, expected, atol=0.015)
