"""scripts/bench_gpu.py runs end to end at a tiny size on CPU, so it is ready for the first GPU."""
import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_gpu.py"


def test_bench_gpu_small_prints_one_sane_json():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, str(SCRIPT), "--small", "--batch", "2"], env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [ln for ln in out.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1
    r = json.loads(lines[0])
    assert r["size"] == "small" and r["device"] == "cpu" and r["peak_bf16_tflops"] is None
    t = r["train"]
    assert t["batch"] == 2 and t["flops_per_step"] > 1e6 and t["step_seconds"] > 0
    assert abs(t["achieved_tflops"] - t["flops_per_step"] / t["step_seconds"] / 1e12) < 1e-9
    assert t["fraction_of_bf16_peak"] is None
    assert isinstance(r["projection_overhead_percent"], float)
    assert set(r["closed_form_seconds"]) == {"1", "10", "50"} and all(v > 0 for v in r["closed_form_seconds"].values())
    s = r["sampling"]
    assert s["images_per_second"] > 0 and s["resolution"] == 64
    assert r["peak_memory_gib"] > 0 and r["unet_parameters"] > 1e5


def test_peak_table_matches_device_names():
    sys.path.insert(0, str(SCRIPT.parent))
    from bench_gpu import peak_bf16

    assert peak_bf16("NVIDIA H100 80GB HBM3") == 989.0
    assert peak_bf16("NVIDIA H200") == 989.0
    assert peak_bf16("NVIDIA H100 PCIe") == 756.0
    assert peak_bf16("NVIDIA A100-SXM4-80GB") == 312.0
    assert peak_bf16("NVIDIA L4") == 121.0 and peak_bf16("NVIDIA L40S") == 362.0
    assert peak_bf16("NVIDIA GeForce RTX 4090") == 165.0
    assert peak_bf16("Some Future GPU") is None
