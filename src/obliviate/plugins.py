"""Components defined outside the package: a method, add-on, attack or protocol in a file of
your own, registered from there, used from the command line and experiment files.

    # my_method.py
    from obliviate.plugins import register_method
    from obliviate.trainer import Method, TrainSettings

    @register_method
    class Negate(Method):
        name = "negate"
        ...

    OBLIVIATE_PLUGINS=my_method.py obliviate unlearn --method negate ...

`OBLIVIATE_PLUGINS` lists files or importable module names (comma-separated); an installed
package can instead declare an entry point in the group `obliviate.plugins`. Both are loaded
once, before the command line is parsed, in every obliviate process (workers of an executor
inherit the environment). A component declares what it supports on its class (trainer.Hook,
attacks.common.Attack, protocols.Catalog); nothing else needs to know its name.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
from importlib.metadata import entry_points
from pathlib import Path

ENV = "OBLIVIATE_PLUGINS"
GROUP = "obliviate.plugins"
_LOADED: set[str] = set()


def _register(table: dict, kind: str, cls):
    name = getattr(cls, "name", "")
    if not name:
        raise ValueError(f"a {kind} needs a `name` class attribute to be registered")
    if name in table and table[name] is not cls:
        raise ValueError(f"a {kind} named {name!r} is already registered ({table[name].__module__}); choose another name")
    table[name] = cls
    return cls


def register_method(cls):
    from .methods import METHODS

    return _register(METHODS, "method", cls)


def register_regularizer(cls):
    from .regularizers import REGULARIZERS

    return _register(REGULARIZERS, "regularizer", cls)


def register_attack(cls):
    from .attacks import ATTACKS

    return _register(ATTACKS, "attack", cls)


def register_protocol(name: str):
    """Decorator for a function returning a protocols.Catalog: `@register_protocol("mine")`."""
    from .protocols import PROTOCOLS

    def add(fn):
        if name in PROTOCOLS and PROTOCOLS[name] is not fn:
            raise ValueError(f"a protocol named {name!r} is already registered; choose another name")
        PROTOCOLS[name] = fn
        return fn

    return add


def load_plugins() -> list[str]:
    """Import every plugin named by the environment and by installed entry points (once each)."""
    loaded = []
    for ep in entry_points(group=GROUP):
        if f"ep:{ep.name}" not in _LOADED:
            ep.load()
            _LOADED.add(f"ep:{ep.name}")
            loaded.append(ep.value)
    for item in filter(None, (s.strip() for s in os.environ.get(ENV, "").split(","))):
        if item in _LOADED:
            continue
        path = Path(item)
        if item.endswith(".py"):
            if not path.is_file():
                raise FileNotFoundError(f"{ENV}: plugin file {item} does not exist")
            spec = importlib.util.spec_from_file_location(f"obliviate_plugin_{path.stem}", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            try:
                importlib.import_module(item)
            except ModuleNotFoundError as err:
                raise ValueError(f"{ENV}: cannot import plugin module {item!r} ({err}); give a .py file or an importable "
                                 "module name") from None
        _LOADED.add(item)
        loaded.append(item)
    return loaded


__all__ = ["load_plugins", "register_attack", "register_method", "register_protocol", "register_regularizer"]
