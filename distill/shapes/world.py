"""The shapes world: scenes of one or two coloured shapes, sampled from a seed and rendered anti-aliased.

A scene is pure data (what is where); `render` turns it into pixels deterministically, so a seed names one image
forever. Everything the judge learns and every metric it computes comes from scenes, never from parsing captions.
"""

import math
import random
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "heart")
COLOURS = {
    "red": (220, 30, 35),
    "orange": (245, 135, 20),
    "yellow": (245, 215, 30),
    "green": (35, 160, 60),
    "blue": (35, 75, 215),
    "purple": (130, 45, 175),
    "pink": (245, 140, 190),
    "white": (250, 250, 250),
    "black": (20, 20, 20),
    "gray": (128, 128, 128),
}
BACKGROUNDS = {"white": (255, 255, 255), "black": (0, 0, 0), "gray": (150, 150, 150), "light blue": (185, 215, 245)}
SIZES = {"small": 0.10, "large": 0.19}  # half-extent as a fraction of the image side
# Positions on a 3x3 grid of anchors (column, row); each object's centre is jittered a little around its anchor.
POSITIONS = {
    "top left": (0, 0),
    "top": (1, 0),
    "top right": (2, 0),
    "left": (0, 1),
    "center": (1, 1),
    "right": (2, 1),
    "bottom left": (0, 2),
    "bottom": (1, 2),
    "bottom right": (2, 2),
}
ANCHOR = (0.22, 0.5, 0.78)
# Colour x shape pairs never rendered into the base model's training data: prompts asking for them measure composition.
HELD_OUT_PAIRS = frozenset({("red", "star"), ("blue", "heart"), ("green", "triangle"), ("yellow", "square"), ("purple", "circle")})
SUPERSAMPLE = 4
MAX_OBJECTS = 3  # the judge also sees 0- and 3-object scenes so it can count merged or duplicated objects


@dataclass(frozen=True)
class ShapeObject:
    shape: str
    colour: str
    size: str
    position: str
    dx: float = 0.0  # jitter of the centre, fraction of the image side
    dy: float = 0.0
    scale: float = 1.0  # jitter of the size
    rotation: float = 0.0  # degrees


@dataclass(frozen=True)
class Scene:
    background: str
    objects: tuple[ShapeObject, ...]


def colour_allowed(colour: str, background: str) -> bool:
    """An object never has its background's colour (a white square on white is not a picture of a square)."""
    return colour != background


def pair_allowed(colour: str, shape: str, held_out: bool) -> bool:
    return held_out or (colour, shape) not in HELD_OUT_PAIRS


def apart(a: str, b: str) -> bool:
    """Two objects sit on opposite sides of the grid (anchors two cells apart on an axis), so even large ones never overlap."""
    (ax, ay), (bx, by) = POSITIONS[a], POSITIONS[b]
    return abs(ax - bx) == 2 or abs(ay - by) == 2


def canonical_order(objects) -> tuple:
    """Objects sorted left to right, then top to bottom by anchor: the order of the judge's object slots."""
    return tuple(sorted(objects, key=lambda o: POSITIONS[o.position]))


def jittered(rng: random.Random, shape: str, colour: str, size: str, position: str) -> ShapeObject:
    return ShapeObject(
        shape, colour, size, position, dx=rng.uniform(-0.04, 0.04), dy=rng.uniform(-0.04, 0.04), scale=rng.uniform(0.9, 1.1), rotation=rng.uniform(-15, 15)
    )


def sample_scene(rng: random.Random, n_objects: int | None = None, held_out: bool = False) -> Scene:
    """A random scene: 1 object (60 %) or 2 (40 %) unless n_objects says; held_out=True also allows the held-out pairs."""
    if n_objects is None:
        n_objects = 1 if rng.random() < 0.6 else 2
    background = rng.choice(list(BACKGROUNDS))
    # The centre is apart from nothing, so several objects use the other eight anchors. Some partial layouts admit
    # no further object (left + right leave no room for a third): start the layout again when one gets stuck.
    positions = list(POSITIONS) if n_objects == 1 else [p for p in POSITIONS if p != "center"]
    objects: list[ShapeObject] = []
    failures = 0
    while len(objects) < n_objects:
        if failures > 100:
            objects, failures = [], 0
        shape, colour = rng.choice(SHAPES), rng.choice(list(COLOURS))
        position, size = rng.choice(positions), rng.choice(list(SIZES))
        if not (colour_allowed(colour, background) and pair_allowed(colour, shape, held_out)) or any(
            not apart(position, o.position) or (o.shape, o.colour) == (shape, colour) for o in objects
        ):
            failures += 1
            continue
        objects.append(jittered(rng, shape, colour, size, position))
    return Scene(background, canonical_order(objects))


def scene_from_seed(seed: int, n_objects: int | None = None, held_out: bool = False) -> Scene:
    return sample_scene(random.Random(seed), n_objects, held_out)


def rejitter(scene: Scene, rng: random.Random) -> Scene:
    """The same scene with fresh jitter: another real picture of exactly what a caption of it says."""
    return replace(scene, objects=tuple(jittered(rng, o.shape, o.colour, o.size, o.position) for o in scene.objects))


# ---- geometry: outlines in unit coordinates (radius 1 around the origin) ----------------------------------------


def _regular(n: int, phase: float) -> list[tuple[float, float]]:
    return [(math.cos(phase + 2 * math.pi * k / n), math.sin(phase + 2 * math.pi * k / n)) for k in range(n)]


def _star(points: int = 5, inner: float = 0.45) -> list[tuple[float, float]]:
    out = []
    for k in range(2 * points):
        r = 1.0 if k % 2 == 0 else inner
        a = -math.pi / 2 + math.pi * k / points
        out.append((r * math.cos(a), r * math.sin(a)))
    return out


def _heart(n: int = 64) -> list[tuple[float, float]]:
    """x = 16 sin^3 u, y = -(13 cos u - 5 cos 2u - 2 cos 3u - cos 4u), scaled to radius ~1 (image y points down)."""
    pts = [
        (16 * math.sin(u) ** 3, -(13 * math.cos(u) - 5 * math.cos(2 * u) - 2 * math.cos(3 * u) - math.cos(4 * u)))
        for u in (2 * math.pi * k / n for k in range(n))
    ]
    return [(x / 17, (y + 2) / 17) for x, y in pts]


OUTLINES = {
    "square": [(x * 0.8, y * 0.8) for x, y in _regular(4, math.pi / 4)],
    "triangle": [(x, y + 0.2) for x, y in _regular(3, -math.pi / 2)],
    "star": _star(),
    "heart": _heart(),
}


def _outline(obj: ShapeObject, side: float) -> tuple[tuple[float, float], float, list[tuple[float, float]]]:
    cx = (ANCHOR[POSITIONS[obj.position][0]] + obj.dx) * side
    cy = (ANCHOR[POSITIONS[obj.position][1]] + obj.dy) * side
    radius = SIZES[obj.size] * obj.scale * side
    if obj.shape == "circle":
        return (cx, cy), radius * 0.9, []
    a = math.radians(obj.rotation)
    ca, sa = math.cos(a), math.sin(a)
    return (cx, cy), radius, [(cx + radius * (x * ca - y * sa), cy + radius * (x * sa + y * ca)) for x, y in OUTLINES[obj.shape]]


def render(scene: Scene, resolution: int, with_mask: bool = False):
    """uint8 (R, R, 3) image (and a float (R, R) object-coverage mask): drawn at 4x, then box-filtered down (anti-aliasing)."""
    side = resolution * SUPERSAMPLE
    image = Image.new("RGB", (side, side), BACKGROUNDS[scene.background])
    mask = Image.new("L", (side, side), 0)
    for obj, layer in ((o, layer) for o in scene.objects for layer in (image, mask)):
        fill = COLOURS[obj.colour] if layer is image else 255
        (cx, cy), radius, points = _outline(obj, side)
        draw = ImageDraw.Draw(layer)
        if points:
            draw.polygon(points, fill=fill)
        else:
            draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=fill)
    pixels = np.asarray(image.resize((resolution, resolution), Image.BOX))
    if not with_mask:
        return pixels
    return pixels, np.asarray(mask.resize((resolution, resolution), Image.BOX), dtype=np.float32) / 255.0
