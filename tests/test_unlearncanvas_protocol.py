"""UnlearnCanvas protocol data and judge loading (tiny ViTs, CPU, no downloads)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

try:
    import obliviate  # noqa: F401
except ImportError:  # running from a checkout without an installed package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from PIL import Image
from safetensors.torch import save_file

from obliviate.protocols.unlearncanvas import (
    UnlearnCanvasJudge,
    build_vit_classifier,
    load_classifier,
    unlearncanvas_catalog,
    prompt_name,
    to_timm_state_dict,
)

TINY = dict(image_size=32, patch_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64)


# ------------------------------------------------------------------------------------------- protocol
def test_protocol_lists():
    p = unlearncanvas_catalog()
    assert len(p.styles) == 51 and len(set(p.styles)) == 51
    assert len(p.objects) == 20 and len(set(p.objects)) == 20
    assert p.styles[0] == "Abstractionism" and p.styles[-1] == "Winter"
    assert p.styles.index("Seed_Images") == 38
    assert p.objects[0] == "Architectures" and p.objects[-1] == "Waterfalls"
    assert len(p.style_order) == 12 and len(p.retained_styles) == 12
    assert len(p.object_order) == 12 and len(p.retained_objects) == 8
    assert p.style_order[0] == "Abstractionism" and p.style_order[-1] == "Vibrant_Flow"
    assert p.object_order[0] == "Bears" and p.object_order[-1] == "Waterfalls"
    assert not set(p.style_order) & set(p.retained_styles)
    assert not set(p.object_order) & set(p.retained_objects)
    for name in p.style_order + p.retained_styles:
        assert name in p.styles, name
    for name in p.object_order + p.retained_objects + list(p.anchors) + list(p.anchors.values()):
        assert name in p.objects, name
    assert set(p.anchors) == set(p.object_order)
    assert set(p.anchors.values()) <= set(p.retained_objects)
    assert p.anchors["Bears"] == "Horses" and p.anchors["Frogs"] == "Butterfly"
    assert p.anchors["Sandwiches"] == "Flowers" and p.anchors["Towers"] == "Trees"
    assert (p.resolution, p.sampler["steps"], p.sampler["guidance"]) == (512, 100, 9.0)
    assert p.seeds == [188, 288, 588, 688, 888]
    assert p.judge_settings["image_size"] == 224 and p.judge_settings["mean"] == [0.5] * 3 and p.judge_settings["std"] == [0.5] * 3


def test_prompt_names():
    p = unlearncanvas_catalog()
    assert prompt_name("Van_Gogh") == "Van Gogh" and prompt_name("Red_Blue_Ink") == "Red Blue Ink"
    assert p.prompt("Van_Gogh", "Dogs") == "A Dogs image in Van Gogh style."
    assert p.domain_of("Cold_Warm") == "style" and p.domain_of("Sea") == "object" and p.domain_of("x") is None


# ------------------------------------------------------------------------------------------- classifiers
def _tiny(num_classes: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_vit_classifier(num_classes, **TINY)
    with torch.no_grad():  # every tensor random, so a swapped or mis-split name cannot go unnoticed
        for prm in model.parameters():
            prm.copy_(torch.randn_like(prm) * 0.3)
    return model.eval()


def _timm_reference_forward(sd: dict[str, torch.Tensor], x: torch.Tensor, heads: int, eps: float = 1e-6):
    """What timm's VisionTransformer (global_pool='token') computes, written against timm key names."""
    x = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=TINY["patch_size"])
    x = x.flatten(2).transpose(1, 2)
    b, n, d = x.shape
    x = torch.cat([sd["cls_token"].expand(b, -1, -1), x], dim=1) + sd["pos_embed"]
    n, hd = n + 1, d // heads
    i = 0
    while f"blocks.{i}.norm1.weight" in sd:
        p = f"blocks.{i}."
        h = F.layer_norm(x, (d,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps)
        qkv = F.linear(h, sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"])
        q, k, v = qkv.reshape(b, n, 3, heads, hd).permute(2, 0, 3, 1, 4).unbind(0)
        a = torch.softmax(q @ k.transpose(-2, -1) * hd ** -0.5, dim=-1) @ v
        x = x + F.linear(a.transpose(1, 2).reshape(b, n, d), sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
        h = F.layer_norm(x, (d,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps)
        h = F.linear(F.gelu(F.linear(h, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"])),
                     sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])
        x = x + h
        i += 1
    x = F.layer_norm(x, (d,), sd["norm.weight"], sd["norm.bias"], eps)
    return F.linear(x[:, 0], sd["head.weight"], sd["head.bias"])


def _legacy_names(sd):
    """transformers < 5 naming (vit.encoder.layer.N.attention.attention.query ...)."""
    table = {"attention.q_proj.": "attention.attention.query.", "attention.k_proj.": "attention.attention.key.",
             "attention.v_proj.": "attention.attention.value.", "attention.o_proj.": "attention.output.dense.",
             "mlp.fc1.": "intermediate.dense.", "mlp.fc2.": "output.dense."}
    out = {}
    for k, v in sd.items():
        if k.startswith("vit.layers."):
            _, _, idx, rest = k.split(".", 3)
            for new, old in table.items():
                if rest.startswith(new):
                    rest = old + rest[len(new):]
            k = f"vit.encoder.layer.{idx}.{rest}"
        out[k] = v
    return out


@pytest.mark.parametrize("num_classes", [51, 20])
def test_load_classifier_formats_give_identical_logits(tmp_path, num_classes):
    model = _tiny(num_classes, seed=num_classes)
    sd = {k: v.clone().contiguous() for k, v in model.state_dict().items()}
    timm_sd = to_timm_state_dict(sd)
    assert "blocks.0.attn.qkv.weight" in timm_sd and timm_sd["head.weight"].shape[0] == num_classes
    assert not any("q_proj" in k for k in timm_sd)

    save_file(sd, str(tmp_path / "hf.safetensors"))
    torch.save(timm_sd, tmp_path / "timm.pt")
    # the official release: {"model_state_dict": timm state dict, ...}, here also under DDP's "module."
    torch.save({"model_state_dict": {"module." + k: v for k, v in timm_sd.items()}, "epoch": 3},
               tmp_path / "wrapped.pth")
    torch.save({"state_dict": _legacy_names(sd)}, tmp_path / "legacy.bin")

    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref = model(pixel_values=x).logits
        outs = {name: load_classifier(tmp_path / name, num_classes, **TINY)(pixel_values=x).logits
                for name in ("hf.safetensors", "timm.pt", "wrapped.pth", "legacy.bin")}
        timm_ref = _timm_reference_forward(timm_sd, x, TINY["num_attention_heads"])
    for name, out in outs.items():
        assert torch.equal(out, ref), name
    # the converted weights compute what timm itself would compute from the timm-named tensors
    torch.testing.assert_close(timm_ref, ref, atol=1e-5, rtol=1e-5)


def test_loaded_classifier_is_frozen_eval_float32(tmp_path):
    save_file(_tiny(20, 0).state_dict(), str(tmp_path / "c.safetensors"))
    m = load_classifier(tmp_path / "c.safetensors", 20, **TINY)
    assert not m.training
    assert all(not p.requires_grad and p.dtype == torch.float32 and p.device.type == "cpu" for p in m.parameters())


def test_wrong_class_count_is_a_clear_error(tmp_path):
    path = tmp_path / "style.safetensors"
    save_file(_tiny(51, 0).state_dict(), str(path))
    with pytest.raises(ValueError) as e:
        load_classifier(path, 20, **TINY)
    msg = str(e.value)
    assert "style.safetensors" in msg and "51" in msg and "20" in msg
    torch.save(to_timm_state_dict(_tiny(20, 0).state_dict()), tmp_path / "obj.pt")
    with pytest.raises(ValueError, match=r"obj\.pt.*20 classes, expected 51"):
        load_classifier(tmp_path / "obj.pt", 51, **TINY)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        load_classifier(tmp_path / "nope.safetensors", 51, **TINY)
    for name in ("bad.safetensors", "bad.pt", "bad.pth"):
        (tmp_path / name).write_bytes(b"\x00garbage, not a checkpoint" * 10)
        with pytest.raises(ValueError, match=name.replace(".", r"\.")):
            load_classifier(tmp_path / name, 51, **TINY)
    # a truncated real checkpoint
    good = tmp_path / "good.safetensors"
    save_file(_tiny(51, 0).state_dict(), str(good))
    (tmp_path / "cut.safetensors").write_bytes(good.read_bytes()[:-100])
    with pytest.raises(ValueError, match=r"cut\.safetensors"):
        load_classifier(tmp_path / "cut.safetensors", 51, **TINY)
    # not a state dict at all
    torch.save({"epoch": 1, "lr": 0.1}, tmp_path / "meta.pt")
    with pytest.raises(ValueError, match=r"meta\.pt.*no state dict"):
        load_classifier(tmp_path / "meta.pt", 51, **TINY)


def test_strict_keys_and_shapes(tmp_path):
    sd = to_timm_state_dict(_tiny(20, 0).state_dict())
    dropped = dict(sd)
    dropped.pop("blocks.1.mlp.fc2.weight")
    dropped["blocks.0.ls1.gamma"] = torch.ones(32)  # LayerScale: not part of vit_large_patch16_224
    torch.save(dropped, tmp_path / "partial.pt")
    with pytest.raises(ValueError) as e:
        load_classifier(tmp_path / "partial.pt", 20, **TINY)
    msg = str(e.value)
    assert "partial.pt" in msg and "missing keys" in msg and "vit.layers.1.mlp.fc2.weight" in msg
    assert "unexpected keys" in msg and "blocks.0.ls1.gamma" in msg
    # right names, wrong architecture (ViT-L/16 sizes requested for a tiny checkpoint -> shape error, no crash)
    torch.save(sd, tmp_path / "tiny.pt")
    with pytest.raises(ValueError, match=r"tiny\.pt.*wrong shape"):
        load_classifier(tmp_path / "tiny.pt", 20, **{**TINY, "hidden_size": 64})
    with pytest.raises(ValueError, match=r"tiny\.pt.*missing keys"):
        load_classifier(tmp_path / "tiny.pt", 20, **{**TINY, "num_hidden_layers": 3})


def test_judge_predicts_labels(tmp_path):
    p = unlearncanvas_catalog()
    style, obj = _tiny(51, 1), _tiny(20, 2)
    save_file(style.state_dict(), str(tmp_path / "style.safetensors"))
    torch.save({"model_state_dict": to_timm_state_dict(obj.state_dict())}, tmp_path / "object.pth")
    judge = UnlearnCanvasJudge(tmp_path / "style.safetensors", tmp_path / "object.pth", device="cpu", **TINY)

    rng = np.random.default_rng(0)
    arrays = rng.integers(0, 256, size=(3, 48, 40, 3), dtype=np.uint8)
    pil = [Image.fromarray(a) for a in arrays]
    pil[1] = pil[1].convert("RGBA")  # non-RGB input is converted

    out = judge.predict(pil)
    assert set(out) == {"style", "object"}
    assert len(out["style"]) == 3 and len(out["object"]) == 3
    assert all(s in p.styles for s in out["style"]) and all(o in p.objects for o in out["object"])
    assert judge.predict(arrays) == out  # a uint8 (N, H, W, 3) array gives the same answer

    # preprocessing: resized to image_size, mean/std 0.5 -> range [-1, 1]; labels are the argmax of each model
    x = judge.preprocess(arrays)
    assert x.shape == (3, 3, 32, 32) and x.min() >= -1.0 and x.max() <= 1.0
    manual = torch.stack([torch.from_numpy(np.asarray(im.convert("RGB").resize((32, 32), Image.Resampling.BILINEAR)))
                          for im in pil]).permute(0, 3, 1, 2).float() / 255.0 * 2 - 1
    torch.testing.assert_close(x, manual)
    with torch.no_grad():
        assert out["style"] == [p.styles[i] for i in style(pixel_values=x).logits.argmax(-1).tolist()]
        assert out["object"] == [p.objects[i] for i in obj(pixel_values=x).logits.argmax(-1).tolist()]
    with pytest.raises(ValueError):
        judge.predict(arrays.astype(np.float32))
