"""The training loop calls hooks in the documented order (trainer.py's module docstring), on a
tiny nn.Linear with fake hooks: no pipeline, milliseconds."""
from __future__ import annotations

import types

import torch

from obliviate import trainer
from obliviate.protocols import Catalog
from obliviate.request import Request
from obliviate.trainer import Context, Hook, Method, TrainSettings


class TinyUNet(torch.nn.Linear):
    @property
    def device(self):
        return self.weight.device


class Recording(Hook):
    def __init__(self, name, order, log, with_loss=True):
        super().__init__(None)
        self.name, self.order, self.log, self.with_loss = name, order, log, with_loss

    def loss(self, ctx):
        self.log.append(("loss", self.name))
        return ctx.params["weight"].pow(2).sum() * 0.1 if self.with_loss else None

    def transform_gradients(self, ctx):
        self.log.append(("grad", self.name))

    def transform_update(self, ctx, before):
        self.log.append(("update", self.name))

    def after_step(self, ctx, step, total_steps):
        self.log.append(("after", self.name))


class FakeMethod(Recording, Method):
    def method_loss(self, ctx, gen):
        self.log.append(("loss", self.name))
        x = torch.randn(4, 3, generator=gen)
        return ctx.unet(x).pow(2).mean()


def test_one_step_runs_hooks_in_documented_order(monkeypatch):
    log: list[tuple[str, str]] = []
    unet = TinyUNet(3, 2)
    params = dict(unet.named_parameters())
    params["weight"].register_hook(lambda g: log.append(("backward", "")))

    real_clip = torch.nn.utils.clip_grad_norm_

    def clip(ps, max_norm, *a, **k):
        log.append(("clip", ""))
        return real_clip(ps, max_norm, *a, **k)

    class AdamW(torch.optim.AdamW):
        def step(self, closure=None):
            log.append(("optimizer", ""))
            return super().step(closure)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)
    monkeypatch.setattr(torch.optim, "AdamW", AdamW)

    method = FakeMethod("method", 90, log)
    method.settings = TrainSettings(steps=1, lr=1e-2, grad_clip=1.0)
    # given out of order: the loop sorts by `order` (projection 10 < add-on 50 < method/mask 90)
    late, early, silent = Recording("late", 95, log), Recording("early", 10, log), Recording("silent", 50, log, with_loss=False)
    ctx = Context(pipe=types.SimpleNamespace(unet=unet), request=Request(concept="c", domain="style"), params=params,
                  pretrained={}, start={}, catalog=Catalog("t", [], []), unlearned_before=[], cache_dir=None,
                  base_hash="", quiet=True)
    out = trainer.train(ctx, method, [late, early, silent])

    assert out["interrupted"] is False and len(out["losses"]) == 1
    assert log == [
        ("loss", "method"),  # the method's loss, then every add-on's term in the order given
        ("loss", "late"), ("loss", "early"), ("loss", "silent"),
        ("backward", ""),  # one backward through the sum
        ("grad", "early"), ("grad", "silent"), ("grad", "method"), ("grad", "late"),  # ascending order
        ("clip", ""),
        ("optimizer", ""),
        ("update", "early"), ("update", "silent"), ("update", "method"), ("update", "late"),
        ("after", "early"), ("after", "silent"), ("after", "method"), ("after", "late"),
    ]


def test_update_transforms_see_weights_before_the_step():
    """A hook that sets needs_update_transform gets the pre-step values, after clipping."""
    unet = TinyUNet(3, 2)
    params = dict(unet.named_parameters())
    start = {n: p.detach().clone() for n, p in params.items()}
    seen = {}

    class Undo(Hook):
        needs_update_transform = True
        name, order = "undo", 90

        def transform_update(self, ctx, before):
            seen.update({n: v.clone() for n, v in before.items()})
            with torch.no_grad():
                for n, p in ctx.params.items():
                    p.copy_(before[n])  # undo every update: weights never move

    class M(Method):
        name = "m"

        def method_loss(self, ctx, gen):
            return ctx.unet(torch.randn(4, 3, generator=gen)).pow(2).mean()

    method = M(TrainSettings(steps=3, lr=0.1))
    ctx = Context(pipe=types.SimpleNamespace(unet=unet), request=Request(concept="c", domain="style"), params=params,
                  pretrained={}, start={}, catalog=Catalog("t", [], []), unlearned_before=[], cache_dir=None,
                  base_hash="", quiet=True)
    trainer.train(ctx, method, [Undo()])
    for n, p in params.items():
        assert torch.equal(seen[n], start[n])
        assert torch.equal(p.detach(), start[n])
