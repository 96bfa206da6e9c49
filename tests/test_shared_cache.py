"""Caches that several workers fill at once (Ray tasks, SLURM jobs, accelerate processes):
one generates, the others wait and read its copy; nobody reads half a file."""
import json
import subprocess
import sys
import textwrap

import torch

from obliviate.delta import load_verified_tensor

# A worker: the base model's anchor latents and images into the shared cache, as a ConAbl
# request's setup does. Both workers first check the cache, find nothing, and only then race
# for the lock (each waits at a rendezvous of files before its first check), so the race is
# certain, not left to timing.
WORKER = textwrap.dedent("""
    import contextlib, json, os, sys, time
    from pathlib import Path
    from types import SimpleNamespace
    import torch
    from obliviate import diffusion
    from obliviate.model import load_pipeline

    model, cache, me, other = sys.argv[1:5]
    pipe = load_pipeline(model, device="cpu")
    first_check = {"pending": True}
    load = diffusion.load_verified_tensor

    def rendezvous_then_load(path):
        if first_check["pending"]:  # the unlocked first look: both workers look before either generates
            first_check["pending"] = False
            Path(cache, me + ".ready").touch()
            deadline = time.time() + 60
            while not Path(cache, other + ".ready").exists() and time.time() < deadline:
                time.sleep(0.01)
        return load(path)

    diffusion.load_verified_tensor = rendezvous_then_load
    logs = []
    ctx = SimpleNamespace(base_hash="h" * 64, pipe=pipe, cache_dir=Path(cache), device=torch.device("cpu"),
                          log=logs.append, restore_base=contextlib.nullcontext)
    prompts, seeds = ["A star image in fire style", "A ring image in ice style"], [3, 4]
    images = diffusion.base_model_images(ctx, prompts, seeds, 3, 3.0, "anchor")
    print(json.dumps({"generated": [m for m in logs if m.startswith("generating")], "sum": int(images.sum())}))
""")


def test_two_workers_racing_on_one_cache_generate_it_once(random_model, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    procs = [subprocess.Popen([sys.executable, str(script), str(random_model), str(cache), me, other],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for me, other in (("w0", "w1"), ("w1", "w0"))]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
        outs.append(json.loads(out.strip().splitlines()[-1]))
    # both looked before either had written (the rendezvous), yet only one generated
    assert sum(len(o["generated"]) for o in outs) == 1, outs
    assert outs[0]["sum"] == outs[1]["sum"]  # the waiting worker read the other's images
    files = sorted(p.name for p in cache.glob("anchor-*.safetensors"))
    assert len(files) == 2  # latents and decoded images, nothing else
    assert all(load_verified_tensor(cache / f) is not None for f in files)  # whole and checksummed
    assert not list(cache.glob(".*.tmp"))  # no temporary file left behind
    images = load_verified_tensor(next(cache.glob("anchor-images-*.safetensors")))
    assert images.dtype == torch.uint8 and images.shape[0] == 2 and int(images.sum()) == outs[0]["sum"]
