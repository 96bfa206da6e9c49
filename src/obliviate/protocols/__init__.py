"""Protocols as data: concept catalogs (one type, `Catalog`) registered by name, which the
engine draws concepts and prompts from and the evaluator samples and judges with."""
from __future__ import annotations

from pathlib import Path

from .catalog import Catalog
from .minicanvas import minicanvas_catalog
from .unlearncanvas import unlearncanvas_catalog

DOMAINS = ("style", "object", "other")


def family(domain: str) -> str:
    """The catalog side a request's domain reads from: "object" for objects, "style" for
    styles and for "other" (a concept outside the catalog is prompted like a style)."""
    return "object" if domain == "object" else "style"


def other_family(domain: str) -> str:
    """The catalog side a `domain` concept is paired with in the template."""
    return "style" if family(domain) == "object" else "object"


def generic_catalog() -> Catalog:
    """For models without a catalog: prompts only, no concept lists, no judge."""
    return Catalog(name="generic", styles=[], objects=[], template="a painting of {object} in the style of {style}",
                   style_only="an image in the style of {style}", object_only="an image of {object}",
                   sampler={"steps": 50, "guidance": 7.5})


# Protocols by name. Adding one: a file with its catalog function (data files beside it) plus one line here.
PROTOCOLS = {"minicanvas": minicanvas_catalog, "unlearncanvas": unlearncanvas_catalog}


def get_protocol(name: str) -> Catalog:
    """A fresh Catalog of the named protocol."""
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; valid protocols: {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]()


def catalog_for_model(model_dir: str | Path) -> Catalog | None:
    """MiniCanvas pipelines carry minicanvas.json; other models have no catalog unless given one."""
    if (Path(model_dir) / "minicanvas.json").exists():
        return minicanvas_catalog()
    return None


def read_prompt_file(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"prompt file {path} does not exist")
    lines = [ln.strip() for ln in path.read_text().splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


__all__ = ["Catalog", "DOMAINS", "PROTOCOLS", "catalog_for_model", "family", "generic_catalog", "get_protocol",
           "minicanvas_catalog", "other_family", "read_prompt_file", "unlearncanvas_catalog"]
