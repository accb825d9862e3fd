"""Conditioning for the tiny UNet the distill tests run: SDXL-shaped, with 8 text tokens instead of 77 (the same
code path, faster on a CPU), seeded so that a test can ask for the same or a different prompt."""

import torch
from diffusers.configuration_utils import FrozenDict

from pipelines.architectures import TINY_UNET
from pipelines.conditioning import random_conditioning

TINY_UNET_CONFIG = FrozenDict(TINY_UNET)


def make_cond(batch: int, seed: int = 0) -> dict:
    return random_conditioning(TINY_UNET_CONFIG, batch, 64, tokens=8, generator=torch.Generator().manual_seed(seed))
