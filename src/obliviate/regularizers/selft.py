"""SelFT: selective fine-tuning of the most important elements for the target concept.

Each trained element is scored by |theta * g|, g being the gradient of the method's loss
accumulated over `score_batches` batches drawn at timesteps along the denoising trajectory;
a global top-k fraction is trained, every other element stays *bit-identical*: its gradient
is zeroed and, because AdamW's decoupled weight decay and momentum would still move it,
its value is restored after every optimizer step. Reference k = 0.05.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..lora import ELEMENT_MASK
from ..parsing import Checked
from ..trainer import Context, Hook


@dataclass
class SelFTSettings(Checked):
    top_k: float = 0.05
    score_batches: int = 8


class SelFT(Hook):
    name = "selft"
    order = 90  # after the projection: masked elements stay exactly unchanged
    Settings = SelFTSettings
    needs_update_transform = True
    quick_settings = {"top_k": 0.2}

    def for_lora(self, group: str) -> Hook:
        raise ValueError(f"regularizer selft does not work with --param-group {group}: {ELEMENT_MASK}, and its "
                         "|theta * g| score is 0 for all of B at its zero start; use --param-group kv-xattn with selft")

    def setup(self, ctx: Context, method=None) -> None:
        if method is None:
            raise ValueError("selft needs the base method's loss to score elements")
        gen = torch.Generator().manual_seed(ctx.request.seed + 7919)  # separate from the loop's draws
        grads = {n: torch.zeros_like(p) for n, p in ctx.params.items()}
        for _ in range(self.settings.score_batches):
            for p in ctx.params.values():
                p.grad = None
            with ctx.autocast():
                loss = method.method_loss(ctx, gen)
            loss.float().backward()
            for n, p in ctx.params.items():
                grads[n] += p.grad.detach()
        for p in ctx.params.values():
            p.grad = None
        scores = torch.cat([(p.detach() * grads[n]).abs().flatten() for n, p in ctx.params.items()])
        k = max(1, int(round(self.settings.top_k * scores.numel())))
        threshold = scores.topk(k).values.min()
        self.masks = {n: (p.detach() * grads[n]).abs() >= threshold for n, p in ctx.params.items()}
        kept = sum(int(m.sum()) for m in self.masks.values())
        ctx.log(f"selft: training {kept} of {scores.numel()} elements ({kept / scores.numel():.1%})")

    def transform_gradients(self, ctx: Context) -> None:
        for n, p in ctx.params.items():
            p.grad.mul_(self.masks[n])

    def transform_update(self, ctx: Context, before) -> None:
        with torch.no_grad():
            for n, p in ctx.params.items():
                p.copy_(torch.where(self.masks[n], p, before[n]))
