"""LoRA adapters as a parameter group: ledger, regularizers on A and B, export to plain diffusers."""
import json

import pytest
import torch

from conftest import FAST_CONABL
from obliviate.cli import main
from obliviate.continual import Run, build_hooks
from obliviate.lora import dense_step, read_step
from obliviate.model import concept_token_embedding, load_pipeline
from obliviate.protocols import minicanvas_catalog
from obliviate.request import Request

LORA = "lora:r=2,targets=kv-xattn"


def request(concept="fire", regs=(), group=LORA, method="conabl", **settings):
    merged = {**FAST_CONABL, **settings} if method == "conabl" else settings
    return Request(concept=concept, domain="style", method=method, method_settings=merged, regularizers=list(regs),
                   param_group=group)


def test_bad_groups_and_unsupported_regularizers_are_refused_before_work():
    for group, needle in [("lora:r=0", "setting r=0 is out of range"), ("lora:targets=full", "targets"), ("lora:rank=4", "valid settings"),
                          ("kv", "valid groups")]:
        with pytest.raises(ValueError, match=needle):
            build_hooks(request(group=group))
    with pytest.raises(ValueError, match=r"selft.*kv-xattn.*with LoRA use l1sp, l2sp, projection, replay"):
        build_hooks(request(regs=[("selft", {})]))
    with pytest.raises(ValueError, match="sculpmem.*kv-xattn"):
        build_hooks(request(method="sculpmem"))


def test_stacked_adapters_ledger_sizes_and_exact_dense_change(random_model, tmp_path):
    model = random_model
    run = Run.open_or_create(tmp_path / "run", model)
    m1 = run.unlearn(request("fire"), quiet=True)
    m2 = run.unlearn(request("ice"), quiet=True)
    tensors, info = read_step(f"{m1['dir']}/delta.safetensors")
    assert info["format"] == "lora" and info["rank"] == "2"
    assert all(".lora_A." in n or ".lora_B." in n for n in tensors)
    a = m1["adapter"]
    assert a["adapter_parameters"] == sum(v.numel() for v in tensors.values())
    assert a["adapter_parameters"] < a["full_delta_parameters"] and a["adapter_bytes"] > 0
    dense = dense_step(f"{m1['dir']}/delta.safetensors")
    assert all(n.endswith(("to_k.weight", "to_v.weight")) for n in dense)
    assert torch.linalg.matrix_rank(next(iter(dense.values())).double(), rtol=1e-5) <= 2
    assert m2["drift"]["parent"]["l2"] > 0
    # the run's model is base + sum of both adapters' B A
    base = load_pipeline(model, device="cpu")
    pipe = run.load(device="cpu")
    total = run.cumulative_delta()
    name = next(iter(total))
    got = dict(pipe.unet.named_parameters())[name] - dict(base.unet.named_parameters())[name]
    assert torch.allclose(got, total[name], atol=1e-6)
    expected = dense[name] + dense_step(f"{m2['dir']}/delta.safetensors")[name]
    assert torch.allclose(total[name], expected, atol=1e-6)


def test_projection_on_A_keeps_protected_keys_values_exactly(random_model, tmp_path):
    model = random_model
    protected = "ice+ocean+sunset"
    run = Run.open_or_create(tmp_path / "run", model)
    meta = run.unlearn(request(regs=[("projection", {"mode": "update", "concepts": protected})]), quiet=True)
    pipe = load_pipeline(model, device="cpu")
    cat = minicanvas_catalog()
    C = torch.stack([concept_token_embedding(pipe, cat.single(c, "style"), c) for c in protected.split("+")], 1)
    dense = dense_step(f"{meta['dir']}/delta.safetensors")
    ratio = max(float((d @ C).norm() / (d.norm() * C.norm())) for d in dense.values())
    assert ratio < 1e-5 and meta["drift"]["parent"]["l2"] > 0
    # without the projection the same request changes the protected keys/values
    free = Run.open_or_create(tmp_path / "free", model).unlearn(request(), quiet=True)
    dense = dense_step(f"{free['dir']}/delta.safetensors")
    assert max(float((d @ C).norm() / (d.norm() * C.norm())) for d in dense.values()) > 1e-3


def test_l2sp_on_BA_shrinks_the_change(random_model, tmp_path):
    model = random_model
    drifts = []
    for weight in (0, 1e5):
        regs = [("l2sp", {"weight": weight, "reference": "pretrained"})]
        run = Run.open_or_create(tmp_path / f"w{weight}", model)
        run.unlearn(request("fire", regs=regs, lr="2e-3"), quiet=True)
        drifts.append(run.unlearn(request("ice", regs=regs, lr="2e-3"), quiet=True)["drift"]["pretrained"]["l2"])
    assert drifts[1] < 0.7 * drifts[0]


def test_export_lora_loads_in_plain_diffusers_and_matches_the_merged_model(random_model, tmp_path):
    from diffusers import StableDiffusionPipeline

    model = random_model
    run_dir = tmp_path / "run"
    run = Run.open_or_create(run_dir, model)
    run.unlearn(request("fire"), quiet=True)
    run.unlearn(request("ice", group="lora:r=3,alpha=6,targets=kv-xattn"), quiet=True)
    assert main(["--quiet", "export", str(run_dir), "--format", "lora", "--out", str(tmp_path / "lora")]) == 0
    assert main(["--quiet", "export", str(run_dir), "--format", "pipeline", "--out", str(tmp_path / "pipe")]) == 0
    plain = StableDiffusionPipeline.from_pretrained(model, safety_checker=None, local_files_only=True)
    plain.load_lora_weights(tmp_path / "lora")
    merged = StableDiffusionPipeline.from_pretrained(tmp_path / "pipe", safety_checker=None, local_files_only=True)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    x = torch.randn((1, plain.unet.config.in_channels, plain.unet.config.sample_size, plain.unet.config.sample_size),
                    generator=torch.Generator().manual_seed(0))
    emb = torch.randn(1, 8, plain.unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = plain.unet(x, 10, encoder_hidden_states=emb).sample
        b = merged.unet(x, 10, encoder_hidden_states=emb).sample
        base = StableDiffusionPipeline.from_pretrained(model, safety_checker=None, local_files_only=True).unet(
            x, 10, encoder_hidden_states=emb).sample
    assert torch.allclose(a, b, atol=1e-4)
    assert (a - base).abs().max() > 1e-4  # the adapters do change the model


def test_export_lora_refuses_full_delta_runs(random_model, tmp_path, capsys):
    model = random_model
    run = Run.open_or_create(tmp_path / "run", model)
    run.unlearn(request("fire", group="kv-xattn"), quiet=True)
    assert main(["--quiet", "export", str(tmp_path / "run"), "--format", "lora", "--out", str(tmp_path / "x")]) == 2
    assert "stores a full delta" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_keep_training_one_adapter_telescopes_and_exports_the_last(random_model, tmp_path):
    """The measured alternative (continual=keep): each step stores the adapter it ended with and
    the one it started from; the model is base + s B_T A_T, and export writes that one adapter."""
    model = random_model
    keep = "lora:r=2,targets=kv-xattn,continual=keep"
    with pytest.raises(ValueError, match="continual=stack"):
        build_hooks(request(group=keep, regs=[("projection", {})]))
    run = Run.open_or_create(tmp_path / "run", model)
    run.unlearn(request("fire", group=keep), quiet=True)
    m2 = run.unlearn(request("ice", group=keep), quiet=True)
    tensors, _ = read_step(f"{m2['dir']}/delta.safetensors")
    last = {n: v for n, v in tensors.items() if not n.startswith("previous.")}
    assert m2["adapter"]["adapter_parameters"] == sum(v.numel() for v in last.values())
    total = run.cumulative_delta()
    from obliviate.lora import densify

    for name, w in densify(last, 1.0).items():  # telescoping: steps 1 + 2 = the last adapter alone
        assert torch.allclose(total[name], w, atol=1e-6)
    assert main(["--quiet", "export", str(tmp_path / "run"), "--format", "lora", "--out", str(tmp_path / "lora")]) == 0
    from safetensors.torch import load_file

    exported = load_file(str(tmp_path / "lora" / "pytorch_lora_weights.safetensors"))
    assert {v.shape[0] for k, v in exported.items() if "lora_A" in k or "lora.down" in k} == {2}
