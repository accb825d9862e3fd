"""Pre-train the shapes world in order: judge, autoencoder, its decoder refined (encoder frozen), tiny autoencoder,
latent cache, base UNet.

Each part trains through `loop.run` (resumable checkpoints, tqdm with ETA, tensorboard) into
<output_dir>/<part>/ and ends by writing <output_dir>/<part>/final/ atomically; a finished part is skipped, so
`--resume` after a kill at any moment continues the part that was running.
"""

import json
import shutil
from pathlib import Path

import torch
from diffusers import AutoencoderKL, AutoencoderTiny

from ..seeding import stable_seed
from .config import PretrainConfig
from .parts import DONE, final_dir, finish, is_done
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


IMPORTABLE = ("judge", "vae", "decoder", "vae_tiny")


def import_parts(c: PretrainConfig, model_folder: Path, judge_file: Path) -> list[str]:
    """Finish the judge and autoencoder parts from a shipped model folder instead of training them (its autoencoder,
    decoder refined, serves as both the `vae` and the `decoder` part; its judge ships beside it), so that a
    pre-training on a fresh machine trains only the latent cache and the UNet. Parts already finished are left as
    they are; each imported part's report names its source. Returns the parts imported."""
    folder = Path(model_folder)
    load = lambda cls, name: cls.from_pretrained(folder / name, dtype=torch.float32, use_safetensors=True)
    writers = {
        "judge": lambda tmp: shutil.copyfile(judge_file, tmp / "judge.safetensors"),
        "vae": lambda tmp: load(AutoencoderKL, "vae").save_pretrained(tmp / "vae"),
        "decoder": lambda tmp: load(AutoencoderKL, "vae").save_pretrained(tmp / "vae"),
        "vae_tiny": lambda tmp: load(AutoencoderTiny, "vae_tiny").save_pretrained(tmp / "vae_tiny"),
    }
    imported = [part for part in IMPORTABLE if not is_done(c, part)]
    for part in imported:
        source = judge_file if part == "judge" else folder
        finish(c, part, writers[part], {"imported_from": str(source)})
    return imported
