"""What a request trains and what the ledger keeps of it, chosen once from the parameter group:

    Tensors  the group's own tensors (kv-xattn, xattn, full, ...): the ledger keeps their change
    Adapter  a LoRA adapter on them (lora, lora:RANK...): the ledger keeps the adapter itself

Both hand the request a `Model` (the pipeline with the run's earlier deltas applied, the
trained tensors and their starting points) and turn the trained model into the step's files.
"""
from __future__ import annotations

import dataclasses

from . import lora
from .delta import apply_delta, swapped
from .model import denoiser, edited, select_parameters


@dataclasses.dataclass
class Model:
    """The model a request trains: the pipeline, its trained tensors and their starting points."""

    pipe: object
    params: dict  # the trained tensors, by denoiser name
    pretrained: dict  # their values in the base model (LoRA: the adapter's initial values)
    start: dict  # their values when this request starts
    previous: dict  # the run's cumulative delta before this request
    base_params: dict  # the denoiser's tensors that earlier requests changed
    started_from: dict | None = None  # LoRA: the adapter continued from the previous step
    own: dict = dataclasses.field(default_factory=dict)  # tensors add-ons train before the method, by ledger name
    own_start: dict = dataclasses.field(default_factory=dict)  # their values when this request starts

    def add_own(self, tensors: dict) -> None:
        """Tensors an add-on trains before the method (Hook.own_tensors): the step's delta keeps their change too."""
        for n, p in tensors.items():
            if n in self.params or n in self.own:
                raise ValueError(f"tensor {n} is trained twice in one request")
            self.own[n] = p  # no requires_grad here: the add-on sets it while it trains them, the method's loop never
            self.own_start[n] = p.detach().clone()

    def own_change(self) -> dict:
        return {n: (p.detach() - self.own_start[n]).cpu() for n, p in self.own.items()}

    def restore_base(self):
        """The base model's weights for the changed tensors (e.g. for anchor images), while inside."""
        return swapped(self.base_params, {n: p.detach() - self.previous[n].to(p.device) for n, p in self.base_params.items()})


@dataclasses.dataclass
class Stored:
    """A step's record of the trained tensors."""

    tensors: dict  # what delta.safetensors holds
    delta: dict  # the change of the denoiser's own tensors it stands for (drift, the cumulative delta)
    file_metadata: dict  # safetensors header entries beyond the hashes


class Tensors:
    """The parameter group's own tensors are trained; the ledger keeps their change."""

    def __init__(self, group: str):
        self.group = group

    def assemble(self, pipe, previous: dict, seed: int, steps: list[dict]) -> Model:
        params = select_parameters(denoiser(pipe), self.group)
        # the base values exactly (not start - previous, which float rounding perturbs)
        pretrained = {n: p.detach().clone() for n, p in params.items()}
        apply_delta(edited(pipe), previous)
        return _model(pipe, params, pretrained, previous, _changed(pipe, previous))

    def stored(self, model: Model) -> Stored:
        delta = {n: (p.detach() - model.start[n]).cpu() for n, p in model.params.items()}
        delta.update(model.own_change())
        return Stored(delta, delta, {})

    def report(self, stored: Stored, delta_file) -> dict:
        return {}


class Adapter:
    """A LoRA adapter on the group is trained, continuing the previous step's; the ledger keeps the adapter."""

    def __init__(self, group: str):
        self.group = group

    def assemble(self, pipe, previous: dict, seed: int, steps: list[dict]) -> Model:
        # the earlier changes go into the weights first, while they still have their own names
        # (the adapter renames them `base_layer`); the trained tensors are the adapter's
        apply_delta(edited(pipe), previous)
        base_params = _changed(pipe, previous)  # the same tensors the adapter later calls base_layer
        params = lora.inject(denoiser(pipe), self.group, seed)
        started_from = lora.continue_adapter(denoiser(pipe), params, self.group, steps)
        pretrained = {n: p.detach().clone() for n, p in params.items()}
        return _model(pipe, params, pretrained, previous, base_params, started_from)

    def stored(self, model: Model) -> Stored:
        if model.own:  # components refuse such add-ons on LoRA (Hook.for_lora); never stored half
            raise ValueError("a LoRA step cannot keep tensors trained outside its adapter")
        tensors = lora.adapter_tensors(model.params)
        tensors.update({lora.PREVIOUS + n: v for n, v in (model.started_from or {}).items()})
        delta = lora.densify(tensors, lora.parse_group(self.group).scale)
        return Stored(tensors, delta, lora.metadata(self.group))

    def report(self, stored: Stored, delta_file) -> dict:
        """step.json's `adapter`: its form and how much smaller it is than the dense change."""
        return {"adapter": {**lora.metadata(self.group), **lora.size_report(stored.tensors, stored.delta, delta_file)}}


def for_group(group: str) -> Tensors | Adapter:
    return Adapter(group) if lora.is_lora(group) else Tensors(group)


def _changed(pipe, previous: dict) -> dict:
    return {n: p for n, p in edited(pipe).named_parameters() if n in previous}


def _model(pipe, params, pretrained, previous, base_params, started_from=None) -> Model:
    for p in params.values():
        p.requires_grad_(True)
    start = {n: p.detach().clone() for n, p in params.items()}
    return Model(pipe=pipe, params=params, pretrained=pretrained, start=start, previous=previous,
                 base_params=base_params, started_from=started_from)
