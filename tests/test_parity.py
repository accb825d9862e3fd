"""The engine's fast path must give the stock StableDiffusionXLPipeline's model-card output for the same weights."""

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline

from pipelines import GenerationRequest

SIZE = 64


def stock_images(engine, prompts, seeds, steps):
    """The model-card recipe: trailing Euler (x0 for the 1-step variant), guidance 0, one generator per image."""
    pipe = StableDiffusionXLPipeline(**{**engine.pipe.components, "unet": engine.model.unets[steps],
                                        "scheduler": engine.model.spec.variant(steps).scheduler(engine.pipe.scheduler.config)})
    pipe.set_progress_bar_config(disable=True)
    generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    return pipe(prompts, num_inference_steps=steps, guidance_scale=0.0, height=SIZE, width=SIZE,
                generator=generators, output_type="np").images


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_parity_with_stock_pipeline(tiny_engine, steps):
    expected = stock_images(tiny_engine, ["a lighthouse at dusk"], [7], steps)
    result = tiny_engine.generate([GenerationRequest("a lighthouse at dusk", seed=7, steps=steps, width=SIZE, height=SIZE)],
                                  output_type="float")
    assert result[0].image.shape == (SIZE, SIZE, 3)
    np.testing.assert_allclose(result[0].image, expected[0], atol=1e-4, rtol=0)


def test_parity_for_a_batch_of_prompts(tiny_engine):
    prompts, seeds = ["a red fox", "a blue whale", "an empty room"], [1, 2, 3]
    expected = stock_images(tiny_engine, prompts, seeds, 2)
    results = tiny_engine.generate([GenerationRequest(p, seed=s, steps=2, width=SIZE, height=SIZE) for p, s in zip(prompts, seeds)],
                                   output_type="float")
    assert {r.batch_size for r in results} == {3}
    np.testing.assert_allclose(np.stack([r.image for r in results]), expected, atol=1e-4, rtol=0)


def test_parity_uint8_output_is_the_rounded_float_output(tiny_engine):
    request = GenerationRequest("a cat", seed=3, steps=1, width=SIZE, height=SIZE)
    as_float = tiny_engine.generate([request], output_type="float")[0].image
    as_uint8 = tiny_engine.generate([request])[0].image
    assert as_uint8.dtype == np.uint8
    np.testing.assert_array_equal(as_uint8, np.round(as_float * 255).astype(np.uint8))
