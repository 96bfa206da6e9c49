"""L1-SP and L2-SP: keep the trained tensors near a reference.

`reference=request` anchors to the weights at the start of the current request (the
published choice: it bounds per-request drift, not cumulative drift); `reference=pretrained`
anchors to the base model and bounds cumulative drift. The penalty is a mean over all
trained elements; SD 1.5 ConAbl reference weights are L1 50 and L2 25000 (the SD loss is
about 4x a per-element MSE, so weights need recalibrating for other loss scales).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..lora import adapted_modules, parse_group
from ..parsing import Checked
from ..trainer import Context, Hook


@dataclass
class SPSettings(Checked):
    weight: float = 1.0
    # request: the weights at the start of the current request (bounds per-request drift);
    # pretrained: the base model's (bounds cumulative drift)
    reference: Literal["request", "pretrained"] = "request"


class _SP(Hook):
    Settings = SPSettings
    power = 1
    quick_settings = {"weight": 1}

    def setup(self, ctx: Context, method=None) -> None:
        # one dict keyed by the UNet's own unique parameter names: no colliding references
        self.reference = ctx.start if self.settings.reference == "request" else ctx.pretrained

    def loss(self, ctx: Context) -> torch.Tensor:
        total, count = 0.0, 0
        for name, p in ctx.params.items():
            diff = p - self.reference[name]
            total = total + (diff.abs() if self.power == 1 else diff * diff).sum()
            count += p.numel()
        return self.settings.weight * total / count

    def for_lora(self, group: str) -> Hook:
        on_lora = type(f"{type(self).__name__}OnLora", (_OnLora, type(self)), {})  # _OnLora's setup and loss win
        return on_lora(self.settings)


class _OnLora:
    """L1/L2-SP on the weight change s B A (plus earlier requests' change for
    reference=pretrained), averaged over the adapted weight's elements, so a weight means the
    same as with kv-xattn. A penalty on A and B themselves would punish A's random start."""

    def setup(self, ctx: Context, method=None) -> None:
        self.modules = adapted_modules(ctx.params)
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

    def loss(self, ctx: Context) -> torch.Tensor:
        total = 0.0
        for m, a, b in self.modules:
            diff = self.scale * ctx.params[b] @ ctx.params[a] + self.offset[m]
            total = total + (diff.abs() if self.power == 1 else diff * diff).sum()
        return self.settings.weight * total / self.count


class L1SP(_SP):
    """L1-SP: a penalty on the mean absolute change of the trained tensors from a reference."""

    name = "l1sp"
    power = 1


class L2SP(_SP):
    """L2-SP: a penalty on the mean squared change of the trained tensors from a reference."""

    name = "l2sp"
    power = 2
