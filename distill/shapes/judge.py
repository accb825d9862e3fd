"""The judge: a small CNN that reads a shapes-world image back into its scene (object count, background, and each
object's shape, colour, size and position), trained on renders whose labels come from the renderer's scene.

Object slots follow `world.canonical_order` (left to right, then top to bottom), so a two-object image has one
right answer per slot. The judge also sees empty and three-object scenes so it can report merged or duplicated
objects in generated images. Its penultimate features are the world's Inception features (Fréchet distance,
diversity).
"""

import random
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from .world import BACKGROUNDS, COLOURS, MAX_OBJECTS, POSITIONS, SHAPES, SIZES, render, sample_scene

SLOTS = 2
HEADS = {"shape": SHAPES, "colour": tuple(COLOURS), "size": tuple(SIZES), "position": tuple(POSITIONS)}
ATTRIBUTES = ("count", "background", *HEADS)
FEATURES = 256
# The judge's own training scenes: every colour x shape pair, and 0 to 3 objects.
COUNT_PROBS = (0.05, 0.45, 0.40, 0.10)


class Judge(nn.Module):
    def __init__(self, resolution: int = 128):
        super().__init__()
        self.resolution = resolution
        # A 4x4 patchify stem keeps every pixel's colour at a quarter of the cost of full-resolution convs (CPU
        # training budget), then stride-2 levels down to a 4x4 map whose flattened cells keep "where".
        layers = [nn.Conv2d(3, 32, 4, stride=4), nn.BatchNorm2d(32), nn.SiLU(), nn.Conv2d(32, 48, 3, padding=1), nn.BatchNorm2d(48), nn.SiLU()]
        c_in, size = 48, resolution // 4
        for c, extra in ((96, True), (128, False), (128, False)):
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.BatchNorm2d(c), nn.SiLU()]
            if extra:
                layers += [nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.SiLU()]
            c_in, size = c, size // 2
        self.body = nn.Sequential(*layers)
        cells = size * size
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(c_in * cells, FEATURES), nn.SiLU())
        self.count = nn.Linear(FEATURES, MAX_OBJECTS + 1)
        self.background = nn.Linear(FEATURES, len(BACKGROUNDS))
        self.slots = nn.ModuleDict({name: nn.Linear(FEATURES, SLOTS * len(values)) for name, values in HEADS.items()})

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """images: float (B, 3, R, R) in [-1, 1] -> logits per attribute (slot heads: (B, SLOTS, classes)) and features."""
        f = self.features(self.body(images))
        out = {"features": f, "count": self.count(f), "background": self.background(f)}
        for name, head in self.slots.items():
            out[name] = head(f).view(len(f), SLOTS, -1)
        return out


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (B, R, R, 3) -> float (B, 3, R, R) in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1


def labels(scenes) -> dict[str, torch.Tensor]:
    """Targets from scenes; -100 (ignored) for slots a scene does not fill and for objects of 3-object scenes."""
    out = {"count": torch.tensor([len(s.objects) for s in scenes]), "background": torch.tensor([list(BACKGROUNDS).index(s.background) for s in scenes])}
    for name, values in HEADS.items():
        target = torch.full((len(scenes), SLOTS), -100)
        for i, scene in enumerate(scenes):
            if len(scene.objects) <= SLOTS:
                for k, obj in enumerate(scene.objects):
                    target[i, k] = values.index(getattr(obj, name))
        out[name] = target
    return out


def judge_scenes(rng: random.Random, n: int):
    return [sample_scene(rng, rng.choices(range(MAX_OBJECTS + 1), COUNT_PROBS)[0], held_out=True) for _ in range(n)]


def batch(rng: random.Random, n: int, resolution: int):
    scenes = judge_scenes(rng, n)
    return to_tensor(np.stack([render(s, resolution) for s in scenes])), labels(scenes)


def loss(out: dict, target: dict) -> torch.Tensor:
    total = F.cross_entropy(out["count"], target["count"]) + F.cross_entropy(out["background"], target["background"])
    for name in HEADS:
        total = total + F.cross_entropy(out[name].flatten(0, 1), target[name].flatten(), ignore_index=-100)
    return total


@torch.no_grad()
def predict(judge: Judge, images: torch.Tensor, batch_size: int = 128) -> dict[str, torch.Tensor]:
    """Class indices per attribute (slot attributes (B, SLOTS)) and features (B, FEATURES), in eval mode."""
    judge.eval()
    parts = [judge(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    out = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    return {k: (v if k == "features" else v.argmax(-1)) for k, v in out.items()}


def accuracy(judge: Judge, images: torch.Tensor, target: dict) -> dict[str, float]:
    """Per-attribute accuracy on labelled images (slot attributes over the slots the scenes fill)."""
    pred = predict(judge, images)
    result = {}
    for name in ATTRIBUTES:
        valid = target[name] != -100
        result[name] = float((pred[name][valid] == target[name][valid]).float().mean())
    return result


def held_out_renders(n: int, resolution: int, seed: int = 10_000_019):
    """A fixed labelled set from a seed the judge's training never uses."""
    return batch(random.Random(seed), n, resolution)


def save(judge: Judge, path: Path) -> None:
    save_file({k: v.half() if v.is_floating_point() else v for k, v in judge.state_dict().items()}, str(path), metadata={"resolution": str(judge.resolution)})


def load(path: Path) -> Judge:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        resolution = int(f.metadata()["resolution"])
    judge = Judge(resolution)
    judge.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in load_file(str(path)).items()})
    return judge.eval()


def all_correct(judge: Judge, images: torch.Tensor, target: dict) -> float:
    """Fraction of images whose count, background and every filled slot's attributes are all right."""
    pred = predict(judge, images)
    ok = (pred["count"] == target["count"]) & (pred["background"] == target["background"])
    for name in HEADS:
        valid = target[name] != -100
        ok &= ((pred[name] == target[name]) | ~valid).all(-1)
    return float(ok.float().mean())
