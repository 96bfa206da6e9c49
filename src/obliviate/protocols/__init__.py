"""Evaluation protocols as data, and the concept catalogs the engine draws auxiliary concepts from."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

DOMAINS = ("style", "object", "other")


@dataclass
class Catalog:
    """Concepts a model knows, by domain, with designed neighbourhoods and prompt templates."""

    name: str
    styles: list[str]
    objects: list[str]
    neighbours: dict[str, list[str]] = field(default_factory=dict)
    template: str = "A {object} image in {style} style"
    style_only: str = "an image in the style of {style}"
    object_only: str = "an image of a {object}"
    # sampler that the model's own evaluation uses (also used to make anchor images)
    sampler: dict = field(default_factory=lambda: {"steps": 20, "guidance": 5.0})
    anchors: dict[str, str] = field(default_factory=dict)  # object -> the anchor ConAbl maps it to (UnlearnCanvas)
    spaces_in_prompts: bool = False  # labels like "Van_Gogh" are written "Van Gogh" in prompts (UnlearnCanvas)

    def word(self, label: str) -> str:
        return label.replace("_", " ") if self.spaces_in_prompts else label

    def concepts(self, domain: str) -> list[str]:
        return {"style": self.styles, "object": self.objects}.get(domain, [])

    def domain_of(self, concept: str) -> str | None:
        if concept in self.styles:
            return "style"
        if concept in self.objects:
            return "object"
        return None

    def prompt(self, style: str, obj: str) -> str:
        return self.template.format(style=self.word(style), object=obj)

    def partners(self, domain: str) -> list[str]:
        """The concepts a `domain` concept is paired with in the template (the other domain)."""
        return self.objects if domain == "style" else self.styles

    def prompt_with(self, concept: str, domain: str, partner: str) -> str:
        """`concept` of `domain` in the template, paired with `partner` of the other domain."""
        return self.prompt(concept, partner) if domain == "style" else self.prompt(partner, concept)

    def single(self, concept: str, domain: str) -> str:
        """The concept alone after a neutral prefix, as the projection's auxiliary prompts use it."""
        if domain == "style":
            return self.style_only.format(style=self.word(concept))
        return self.object_only.format(object=self.word(concept))


def minicanvas_catalog() -> Catalog:
    from ..minicanvas import world

    return Catalog(
        name="minicanvas", styles=list(world.STYLE_NAMES), objects=list(world.OBJECT_NAMES),
        neighbours=world.neighbours(), template=world.PROMPT_TEMPLATE, style_only=world.STYLE_ONLY_TEMPLATE,
        object_only=world.OBJECT_ONLY_TEMPLATE, sampler={"steps": 20, "guidance": 5.0},
    )


def unlearncanvas_catalog() -> Catalog:
    """The UnlearnCanvas model's concepts, template and sampler (protocols/unlearncanvas.yaml)."""
    from .unlearncanvas import load_protocol

    p = load_protocol()
    return Catalog(
        name="unlearncanvas", styles=list(p.style_labels), objects=list(p.object_labels),
        template=p.template, style_only="an image in the style of {style}", object_only="an image of a {object}",
        sampler={"steps": p.steps, "guidance": p.guidance}, anchors=dict(p.object_anchors), spaces_in_prompts=True,
    )


CATALOGS = {"unlearncanvas": unlearncanvas_catalog}


def catalog_for_model(model_dir: str | Path) -> Catalog | None:
    """MiniCanvas pipelines carry minicanvas.json; other models have no catalog unless given one."""
    if (Path(model_dir) / "minicanvas.json").exists():
        return minicanvas_catalog()
    return None


def generic_catalog() -> Catalog:
    """For models without a catalog: prompts only, no concept lists."""
    return Catalog(name="generic", styles=[], objects=[], template="a painting of {object} in the style of {style}",
                   style_only="an image in the style of {style}", object_only="an image of {object}",
                   sampler={"steps": 50, "guidance": 7.5})


def read_prompt_file(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"prompt file {path} does not exist")
    lines = [ln.strip() for ln in path.read_text().splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def load_json(path: Path):
    return json.loads(Path(path).read_text())
