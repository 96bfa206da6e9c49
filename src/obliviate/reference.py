"""The reference of every component, read from the code: methods, add-ons, attacks, protocols
and evaluation samplers, each with a one-line description and its settings (type, default,
valid range, and the note the code gives it).

`obliviate list` prints it; docs/METHODS.md is this module's Markdown, regenerated with

    python -m obliviate.reference --out docs/METHODS.md

and a test checks that the committed file equals what the code generates, so the settings
tables cannot drift from the settings classes.

Where the facts come from (change these small functions if they move):
  description   `describe`: the first paragraph of the component's module docstring (one file
                per component); where one module registers several (regularizers/sp.py), the
                class's own docstring.
  ranges        parsing.valid_ranges: parsing.SETTING_RANGES and a settings class's `ranges`
                (merged along its bases); and Literal types (a fixed set of choices), the
                same declarations parsing.Checked enforces.
  notes         `setting_notes`: the comment on a setting's line in its settings class, and the
                comment lines right above it.
"""
from __future__ import annotations

import dataclasses
import inspect
import io
import re
import sys
import textwrap
import tokenize
import typing
from dataclasses import dataclass, field
from pathlib import Path

from .parsing import valid_ranges

KINDS = ("methods", "add-ons", "attacks", "protocols", "samplers")


@dataclass
class Setting:
    name: str
    type: str
    default: str
    valid: str
    note: str = ""


@dataclass
class Component:
    kind: str  # one of KINDS
    name: str
    description: str
    settings: list[Setting] = field(default_factory=list)
    facts: list[tuple[str, str]] = field(default_factory=list)  # protocols and samplers: what they fix
    usage: str = ""


# ---------------------------------------------------------------- where the facts come from
def describe(cls, registry: dict) -> str:
    """One line: the module docstring's first paragraph, or the class's own docstring where
    its module registers several components."""
    module = sys.modules[cls.__module__]
    shared = sum(1 for c in registry.values() if getattr(c, "__module__", None) == cls.__module__) > 1
    doc = cls.__dict__.get("__doc__") if shared else module.__doc__
    first = " ".join(inspect.cleandoc(doc or "").split("\n\n")[0].split())
    # "`rece`: UCE hardened ..." -> "UCE hardened ...": the name is already in the name column
    first = re.sub(r"^`[\w+-]+`\s*(\(ours\))?:\s*", lambda m: "(ours) " if m.group(1) else "", first)
    return first[:1].upper() + first[1:]


def setting_notes(cls) -> dict[str, str]:
    """The comments that explain each setting, read from the source of the settings class and
    its bases (the most derived class that comments a setting wins)."""
    notes: dict[str, str] = {}
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        comments: dict[int, str] = {}
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                comments[tok.start[0]] = tok.string.lstrip("#").strip()
        lines = source.splitlines()
        for number, line in enumerate(lines, start=1):
            m = re.match(r"    (\w+)\s*:", line)
            if not m or m.group(1) not in {f.name for f in dataclasses.fields(klass)}:
                continue
            above, k = [], number - 1
            while k >= 1 and lines[k - 1].strip().startswith("#"):
                above.insert(0, comments.get(k, ""))
                k -= 1
            text = " ".join(p for p in (*above, comments.get(number, "")) if p)
            if text:
                notes[m.group(1)] = text
    return notes


# ---------------------------------------------------------------- formatting single values
def _type_name(kind) -> str:
    origin = typing.get_origin(kind)
    if origin is typing.Literal:
        return "choice"
    if origin is typing.Union or type(kind).__name__ == "UnionType":
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        return _type_name(args[0]) if len(args) == 1 else " or ".join(_type_name(a) for a in args)
    return getattr(kind, "__name__", str(kind))


def _value(value) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return f"{value:g}" if isinstance(value, float) else str(value)


def _bounds(bounds: tuple) -> str:
    low, low_in, high, high_in = bounds
    if high is None:
        return f"{'>=' if low_in else '>'} {low:g}" if low is not None else "any"
    if low is None:
        return f"{'<=' if high_in else '<'} {high:g}"
    return f"{'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}"


def settings_of(cls) -> list[Setting]:
    hints = typing.get_type_hints(cls)
    ranges, notes = valid_ranges(cls), setting_notes(cls)
    out = []
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        choices = [a for a in typing.get_args(kind) if typing.get_origin(a) is typing.Literal] \
            if typing.get_origin(kind) is not typing.Literal else [kind]
        if choices:
            valid = ", ".join(map(str, typing.get_args(choices[0])))
        elif f.name in ranges:
            valid = _bounds(ranges[f.name])
        elif kind is bool:
            valid = "true, false"
        else:
            valid = ""
        out.append(Setting(f.name, _type_name(kind), _value(default), valid, notes.get(f.name, "")))
    return out


# ---------------------------------------------------------------- the components
def _hook_component(kind: str, name: str, cls, registry: dict, usage: str) -> Component:
    return Component(kind, name, describe(cls, registry), settings_of(cls.Settings), usage=usage)


def _sampler_description(preset: dict) -> str:
    from .evaluate.sampler import SamplerConfig

    config = SamplerConfig(**preset)
    solver = {"dpm": "DPM-Solver++", "ddim": "DDIM", "euler": "Euler", "pndm": "PNDM", "ddpm": "DDPM"}[config.scheduler]
    guidance = f"guidance {config.guidance:g}" if config.guidance > 1 else "no classifier-free guidance"
    text = f"{config.steps}-step {solver}, {guidance}"
    if config.x0_at:
        text += f"; scores the predicted clean image after {config.x0_at} of the {config.steps} steps"
    return text + f" ({config.unet_evaluations()} UNet evaluations per image)"


def components() -> list[Component]:
    from .attacks import ATTACKS
    from .evaluate.sampler import SAMPLER_PRESETS, SamplerConfig
    from .methods import METHODS
    from .protocols import PROTOCOLS
    from .regularizers import REGULARIZERS

    out = [_hook_component("methods", n, c, METHODS, f"obliviate unlearn --method {n} --method-setting KEY=VALUE")
           for n, c in METHODS.items()]
    out += [_hook_component("add-ons", n, c, REGULARIZERS, f"obliviate unlearn --reg {n}:KEY=VALUE,KEY=VALUE")
            for n, c in REGULARIZERS.items()]
    out += [_hook_component("attacks", n, c, ATTACKS, f"obliviate attack --run RUN --attack {n}:KEY=VALUE --out DIR") for n, c in ATTACKS.items()]
    for name, make in PROTOCOLS.items():
        catalog = make()
        facts = [("styles", f"{len(catalog.styles)}: " + ", ".join(catalog.styles) if catalog.styles else "none"),
                 ("objects", f"{len(catalog.objects)}: " + ", ".join(catalog.objects) if catalog.objects else "none"),
                 ("prompt", catalog.template), ("evaluation seeds", ", ".join(map(str, catalog.seeds))),
                 ("sampler", ", ".join(f"{k} {_value(v)}" for k, v in catalog.sampler.items()))]
        out.append(Component("protocols", name, describe(make, PROTOCOLS), facts=facts,
                             usage=f"obliviate eval --protocol {name}"))
    sampler_settings = settings_of(SamplerConfig)
    for name, preset in SAMPLER_PRESETS.items():
        values = {**{s.name: s.default for s in sampler_settings}, **{k: _value(v) for k, v in preset.items()}}
        settings = [dataclasses.replace(s, default=values[s.name]) for s in sampler_settings]
        out.append(Component("samplers", name, _sampler_description(preset), settings,
                             usage=f"experiment file: eval: {{sampler: {name}}}"))
    return out


def find(name: str) -> list[Component]:
    """Every component called `name` (a name may be used by more than one kind)."""
    found = [c for c in components() if c.name == name]
    if not found:
        names = ", ".join(c.name for c in components())
        raise ValueError(f"obliviate list {name!r}: no such method, add-on, attack, protocol or sampler; valid: {names}, "
                         f"or a kind: {', '.join(KINDS)}")
    return found


# ---------------------------------------------------------------- text (obliviate list)
def overview_text(kinds: tuple[str, ...] = KINDS) -> str:
    comps = components()
    width = max(len(c.name) for c in comps)
    out = []
    for kind in kinds:
        out.append(f"{kind}:")
        out += [f"  {c.name:{width}s}  {c.description}" for c in comps if c.kind == kind]
        out.append("")
    out.append("obliviate list NAME: that component's settings, defaults and valid ranges")
    return "\n".join(out)


def component_text(c: Component) -> str:
    out = [f"{c.name} ({c.kind[:-1]}): {c.description}", f"usage: {c.usage}", ""]
    for key, value in c.facts:
        out.append(f"  {key}: {value}")
    if c.settings:
        width = max(len(s.name) for s in c.settings)
        for s in c.settings:
            valid = f"  valid: {s.valid}" if s.valid else ""
            out.append(f"  {s.name:{width}s}  {s.type}, default {s.default}{valid}")
            if s.note:
                out += textwrap.wrap(s.note, 96, initial_indent=" " * (width + 4), subsequent_indent=" " * (width + 4))
    return "\n".join(out)


# ---------------------------------------------------------------- Markdown (docs/METHODS.md)
def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown() -> str:
    comps = components()
    out = ["# Methods, add-ons, attacks, protocols and samplers", "",
           "<!-- generated by `python -m obliviate.reference --out docs/METHODS.md`; do not edit by hand -->", "",
           "Every component obliviate ships, with its settings, defaults and valid ranges, as the code "
           "declares them. `obliviate list` prints the overview and `obliviate list NAME` one component.", ""]
    titles = {"methods": "Methods", "add-ons": "Add-ons (regularizers)", "attacks": "Attacks",
              "protocols": "Protocols", "samplers": "Evaluation samplers"}
    for kind in KINDS:
        out += [f"- [{titles[kind]}](#{titles[kind].lower().replace(' ', '-').replace('(', '').replace(')', '')}): "
                + ", ".join(f"`{c.name}`" for c in comps if c.kind == kind)]
    out.append("")
    for kind in KINDS:
        out += [f"## {titles[kind]}", ""]
        for c in (c for c in comps if c.kind == kind):
            out += [f"### `{c.name}`", "", c.description, "", f"Usage: `{c.usage}`", ""]
            if c.facts:
                out += [f"- **{k}**: {v}" for k, v in c.facts] + [""]
            if c.settings:
                out += ["| setting | type | default | valid | note |", "|---|---|---|---|---|"]
                out += [f"| `{s.name}` | {s.type} | {_cell(s.default)} | {_cell(s.valid)} | {_cell(s.note)} |"
                        for s in c.settings]
                out.append("")
    return "\n".join(out).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m obliviate.reference", description="Write docs/METHODS.md from the code.")
    parser.add_argument("--out", help="write the Markdown here, atomically (default: print it)")
    args = parser.parse_args(argv)
    if args.out:
        from .delta import atomic_write_bytes

        atomic_write_bytes(Path(args.out), markdown().encode("utf-8"))
    else:
        sys.stdout.write(markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
