"""Distill's validation pictures are the studio's: the same weights, prompt and seed give the same latents through
distill.validation.sample_latents as through the engine's render, guided or not, epsilon or x0 model."""

import pytest
import torch

from distill.validation import encode_prompts, sample_latents
from pipelines.engine import Engine
from pipelines.loading import load_model
from pipelines.sampling import alphas_cumprod_from_config
from pipelines.variants import ModelSpec, Variant

SIZE = 64


@pytest.mark.parametrize("steps, prediction_type, guidance", [(1, "sample", None), (2, "epsilon", None), (4, "epsilon", 5.0)])
def test_validation_sampling_is_what_the_studio_renders(steps, prediction_type, guidance):
    variant = Variant(steps, prediction_type) if guidance is None else Variant(steps, prediction_type, guidance_scale=guidance)
    spec = ModelSpec("tiny-check", "tiny", (variant,))
    engine = Engine(load_model(spec, torch.device("cpu"), torch.float32, preview_vae=False))
    prompts, seeds = ["a red circle", "two blue squares"], [3, 4]
    cond = encode_prompts(engine.pipe.components, prompts, SIZE, "cpu")
    channels = engine.pipe.unet.config.in_channels
    noise = torch.stack([torch.randn((channels, SIZE // 8, SIZE // 8), generator=torch.Generator().manual_seed(s)) for s in seeds])
    alphas_bar = alphas_cumprod_from_config(engine.pipe.scheduler.config)
    with torch.no_grad():
        served = engine.denoise(steps, noise, cond["encoder_hidden_states"], cond["text_embeds"], SIZE, SIZE)
    validated = sample_latents(engine.pipe.unet, noise, steps, cond, alphas_bar, prediction_type, guidance or 1.0)
    assert not torch.allclose(validated, noise, atol=1e-2)
    torch.testing.assert_close(validated, served, rtol=0, atol=0)
