"""Settings: the one way they are validated (`Checked`), the one `NAME:key=value` syntax, typed
coercion from strings, and one range table, with errors that name the input. Below the
trainer and lora, which both read settings."""
from __future__ import annotations

import dataclasses
import math
import types
import functools
import typing
from typing import Any, ClassVar


def parse_settings(cls, values: dict[str, Any] | None, where: str):
    """Build a settings dataclass from strings or values, with errors that name the input."""
    values = dict(values or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in values if k not in fields]
    if unknown:
        raise ValueError(f"{where}: unknown setting(s) {unknown}; valid settings: {', '.join(fields) or '(none)'}")
    hints = typing.get_type_hints(cls)
    out = {}
    for key, raw in values.items():
        kind = hints[key]
        try:
            out[key] = _coerce(raw, kind)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: setting {key}={raw!r} is not a valid {_type_name(kind)}") from None
    try:
        return cls(**out)  # Checked: choices, ranges and the class's own rules, at construction
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


# Valid ranges of numeric settings, by setting name: the same name means the same thing in
# every method, add-on and attack, so one table covers them all (a settings class adds or
# overrides entries with its own `ranges`). Checked when settings are made, so `steps=0` or
# `lr=-1` is refused before any model is loaded or any file written.
# (low, low_inclusive, high, high_inclusive); None = unbounded.
SETTING_RANGES: dict[str, tuple] = {
    "steps": (1, True, None, False), "lr": (0, False, None, False), "batch_size": (1, True, None, False),
    "weight_decay": (0, True, None, False), "grad_clip": (0, True, None, False),
    "anchor_images": (1, True, None, False), "sampler_steps": (1, True, None, False), "guidance": (0, True, None, False),
    "forget_images": (1, True, None, False), "remain_images": (1, True, None, False), "alpha": (0, True, None, False),
    "eta": (0, True, None, False), "ddim_steps": (1, True, None, False), "start_guidance": (0, True, None, False),
    "warmup": (0, True, None, False), "density": (0, False, 1, True), "swap_every": (1, True, None, False),
    "swap_fraction": (0, True, 1, True), "stop_fraction": (0, True, 1, True), "weight": (0, True, None, False),
    "top_k": (0, False, 1, True), "score_batches": (1, True, None, False), "dedup": (0, False, 1, True),
    "nearest": (0, True, None, False), "images_per_concept": (1, True, None, False),
    "image_seed": (0, True, None, False),
}
AT_LEAST_ONE, NON_NEGATIVE, POSITIVE = (1, True, None, False), (0, True, None, False), (0, False, None, False)


class Checked:
    """Base of every settings dataclass (methods, add-ons, attacks): the one way settings are
    validated. A settings class declares
      - its choices as `Literal` types,
      - its numeric ranges by name: SETTING_RANGES, plus its own `ranges` (merged along its bases),
      - in `complete()`, only what those cannot say: rules that tie settings together, files
        that must exist, settings filled in from others (e.g. a recipe's defaults).
    All of it runs when an instance is made, whichever way it is made (Python, an experiment
    file, the command line); parse_settings adds where the values came from to the message."""

    ranges: ClassVar[dict[str, tuple]] = {}

    def __post_init__(self):
        check_settings(self)
        self.complete()

    def complete(self) -> None:
        """Rules across settings; fill in settings that derive from others."""


def valid_ranges(cls) -> dict[str, tuple]:
    """(low, low_inclusive, high, high_inclusive) of each numeric setting of a settings class."""
    names = {f.name for f in dataclasses.fields(cls)}
    ranges = {k: v for k, v in SETTING_RANGES.items() if k in names}
    for klass in reversed(cls.__mro__):
        ranges.update(klass.__dict__.get("ranges", {}))
    return ranges


def check_settings(settings) -> None:
    """Refuse a choice outside its Literal, or a number outside its range, naming the setting."""
    hints, ranges = _hints(type(settings)), valid_ranges(type(settings))
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if value is None:
            continue
        choices = _choices(hints.get(f.name))
        if choices and value not in choices:
            raise ValueError(f"setting {f.name}={value!r} is not a valid choice; valid: {', '.join(map(str, choices))}")
        bounds = ranges.get(f.name)
        if bounds is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        low, low_in, high, high_in = bounds
        ok = (low is None or value > low or (low_in and value == low)) and \
             (high is None or value < high or (high_in and value == high))
        if not ok:
            lo = "" if low is None else f"{'[' if low_in else '('}{low}"
            hi = "inf)" if high is None else f"{high}{']' if high_in else ')'}"
            raise ValueError(f"setting {f.name}={value!r} is out of range; valid: {lo or '(-inf'}, {hi}")


@functools.cache
def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _choices(kind) -> tuple:
    """The values a Literal (or an optional Literal) allows; () for any other type."""
    if typing.get_origin(kind) is typing.Literal:
        return typing.get_args(kind)
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return tuple(c for a in typing.get_args(kind) for c in _choices(a))
    return ()


def parse_named(text: str, flag: str, example: str = "NAME:key=value,key=value") -> tuple[str, dict[str, str]]:
    """`NAME[:key=value,...]` -> (name, raw settings): the one syntax of --reg, --attack and
    --param-group, with errors that name the flag and the input."""
    name, _, rest = text.partition(":")
    settings = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"{flag} {text!r}: settings must look like {example}")
        settings[key.strip()] = value.strip()
    return name.strip(), settings


def _type_name(kind) -> str:
    if typing.get_origin(kind) is typing.Literal:
        return "choice; valid: " + ", ".join(map(str, typing.get_args(kind)))
    return getattr(kind, "__name__", str(kind))


def _coerce(raw, kind):
    origin = typing.get_origin(kind)
    if origin is typing.Literal:
        options = typing.get_args(kind)
        if raw not in options:
            raise ValueError
        return raw
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if raw is None or (isinstance(raw, str) and raw.lower() in ("none", "")):
            return None
        return _coerce(raw, args[0])
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        if str(raw).lower() in ("1", "true", "yes", "on"):
            return True
        if str(raw).lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError
    if kind is int:
        if isinstance(raw, float) and not raw.is_integer():
            raise ValueError
        return int(raw)
    if kind is float:
        value = float(raw)
        if not math.isfinite(value):
            raise ValueError
        return value
    if kind is str:
        return str(raw)
    return raw


def parse_seeds(text: str | None, flag: str = "--seeds") -> list[int] | None:
    """`188,288` -> [188, 288]; an error names the flag and shows a valid value."""
    if not text:
        return None
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"{flag} {text!r}: expected comma-separated integers, e.g. 188,288") from None
    if not seeds:
        raise ValueError(f"{flag} {text!r}: expected comma-separated integers, e.g. 188,288")
    return seeds


def check_output_dir(path, flag: str = "--out") -> None:
    """Refuse, before any work, an output directory that is a file (or lies under one)."""
    from pathlib import Path

    path = Path(path)
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                where = "" if p == path else f": {p}"
                raise ValueError(f"{flag} {path}{where} is a file, not a directory")
            break
