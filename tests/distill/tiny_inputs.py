"""Conditioning for the tiny UNet the distill tests run: SDXL-shaped, with 8 text tokens instead of 77 (the same
code path, faster on a CPU), seeded so that a test can ask for the same or a different prompt."""

import torch
from diffusers.configuration_utils import FrozenDict

from pipelines.architectures import TINY_UNET
from pipelines.conditioning import random_conditioning

TINY_UNET_CONFIG = FrozenDict(TINY_UNET)


def make_cond(batch: int, seed: int = 0) -> dict:
    return random_conditioning(TINY_UNET_CONFIG, batch, 64, tokens=8, generator=torch.Generator().manual_seed(seed))


class LatentsInMemory:
    """What the trainer's latent cache serves (len, a batch of latents and conditioning), held in memory."""

    def __init__(self, latents, cond: dict):
        self.rows = {"latents": latents, **cond}

    def __len__(self) -> int:
        return len(self.rows["latents"])

    def batch(self, indices) -> dict:
        return {k: v[indices] for k, v in self.rows.items()}


def tiny_latents(count: int = 16, seed: int = 0) -> LatentsInMemory:
    """`count` random 8x8 tiny-model latents (64 px) with distinct conditioning each."""
    return LatentsInMemory(torch.randn(count, 4, 8, 8, generator=torch.Generator().manual_seed(seed)), make_cond(count, seed))
