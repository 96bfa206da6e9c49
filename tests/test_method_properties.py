"""Properties the docstrings of SculpMem and EraseDiff promise, on tiny tensors (no pipeline)."""
from __future__ import annotations

import types

import pytest
import torch

from obliviate import trainer
from obliviate.methods.conabl import ConAbl
from obliviate.methods.erasediff import EraseDiff, EraseDiffSettings
from obliviate.methods.sculpmem import SculpMem, SculpMemSettings
from obliviate.protocols import Catalog
from obliviate.request import Request
from obliviate.trainer import Context, Hook


class TinyUNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.randn(7, 5))  # 35 entries
        self.b = torch.nn.Parameter(torch.randn(6))  # 6 entries: rounding matters

    @property
    def device(self):
        return self.a.device

    def forward(self, x):
        return (x @ self.a.T).sum(-1) + self.b.sum()


def tiny_ctx(unet) -> Context:
    return Context(pipe=types.SimpleNamespace(unet=unet), request=Request(concept="c", domain="style"),
                   params=dict(unet.named_parameters()), pretrained={}, start={}, catalog=Catalog("t", [], []),
                   unlearned_before=[], cache_dir=None, base_hash="", quiet=True)


@pytest.mark.parametrize("density", [0.3, 0.5])
def test_sculpmem_mask_has_exact_density_and_frozen_entries_never_move(monkeypatch, density):
    monkeypatch.setattr(ConAbl, "setup", lambda self, ctx, method=None: None)  # no anchors needed here

    class Tiny(SculpMem):
        def method_loss(self, ctx, gen):
            return ctx.unet(torch.randn(4, 5, generator=gen)).pow(2).mean()

    torch.manual_seed(0)
    unet = TinyUNet()
    ctx = tiny_ctx(unet)
    s = SculpMemSettings(steps=40, lr=0.05, warmup=5, density=density, swap_every=4, swap_fraction=0.5,
                         stop_fraction=0.9, detach_start=False)
    method = Tiny(s)
    method.setup(ctx)
    history = []  # (mask at the end of a step, parameter values at the end of that step)

    class Watch(Hook):
        name, order = "watch", 99  # after SculpMem's after_step: sees the mask the next step uses

        def after_step(self, ctx, step, total_steps):
            masks = None if method.masks is None else {n: m.clone() for n, m in method.masks.items()}
            history.append((masks, {n: p.detach().clone() for n, p in ctx.params.items()}))

    trainer.train(ctx, method, [Watch()])
    masks_seen, swapped = 0, False
    for (mask, values), (_, next_values) in zip(history, history[1:]):
        if mask is None:
            continue
        masks_seen += 1
        for n, m in mask.items():
            assert int(m.sum()) == max(1, round(density * m.numel())), n  # exact per tensor, every step
            assert torch.equal(next_values[n][~m], values[n][~m]), n  # inactive entries never change
            assert not torch.equal(next_values[n][m], values[n][m]), n  # active ones do train
        swapped |= any(not torch.equal(mask[n], history[-1][0][n]) for n in mask)
    assert masks_seen == s.steps - s.warmup  # the mask exists from the end of warm-up step `warmup`
    assert swapped  # the swaps actually moved the mask (the density held through them)


@pytest.mark.parametrize("alpha", [0.1, 0.5, 1.0])
def test_erasediff_step_descends_forget_at_rate_alpha_and_stays_closest_to_remain(alpha):
    """d = g_r + lam g_f with lam = max(0, (alpha |g_f|^2 - <g_r, g_f>) / |g_f|^2):
    <d, g_f> >= alpha |g_f|^2 (L_f decreases at least at rate alpha along -d); when that already
    holds for g_r, d = g_r exactly (the remain objective is followed unchanged); otherwise the
    constraint is tight (the smallest lam that satisfies it)."""
    gen = torch.Generator().manual_seed(0)
    tight = free = 0
    for case in range(40):
        unet = TinyUNet()
        ctx = tiny_ctx(unet)
        method = EraseDiff(EraseDiffSettings(alpha=alpha))
        a_f = {n: torch.randn(p.shape, generator=gen) for n, p in ctx.params.items()}
        a_r = {n: torch.randn(p.shape, generator=gen) for n, p in ctx.params.items()}
        if case % 2:  # half the cases agree: g_r already points along g_f
            a_r = {n: a_r[n] * 0.1 + 3 * a_f[n] for n in a_r}

        def linear_loss(ctx, latents, prompts, g, forget, a_f=a_f, a_r=a_r):
            a = a_f if forget else a_r  # linear losses: their gradients are exactly a
            return sum((p * a[n]).sum() for n, p in ctx.params.items())

        method._loss = linear_loss
        method.forget = method.remain = method.forget_prompts = method.remain_prompts = None
        method.backward(ctx, gen, lambda: None)

        flat = lambda t: torch.cat([t[n].flatten() for n in ctx.params]).double()  # noqa: E731
        d = flat({n: p.grad for n, p in ctx.params.items()})
        g_f, g_r = flat(a_f), flat(a_r)
        norm_sq = float(g_f @ g_f)
        assert float(d @ g_f) >= alpha * norm_sq * (1 - 1e-5)
        if float(g_r @ g_f) >= alpha * norm_sq:
            free += 1
            assert torch.allclose(d, g_r, atol=1e-6)
        else:
            tight += 1
            assert float(d @ g_f) == pytest.approx(alpha * norm_sq, rel=1e-4)
            lam = float((d - g_r) @ g_f) / norm_sq
            assert lam > 0 and torch.allclose(d, g_r + lam * g_f, atol=1e-5)
    assert tight and free  # both branches were exercised
