"""The engine's fast path must give the stock StableDiffusionXLPipeline's model-card output for the same weights."""

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline

from pipelines import GenerationRequest

SIZE = 64


def stock_images(engine, prompts, seeds, steps):
    """The model-card recipe: trailing Euler (x0 for the 1-step variant), guidance 0, one generator per image."""
    pipe = StableDiffusionXLPipeline(
        **{**engine.pipe.components, "unet": engine.model.unets[steps], "scheduler": engine.model.spec.variant(steps).scheduler(engine.pipe.scheduler.config)}
    )
    pipe.set_progress_bar_config(disable=True)
    generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    return pipe(prompts, num_inference_steps=steps, guidance_scale=0.0, height=SIZE, width=SIZE, generator=generators, output_type="np").images


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_parity_with_stock_pipeline(tiny_engine, steps):
    expected = stock_images(tiny_engine, ["a lighthouse at dusk"], [7], steps)
    result = tiny_engine.generate([GenerationRequest("a lighthouse at dusk", seed=7, steps=steps, width=SIZE, height=SIZE)], output_type="float")
    assert result[0].image.shape == (SIZE, SIZE, 3)
    np.testing.assert_allclose(result[0].image, expected[0], atol=1e-4, rtol=0)


def test_parity_for_a_batch_of_prompts(tiny_engine):
    prompts, seeds = ["a red fox", "a blue whale", "an empty room"], [1, 2, 3]
    expected = stock_images(tiny_engine, prompts, seeds, 2)
    results = tiny_engine.generate([GenerationRequest(p, seed=s, steps=2, width=SIZE, height=SIZE) for p, s in zip(prompts, seeds)], output_type="float")
    assert {r.batch_size for r in results} == {3}
    np.testing.assert_allclose(np.stack([r.image for r in results]), expected, atol=1e-4, rtol=0)


def test_parity_uint8_output_is_the_rounded_float_output(tiny_engine):
    request = GenerationRequest("a cat", seed=3, steps=1, width=SIZE, height=SIZE)
    as_float = tiny_engine.generate([request], output_type="float")[0].image
    as_uint8 = tiny_engine.generate([request])[0].image
    assert as_uint8.dtype == np.uint8
    np.testing.assert_array_equal(as_uint8, np.round(as_float * 255).astype(np.uint8))


def test_guided_variant_matches_stock_pipeline_with_cfg():
    """A variant with guidance_scale 5 gives what StableDiffusionXLPipeline(guidance_scale=5) gives: doubled batch,
    zeroed unconditional embeddings (force_zeros_for_empty_prompt), trailing Euler."""
    from pipelines.engine import Engine
    from pipelines.loading import load_model
    from pipelines.variants import ModelSpec, Variant

    spec = ModelSpec("tiny-cfg", "tiny", (Variant(4, "epsilon", guidance_scale=5.0),))
    engine = Engine(load_model(spec, torch.device("cpu"), torch.float32, preview_vae=False))
    pipe = StableDiffusionXLPipeline(**{**engine.pipe.components, "scheduler": spec.variant(4).scheduler(engine.pipe.scheduler.config)})
    pipe.set_progress_bar_config(disable=True)
    prompts, seeds = ["a red circle on the left", "a blue star"], [5, 6]
    expected = pipe(
        prompts,
        num_inference_steps=4,
        guidance_scale=5.0,
        height=SIZE,
        width=SIZE,
        generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
        output_type="np",
    ).images
    unguided = stock_images(engine, prompts, seeds, 4)
    results = engine.generate([GenerationRequest(p, seed=s, steps=4, width=SIZE, height=SIZE) for p, s in zip(prompts, seeds)], output_type="float")
    np.testing.assert_allclose(np.stack([r.image for r in results]), expected, atol=1e-4, rtol=0)
    assert np.abs(expected - unguided).max() > 1e-2  # guidance changes the picture, so the match above means something
