"""A request's components: its method and add-ons, built from the request's settings and
checked (names, types, ranges, LoRA forms, model families) before any work.

A request is parsed once, at the edge (the command line, an experiment file, Python):
`parse(request)` builds its hooks and resolves every setting (defaults filled in, types and
ranges checked); the ledger records and compares the resolved settings (`Parsed.config`)."""
from __future__ import annotations

import contextlib
import dataclasses

from . import lora
from .methods import get_method
from .lora import check_param_group
from .model import check_group_for_model, model_family
from .regularizers import get_regularizer
from .parsing import parse_settings
from .request import Request


@dataclasses.dataclass
class Parsed:
    """A request with its hooks built and its settings resolved."""

    request: Request
    method: object  # trainer.Method
    regs: list  # trainer.Hook, in the request's order

    @property
    def config(self) -> dict:
        """The resolved settings: recorded in step.json, compared to tell one request's work from another's."""
        return resolved_config(self.method, self.regs)


def parse(request: Request | Parsed) -> Parsed:
    """The request's hooks and resolved settings; a request parsed already is returned as it is."""
    return request if isinstance(request, Parsed) else Parsed(request, *build_hooks(request))


def build_hooks(request: Request):
    """Method and regularizers from a request, every setting validated before any work."""
    method_cls = get_method(request.method)
    method = method_cls(parse_settings(method_cls.Settings, request.method_settings, f"method {request.method}"))
    regs = []
    seen = set()
    for name, settings in request.regularizers:
        cls = get_regularizer(name)
        if name in seen:
            raise ValueError(f"regularizer {name!r} is given twice")
        seen.add(name)
        regs.append(cls(parse_settings(cls.Settings, settings, f"regularizer {name}")))
    on_loss = [r for r in regs if not r.trains_before_method]
    if method.closed_form and on_loss:
        raise ValueError(
            f"method {method.name!r} is closed form (one linear solve, no training loop), so the regularizer(s) "
            f"{', '.join(r.name for r in on_loss)} cannot apply: they act on a loss, gradients or optimizer updates. "
            f"Protect concepts with {method.name}'s own preservation rows instead (preserve=..., preserve_prompts=FILE)"
        )
    check_param_group(request.param_group)
    if lora.is_lora(request.param_group):  # each component's LoRA form, or its refusal
        group = lora.parse_group(request.param_group) and request.param_group
        method = method.for_lora(group)
        try:
            regs = [r.for_lora(group) for r in regs]
        except ValueError as err:
            raise ValueError(f"{err}; with LoRA use {', '.join(lora_ready_regularizers(group))}") from None
    return method, regs


def check_for_model(model_dir, method, regs, group: str) -> None:
    """Refuse, before any work, hooks or a parameter group the model cannot serve (each hook's `families`)."""
    check_group_for_model(model_dir, group, method)
    family = model_family(model_dir)
    for hook in [method, *regs]:
        if hook.families is not None and family not in hook.families:
            raise ValueError(f"{hook.name!r} does not support {family.upper()} pipelines (it supports "
                             f"{', '.join(f.upper() for f in hook.families)})")


def lora_ready_regularizers(group: str) -> list[str]:
    """The add-ons that declare a LoRA form (their `for_lora` accepts `group`)."""
    from .regularizers import REGULARIZERS

    ready = []
    for name, cls in REGULARIZERS.items():
        with contextlib.suppress(ValueError):
            cls(cls.Settings()).for_lora(group)
            ready.append(name)
    return ready


def resolved_config(method, regs) -> dict:
    return {
        "method": {"name": method.name, **dataclasses.asdict(method.settings)},
        "regularizers": [{"name": r.name, **dataclasses.asdict(r.settings)} for r in regs],
    }
