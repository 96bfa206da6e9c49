"""A method, an add-on, an attack and a protocol defined outside the package and registered
from here (docs/EXTENDING.md); tests/test_extending.py loads this file via OBLIVIATE_PLUGINS."""
import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from obliviate.attacks.common import Attack, AttackSettings
from obliviate.diffusion import noised
from obliviate.model import latent_shape, predict
from obliviate.plugins import register_attack, register_method, register_protocol, register_regularizer
from obliviate.trainer import Hook, Method, TrainSettings


@dataclass
class ToEmptySettings(TrainSettings):
    steps: int = 3
    lr: float = 1e-3
    batch_size: int = 2


@register_method
class ToEmpty(Method):
    """Map the concept prompt's noise prediction onto the empty prompt's (a toy ESD without guidance)."""

    name = "to-empty"
    Settings = ToEmptySettings
    quick_settings = {"steps": 2}

    def setup(self, ctx, method=None) -> None:
        self.prompt = ctx.catalog.single(ctx.request.concept, "style")

    def method_loss(self, ctx, gen) -> torch.Tensor:
        b = self.settings.batch_size
        x0 = torch.randn(latent_shape(ctx.pipe, b), generator=gen).to(ctx.device)
        x_t, t, _ = noised(ctx, x0, gen)
        with torch.no_grad():
            reference = predict(ctx.unet, x_t, t, ctx.encode([""] * b), params=ctx.start)
        return F.mse_loss(predict(ctx.unet, x_t, t, ctx.encode([self.prompt] * b)).float(), reference.float())


@dataclass
class ShrinkSettings:
    weight: float = 1.0


@register_regularizer
class Shrink(Hook):
    """weight x mean squared change of the trained tensors in this request (a toy L2-SP)."""

    name = "toy-shrink"
    Settings = ShrinkSettings
    quick_settings = {"weight": 1.0}
    not_multi_process = "the toy add-on declares one process only"
    # no for_lora: the default refuses LoRA parameter groups

    def loss(self, ctx) -> torch.Tensor:
        return self.settings.weight * sum(((p - ctx.start[n]) ** 2).mean() for n, p in ctx.params.items())


@dataclass
class PlainSettings(AttackSettings):
    pass


@register_attack
class Plain(Attack):
    """The concept in the catalog's single-concept phrasing, on the target's grid (no optimisation)."""

    name = "plain"
    Settings = PlainSettings

    def attack_concept(self, target, concept: str) -> dict:
        cells = target.grid()
        prompts = [target.protocol.single(concept, target.domain)] * len(cells)
        hits = target.hits(target.generate(prompts, [s for _, s in cells]), concept)
        return {"asr": 100.0 * sum(hits) / len(hits), "hits": hits, "steps": 0}


@register_protocol("tinycanvas")
def tinycanvas():
    """MiniCanvas's catalog and judge under another name, with one evaluation seed."""
    from obliviate.protocols import minicanvas_catalog

    return dataclasses.replace(minicanvas_catalog(), name="tinycanvas", seeds=[7])
