"""Pre-train the shapes world in order: judge, autoencoder, its decoder refined (encoder frozen), tiny autoencoder,
latent cache, base UNet.

Each part trains through `loop.run` (resumable checkpoints, tqdm with ETA, tensorboard) into
<output_dir>/<part>/ and ends by writing <output_dir>/<part>/final/ atomically; a finished part is skipped, so
`--resume` after a kill at any moment continues the part that was running.
"""

import json

import torch

from ..seeding import stable_seed
from .config import PretrainConfig
from .parts import DONE, final_dir, is_done
from .train_autoencoders import cache_latents, train_decoder, train_vae, train_vae_tiny
from .train_base import train_unet
from .train_judge import train_judge

TRAINERS = {"judge": train_judge, "vae": train_vae, "decoder": train_decoder, "vae_tiny": train_vae_tiny, "latents": cache_latents, "unet": train_unet}
PARTS = tuple(TRAINERS)


def pretrain(c: PretrainConfig, resume: bool = False, parts=PARTS, stop_after: int | None = None) -> dict:
    """Run the unfinished parts in order; returns each part's report."""
    reports = {}
    for part in parts:
        if is_done(c, part):
            reports[part] = json.loads((final_dir(c, part) / DONE).read_text())
            continue
        with torch.random.fork_rng(devices=[]):  # a part's initial weights depend only on (seed, part)
            torch.manual_seed(stable_seed(c.train.seed, part))
            reports[part] = TRAINERS[part](c, resume, stop_after)
    return reports
