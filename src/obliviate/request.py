"""One removal request as the user states it (what to forget, how, with which add-ons); its
settings are still raw here: components.parse turns it into typed, checked settings."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .protocols import DOMAINS


@dataclass
class Request:
    """One removal request: what to forget, how, with which add-ons."""

    concept: str
    domain: str
    method: str = "conabl"
    method_settings: dict[str, Any] = field(default_factory=dict)
    regularizers: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    seed: int = 0
    param_group: str = "kv-xattn"
    also: list[str] = field(default_factory=list)  # concepts unlearned together with `concept` (simultaneous)

    @property
    def targets(self) -> list[str]:
        return [self.concept, *[c for c in self.also if c != self.concept]]

    def __post_init__(self):
        if self.domain not in DOMAINS:
            raise ValueError(f"domain {self.domain!r} is not valid; valid domains: {', '.join(DOMAINS)}")
        if not self.concept or not self.concept.strip():
            raise ValueError("concept must be a non-empty name")
        self.regularizers = [(str(n), dict(s)) for n, s in self.regularizers]

    def to_dict(self) -> dict:
        return {
            "concept": self.concept, "domain": self.domain, "method": self.method,
            "method_settings": dict(self.method_settings),
            "regularizers": [{"name": n, "settings": dict(s)} for n, s in self.regularizers],
            "seed": self.seed, "param_group": self.param_group,
            **({"also": list(self.also)} if self.also else {}),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Request":
        regs = [(r["name"], r.get("settings", {})) for r in d.get("regularizers", [])]
        return cls(concept=d["concept"], domain=d["domain"], method=d.get("method", "conabl"),
                   method_settings=d.get("method_settings", {}), regularizers=regs, seed=d.get("seed", 0),
                   param_group=d.get("param_group", "kv-xattn"), also=list(d.get("also", [])))
