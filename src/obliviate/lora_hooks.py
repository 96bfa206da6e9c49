"""LoRA meanings of the regularizers (projection on A, L1/L2-SP on s B A), or a clear refusal:
above lora.py and the regularizers, beside continual.py, which calls `adapt_hooks`."""
from __future__ import annotations

import re

import torch

from .lora import ADAPTER, SUPPORTED_REGULARIZERS, UNSUPPORTED, parse_group


# ---------------------------------------------------------------- regularizers on A and B
def adapt_hooks(method, regs: list, group: str):
    """Give the regularizers their LoRA meaning, or refuse with the alternatives (before any work)."""
    parse_group(group)
    if getattr(method, "closed_form", False):
        raise ValueError(f"method {method.name!r} is closed form: it solves for whole k/v weights, not a low-rank "
                         f"adapter; use it with --param-group kv-xattn, or a training method (conabl, esd, erasediff) with LoRA")
    if method.name in UNSUPPORTED:
        raise ValueError(f"method {method.name!r} does not work with --param-group {group}: {UNSUPPORTED[method.name]}; "
                         "use conabl, esd or erasediff with LoRA, or --param-group kv-xattn with sculpmem")
    out = []
    for reg in regs:
        if reg.name in UNSUPPORTED:
            raise ValueError(f"regularizer {reg.name!r} does not work with --param-group {group}: {UNSUPPORTED[reg.name]}; "
                             f"with LoRA use {', '.join(SUPPORTED_REGULARIZERS)}, or --param-group kv-xattn with {reg.name}")
        if reg.name == "projection":
            if parse_group(group).continual == "keep":
                raise ValueError(f"projection does not work with --param-group {group}: continuing an adapter changes B, "
                                 "and B's update multiplies the earlier A, whose rows are not orthogonal to the protected "
                                 "concepts; use continual=stack (the default) with projection")
            out.append(_lora_projection(reg))
        elif reg.name in ("l1sp", "l2sp"):
            out.append(_lora_sp(reg))
        elif reg.name in SUPPORTED_REGULARIZERS:
            out.append(reg)
        else:
            raise ValueError(f"regularizer {reg.name!r} has no LoRA meaning yet; with LoRA use {', '.join(SUPPORTED_REGULARIZERS)}")
    return method, out


def _modules(ctx) -> list[tuple[str, str, str]]:
    """(module, A name, B name) of every adapted layer, by the trained tensors' names."""
    out = []
    for n in ctx.params:
        m = re.match(rf"(.*)\.lora_A\.{ADAPTER}\.weight$", n)
        if m:
            out.append((m.group(1), n, f"{m.group(1)}.lora_B.{ADAPTER}.weight"))
    return out


def _lora_projection(reg):
    from .regularizers.projection import Projection

    class LoraProjection(type(reg)):
        """Projection on A: A P keeps A c = 0 for every protected c, so dW c = s B A c = 0."""

        def setup(self, ctx, method=None) -> None:
            Projection.setup(self, ctx, method)
            width = self.C.shape[0]
            self.targets = [a for m, a, _ in _modules(ctx) if re.search(r"\.attn2\.to_[kv]$", m) and ctx.params[a].shape[1] == width]
            with torch.no_grad():  # the adapter starts inside the complement
                for n in self.targets:
                    ctx.params[n].copy_(ctx.params[n] @ self.P)
                    ctx.start[n] = ctx.params[n].detach().clone()
            ctx.log(f"projection on LoRA A: {len(self.targets)} tensors")

    new = LoraProjection(reg.settings)
    return new


def _lora_sp(reg):
    """L1/L2-SP on the weight change s B A (+ earlier requests' change for reference=pretrained)."""

    class LoraSP(type(reg)):
        def setup(self, ctx, method=None) -> None:
            self.modules = _modules(ctx)
            self.scale = parse_group(ctx.request.param_group).scale
            # diff = base_layer + s B A - reference; the adapter's start s B0 A0 is 0 for a stacked
            # adapter and the previous request's for continual=keep
            start = {m: self.scale * ctx.start[b] @ ctx.start[a] for m, a, b in self.modules}
            self.offset = {m: -start[m] for m, _, _ in self.modules}
            if self.settings.reference == "pretrained":
                current = {m: ctx.unet.get_submodule(m).base_layer.weight.detach().clone() for m, _, _ in self.modules}
                with ctx.restore_base():
                    for m, _, _ in self.modules:
                        self.offset[m] = current[m] - ctx.unet.get_submodule(m).base_layer.weight.detach() - start[m]
            self.count = sum(ctx.params[b].shape[0] * ctx.params[a].shape[1] for _, a, b in self.modules)

        def loss(self, ctx) -> torch.Tensor:
            total = 0.0
            for m, a, b in self.modules:
                diff = self.scale * ctx.params[b] @ ctx.params[a] + self.offset[m]
                total = total + (diff.abs() if self.power == 1 else diff * diff).sum()
            return self.settings.weight * total / self.count

    return LoraSP(reg.settings)
