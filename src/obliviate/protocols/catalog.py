"""The one concept catalog type: what a model knows and how a protocol samples and judges it.

A `Catalog` serves the training engine (concepts by domain, designed neighbourhoods, prompt
templates, ConAbl anchors, the sampler that makes anchor images) and the evaluator (default
unlearning orders, retained sets, seeds, the sampler, and a judge factory) alike, so a
benchmark is written down once.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable


@dataclass
class Catalog:
    """Concepts a model knows, by domain, and the protocol that evaluates unlearning them."""

    name: str
    styles: list[str]
    objects: list[str]
    neighbours: dict[str, list[str]] = field(default_factory=dict)
    template: str = "A {object} image in {style} style"
    style_only: str = "an image in the style of {style}"
    object_only: str = "an image of a {object}"
    # the model's own sampler: anchor images in training; evaluation unless a plan overrides it
    # (keys of evaluate.sampler.SamplerConfig; the engine reads steps and guidance)
    sampler: dict = field(default_factory=lambda: {"steps": 20, "guidance": 5.0})
    anchors: dict[str, str] = field(default_factory=dict)  # object -> the anchor ConAbl maps it to (UnlearnCanvas)
    spaces_in_prompts: bool = False  # labels like "Van_Gogh" are written "Van Gogh" in prompts (UnlearnCanvas)
    # evaluation: default unlearning orders; retained sets (None: every concept of the domain
    # not in the sequence); per-image seeds; the resolution images are sampled at (None: the model's)
    style_order: list[str] = field(default_factory=list)
    object_order: list[str] = field(default_factory=list)
    retained_styles: list[str] | None = None
    retained_objects: list[str] | None = None
    seeds: list[int] = field(default_factory=lambda: [188, 288])
    resolution: int | None = None
    # judge_factory(catalog, model_dir, **options) -> an object with predict(images) ->
    # {"style": [label, ...], "object": [label, ...]}; judge_settings are the judge's fixed
    # preprocessing; `judge` is set only on the copy that with_judge returns
    judge_factory: Callable | None = field(default=None, repr=False, compare=False)
    # where the judge's weights come from: "model" (classifiers/ inside the pipeline directory,
    # as MiniCanvas ships them) or "checkpoints" (the user's style and object classifier files)
    judge_inputs: str = "model"
    judge_settings: dict = field(default_factory=dict)
    judge: object = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        self.validate()

    # ------------------------------------------------------------ concepts
    def concepts(self, domain: str) -> list[str]:
        return {"style": self.styles, "object": self.objects}.get(domain, [])

    def domain_of(self, concept: str) -> str | None:
        if concept in self.styles:
            return "style"
        if concept in self.objects:
            return "object"
        return None

    def check_concepts(self, domain: str, concepts: list[str]) -> None:
        """Refuse a concept this catalog does not know in `domain` (a generic catalog, or the
        domain "other", takes any name)."""
        if self.name == "generic" or domain == "other":
            return
        known = self.concepts(domain)
        for concept in concepts:
            if concept not in known:
                where = self.domain_of(concept)
                hint = f" (it is a {where})" if where else ""
                raise ValueError(f"unknown {domain} {concept!r} for the {self.name} model{hint}; "
                                 f"valid {domain}s: {', '.join(known)}")

    def partners(self, domain: str) -> list[str]:
        """The concepts a `domain` concept is paired with in the template (the other domain)."""
        return self.objects if domain == "style" else self.styles

    def order(self, domain: str) -> list[str]:
        return self.style_order if domain == "style" else self.object_order

    def retained(self, domain: str, sequence: list[str]) -> list[str]:
        """The retained set of `domain` when a plan names none."""
        fixed = self.retained_styles if domain == "style" else self.retained_objects
        return list(fixed) if fixed is not None else [c for c in self.concepts(domain) if c not in sequence]

    def eval_partners(self, domain: str) -> list[str]:
        """Partners a plan pairs `domain` concepts with by default: the other domain's retained
        set where the protocol fixes one (UnlearnCanvas's O_r / S_r), else all of it."""
        fixed = self.retained_objects if domain == "style" else self.retained_styles
        return list(fixed) if fixed is not None else list(self.partners(domain))

    # ------------------------------------------------------------ prompts
    def word(self, label: str) -> str:
        return label.replace("_", " ") if self.spaces_in_prompts else label

    def prompt(self, style: str, obj: str) -> str:
        return self.template.format(style=self.word(style), object=obj)

    def prompt_with(self, concept: str, domain: str, partner: str) -> str:
        """`concept` of `domain` in the template, paired with `partner` of the other domain."""
        return self.prompt(concept, partner) if domain == "style" else self.prompt(partner, concept)

    def single(self, concept: str, domain: str) -> str:
        """The concept alone after a neutral prefix, as the projection's auxiliary prompts use it."""
        if domain == "style":
            return self.style_only.format(style=self.word(concept))
        return self.object_only.format(object=self.word(concept))

    # ------------------------------------------------------------ judge
    def with_judge(self, model_dir=None, **options) -> "Catalog":
        """A copy carrying the judge its factory builds (MiniCanvas: the model's classifiers;
        UnlearnCanvas: user checkpoints in `options`)."""
        if self.judge_factory is None:
            raise ValueError(f"the {self.name} catalog has no judge: it cannot evaluate a model")
        return dataclasses.replace(self, judge=self.judge_factory(self, model_dir, **options))

    def judge_files(self, model_dir, style_classifier=None, object_classifier=None) -> list[Path]:
        """The files the judge's weights come from (what identifies the judge)."""
        if self.judge_inputs == "checkpoints":
            return [Path(p) for p in (style_classifier, object_classifier) if p]
        return sorted((Path(model_dir) / "classifiers").glob("*"))

    def check_judge_inputs(self, model_dir, style_classifier=None, object_classifier=None) -> None:
        """Refuse, before any work, an evaluation whose judge cannot be built."""
        if self.judge_factory is None:
            raise ValueError(f"the {self.name} protocol has no judge: it cannot evaluate a model")
        if self.judge_inputs == "checkpoints":
            if not (style_classifier and object_classifier):
                raise ValueError(f"the {self.name} protocol needs both classifier checkpoints: pass --style-classifier FILE "
                                 "and --object-classifier FILE (or set classifiers.style / classifiers.object in the file)")
            for flag, path in (("--style-classifier", style_classifier), ("--object-classifier", object_classifier)):
                if not Path(path).is_file():  # before building two ViT-L judges
                    raise FileNotFoundError(f"{flag} {path} does not exist (a classifier checkpoint file is needed)")
        elif not (Path(model_dir) / "classifiers" / "config.json").exists():
            raise ValueError(
                f"protocol {self.name} judges images with the classifiers its models carry (classifiers/), and "
                f"{model_dir} has none. For a Stable Diffusion model use protocol: unlearncanvas with --style-classifier "
                "FILE --object-classifier FILE (the UnlearnCanvas judges), or unlearn without an evaluation: obliviate unlearn")

    # ------------------------------------------------------------ consistency
    def validate(self) -> None:
        """Raise ValueError if the lists are inconsistent with each other."""
        problems: list[str] = []
        styles, objects = set(self.styles), set(self.objects)
        if len(styles) != len(self.styles) or len(objects) != len(self.objects):
            problems.append("duplicate labels")
        for name, names, space in (("style_order", self.style_order, styles),
                                   ("retained_styles", self.retained_styles or [], styles),
                                   ("object_order", self.object_order, objects),
                                   ("retained_objects", self.retained_objects or [], objects),
                                   ("anchors values", list(self.anchors.values()), objects),
                                   ("anchors keys", list(self.anchors), objects)):
            bad = [n for n in names if n not in space]
            if bad:
                problems.append(f"{name} has unknown labels {bad}")
        if set(self.style_order) & set(self.retained_styles or []):
            problems.append("style_order and retained_styles overlap")
        if set(self.object_order) & set(self.retained_objects or []):
            problems.append("object_order and retained_objects overlap")
        if self.anchors and (missing := [o for o in self.object_order if o not in self.anchors]):
            problems.append(f"objects without an anchor: {missing}")
        if problems:
            raise ValueError(f"invalid {self.name} catalog: " + "; ".join(problems))
