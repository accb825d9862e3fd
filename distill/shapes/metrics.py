"""The judge's metrics for a set of generated images and the prompts (Specs) they were asked for.

adherence: every asked attribute right (two-object prompts: under the better of the two slot assignments), and every
one but the background (which the base reads from the noise's mean rather than the prompt: docs/shapes.md);
Fréchet distance between judge features of generated and real images of the same prompts (the world's FID);
sharpness: mean |Laplacian| relative to real (1.0 = as sharp as the data); diversity: mean pairwise feature
distance across the seeds of a prompt, relative to real; mean-colour bias; object-count errors (merged: fewer
objects than asked, duplicated: more).
"""

import itertools

import numpy as np
import torch
import torch.nn.functional as F

from .captions import Spec
from .judge import HEADS
from .world import BACKGROUNDS

SLOT_ATTRIBUTES = tuple(HEADS)


def _slot_matches(pred: dict, i: int, slot: int, obj) -> dict[str, bool]:
    out = {}
    for name in SLOT_ATTRIBUTES:
        wanted = getattr(obj, name)
        if wanted is not None:
            out[name] = HEADS[name][int(pred[name][i, slot])] == wanted
    return out


def image_adherence(pred: dict, i: int, spec: Spec) -> dict[str, bool]:
    """Per asked attribute, whether image i has it; 'count' and (if asked) 'background' included; 'all' = every one,
    'except_background' = every one but the background."""
    best = None
    for order in itertools.permutations(range(len(spec.objects))):
        checks: dict[str, list[bool]] = {}
        for slot, k in enumerate(order):
            for name, ok in _slot_matches(pred, i, slot, spec.objects[k]).items():
                checks.setdefault(name, []).append(ok)
        score = sum(sum(v) for v in checks.values())
        if best is None or score > best[0]:
            best = (score, checks)
    result = {name: all(v) for name, v in best[1].items()}
    result["count"] = int(pred["count"][i]) == len(spec.objects)
    if spec.background is not None:
        result["background"] = list(BACKGROUNDS)[int(pred["background"][i])] == spec.background
    result["all"] = all(result.values())
    result["except_background"] = all(ok for name, ok in result.items() if name not in ("background", "all"))
    return result


def adherence(pred: dict, specs: list[Spec]) -> dict[str, float]:
    """Fraction of images with everything right ('all') and, per attribute, among the images that asked for it."""
    per_image = [image_adherence(pred, i, s) for i, s in enumerate(specs)]
    names = sorted({k for r in per_image for k in r})
    return {name: float(np.mean([r[name] for r in per_image if name in r])) for name in names}


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^1/2); the trace of the root from the eigenvalues of
    S_a^1/2 S_b S_a^1/2, which is symmetric, so numpy's eigh suffices."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    mu = a.mean(0) - b.mean(0)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(sa)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ sb @ root_a), 0, None)).sum()
    return float(mu @ mu + np.trace(sa) + np.trace(sb) - 2 * cross)


def laplacian_energy(images: np.ndarray) -> float:
    """Mean |4-neighbour Laplacian| of the grey image, pixel values in [0, 1]: edges and fine detail."""
    grey = torch.from_numpy(images.astype(np.float32) / 255).mean(-1)[:, None]
    kernel = torch.tensor([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=torch.float32)[None, None]
    return float(F.conv2d(grey, kernel).abs().mean())


def mean_pairwise_distance(features: np.ndarray, groups: list) -> float:
    """Mean over groups (one prompt, several seeds) of the mean pairwise L2 distance of their features."""
    values = []
    for g in sorted(set(groups)):
        f = features[[i for i, x in enumerate(groups) if x == g]]
        if len(f) > 1:
            d = np.linalg.norm(f[:, None] - f[None], axis=-1)
            values.append(d[np.triu_indices(len(f), 1)].mean())
    return float(np.mean(values))


def count_errors(pred: dict, specs: list[Spec]) -> dict[str, float]:
    asked = np.array([len(s.objects) for s in specs])
    got = pred["count"].numpy()
    return {"count_error": float((got != asked).mean()), "merged": float((got < asked).mean()), "duplicated": float((got > asked).mean())}


def report(pred: dict, pred_real: dict, images: np.ndarray, real: np.ndarray, specs: list[Spec], groups: list) -> dict:
    """Every metric for generated `images` against `real` renders of the same specs (same order, same groups)."""
    features, features_real = pred["features"].numpy(), pred_real["features"].numpy()
    bias = images.reshape(-1, 3).mean(0) - real.reshape(-1, 3).mean(0)
    return {
        "adherence": adherence(pred, specs),
        "frechet_distance": frechet_distance(features, features_real),
        "sharpness": laplacian_energy(images) / laplacian_energy(real),
        "diversity": mean_pairwise_distance(features, groups) / mean_pairwise_distance(features_real, groups),
        "mean_colour_bias_rgb": [round(float(x), 2) for x in bias],
        "mean_colour_bias": float(np.linalg.norm(bias)),
        **count_errors(pred, specs),
    }
