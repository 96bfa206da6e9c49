"""Devices, precision and several processes (`accelerate launch`) for the fine-tuning methods.

Several processes (one per GPU, or gloo on CPU for checking):

    accelerate launch --multi_gpu --num_processes 2 -m obliviate.cli unlearn --run R --concept fire --domain style

`accelerate launch --cpu` starts several CPU processes only through MPI, and torchrun's own
parser rejects `--run` (ambiguous with its `--run-path`); the CPU check in
tests/test_devices.py starts the processes the way both launchers do (RANK, LOCAL_RANK,
WORLD_SIZE, MASTER_ADDR/PORT in the environment, ACCELERATE_USE_CPU=1), and accelerate's
PartialState joins them with gloo.

Every process draws the *whole* batch from the same seeded generator (so the random streams
never diverge), then keeps its own contiguous slice (`Context.local`); each process's loss is
the mean over its slice, and gradients are averaged over processes (all-reduce) right after
backward, before any gradient transform. With equal slices that average is exactly the
gradient of the whole batch's mean loss, so N processes give the delta one process gives for
the same batch, up to float summation order (tests/test_devices.py checks it with gloo).
Regularizer penalties (SP) are computed identically on every process and survive the average
unchanged. Setup (anchor images, SelFT scores) runs on the main process first, which writes
the caches, then on the others, which read them. Only the main process writes checkpoints
and the step; the others wait for it and return the same step.

Evaluation (`obliviate eval`, and every evaluation of `obliviate run`) is split the other way:
each process generates and judges a contiguous share of the images (an image depends only on
its prompt and seed), and the labels are gathered on every process (evaluate/evaluator.judged),
so the metrics are exactly one process's; the main process writes them.

    accelerate launch --multi_gpu --num_processes 4 -m obliviate.cli eval --run R --out E

EraseDiff is refused: its first-order bi-level step combines the whole batch's forget and
remain gradients nonlinearly (a dot product), which averaging per-process results does not
reproduce.
"""
from __future__ import annotations

import contextlib
import os

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def validate_device(device: str | None) -> str | None:
    """`--device` checked before any work: a typo or a missing GPU fails now, not after minutes."""
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {device!r} is not valid; valid: cpu, cuda, cuda:N, mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: no CUDA GPU is available to torch here; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: there are {torch.cuda.device_count()} CUDA GPUs (cuda:0..cuda:{torch.cuda.device_count() - 1})")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"--device {device}: MPS is not available here; use --device cpu")
    elif dev.type != "cpu":
        raise ValueError(f"--device {device!r} is not supported; valid: cpu, cuda, cuda:N, mps")
    return device


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype for training; None = plain float32.

    auto: bf16 on CUDA where supported, else fp16 (with loss scaling); float32 on CPU. The
    trained tensors stay float32 masters in every case: autocast only lowers the matmuls."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not valid; valid: {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def trained_in(device, precision: str, closed_form: bool) -> str | None:
    """What a request's matmuls run in (fp32, bf16, fp16; None for a closed-form solve): part of
    the work, so the ledger records and compares it like a setting."""
    if closed_form:
        return None
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[autocast_dtype(device, precision)]


def enable_gradient_checkpointing(unet) -> None:
    """Recompute UNet block activations in backward: less memory, ~30% more compute.

    diffusers only checkpoints when gradients are enabled, so no-grad forwards (references,
    sampling) are unaffected."""
    unet.enable_gradient_checkpointing()


class Distributed:
    """This process's place among several started by `accelerate launch` (or torchrun)."""

    def __init__(self):
        from accelerate import PartialState

        cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") or not torch.cuda.is_available()
        self.state = PartialState(cpu=cpu)
        self.rank, self.world = self.state.process_index, self.state.num_processes
        self.device = self.state.device
        self.active = False  # slicing happens only inside the training loop

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        torch.distributed.barrier()

    @contextlib.contextmanager
    def main_first(self):
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def device_for(self, device):
        """The device this process trains on: the one accelerate gave it."""
        if device is not None and torch.device(device) != self.device:
            raise ValueError(f"--device {device} conflicts with accelerate launch, which gives process {self.rank} "
                             f"{self.device}; leave --device out")
        return self.device

    def check(self, method, regularizers) -> None:
        for hook in [method, *regularizers]:
            if hook.not_multi_process:
                raise ValueError(f"{hook.name!r} cannot run on {self.world} processes: {hook.not_multi_process}")
            b = getattr(hook.settings, "batch_size", None)
            if b is not None and b % self.world:
                raise ValueError(f"{hook.name}: batch_size {b} is not divisible by the {self.world} processes; "
                                 f"choose a multiple of {self.world}")

    def local(self, tensors):
        if not self.active:
            return tensors
        out = []
        for x in tensors:  # tensors or model.Cond (both slice along the batch)
            n = len(x) // self.world
            out.append(x[self.rank * n:(self.rank + 1) * n])
        return out

    @torch.no_grad()
    def average_gradients(self, params) -> None:
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])  # one collective, not one per tensor
        torch.distributed.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()


class OneProcess:
    """The `Distributed` interface for a request that runs in this process alone: it is the
    main process, waits for no one and splits nothing, so the ledger and the training loop
    read the same way on one process and on several."""

    rank, world, device, is_main = 0, 1, None, True

    def barrier(self) -> None:
        pass

    def main_first(self):
        return contextlib.nullcontext()

    def check(self, method, regularizers) -> None:
        pass

    def device_for(self, device):
        return device


_CURRENT: Distributed | None = None


def current() -> Distributed | None:
    """The process group this process belongs to, or None for a single process."""
    global _CURRENT
    if _CURRENT is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        _CURRENT = Distributed()
    return _CURRENT


def processes() -> Distributed | OneProcess:
    """The processes a request runs on: `current()`, or this process alone."""
    return current() or OneProcess()
