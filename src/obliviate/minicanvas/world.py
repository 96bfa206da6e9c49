"""The MiniCanvas world: a deterministic procedural renderer of (style, object, seed).

A miniature of UnlearnCanvas. A *style* is a palette family plus a background texture; an
*object* is a filled shape. Concepts come in designed neighbourhoods: the styles of one
group share a palette family (they differ by texture and hue), the objects of one group
share a silhouette family. Removing one concept can therefore hurt its neighbours, which
is the in-domain interference that continual unlearning has to control.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 32
SUPERSAMPLE = 4  # draw at 4x and downsample with a box filter: cheap anti-aliasing


@dataclass(frozen=True)
class Style:
    name: str
    group: str
    texture: str  # gradient | stripes | dots | checker
    background_a: tuple[int, int, int]
    background_b: tuple[int, int, int]
    ink: tuple[int, int, int]  # the object's fill colour


# Four palette families x four textures. Within a family every texture appears once, so
# a family's members are told apart by texture; across families, by palette.
STYLES: tuple[Style, ...] = (
    Style("fire", "warm", "stripes", (200, 30, 10), (255, 140, 0), (255, 235, 70)),
    Style("sunset", "warm", "gradient", (250, 120, 60), (150, 40, 100), (255, 225, 130)),
    Style("lava", "warm", "dots", (70, 12, 5), (240, 70, 0), (255, 170, 40)),
    Style("autumn", "warm", "checker", (170, 80, 20), (225, 165, 45), (110, 25, 10)),
    Style("ice", "cold", "checker", (205, 235, 255), (140, 195, 240), (30, 80, 160)),
    Style("ocean", "cold", "stripes", (0, 55, 140), (0, 150, 205), (225, 250, 255)),
    Style("winter", "cold", "dots", (230, 240, 252), (150, 175, 215), (70, 95, 145)),
    Style("sky", "cold", "gradient", (90, 160, 240), (225, 240, 255), (255, 255, 255)),
    Style("forest", "green", "stripes", (20, 70, 30), (65, 135, 50), (215, 190, 95)),
    Style("jungle", "green", "checker", (0, 105, 40), (150, 200, 40), (250, 120, 40)),
    Style("meadow", "green", "gradient", (120, 200, 80), (235, 235, 120), (200, 50, 120)),
    Style("moss", "green", "dots", (70, 90, 40), (135, 155, 65), (35, 45, 15)),
    Style("neon", "dark", "stripes", (10, 10, 25), (255, 0, 200), (0, 255, 220)),
    Style("night", "dark", "gradient", (5, 10, 40), (40, 50, 110), (250, 240, 170)),
    Style("galaxy", "dark", "dots", (30, 0, 55), (185, 140, 255), (255, 255, 255)),
    Style("storm", "dark", "checker", (45, 45, 55), (115, 115, 135), (235, 235, 90)),
)


@dataclass(frozen=True)
class ObjectShape:
    name: str
    group: str


OBJECTS: tuple[ObjectShape, ...] = (
    ObjectShape("circle", "round"),
    ObjectShape("ring", "round"),
    ObjectShape("moon", "round"),
    ObjectShape("square", "boxy"),
    ObjectShape("diamond", "boxy"),
    ObjectShape("cross", "boxy"),
    ObjectShape("triangle", "pointed"),
    ObjectShape("arrow", "pointed"),
    ObjectShape("star", "pointed"),
    ObjectShape("heart", "curvy"),
    ObjectShape("drop", "curvy"),
    ObjectShape("leaf", "curvy"),
)

STYLE_NAMES: tuple[str, ...] = tuple(s.name for s in STYLES)
OBJECT_NAMES: tuple[str, ...] = tuple(o.name for o in OBJECTS)
_STYLE_BY_NAME = {s.name: s for s in STYLES}
_OBJECT_BY_NAME = {o.name: o for o in OBJECTS}

PROMPT_TEMPLATE = "A {object} image in {style} style"  # UnlearnCanvas's template
STYLE_ONLY_TEMPLATE = "an image in the style of {style}"
OBJECT_ONLY_TEMPLATE = "an image of a {object}"
# The reference implementation's ConAbl (CUIG) trains a style request on "In X Style, <caption>"
# and "<caption>, in X Style." (methods/conabl.py, style_phrasings), with the caption
# OBJECT_ONLY_TEMPLATE. UnlearnCanvas's generator (a fine-tuned SD 1.5) reads them from its
# pretraining; MiniCanvas 1.1 was never trained on them and draws the named style for only 52% and
# 53% of them (docs/results/phrasings-minicanvas-1.1.json), so a request trained on them erased
# whatever else they drew. From 1.2 the UNet is trained on them too (build.BuildSize.reference_phrasings).
REFERENCE_STYLE_PHRASINGS = ("In {style} Style, an image of a {object}", "an image of a {object}, in {style} Style.")

# Default unlearning orders: each group of look-alike concepts is visited early, so retained
# sets (every concept not in the order) always contain designed neighbours of unlearned ones.
STYLE_ORDER = ("fire", "ice", "forest", "neon", "sunset", "ocean", "meadow", "night", "lava", "winter", "jungle", "galaxy")
OBJECT_ORDER = ("circle", "square", "triangle", "heart", "ring", "diamond", "arrow", "drop")
EVAL_SEEDS = (188, 288, 588, 688, 888)
SAMPLER = {"steps": 20, "guidance": 5.0}  # what the bundled model is evaluated (and anchors drawn) with


def neighbours() -> dict[str, list[str]]:
    """Designed neighbourhoods: every concept mapped to the other members of its group."""
    table: dict[str, list[str]] = {}
    for items in (STYLES, OBJECTS):
        for item in items:
            table[item.name] = [o.name for o in items if o.group == item.group and o.name != item.name]
    return table


def catalog() -> dict:
    """The world as plain data (protocols.minicanvas wraps it in a Catalog)."""
    return {"styles": list(STYLE_NAMES), "objects": list(OBJECT_NAMES), "neighbours": neighbours(),
            "template": PROMPT_TEMPLATE, "style_only": STYLE_ONLY_TEMPLATE, "object_only": OBJECT_ONLY_TEMPLATE,
            "style_order": list(STYLE_ORDER), "object_order": list(OBJECT_ORDER), "seeds": list(EVAL_SEEDS),
            "sampler": dict(SAMPLER)}


def prompt(style: str, obj: str) -> str:
    return PROMPT_TEMPLATE.format(object=obj, style=style)


def validate_concept(name: str) -> str:
    if name in _STYLE_BY_NAME:
        return "style"
    if name in _OBJECT_BY_NAME:
        return "object"
    raise ValueError(
        f"unknown MiniCanvas concept {name!r}; valid styles: {', '.join(STYLE_NAMES)}; "
        f"valid objects: {', '.join(OBJECT_NAMES)}"
    )


# ---------------------------------------------------------------- shapes as polygons
def _regular(n: int, radius: float = 1.0, phase: float = -math.pi / 2) -> list[tuple[float, float]]:
    return [(radius * math.cos(phase + 2 * math.pi * k / n), radius * math.sin(phase + 2 * math.pi * k / n)) for k in range(n)]


def _circle(radius: float = 1.0, cx: float = 0.0, cy: float = 0.0, n: int = 48) -> list[tuple[float, float]]:
    return [(cx + radius * math.cos(2 * math.pi * k / n), cy + radius * math.sin(2 * math.pi * k / n)) for k in range(n)]


def _shape_polygons(name: str) -> tuple[list[list[tuple[float, float]]], list[list[tuple[float, float]]]]:
    """(filled polygons, holes) in unit coordinates, y pointing down, radius about 1."""
    if name == "circle":
        return [_circle(0.95)], []
    if name == "ring":
        return [_circle(1.0)], [_circle(0.55)]
    if name == "moon":
        return [_circle(1.0)], [_circle(0.85, 0.5, -0.25)]
    if name == "square":
        return [[(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)]], []
    if name == "diamond":
        return [[(0, -1.05), (0.62, 0), (0, 1.05), (-0.62, 0)]], []
    if name == "cross":
        a, b = 0.3, 0.95
        return [[(-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a), (a, b), (-a, b), (-a, a), (-b, a), (-b, -a), (-a, -a)]], []
    if name == "triangle":
        return [_regular(3, 1.1, -math.pi / 2)], []
    if name == "arrow":
        return [[(1.0, 0), (0.15, -0.75), (0.15, -0.3), (-1.0, -0.3), (-1.0, 0.3), (0.15, 0.3), (0.15, 0.75)]], []
    if name == "star":
        pts = []
        for k in range(10):
            r = 1.05 if k % 2 == 0 else 0.45
            ang = -math.pi / 2 + math.pi * k / 5
            pts.append((r * math.cos(ang), r * math.sin(ang)))
        return [pts], []
    if name == "heart":
        pts = []
        for k in range(60):
            t = 2 * math.pi * k / 60
            x = 16 * math.sin(t) ** 3
            y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            pts.append((x / 16.5, -y / 16.5 + 0.1))
        return [pts], []
    if name == "drop":
        pts = [(0.0, -1.1)]
        for k in range(0, 33):
            ang = -math.pi / 6 + (math.pi + math.pi / 3) * k / 32
            pts.append((0.62 * math.cos(ang), 0.35 + 0.62 * math.sin(ang)))
        return [pts], []
    if name == "leaf":
        pts = []
        for k in range(40):  # a vesica: two circular arcs meeting at sharp tips
            t = -1 + 2 * k / 39
            pts.append((0.45 * math.cos(t * math.pi / 2), 1.05 * t))
        for k in range(40):
            t = 1 - 2 * k / 39
            pts.append((-0.45 * math.cos(t * math.pi / 2), 1.05 * t))
        return [pts], []
    raise ValueError(f"unknown MiniCanvas object {name!r}; valid objects: {', '.join(OBJECT_NAMES)}")


# ---------------------------------------------------------------- textures
def _texture(style: Style, rng: np.random.Generator, size: int) -> np.ndarray:
    """Blend weight in [0, 1] between background colours a and b, shape (size, size)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / SUPERSAMPLE
    period = 8.0 * rng.uniform(0.9, 1.1)
    phase_x, phase_y = rng.uniform(0, period, size=2)
    if style.texture == "gradient":
        return np.clip(yy / (size / SUPERSAMPLE) + rng.uniform(-0.1, 0.1), 0, 1)
    if style.texture == "stripes":
        return (np.floor((yy + phase_y) / (period / 2)) % 2).astype(np.float32)
    if style.texture == "checker":
        return ((np.floor((xx + phase_x) / (period / 2)) + np.floor((yy + phase_y) / (period / 2))) % 2).astype(np.float32)
    if style.texture == "dots":
        dx = (xx + phase_x) % period - period / 2
        dy = (yy + phase_y) % period - period / 2
        return (dx * dx + dy * dy <= (period * 0.27) ** 2).astype(np.float32)
    raise ValueError(f"unknown texture {style.texture!r}")


def _jitter_colour(colour: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    return np.clip(np.asarray(colour, np.float32) * rng.uniform(0.9, 1.1) + rng.uniform(-14, 14, size=3), 0, 255)


def render(style: str, obj: str, seed: int, size: int = IMAGE_SIZE) -> Image.Image:
    """Render one image. Same (style, object, seed) gives the same pixels on every machine."""
    if style not in _STYLE_BY_NAME:
        raise ValueError(f"unknown MiniCanvas style {style!r}; valid styles: {', '.join(STYLE_NAMES)}")
    if obj not in _OBJECT_BY_NAME:
        raise ValueError(f"unknown MiniCanvas object {obj!r}; valid objects: {', '.join(OBJECT_NAMES)}")
    st = _STYLE_BY_NAME[style]
    # one generator per image, keyed by its identity, never by render order
    key = (STYLE_NAMES.index(style), OBJECT_NAMES.index(obj), int(seed))
    rng = np.random.default_rng(np.random.SeedSequence([20261128, *key]))
    big = size * SUPERSAMPLE

    weight = _texture(st, rng, big)[..., None]
    canvas = (1 - weight) * _jitter_colour(st.background_a, rng) + weight * _jitter_colour(st.background_b, rng)

    radius = rng.uniform(0.27, 0.38) * big
    cx = big / 2 + rng.uniform(-0.12, 0.12) * big
    cy = big / 2 + rng.uniform(-0.12, 0.12) * big
    angle = rng.uniform(-0.3, 0.3)  # about +-17 degrees: a square must not become a diamond
    cos_a, sin_a = math.cos(angle), math.sin(angle)

    def place(poly):
        return [(cx + radius * (x * cos_a - y * sin_a), cy + radius * (x * sin_a + y * cos_a)) for x, y in poly]

    mask_img = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask_img)
    fills, holes = _shape_polygons(obj)
    for poly in fills:
        draw.polygon(place(poly), fill=255)
    for poly in holes:
        draw.polygon(place(poly), fill=0)
    mask = np.asarray(mask_img, np.float32)[..., None] / 255.0

    ink = _jitter_colour(st.ink, rng)
    shade = 1.0 - 0.12 * (np.mgrid[0:big, 0:big][0][..., None] / big)  # soft top-down shading
    canvas = canvas * (1 - mask) + (ink * shade) * mask
    image = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    return image.resize((size, size), Image.BOX)


def render_array(pairs: list[tuple[str, str, int]], size: int = IMAGE_SIZE) -> np.ndarray:
    """Render many (style, object, seed) triples to a uint8 array (N, size, size, 3)."""
    return np.stack([np.asarray(render(s, o, seed, size)) for s, o, seed in pairs])
