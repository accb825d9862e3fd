"""Captions of a scene: several templates with word-order and synonym variety, and what each caption asserts.

A caption may leave attributes out ("a red circle" says nothing of size, place or background); `Spec` records
exactly what it asks for, so prompt adherence is checked against the caption's own claims, never by parsing text.
"""

import random
from dataclasses import dataclass

from .world import Scene, ShapeObject

SHAPE_WORDS = {"circle": ("circle", "disc"), "square": ("square",), "triangle": ("triangle",), "star": ("star",), "heart": ("heart",)}
COLOUR_WORDS = {"gray": ("gray", "grey"), "purple": ("purple", "violet")}
SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
BACKGROUND_WORDS = {"gray": ("gray", "grey"), "light blue": ("light blue", "pale blue")}
PLACE_PHRASES = {  # how a place follows an object ("a red circle on the left")
    "left": ("on the left", "at the left", "to the left"),
    "right": ("on the right", "at the right", "to the right"),
    "top": ("at the top",),
    "bottom": ("at the bottom",),
    "center": ("in the center", "in the middle", "at the center"),
}
CORNER_PHRASES = ("at the {}", "in the {} corner")


@dataclass(frozen=True)
class ObjectSpec:
    shape: str
    colour: str
    size: str | None = None
    position: str | None = None


@dataclass(frozen=True)
class Spec:
    """What a caption asks for: its objects (in the caption's order) and, if named, the background."""

    objects: tuple[ObjectSpec, ...]
    background: str | None = None


def _usual(rng: random.Random, options) -> str:
    """The first option 60 % of the time (the plain phrasing users type most), otherwise one of the others."""
    return options[0] if len(options) == 1 or rng.random() < 0.6 else rng.choice(options[1:])


def _word(rng: random.Random, table: dict, key: str) -> str:
    return _usual(rng, table.get(key, (key,)))


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _place(rng: random.Random, position: str) -> str:
    if position in PLACE_PHRASES:
        return _usual(rng, PLACE_PHRASES[position])
    return _usual(rng, CORNER_PHRASES).format(position)


def _background(rng: random.Random, background: str) -> str:
    return _usual(rng, ("on a {} background", "against a {} background", "with a {} background")).format(_word(rng, BACKGROUND_WORDS, background))


def _noun_phrase(rng: random.Random, obj: ShapeObject, spec: ObjectSpec) -> str:
    """'a small blue star' / 'an orange circle' (size only when the spec names it)."""
    words = [_word(rng, SIZE_WORDS, spec.size)] if spec.size else []
    words += [_word(rng, COLOUR_WORDS, obj.colour), _word(rng, SHAPE_WORDS, obj.shape)]
    return f"{_article(words[0])} {' '.join(words)}"


def caption(scene: Scene, rng: random.Random) -> tuple[str, Spec]:
    """A random caption of `scene` and the Spec it asserts (every asserted attribute is true of the scene)."""
    order = list(scene.objects)
    rng.shuffle(order)  # two-object captions name the objects in either order
    mention_place = rng.random() < (0.8 if len(order) == 1 else 0.5)
    mention_size = rng.random() < 0.4
    mention_background = rng.random() < 0.6
    specs = tuple(ObjectSpec(o.shape, o.colour, o.size if mention_size else None, o.position if mention_place else None) for o in order)
    spec = Spec(specs, scene.background if mention_background else None)
    nouns = [_noun_phrase(rng, o, s) for o, s in zip(order, specs)]
    places = [_place(rng, o.position) for o in order] if mention_place else [""] * len(order)
    background = _background(rng, scene.background) if mention_background else ""
    bg_word = _word(rng, BACKGROUND_WORDS, scene.background)
    style = rng.choices((0, 1, 2), (2, 1, 1))[0]
    if style == 0:  # "a small blue star at the top right on a black background"
        text = " and ".join(f"{n} {p}".strip() for n, p in zip(nouns, places)) + (f" {background}" if background else "")
    elif style == 1:  # "green square, center, white background"
        parts = [f"{n.split(' ', 1)[1]}" + (f", {o.position}" if mention_place else "") for n, o in zip(nouns, order)]
        text = ", ".join(parts) + (f", {bg_word} background" if mention_background else "")
    else:  # "on a black background, a small blue star at the top right" / "a black background with ..."
        body = " and ".join(f"{n} {p}".strip() for n, p in zip(nouns, places))
        text = (f"{_article(bg_word)} {bg_word} background with {body}" if rng.random() < 0.5 else f"{background}, {body}") if mention_background else body
    return text, spec


def canonical_caption(scene: Scene) -> tuple[str, Spec]:
    """The fully specified form: 'a {colour} {shape} on the left on a {background} background' (objects joined by 'and')."""
    specs = tuple(ObjectSpec(o.shape, o.colour, None, o.position) for o in scene.objects)
    nouns = [f"{_article(o.colour)} {o.colour} {o.shape} {PLACE_PHRASES.get(o.position, ('at the ' + o.position,))[0]}" for o in scene.objects]
    return " and ".join(nouns) + f" on a {scene.background} background", Spec(specs, scene.background)


def scene_for(spec: Spec, rng: random.Random) -> Scene:
    """A random scene that `spec` truly describes: what the caption leaves open (size, place, background, jitter)
    is drawn afresh. These are the "real images of the same prompt" the metrics compare generated images against."""
    from .world import BACKGROUNDS, POSITIONS, SIZES, apart, canonical_order, colour_allowed, jittered

    while True:
        background = spec.background or rng.choice([b for b in BACKGROUNDS if all(colour_allowed(o.colour, b) for o in spec.objects)])
        places = list(POSITIONS) if len(spec.objects) == 1 else [p for p in POSITIONS if p != "center"]
        objects = []
        for o in spec.objects:
            options = [p for p in ([o.position] if o.position else places) if all(apart(p, q.position) for q in objects)]
            if not options:
                break  # an earlier free choice left no room: draw again
            objects.append(jittered(rng, o.shape, o.colour, o.size or rng.choice(list(SIZES)), rng.choice(options)))
        else:
            return Scene(background, canonical_order(objects))
