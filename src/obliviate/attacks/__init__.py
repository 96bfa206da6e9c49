"""Attacks on erased concepts, registered by name. Adding one: a new file plus one line here.

`run_attack` attacks every concept a model unlearned and writes `attack.json`:

    {"attack", "settings", "domain", "unlearned", "partners", "seeds",
     "concepts": {c: {"asr", "steps", ...}},      deterministic given the seed
     "mean_asr", "robust_UA",                      Robust UA = 100 - mean ASR
     "clean_UA",                                   100 - mean accuracy of the plain template, same grid
     "timings": {"total_seconds", "per_concept_seconds"}}   the only wall-clock fields
"""
from __future__ import annotations

from pathlib import Path

from ..delta import atomic_write_json
from ..parsing import parse_named, parse_settings
from .common import Attack, Target, Timer, load_target, settings_dict
from .inversion import Inversion
from .paraphrase import Paraphrase
from .prefix import Prefix
from .relearn import Relearn

ATTACKS = {a.name: a for a in (Paraphrase, Inversion, Prefix, Relearn)}


def get_attack(name: str):
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; valid attacks: {', '.join(ATTACKS)}")
    return ATTACKS[name]


def build_attack(name: str, settings: dict | None = None) -> Attack:
    """Name and settings checked before any work."""
    cls = get_attack(name)
    return cls(parse_settings(cls.Settings, settings, f"attack {name}"))


def parse_attack(text: str) -> tuple[str, dict[str, str]]:
    """`NAME[:key=value,...]` -> (name, settings)."""
    name, settings = parse_named(text, "--attack")
    if not name:
        raise ValueError(f"--attack {text!r}: missing attack name; valid attacks: {', '.join(ATTACKS)}")
    return name, settings


def check_model(name: str, model) -> None:
    """Refuse, before any work, an attack on a model family it does not declare (`families`)."""
    from ..model import model_family

    family = model_family(model)
    if family not in get_attack(name).families:
        usable = [a for a, cls in ATTACKS.items() if family in cls.families]
        raise ValueError(f"attack {name!r} does not support {family.upper()} pipelines yet (it supports "
                         f"{', '.join(get_attack(name).families)}); on {family.upper()} use attack {', '.join(usable)}")


def run_attack(target: Target, attack: Attack, out: str | Path | None = None, **info) -> dict:
    """Attack every unlearned concept of `target`; write OUT/attack.json atomically."""
    check_model(attack.name, target.pipe)
    total = Timer()
    concepts, seconds = {}, {}
    for concept in target.unlearned:
        timer = Timer()
        entry = attack.attack_concept(target, concept)  # learned tokens never change target.pipe (soft_tokens.py)
        # the unattacked template prompt on the same grid: clean UA from the same images' seeds
        clean = target.clean_hits(concept)
        entry["clean_accuracy"] = 100.0 * sum(clean) / len(clean)
        entry["clean_hits"] = clean  # per image, for intervals (evaluate/resample.py)
        concepts[concept] = entry
        seconds[concept] = timer.seconds()
        target.log(f"{attack.name} on {concept}: ASR {concepts[concept]['asr']:.1f}% in {seconds[concept]:.1f} s")
    asrs = [c["asr"] for c in concepts.values()]
    mean_asr = sum(asrs) / len(asrs)
    result = {
        "attack": attack.name, "settings": settings_dict(attack.settings), **info,
        "domain": target.domain, "unlearned": list(target.unlearned), "partners": list(target.partners),
        "seeds": list(target.seeds), "sampler": dict(target.sampler.__dict__),
        "concepts": concepts, "mean_asr": mean_asr,
        "clean_UA": 100.0 - sum(c["clean_accuracy"] for c in concepts.values()) / len(concepts),
        "robust_UA": 100.0 - mean_asr if attack.counts_in_robust_ua else None,
        "timings": {"total_seconds": total.seconds(), "per_concept_seconds": seconds},
    }
    if out is not None:
        atomic_write_json(Path(out) / "attack.json", result)
    return result


__all__ = ["ATTACKS", "Attack", "Target", "build_attack", "check_model", "get_attack", "load_target", "parse_attack", "run_attack"]
