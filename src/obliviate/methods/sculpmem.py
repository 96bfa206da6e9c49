"""SculpMem: ConAbl's loss with a dynamic sparse mask on the trained tensors.

No mask during a warm-up; then per tensor keep the top `density` of entries by accumulated
|gradient|; every `swap_every` steps swap a fraction r of active entries with the lowest
accumulated |grad| for inactive entries with the highest, r decaying from `swap_fraction`
by a cosine schedule; no more swaps after `stop_fraction` of training. Inactive entries
never change: their gradient is zeroed and, because AdamW's momentum and weight decay would
still move them, the update is undone on them too.

SD 1.5 reference: warm-up 50, density 0.5, swap every 100, r0 0.2, stop at 80%.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..lora import ELEMENT_MASK
from ..trainer import Context
from .conabl import ConAbl, ConAblSettings


@dataclass
class SculpMemSettings(ConAblSettings):
    warmup: int = 10
    density: float = 0.5
    swap_every: int = 20
    swap_fraction: float = 0.2
    stop_fraction: float = 0.8


class SculpMem(ConAbl):
    name = "sculpmem"
    Settings = SculpMemSettings
    needs_update_transform = True
    quick_settings = {**ConAbl.quick_settings, "warmup": 2, "swap_every": 2}

    def for_lora(self, group: str):
        raise ValueError(f"method sculpmem does not work with --param-group {group}: its gradient mask {ELEMENT_MASK}; "
                         "use a training method without a mask (conabl, esd, erasediff) with LoRA, or "
                         "--param-group kv-xattn with sculpmem")

    def setup(self, ctx: Context, method=None) -> None:
        super().setup(ctx)
        self.accumulated = {n: torch.zeros_like(p) for n, p in ctx.params.items()}
        self.masks: dict[str, torch.Tensor] | None = None

    def transform_gradients(self, ctx: Context) -> None:
        for n, p in ctx.params.items():
            self.accumulated[n] += p.grad.detach().abs()
            if self.masks is not None:
                p.grad.mul_(self.masks[n])

    def transform_update(self, ctx: Context, before) -> None:
        if self.masks is None:
            return
        with torch.no_grad():
            for n, p in ctx.params.items():
                p.copy_(torch.where(self.masks[n], p, before[n]))

    def after_step(self, ctx: Context, step: int, total_steps: int) -> None:
        s = self.settings
        done = step + 1
        if done == s.warmup:
            self.masks = {}
            for n, acc in self.accumulated.items():
                k = max(1, int(round(s.density * acc.numel())))
                mask = torch.zeros(acc.numel(), dtype=torch.bool, device=acc.device)
                mask[acc.flatten().topk(k).indices] = True
                self.masks[n] = mask.view_as(acc)
        elif self.masks is not None and done % s.swap_every == 0 and done < s.stop_fraction * total_steps:
            progress = (done - s.warmup) / max(1.0, s.stop_fraction * total_steps - s.warmup)
            r = s.swap_fraction * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
            for n, acc in self.accumulated.items():
                mask, flat = self.masks[n].flatten(), acc.flatten()
                n_swap = int(r * int(mask.sum()))
                n_swap = min(n_swap, int((~mask).sum()))
                if n_swap == 0:
                    continue
                active = torch.where(mask)[0]
                inactive = torch.where(~mask)[0]
                drop = active[flat[active].topk(n_swap, largest=False).indices]
                grow = inactive[flat[inactive].topk(n_swap).indices]
                mask = mask.clone()
                mask[drop] = False
                mask[grow] = True
                self.masks[n] = mask.view_as(acc)

    def state_dict(self) -> dict:
        return {"accumulated": self.accumulated, "masks": self.masks}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.accumulated, self.masks = state["accumulated"], state["masks"]
