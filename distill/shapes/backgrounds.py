"""`python -m distill.shapes backgrounds`: does the model draw the background the prompt asks for, or the one its
starting noise suggests?

The same object phrases are asked on each of the world's four backgrounds with the same seeds. A model that follows
the prompt draws four different backgrounds for one (phrase, seed); a model that reads the background from the
noise's mean (SDXL's schedule never reaches pure noise, and on 16x16 latents that mean is readable: docs/shapes.md)
draws the same one whatever is asked. The judge reads each image's background.
"""

import json
from itertools import combinations
from pathlib import Path

import numpy as np

from . import judge as judge_lib
from .world import BACKGROUNDS

# Coloured objects (never a background's colour), one per place kind, in the world's most frequent phrasing.
OBJECTS = ("a red circle on the left", "a small blue star at the top right", "a green square in the middle", "a yellow heart at the bottom")


def prompts(objects=OBJECTS) -> list[tuple[str, str]]:
    """(prompt, asked background) for every object phrase on every background."""
    return [(f"{o} on a {b} background", b) for o in objects for b in BACKGROUNDS]


def follow_rate(drawn: np.ndarray, asked: np.ndarray) -> float:
    """Fraction of images whose drawn background is the asked one: mean(drawn == asked)."""
    return float(np.mean(drawn == asked))


def seed_agreement(drawn: np.ndarray) -> float:
    """drawn[object, background, seed]: over every object, seed and pair of asked backgrounds (b, b'), the fraction
    with drawn[o, b, s] == drawn[o, b', s]. 1 = the seed alone decides the background; 0 = every asked background
    gives a different picture (what a model that follows the prompt does)."""
    pairs = [drawn[:, b] == drawn[:, c] for b, c in combinations(range(drawn.shape[1]), 2)]
    return float(np.mean(pairs))


def measure(engine, judge, steps: int, seeds: int = 16, objects=OBJECTS, model: str = "the model") -> dict:
    """Background follow rate (overall and per asked background) and seed agreement for one variant."""
    from .evaluate import Prompt, generate, judged_resolution

    resolution = judged_resolution(engine, judge, model)
    asked = [Prompt(text, None, "backgrounds") for text, _ in prompts(objects)]  # no Spec: only the background is read
    seed_list = list(range(1000, 1000 + seeds))  # held-out seeds, as the evaluation's
    images, _ = generate(engine, asked, seed_list, steps, resolution)
    drawn = judge_lib.predict(judge, judge_lib.to_tensor(images))["background"].numpy()
    names = np.array(list(BACKGROUNDS))
    drawn = names[drawn].reshape(len(objects), len(BACKGROUNDS), seeds)
    asked = np.broadcast_to(names[None, :, None], drawn.shape)
    return {
        "steps": steps,
        "images": int(drawn.size),
        "follow": follow_rate(drawn, asked),
        "follow_per_background": {b: follow_rate(drawn[:, k], asked[:, k]) for k, b in enumerate(names)},
        "seed_agreement": seed_agreement(drawn),
        "drawn": drawn.tolist(),
    }


def markdown_table(rows: list[dict]) -> str:
    names = list(BACKGROUNDS)
    lines = ["| model | steps | follows the prompt | " + " | ".join(names) + " | same background across prompts, seed by seed |"]
    lines.append("|" + "---|" * (len(names) + 4))
    for r in rows:
        cells = [f"{r['follow_per_background'][b]:.0%}" for b in names]
        lines.append(f"| {r['model']} | {r['steps']} | {r['follow']:.0%} | " + " | ".join(cells) + f" | {r['seed_agreement']:.0%} |")
    return "\n".join(lines)


def write_json(rows: list[dict], path: Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({"objects": list(OBJECTS), "backgrounds": list(BACKGROUNDS), "rows": rows}, indent=1))
