#!/usr/bin/env bash
# The CUDA code path (bf16 autocast training, CUDA sampling) on a GPU machine: engine and
# ledger tests, then one timed ConAbl request on the quick model. Needs diffusers wheels in
# .whl/ when the machine lacks diffusers (see docs/DEVICES.md).
set -uo pipefail
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD/src" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
python3 -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name())"
python3 -m pytest tests/test_engine.py tests/test_ledger.py -q -x -p no:cacheprovider 2>&1 | tail -15
python3 - <<'PY'
import time, torch
from obliviate.minicanvas.build import build
from obliviate.continual import Run
from obliviate.trainer import Request
build("/tmp/quick", quick=True, quiet=True)
for device in ("cuda", "cpu"):
    run = Run.open_or_create(f"/tmp/run-{device}", "/tmp/quick")
    t = time.time()
    meta = run.unlearn(Request("fire", "style", "conabl", regularizers=[("projection", {"mode": "update"})]), quiet=True, device=device)
    print(device, "conabl+projection(update) request:", round(time.time() - t, 1), "s total,", round(meta["timings"]["train_seconds"], 1), "s train; loss",
          round(meta["loss_first"], 5), "->", round(meta["loss_last"], 5), "drift", round(meta["drift"]["parent"]["l2"], 4))
PY
