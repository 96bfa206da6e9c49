"""The single training loop and the hook protocol that methods and regularizers share.

One optimisation step reads top to bottom:

    loss = method loss + every regularizer's extra loss term      (Hook.loss)
    backward                                                      (Method.backward)
    gradient transforms, in ascending `order`                     (Hook.transform_gradients)
    clip the gradient norm
    AdamW step
    update transforms, in ascending `order`                       (Hook.transform_update)
    end-of-step bookkeeping                                       (Hook.after_step)

Order of transforms (combining projection with masks): projection has order 10, masks
(SelFT, SculpMem) order 90. So a mask is applied *after* the projection: the mask's
sparsity is exact (masked elements never change) and the projection's invariance holds on
the elements the mask leaves free; projecting after masking would spread the update to
masked elements.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .delta import tensors_hash
from .model import Cond, denoiser, encode
from .parsing import Checked
from .protocols import Catalog
from .request import Request
from .start_token import start_token_detached


# ---------------------------------------------------------------- what hooks see
@dataclass
class Context:
    pipe: Any
    request: Request
    params: dict[str, torch.nn.Parameter]  # the trained tensors, by UNet name
    pretrained: dict[str, torch.Tensor]  # their values in the base model
    start: dict[str, torch.Tensor]  # their values at the start of this request
    catalog: Catalog
    unlearned_before: list[tuple[str, str]]  # (concept, domain) of earlier requests, in order
    cache_dir: Path
    base_hash: str
    restore_base: Any = None  # context manager: the base model's weights, temporarily
    quiet: bool = False
    earlier_requests: list[dict] = field(default_factory=list)  # the run's earlier Request.to_dict(), in order
    precision: str = "auto"  # distributed.PRECISIONS; masters stay float32
    dist: Any = None  # distributed.Distributed when several processes share the request
    grad_scaler: Any = None  # fp16 only
    # identifies the text encoder when it is not the base model's (a text-side defence changed it):
    # "" = the base encoder; caches of text states key on it (methods/uce.py text_states)
    text_key: str = ""
    _prompt_cache: dict[str, Cond] = field(default_factory=dict)
    _training_scheduler: Any = None

    @property
    def unet(self):
        """The denoiser: the UNet, or the transformer of an SD3 / FLUX pipeline (model.denoiser)."""
        return denoiser(self.pipe)

    @property
    def device(self) -> torch.device:
        return self.unet.device

    def encode(self, prompts: list[str]) -> Cond:
        """The UNet's conditioning for `prompts` (model.Cond; `.hidden` is the cross-attention
        input). Call the UNet with model.predict(unet, x_t, t, cond). The encoder is frozen
        while the method runs, so each prompt is encoded once."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._prompt_cache]
        if missing:
            cond = encode(self.pipe, missing)
            for i, p in enumerate(missing):
                self._prompt_cache[p] = cond[i]
        return Cond.cat([self._prompt_cache[p] for p in prompts])

    def autocast(self):
        from .distributed import autocast_dtype

        dtype = autocast_dtype(self.device, self.precision)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def local(self, *tensors):
        """This process's slice of a batch (the whole batch in one process); see distributed.py."""
        return tensors if self.dist is None else self.dist.local(tensors)

    def backward(self, loss: torch.Tensor) -> None:
        (self.grad_scaler.scale(loss) if self.grad_scaler is not None else loss).backward()

    def text_encoder_changed(self) -> None:
        """A hook trained the text encoder (Hook.before_method): prompts are encoded again, and
        caches of text states get a new key."""
        self._prompt_cache.clear()
        self.__dict__.pop("_uce_states", None)
        self.text_key = text_encoder_key(self.pipe)

    def log(self, msg: str) -> None:
        if not self.quiet:
            print(f"[obliviate] {msg}", flush=True)


def text_encoder_key(pipe) -> str:
    """Identity of a text encoder that is not the base model's (Context.text_key): its weights' hash."""
    return tensors_hash(dict(pipe.text_encoder.named_parameters()))


class Hook:
    """What methods and regularizers may plug into the loop. Every hook is optional.

    State and randomness: whatever a hook must carry across a checkpoint goes into
    `state_dict` / `load_state_dict`, so a killed request resumes to the same tensors. A hook
    that draws random numbers owns a `torch.Generator` (seeded from the request's seed) and
    saves it in `state_dict` (`gen.get_state()`), never the global RNG.

    `report` returns what the hook wants recorded in the step's step.json (merged into it
    after training, e.g. ConAbl's anchor, the projection's protected concepts).
    """

    name = "hook"
    order = 50
    # Capabilities, declared here and asked by the engine (never a table of names elsewhere):
    # None = supported; a string = not supported, and why (the refusal quotes it).
    not_multi_process: str | None = None  # splitting a request's batches across processes
    families: tuple[str, ...] | None = None  # model families it works on (model.model_family); None: all
    # settings that make one request run in seconds on a tiny model (the engine's tests run every
    # registered method with every registered add-on with these; never defaults for real use)
    quick_settings: dict = {}

    def __init__(self, settings=None):
        self.settings = settings  # an instance of the hook's Settings dataclass

    def setup(self, ctx: Context, method: "Method | None" = None) -> None:
        """Called once per request before training, with the model at the request's start."""

    def loss(self, ctx: Context) -> torch.Tensor | None:
        return None

    def transform_gradients(self, ctx: Context) -> None: ...

    def transform_update(self, ctx: Context, before: dict[str, torch.Tensor]) -> None: ...

    def after_step(self, ctx: Context, step: int, total_steps: int) -> None: ...

    needs_update_transform = False

    # A hook that trains tensors of its own *before* the method (the text-side defence) declares
    # them here, named as a step's delta names them (model.Edited: `text_encoder.` + name). The
    # engine runs its `setup` and then `before_method` before the method's setup, and then drops
    # the context's prompt cache, so the method (a closed-form solve or the training loop) works
    # with the text encoder the hook left. It adds nothing to the method's loss, so it may come
    # with a closed-form method too; the step's delta keeps its tensors' change with the method's.
    trains_before_method = False

    def own_tensors(self, pipe) -> dict[str, torch.nn.Parameter]:
        return {}

    def before_method(self, ctx: Context) -> None: ...

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None: ...

    def report(self) -> dict:
        """Entries for step.json, read after training (keys must not clash with the ledger's)."""
        return {}

    def for_lora(self, group: str) -> "Hook":
        """This hook on a LoRA parameter group (`group`, e.g. "lora:r=4"): itself when it works
        on any trained tensors, a LoRA form of itself (the SP add-ons act on s B A), or a
        ValueError that says why not. The default refuses: a new hook has no LoRA meaning until
        it declares one."""
        raise ValueError(f"{self.name!r} has no LoRA meaning yet; use it with --param-group kv-xattn")


@dataclass
class TrainSettings(Checked):
    """Optimisation settings every method has (its own defaults differ)."""

    steps: int = 100
    lr: float = 1e-3
    batch_size: int = 8
    weight_decay: float = 1e-2
    grad_clip: float = 1.0
    # stop the gradient through cross-attention k/v at token 0 (start_token.py); the reference
    # does it in ConAbl and SculpMem (their default: on), not in ESD or EraseDiff
    detach_start: bool = False


class Method(Hook):
    """A base unlearning method: data preparation plus the loss of one batch."""

    Settings = TrainSettings
    order = 90  # its own transforms (e.g. SculpMem's mask) come after the projection
    # A closed-form method (UCE) has no training loop: Run.unlearn calls `solve` instead of
    # `train`, and records the step's delta against the previous step like any other.
    closed_form = False

    def for_lora(self, group: str) -> "Method":
        """A training method's loss works on whatever tensors are trained, adapters included."""
        if self.closed_form:
            raise ValueError(f"method {self.name!r} is closed form: it solves for whole k/v weights, not a low-rank "
                             f"adapter; use it with --param-group kv-xattn, or a training method with LoRA")
        return self

    def check(self, tokenizer, earlier_requests: list[dict], targets: list[str] = ()) -> None:
        """Closed-form methods: refuse what the model's tokenizer or the run cannot serve, before any work."""

    def solve(self, ctx: Context) -> dict[str, torch.Tensor]:
        """Closed-form methods: the new values of the trained tensors (by name)."""
        raise NotImplementedError

    def method_loss(self, ctx: Context, gen: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def backward(self, ctx: Context, gen: torch.Generator, extra_loss) -> float:
        """Fill .grad of the trained tensors; return the method's loss for logging."""
        with ctx.autocast():
            loss = self.method_loss(ctx, gen).float()
        extra = extra_loss()
        ctx.backward(loss + extra if extra is not None else loss)
        return float(loss.detach())


# ---------------------------------------------------------------- the loop
def train(ctx: Context, method: Method, regularizers: list[Hook], *, checkpoint_path: Path | None = None,
          checkpoint_every: int = 25, stop_after: int | None = None) -> dict:
    """Run one request's optimisation. Resumes from `checkpoint_path` when it exists.

    `stop_after` abandons the loop after that many steps of this call without saving, as a
    kill would (tests use it to simulate an interruption).
    """
    s = method.settings
    params = ctx.params
    hooks = sorted([method, *regularizers], key=lambda h: h.order)
    optimizer = torch.optim.AdamW(params.values(), lr=s.lr, weight_decay=s.weight_decay)
    gen = torch.Generator().manual_seed(ctx.request.seed)
    losses: list[float] = []
    first_step, elapsed_before = 0, 0.0

    if checkpoint_path is not None and checkpoint_path.exists():
        state = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
        with torch.no_grad():
            for name, value in state["params"].items():
                params[name].copy_(value)
        optimizer.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        for hook in hooks:
            hook.load_state_dict(state["hooks"].get(hook.name, {}))
        losses, first_step, elapsed_before = state["losses"], state["step"], state["elapsed"]
        ctx.log(f"resuming {ctx.request.concept!r} at step {first_step}/{s.steps}")

    def extra_loss():
        terms = [t for t in (r.loss(ctx) for r in regularizers) if t is not None]
        return sum(terms) if terms else None

    def save_checkpoint(step: int) -> None:
        if checkpoint_path is None or (ctx.dist is not None and not ctx.dist.is_main):
            return
        state = {
            "params": {n: p.detach().cpu().clone() for n, p in params.items()},
            "optimizer": optimizer.state_dict(), "generator": gen.get_state(),
            "hooks": {h.name: h.state_dict() for h in hooks}, "losses": losses, "step": step,
            "elapsed": elapsed_before + time.time() - t0,
        }
        from .delta import atomic_write

        try:
            atomic_write(checkpoint_path, lambda f: torch.save(state, f))
        except RuntimeError as err:  # torch reports a full disk as a RuntimeError; say which file
            raise OSError(f"cannot write the checkpoint {checkpoint_path}: {err}") from None

    needs_before = any(h.needs_update_transform for h in hooks)
    from .distributed import autocast_dtype

    if autocast_dtype(ctx.device, ctx.precision) == torch.float16:  # fp16 gradients underflow without loss scaling
        ctx.grad_scaler = torch.amp.GradScaler(ctx.device.type)
    if ctx.dist is not None:
        ctx.dist.active = True
    t0 = time.time()
    bar = tqdm(range(first_step, s.steps), initial=first_step, total=s.steps, disable=ctx.quiet,
               desc=f"{ctx.request.method} -{ctx.request.concept}", leave=False)
    done_here = 0
    for step in bar:
        optimizer.zero_grad(set_to_none=False)
        with start_token_detached(ctx.unet, s.detach_start):
            loss = method.backward(ctx, gen, extra_loss)
        if ctx.dist is not None:
            ctx.dist.average_gradients(params.values())
        if ctx.grad_scaler is not None:
            ctx.grad_scaler.unscale_(optimizer)
        for hook in hooks:
            hook.transform_gradients(ctx)
        if s.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params.values(), s.grad_clip)
        before = {n: p.detach().clone() for n, p in params.items()} if needs_before else {}
        if ctx.grad_scaler is not None:
            ctx.grad_scaler.step(optimizer)  # skips the step when a gradient overflowed
            ctx.grad_scaler.update()
        else:
            optimizer.step()
        for hook in hooks:
            hook.transform_update(ctx, before)
        for hook in hooks:
            hook.after_step(ctx, step, s.steps)
        losses.append(loss)
        bar.set_postfix(loss=f"{loss:.4f}")
        done_here += 1
        if (step + 1) % checkpoint_every == 0 and step + 1 < s.steps:
            save_checkpoint(step + 1)
        if stop_after is not None and done_here >= stop_after:
            # like a kill: whatever came after the last periodic checkpoint is lost
            return {"interrupted": True, "losses": losses}
    if ctx.dist is not None:
        ctx.dist.active = False
    return {"interrupted": False, "losses": losses, "train_seconds": elapsed_before + time.time() - t0}
