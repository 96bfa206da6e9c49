"""The run ledger: exact round trips, resume after a kill, refusals, export."""
import json
import subprocess
import sys

import pytest
import torch

from conftest import FAST_CONABL
from obliviate.continual import Run
from obliviate.delta import load_delta, save_delta
from obliviate.request import Request


def req(concept="fire", regs=(("l2sp", {"weight": "1"}),), **extra):
    return Request(concept, "style", "conabl", {**FAST_CONABL, "steps": "10", **extra}, list(regs), seed=3)


# replay draws its batches from its own generator: a resume must restore that too
WITH_REPLAY = (("l2sp", {"weight": "1"}), ("replay", {"concepts": "ice+ocean", "images_per_concept": "2", "batch_size": "2"}))


def test_delta_round_trip_is_exact(tmp_path):
    delta = {"a.weight": torch.randn(5, 3), "b.weight": torch.randn(2, 2) * 1e-8}
    save_delta(tmp_path / "d.safetensors", delta)
    back = load_delta(tmp_path / "d.safetensors")
    assert all(torch.equal(back[k], delta[k]) for k in delta)


def test_step_files_and_model_reconstruction(random_model, tmp_path):
    model = random_model
    run = Run.open_or_create(tmp_path / "run", model)
    m1 = run.unlearn(req("fire"), quiet=True)
    m2 = run.unlearn(req("ice"), quiet=True)
    assert [s["step"] for s in run.steps()] == [1, 2]
    for m in (m1, m2):
        meta = json.loads((tmp_path / "run" / "steps" / m["dir"].split("/")[-1] / "step.json").read_text())
        for key in ("request", "config", "base_hash", "parent_hash", "delta_hash", "timings", "drift"):
            assert key in meta
    assert m2["parent_hash"] == m1["delta_hash"]
    # model after step 2 = base + delta1 + delta2 (to float32 rounding of the sum order)
    pipe = run.load(2, device="cpu")
    base = Run(tmp_path / "run").load(0, device="cpu")
    d1, d2 = (load_delta(f"{m['dir']}/delta.safetensors") for m in (m1, m2))
    params, base_params = dict(pipe.unet.named_parameters()), dict(base.unet.named_parameters())
    for n in d1:
        assert torch.allclose(params[n], base_params[n] + d1[n] + d2[n], rtol=0, atol=1e-6)
    # cumulative drift recorded against the pretrained model
    total = {n: d1[n] + d2[n] for n in d1}
    l2 = sum(float((v.double() ** 2).sum()) for v in total.values()) ** 0.5
    assert m2["drift"]["pretrained"]["l2"] == pytest.approx(l2, rel=1e-6)
    # a completed step is never redone
    again = run.unlearn(req("fire"), quiet=True)
    assert again["step"] == 1 and len(run.steps()) == 2


def test_killed_request_resumes_to_the_same_delta(random_model, tmp_path):
    model = random_model
    straight = Run.open_or_create(tmp_path / "straight", model).unlearn(req(regs=WITH_REPLAY), quiet=True, checkpoint_every=4)
    run = Run.open_or_create(tmp_path / "killed", model)
    out = run.unlearn(req(regs=WITH_REPLAY), quiet=True, checkpoint_every=4, stop_after=7)  # dies after step 7; checkpoint at 4
    assert out["interrupted"] and run.steps() == []
    resumed = run.unlearn(req(regs=WITH_REPLAY), quiet=True, checkpoint_every=4)
    a = load_delta(f"{straight['dir']}/delta.safetensors")
    b = load_delta(f"{resumed['dir']}/delta.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not list((tmp_path / "killed" / "steps").glob(".*"))


def test_refusals(random_model, tmp_path):
    model = random_model
    run = Run.open_or_create(tmp_path / "run", model)
    meta = run.unlearn(req(), quiet=True)
    delta_path = tmp_path / "run" / "steps" / "001-fire" / "delta.safetensors"
    good = delta_path.read_bytes()
    delta_path.write_bytes(good[:50])
    with pytest.raises(ValueError, match="does not match the hash|corrupt"):
        run.load(device="cpu")
    delta_path.unlink()
    with pytest.raises(FileNotFoundError, match="missing"):
        run.load(device="cpu")
    delta_path.write_bytes(good)
    step_json = delta_path.parent / "step.json"
    meta = json.loads(step_json.read_text())
    meta["base_hash"] = "0" * 64
    step_json.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="another base model"):
        run.load(device="cpu")
    with pytest.raises(ValueError, match="valid steps"):
        run.cumulative_delta(5)


def test_export_loads_with_plain_diffusers(random_model, tmp_path):
    model = random_model
    run = Run.open_or_create(tmp_path / "run", model)
    run.unlearn(req(), quiet=True)
    out = run.export(tmp_path / "exported")
    code = (
        "import torch; from diffusers import StableDiffusionPipeline;"
        f"p = StableDiffusionPipeline.from_pretrained({str(out)!r}, local_files_only=True);"
        "from safetensors.torch import load_file;"
        f"d = load_file({str(tmp_path / 'run/steps/001-fire/delta.safetensors')!r});"
        f"b = StableDiffusionPipeline.from_pretrained({str(model)!r}, local_files_only=True);"
        "pe, pb = dict(p.unet.named_parameters()), dict(b.unet.named_parameters());"
        "print(all(torch.equal(pe[k], pb[k] + v) for k, v in d.items()))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == "True"
    with pytest.raises(FileExistsError):
        run.export(tmp_path / "exported")
