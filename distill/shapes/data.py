"""Training data of the shapes world: the fixed set of training scenes (never a held-out colour x shape pair),
rendered batches and crops for the autoencoders, and captions drawn afresh for every UNet step."""

import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from pipelines.errors import StudioError

from ..seeding import stable_seed
from .captions import caption
from .judge import to_tensor
from .world import Scene, render, scene_from_seed


def scene_seed(seed: int, index: int) -> int:
    return stable_seed(seed, "scene", index)


def training_scene(seed: int, index: int) -> Scene:
    """Training scene `index`: a pure function of (seed, index), so a latent cache needs to store no labels."""
    return scene_from_seed(scene_seed(seed, index))


def images(scenes, resolution: int, with_mask: bool = False):
    """float (B, 3, R, R) in [-1, 1] (and (B, 1, R, R) object masks)."""
    if not with_mask:
        return to_tensor(np.stack([render(s, resolution) for s in scenes]))
    pixels, masks = zip(*(render(s, resolution, with_mask=True) for s in scenes))
    return to_tensor(np.stack(pixels)), torch.from_numpy(np.stack(masks))[:, None]


def random_crops(x: torch.Tensor, size: int, generator: torch.Generator, *others: torch.Tensor):
    """The same random size x size window of each sample of x (and of `others`), on the 8-pixel latent grid."""
    cells = (x.shape[-1] - size) // 8 + 1
    top, left = (8 * torch.randint(cells, (2, len(x)), generator=generator)).tolist()
    crop = lambda t: torch.stack([t[i, :, a : a + size, b : b + size] for i, (a, b) in enumerate(zip(top, left))])
    return (crop(x), *(crop(o) for o in others))


def captions_for(indices, seed: int, rng: random.Random) -> list[str]:
    return [caption(training_scene(seed, i), rng)[0] for i in indices]


def training_crops(seed: int, scenes: int, resolution: int, batch_size: int, crop: int, generator: torch.Generator, with_mask: bool = False):
    """A batch of random training scenes, rendered and cropped (the autoencoders train on crops): x or (x, mask)."""
    indices = torch.randint(scenes, (batch_size,), generator=generator).tolist()
    rendered = images([training_scene(seed, k) for k in indices], resolution, with_mask=with_mask)
    if with_mask:
        return random_crops(*rendered[:1], crop, generator, rendered[1])
    return random_crops(rendered, crop, generator)[0]


def render_folder(out: Path, count: int, seed: int, resolution: int, caption_seed: int = 0) -> int:
    """Training scenes 0..count-1 as <index>.png + <index>.txt (one caption each): the folder layout `distill`'s
    data.source = "folder" reads. Held-out colour x shape pairs never appear (they are not training scenes).
    Files already there are kept, so an interrupted render continues where it stopped. -> count."""
    if count < 1:
        raise StudioError(f"--count must be >= 1, got {count}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for index in tqdm(range(count), desc="render", unit="scene"):
        image, text = out / f"{index:06d}.png", out / f"{index:06d}.txt"
        if text.is_file():
            continue
        scene = training_scene(seed, index)
        Image.fromarray(render(scene, resolution)).save(image)
        words = caption(scene, random.Random(stable_seed(caption_seed, "caption", index)))[0]
        text.with_suffix(".tmp").write_text(words)
        text.with_suffix(".tmp").replace(text)  # the caption last: its presence means the pair is complete
    return count
