"""The shapes world's renderer and captions: determinism, anti-aliasing, held-out pairs, and captions that say only
what the rendered image shows (checked on pixels, from the scene, never by parsing the caption back)."""

import random
import re

import numpy as np
import pytest

from distill.data import Skipped, folder_samples
from distill.shapes.captions import canonical_caption, caption, scene_for
from distill.shapes.data import render_folder, training_scene
from distill.shapes.world import ANCHOR, COLOURS, HELD_OUT_PAIRS, POSITIONS, Scene, ShapeObject, render, scene_from_seed
from pipelines.errors import StudioError


def test_render_is_a_pure_function_of_the_seed():
    a, b = render(scene_from_seed(7), 128), render(scene_from_seed(7), 128)
    assert a.dtype == np.uint8 and a.shape == (128, 128, 3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, render(scene_from_seed(8), 128))


def test_edges_are_anti_aliased():
    scene = Scene("white", (ShapeObject("star", "blue", "large", "center", rotation=7.0),))
    image = render(scene, 64).reshape(-1, 3)
    palette = {(255, 255, 255), COLOURS["blue"]}
    blended = [tuple(p) for p in image if tuple(p) not in palette]
    assert len(blended) > 40  # edge pixels mix object and background instead of a hard staircase


def _centre_pixel(image, obj):
    side = image.shape[0]
    col, row = POSITIONS[obj.position]
    return image[int((ANCHOR[row] + obj.dy) * side), int((ANCHOR[col] + obj.dx) * side)]


def test_every_caption_claim_is_visible_in_the_rendered_image():
    rng = random.Random(0)
    for index in range(300):
        scene = training_scene(0, index)
        image = render(scene, 128)
        _, spec = caption(scene, rng)
        assert len(spec.objects) == len(scene.objects)
        for asked in spec.objects:
            # the scene holds an object with every asked attribute, and its colour sits at its centre in the pixels
            matches = [o for o in scene.objects if all(getattr(asked, k) in (None, getattr(o, k)) for k in ("shape", "colour", "size", "position"))]
            assert matches, (spec, scene)
            assert tuple(_centre_pixel(image, matches[0])) == COLOURS[asked.colour]
        if spec.background is not None:
            assert spec.background == scene.background


def test_training_scenes_never_hold_a_held_out_pair():
    pairs = {(o.colour, o.shape) for i in range(3000) for o in training_scene(0, i).objects}
    assert not pairs & HELD_OUT_PAIRS
    assert len(pairs) == 10 * 5 - len(HELD_OUT_PAIRS)  # every other pair does occur


def test_the_documented_caption_forms_are_in_distribution():
    rng = random.Random(1)
    texts = [caption(training_scene(0, i), rng)[0] for i in range(4000)]
    side = re.compile(r"^an? \w+ \w+ on the (left|right) on a [\w ]+ background$")
    vertical = re.compile(r"^an? \w+ \w+ at the (top|bottom)( |$)")
    assert sum(bool(side.match(t)) for t in texts) >= 10
    assert sum(bool(vertical.match(t)) for t in texts) >= 10
    assert len(set(texts)) > 2000  # templates, synonyms and word order vary


def test_scene_for_a_caption_satisfies_it_and_varies_what_it_leaves_open():
    scene = scene_from_seed(11, n_objects=2)
    text, spec = canonical_caption(scene)
    assert re.match(r"^an? \w+ \w+ (on|at|in) the [\w ]+ and an? \w+ \w+ (on|at|in) the [\w ]+ on a [\w ]+ background$", text), text
    drawn = [scene_for(spec, random.Random(s)) for s in range(20)]
    for d in drawn:
        assert d.background == scene.background
        assert sorted((o.shape, o.colour, o.position) for o in d.objects) == sorted((o.shape, o.colour, o.position) for o in scene.objects)
    assert len({tuple(o.size for o in d.objects) for d in drawn}) > 1  # size was not asked: it varies


def test_render_folder_writes_the_training_scenes_as_a_distill_data_folder(tmp_path):
    assert render_folder(tmp_path, 12, seed=0, resolution=64) == 12
    samples = list(folder_samples(tmp_path, Skipped(), "stop"))  # what `distill precompute` reads
    assert len(samples) == 12 and all(s.caption for s in samples)
    assert all((o.colour, o.shape) not in HELD_OUT_PAIRS for i in range(12) for o in training_scene(0, i).objects)
    first = (tmp_path / "000000.png").read_bytes()
    (tmp_path / "000011.txt").unlink()  # an interrupted render: the last pair incomplete
    render_folder(tmp_path, 12, seed=0, resolution=64)
    assert (tmp_path / "000011.txt").is_file() and (tmp_path / "000000.png").read_bytes() == first
    with pytest.raises(StudioError, match="--count"):
        render_folder(tmp_path, 0, seed=0, resolution=64)
