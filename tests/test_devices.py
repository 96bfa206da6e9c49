"""Devices: --device validation, autocast with float32 masters, gradient checkpointing, two processes (gloo)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import FAST_CONABL
from obliviate.cli import main
from obliviate.continual import Run
from obliviate.delta import load_delta
from obliviate.distributed import validate_device
from obliviate.request import Request


def request(**settings):
    return Request(concept="fire", domain="style", method="conabl", method_settings={**FAST_CONABL, **settings})


def test_bad_devices_are_refused_before_work(tmp_path, capsys):
    assert validate_device("cpu") == "cpu" and validate_device(None) is None
    with pytest.raises(ValueError, match="valid: cpu"):
        validate_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU is available"):
            validate_device("cuda:0")
        for argv in (["unlearn", "--run", str(tmp_path / "r"), "--concept", "fire", "--domain", "style", "--device", "cuda"],
                     ["eval", "--model", str(tmp_path), "--out", str(tmp_path / "e"), "--device", "cuda"],
                     ["export", str(tmp_path / "r"), "--out", str(tmp_path / "x"), "--device", "cuda"],
                     ["run", "configs/styles.yaml", "--out", str(tmp_path / "o"), "--device", "cuda"],
                     ["demo", "--out", str(tmp_path / "d"), "--device", "cuda"]):
            assert main(["--quiet", *argv]) == 2
            assert "no CUDA GPU is available" in capsys.readouterr().err
        assert not any(tmp_path.iterdir())


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _delta(meta):
    return load_delta(Path(meta["dir"]) / "delta.safetensors")


def test_bf16_autocast_keeps_float32_masters_and_close_deltas(random_model, tmp_path):
    model = random_model
    seen = {}
    orig = torch.optim.AdamW.step

    def spy(self, *a, **k):  # the optimizer only ever sees float32 masters and gradients
        params = [p for g in self.param_groups for p in g["params"]]
        seen.setdefault("params", set()).update(p.dtype for p in params)
        seen.setdefault("grads", set()).update(p.grad.dtype for p in params)
        return orig(self, *a, **k)

    torch.optim.AdamW.step = spy
    try:
        fp32 = Run.open_or_create(tmp_path / "fp32", model).unlearn(request(), quiet=True, precision="fp32")
        bf16 = Run.open_or_create(tmp_path / "bf16", model).unlearn(request(), quiet=True, precision="bf16")
    finally:
        torch.optim.AdamW.step = orig
    assert seen["params"] == {torch.float32} and seen["grads"] == {torch.float32}
    a, b = _delta(fp32), _delta(bf16)
    flat_a = torch.cat([v.flatten() for v in a.values()])
    flat_b = torch.cat([b[n].flatten() for n in a])
    assert not torch.equal(flat_a, flat_b)  # autocast did run in bf16
    assert torch.nn.functional.cosine_similarity(flat_a, flat_b, dim=0) > 0.9


def test_gradient_checkpointing_recomputes_and_gives_the_same_delta(random_model, tmp_path, monkeypatch):
    import torch.utils.checkpoint as ckpt

    model = random_model
    plain = Run.open_or_create(tmp_path / "plain", model).unlearn(request(steps="4"), quiet=True)
    calls = []
    orig = ckpt.checkpoint
    monkeypatch.setattr(ckpt, "checkpoint", lambda *a, **k: calls.append(1) or orig(*a, **k))
    checked = Run.open_or_create(tmp_path / "ckpt", model).unlearn(request(steps="4"), quiet=True, gradient_checkpointing=True)
    assert calls, "gradient checkpointing was not used"
    a, b = _delta(plain), _delta(checked)
    for n in a:
        assert torch.allclose(a[n], b[n], atol=1e-6, rtol=1e-4), n


def test_two_processes_give_the_delta_of_one_with_the_same_batch(random_model, tmp_path):
    """Two processes joined with gloo: each takes half of the batch; the step is written once."""
    model = random_model
    args = ["unlearn", "--concept", "fire", "--domain", "style", "--model", str(model), "--device", "cpu",
            *[f"--method-setting={k}={v}" for k, v in FAST_CONABL.items() if k != "steps"], "--steps", "4"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    one = subprocess.run([sys.executable, "-m", "obliviate.cli", "--quiet", *args, "--run", str(tmp_path / "one")],
                         env=env, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    # started as `accelerate launch --multi_gpu` / torchrun start processes: one per rank with
    # RANK, LOCAL_RANK, WORLD_SIZE and the rendezvous address in the environment; on CPU
    # (ACCELERATE_USE_CPU=1) accelerate's PartialState joins them with gloo
    port = str(_free_port())
    cmd = [sys.executable, "-m", "obliviate.cli", "--quiet", *[a for a in args if a not in ("--device", "cpu")],
           "--run", str(tmp_path / "two")]
    procs = [subprocess.Popen(cmd, env={**env, "ACCELERATE_USE_CPU": "1", "RANK": str(r), "LOCAL_RANK": str(r),
                                        "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                                        "MASTER_PORT": port},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    steps = sorted((tmp_path / "two" / "steps").iterdir())
    assert [s.name for s in steps] == ["001-fire"]  # written once, by the main process
    assert json.loads((steps[0] / "step.json").read_text())["processes"] == 2
    a = load_delta(tmp_path / "one" / "steps" / "001-fire" / "delta.safetensors")
    b = load_delta(steps[0] / "delta.safetensors")
    assert a.keys() == b.keys()
    for n in a:  # float summation order differs; AdamW's normalisation amplifies it where gradients are ~0
        assert (a[n] - b[n]).norm() <= 1e-3 * a[n].norm() and (a[n] - b[n]).abs().max() < 1e-5, (n, (a[n] - b[n]).abs().max())
    assert max(float(v.abs().max()) for v in a.values()) > 1e-4
