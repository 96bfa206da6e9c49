"""Experiment files: parsed and validated (names, types, ranges) before any work starts.

A file names a model, a protocol, a concept sequence and variants. Variant fields given
under a top-level `defaults:` apply to every variant unless the variant sets them;
`method_settings` is merged key by key (the variant's keys win), so a file states a shared
`steps:` once instead of in every variant.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..continual import build_hooks
from ..evaluate.sampler import SamplerConfig
from ..merge import MERGE_METHODS
from ..request import Request
from .settings import SETTINGS


@dataclass
class Variant:
    name: str
    setting: str = "sequential"
    method: str = "conabl"
    method_settings: dict[str, Any] = field(default_factory=dict)
    regularizers: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    early_stopping: bool = False  # simultaneous only
    merge: dict[str, Any] = field(default_factory=dict)  # independent+merge only
    param_group: str = "kv-xattn"
    sweep: dict[str, Any] = field(default_factory=dict)  # {key, values}: strength chosen on probe seeds (strength.py)


@dataclass
class Experiment:
    name: str
    model: str
    protocol: str
    domain: str
    sequence: list[str]
    retained: list[str] | None
    partners: list[str] | str | None
    seeds: list[int]
    probe_seeds: list[int]
    sampler: SamplerConfig
    variants: list[Variant]
    seed: int = 0
    grid_variant: str | None = None
    grid_prompts: int = 6
    style_classifier: str | None = None
    object_classifier: str | None = None
    raw: dict = field(default_factory=dict)
    attacks: list[dict] = field(default_factory=list)  # see attacks/runner.py
    strength: dict = field(default_factory=lambda: {"policy": "equal-forgetting", "ua_min": 90.0})  # strength.py
    # how many requests of the sequence to run (None: all). The evaluation grid keeps the whole
    # sequence, so a run extended later from N to more requests in the same directory reuses
    # its first N steps and their evaluations (the study's 8-request runs grow into 12)
    requests: int | None = None

    @property
    def requested(self) -> list[str]:
        """The concepts requested, in order: the first `requests` of the sequence."""
        return self.sequence[: self.requests] if self.requests else list(self.sequence)


EXPERIMENT_KEYS = {"name", "model", "protocol", "domain", "sequence", "retained", "partners", "eval", "variants", "seed",
                   "grid", "classifiers", "attacks", "defaults", "strength", "requests", "executor"}
VARIANT_KEYS = {"name", "setting", "method", "method_settings", "regularizers", "early_stopping", "merge", "param_group",
                "sweep"}


def _regs(items, where: str) -> list[tuple[str, dict]]:
    out = []
    for item in items or []:
        if isinstance(item, str):
            out.append((item, {}))
        elif isinstance(item, dict) and "name" in item:
            settings = {k: v for k, v in item.items() if k != "name"}
            out.append((item["name"], settings))
        else:
            raise ValueError(f"{where}: a regularizer is a name or a mapping with 'name', got {item!r}")
    return out


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


# The type of every field of an experiment file: YAML turns `seeds: "188"` into a string
# that iterates as ['1', '8', '8'] and slips past later checks, so types are checked first.
_TYPES = {
    "str": (lambda x: isinstance(x, str), "a string"),
    "int": (_is_int, "an integer"),
    "bool": (lambda x: isinstance(x, bool), "true or false"),
    "mapping": (lambda x: isinstance(x, dict), "a mapping"),
    "list[str]": (lambda x: isinstance(x, list) and all(isinstance(i, str) for i in x), "a list of names"),
    "list[int]": (lambda x: isinstance(x, list) and bool(x) and all(_is_int(i) for i in x), "a non-empty list of integers"),
    "list": (lambda x: isinstance(x, list), "a list"),
    "str|mapping": (lambda x: isinstance(x, (str, dict)), "a preset name or a mapping"),
    "list[str]|all": (lambda x: x == "all" or (isinstance(x, list) and all(isinstance(i, str) for i in x)),
                      "a list of names or all"),
    "number|list[number]": (lambda x: _is_number(x) or (isinstance(x, list) and bool(x) and all(_is_number(i) for i in x)),
                            "a number or a non-empty list of numbers"),
}
_EXPERIMENT_TYPES = {"name": "str", "model": "str", "protocol": "str", "domain": "str", "sequence": "list[str]",
                     "retained": "list[str]", "partners": "list[str]|all", "eval": "mapping", "variants": "list", "seed": "int",
                     "grid": "mapping", "classifiers": "mapping", "attacks": "list", "defaults": "mapping",
                     "strength": "mapping", "requests": "int", "executor": "mapping"}
_EVAL_TYPES = {"seeds": "list[int]", "probe_seeds": "list[int]", "sampler": "str|mapping"}
_GRID_TYPES = {"variant": "str", "prompts": "int"}
_CLASSIFIER_TYPES = {"style": "str", "object": "str", "arch": "mapping"}  # arch: ViT shape overrides (tests: tiny judges)
_VARIANT_TYPES = {"name": "str", "setting": "str", "method": "str", "method_settings": "mapping", "regularizers": "list",
                  "early_stopping": "bool", "merge": "mapping", "param_group": "str", "sweep": "mapping"}
_DEFAULTS_TYPES = {k: t for k, t in _VARIANT_TYPES.items() if k != "name"}  # a shared name would clash
_MERGE_TYPES = {"method": "str", "lam": "number|list[number]", "top_k": "number|list[number]"}


def _check_types(mapping: dict, types: dict, where: str) -> None:
    """Unknown keys and wrong types, each error naming the field, its value and what is valid."""
    unknown = set(mapping) - set(types)
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}; valid keys: {', '.join(sorted(types))}")
    for key, value in mapping.items():
        if value is None:  # YAML `key:` with nothing = the default
            continue
        test, what = _TYPES[types[key]]
        if not test(value):
            raise ValueError(f"{where}: {key} must be {what}, got {value!r}")


def with_defaults(variant: dict, defaults: dict) -> dict:
    """A variant's fields over the file's `defaults:`; method_settings merged key by key."""
    out = {k: copy.deepcopy(v) for k, v in defaults.items() if v is not None}
    for key, value in variant.items():
        if value is None:  # `key:` with nothing keeps the default
            continue
        if key == "method_settings" and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def resolve_model(model: str | None) -> str:
    if model in (None, "minicanvas", "bundled"):
        from ..minicanvas import bundled_path

        return str(bundled_path())
    return str(model)


def _parse_variant(v: dict, domain: str, vw: str) -> Variant:
    merge = v.get("merge") or {}
    _check_types(merge, _MERGE_TYPES, f"{vw} ({v['name']}): merge")
    tops = 1.0 if merge.get("top_k") is None else merge["top_k"]
    for k in tops if isinstance(tops, list) else [tops]:
        if not 0 < k <= 1:
            raise ValueError(f"{vw} ({v['name']}): merge top_k {k!r} is out of range; valid: (0, 1]")
    variant = Variant(name=str(v["name"]), setting=v.get("setting", "sequential"), method=v.get("method", "conabl"),
                      method_settings=dict(v.get("method_settings", {}) or {}), regularizers=_regs(v.get("regularizers"), vw),
                      early_stopping=bool(v.get("early_stopping", False)), merge=dict(v.get("merge", {}) or {}),
                      param_group=v.get("param_group", "kv-xattn"), sweep=dict(v.get("sweep") or {}))
    if variant.setting not in SETTINGS:
        raise ValueError(f"{vw} ({variant.name}): setting {variant.setting!r} is not valid; valid: {', '.join(SETTINGS)}")
    from ..lora import check_param_group

    try:
        check_param_group(variant.param_group)  # kv-xattn, xattn, full or lora:...
    except ValueError as err:
        raise ValueError(f"{vw} ({variant.name}): param_group {variant.param_group!r} is not valid: {err}") from None
    # every method / regularizer name and setting is checked now, not after an hour of work
    try:
        build_hooks(Request("x", domain if domain in ("style", "object") else "other", variant.method,
                            variant.method_settings, variant.regularizers, param_group=variant.param_group))
    except ValueError as err:
        raise ValueError(f"{vw} ({variant.name}): {err}") from None
    if variant.sweep:  # every swept value is checked now too
        from .strength import with_value

        sweep = variant.sweep
        if set(sweep) != {"key", "values"} or not isinstance(sweep["key"], str) or not isinstance(sweep["values"], list) \
                or not sweep["values"] or not all(_is_number(x) for x in sweep["values"]):
            raise ValueError(f"{vw} ({variant.name}): sweep is {{key: regularizers.NAME.SETTING, method_settings.SETTING "
                             "or merge.lam/top_k, "
                             f"values: [numbers]}}, got {sweep!r}")
        if len(set(sweep["values"])) != len(sweep["values"]):
            raise ValueError(f"{vw} ({variant.name}): sweep values repeat: {sweep['values']}")
        for value in sweep["values"]:
            w = with_value(variant, sweep["key"], value)
            if sweep["key"] == "merge.top_k" and not 0 < value <= 1:
                raise ValueError(f"{vw} ({variant.name}): swept merge top_k {value!r} is out of range; valid: (0, 1]")
            try:
                build_hooks(Request("x", domain if domain in ("style", "object") else "other", w.method,
                                    w.method_settings, w.regularizers, param_group=w.param_group))
            except ValueError as err:
                raise ValueError(f"{vw} ({variant.name}): sweep value {value!r}: {err}") from None
    if variant.setting == "independent+merge":
        m = variant.merge.get("method", "ties")
        if m not in MERGE_METHODS:
            raise ValueError(f"{vw}: merge method {m!r} is not valid; valid: {', '.join(MERGE_METHODS)}")
    return variant


def load_experiment(path_or_dict) -> Experiment:
    """Parse and validate an experiment file before any work starts."""
    if isinstance(path_or_dict, dict):
        raw, where = copy.deepcopy(path_or_dict), "experiment"
    else:
        path = Path(path_or_dict)
        if not path.exists():
            raise FileNotFoundError(f"experiment file {path} does not exist")
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ValueError(f"{path} is not valid YAML: {err}") from None
        where = str(path)
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: an experiment file is a mapping")
    unknown = set(raw) - EXPERIMENT_KEYS
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}; valid keys: {', '.join(sorted(EXPERIMENT_KEYS))}")
    for key in ("domain", "sequence", "variants"):
        if key not in raw:
            raise ValueError(f"{where}: missing required key {key!r}")
    _check_types(raw, _EXPERIMENT_TYPES, where)
    if raw["domain"] not in ("style", "object"):
        raise ValueError(f"{where}: domain {raw['domain']!r} is not valid; valid: style, object")
    if not raw["sequence"]:
        raise ValueError(f"{where}: sequence is empty; list the concepts to unlearn in order")
    if not raw["variants"]:
        raise ValueError(f"{where}: variants is empty; list at least one variant, e.g. - {{name: conabl, method: conabl}}")
    ev = raw.get("eval", {}) or {}
    _check_types(ev, _EVAL_TYPES, f"{where}: eval")
    _check_types(raw.get("grid") or {}, _GRID_TYPES, f"{where}: grid")
    _check_types(raw.get("classifiers") or {}, _CLASSIFIER_TYPES, f"{where}: classifiers")
    defaults = raw.get("defaults") or {}
    _check_types(defaults, _DEFAULTS_TYPES, f"{where}: defaults")
    from ..parsing import parse_settings

    sampler = parse_sampler(ev.get("sampler"), f"{where}: eval.sampler")
    variants = []
    for i, v in enumerate(raw["variants"]):
        vw = f"{where}: variants[{i}]"
        if not isinstance(v, dict) or "name" not in v:
            raise ValueError(f"{vw}: each variant is a mapping with a 'name'")
        _check_types(v, _VARIANT_TYPES, f"{vw} ({v['name']})")
        variants.append(_parse_variant(with_defaults(v, defaults), raw["domain"], vw))
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ValueError(f"{where}: variant names must be unique, got {names}")
    grid = raw.get("grid", {}) or {}
    classifiers = raw.get("classifiers", {}) or {}
    exp = Experiment(
        name=str(raw.get("name", "experiment")), model=resolve_model(raw.get("model")), protocol=raw.get("protocol", "minicanvas"),
        domain=raw["domain"], sequence=list(raw["sequence"]), retained=raw.get("retained"),
        partners=raw.get("partners"),  # "all": every concept of the other domain (runner.resolve_partners)
        seeds=list(ev.get("seeds", [188, 288])), probe_seeds=list(ev.get("probe_seeds", [1, 2])), sampler=sampler,
        variants=variants, seed=int(raw.get("seed", 0)), grid_variant=grid.get("variant"), grid_prompts=int(grid.get("prompts", 6)),
        style_classifier=classifiers.get("style"), object_classifier=classifiers.get("object"), raw=raw,
    )
    if set(exp.seeds) & set(exp.probe_seeds):
        raise ValueError(f"{where}: probe_seeds {exp.probe_seeds} must be disjoint from the reported seeds {exp.seeds}")
    if exp.grid_prompts < 1:
        raise ValueError(f"{where}: grid.prompts must be >= 1, got {exp.grid_prompts}")
    if exp.grid_variant and exp.grid_variant not in names:
        raise ValueError(f"{where}: grid.variant {exp.grid_variant!r} is not a variant; variants: {', '.join(names)}")
    if len(set(exp.sequence)) != len(exp.sequence):
        raise ValueError(f"{where}: the sequence repeats a concept")
    if raw.get("requests") is not None:
        if not 1 <= raw["requests"] <= len(exp.sequence):
            raise ValueError(f"{where}: requests must be in 1..{len(exp.sequence)} (the sequence's length), got {raw['requests']}")
        if raw.get("attacks"):
            raise ValueError(f"{where}: requests (a prefix of the sequence) cannot be combined with attacks; run the whole sequence")
        exp.requests = int(raw["requests"])
    # attacks on erased concepts (attacks/runner.py): checked now, run after each variant
    from ..attacks.runner import parse_attacks_section

    exp.attacks = parse_attacks_section(raw.get("attacks"), where)
    from .executor import check_block

    check_block(raw.get("executor"), where)  # where the chains run (executor.py): checked now, used by `run`
    from .strength import parse_policy

    exp.strength = parse_policy(raw.get("strength"), f"{where}: strength")
    return exp


def parse_sampler(spec, where: str) -> SamplerConfig | None:
    """`eval.sampler`: a preset name (evaluate/sampler.py SAMPLER_PRESETS), or a mapping of
    settings, optionally with `preset:` underneath (the mapping's settings win)."""
    from ..parsing import parse_settings

    if not spec:
        return None
    if isinstance(spec, str):
        spec = {"preset": spec}
    spec = dict(spec)
    preset = spec.pop("preset", None)
    try:
        base = SamplerConfig.named(preset).__dict__ if preset is not None else {}
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    return parse_settings(SamplerConfig, {**base, **spec}, where)


def apply_overrides(exp: Experiment, args) -> Experiment:
    """Command-line paths win over the file's (UnlearnCanvas: the user's checkpoint locations)."""
    if getattr(args, "model", None):
        exp.model = resolve_model(args.model)
    if getattr(args, "style_classifier", None):
        exp.style_classifier = args.style_classifier
    if getattr(args, "object_classifier", None):
        exp.object_classifier = args.object_classifier
    from ..model import check_pipeline_dir
    from ..protocols import get_protocol

    protocol = get_protocol(exp.protocol)
    if protocol.judge_inputs == "checkpoints":  # the checkpoints first: the message names the flags
        protocol.check_judge_inputs(exp.model, exp.style_classifier, exp.object_classifier)
    check_pipeline_dir(exp.model)
    protocol.check_judge_inputs(exp.model, exp.style_classifier, exp.object_classifier)
    from ..attacks import check_model
    from ..continual import check_for_model

    for attack in exp.attacks:  # before the training, not after it
        check_model(attack["name"], exp.model)
    for variant in exp.variants:  # e.g. uce on SD3/FLUX needs param_group: context
        method, regs = build_hooks(Request("x", "other", variant.method, variant.method_settings, variant.regularizers,
                                           param_group=variant.param_group))
        try:
            check_for_model(exp.model, method, regs, variant.param_group)
        except ValueError as err:
            raise ValueError(f"variant {variant.name!r}: {err}") from None
    return exp


def parse_variant(variant: dict, domain: str = "other", where: str = "variant", defaults: dict | None = None) -> Variant:
    """One variant in the experiment file's syntax (`{name, method, method_settings,
    regularizers: [NAME or {name: NAME, SETTING: value}], param_group, ...}`), over `defaults`
    (a file's `defaults:`), checked exactly as a variant of an experiment file is: the one
    variant syntax, also behind the command line's --method/--reg shorthand (cli.py) and
    scripts/robustness.py. `domain`: style, object or other (the names' checks)."""
    defaults = defaults or {}
    _check_types(defaults, _DEFAULTS_TYPES, f"{where}: defaults")
    if not isinstance(variant, dict) or "name" not in variant:
        raise ValueError(f"{where}: a variant is a mapping with a 'name', got {variant!r}")
    _check_types(variant, _VARIANT_TYPES, f"{where} ({variant['name']})")
    return _parse_variant(with_defaults(variant, defaults), domain, where)
