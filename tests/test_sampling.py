import numpy as np
import torch
from diffusers import EulerDiscreteScheduler

from pipelines import sampling
from pipelines.architectures import base_scheduler


def test_trailing_timesteps_match_the_model_card():
    assert sampling.trailing_timesteps(1).tolist() == [999]
    assert sampling.trailing_timesteps(2).tolist() == [999, 499]
    assert sampling.trailing_timesteps(4).tolist() == [999, 749, 499, 249]
    assert sampling.trailing_timesteps(8).tolist() == [999, 874, 749, 624, 499, 374, 249, 124]


def test_power_of_two_grids_nest():
    for coarse, fine in [(1, 2), (2, 4), (4, 8), (8, 32)]:
        assert set(sampling.trailing_timesteps(coarse)) <= set(sampling.trailing_timesteps(fine))


def test_sigmas_equal_diffusers_trailing_euler():
    for steps in (1, 2, 4, 8):
        scheduler = EulerDiscreteScheduler.from_config(base_scheduler().config, timestep_spacing="trailing")
        scheduler.set_timesteps(steps)
        timesteps, sigmas = sampling.trailing_schedule(steps, sampling.alphas_cumprod())
        np.testing.assert_array_equal(scheduler.timesteps.numpy(), timesteps.numpy())
        torch.testing.assert_close(torch.tensor(sigmas), scheduler.sigmas, rtol=1e-6, atol=0)
        assert sampling.initial_noise_scale(sigmas) == float(scheduler.init_noise_sigma)


def test_euler_step_lands_on_x0_at_sigma_zero_and_x0_inverts_eps():
    x0, eps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    sigma = 3.0
    x = x0 + sigma * eps
    predicted = sampling.predicted_x0(eps, x, sigma, "epsilon")
    torch.testing.assert_close(predicted, x0)
    torch.testing.assert_close(sampling.euler_step(x, predicted, sigma, 0.0), x0)
    assert sampling.predicted_x0(x0, x, sigma, "sample") is x0


def test_sigmas_at_any_timestep_and_zero_at_clean():
    alphas_bar = sampling.alphas_cumprod()
    sigmas = sampling.sigmas_at(torch.tensor([0, 499, 999, sampling.CLEAN]), alphas_bar)
    expected = ((1 - alphas_bar[[0, 499, 999]]) / alphas_bar[[0, 499, 999]]) ** 0.5
    torch.testing.assert_close(sigmas[:3], expected)
    assert sigmas[3].item() == 0.0 and sampling.sigmas_at(749, alphas_bar).shape == ()


def test_one_euler_step_in_sigma_space_is_one_ddim_step_on_variance_preserving_latents():
    """Why distill's variance-preserving latents can use the studio's sampler: x' = alpha' x0 + sqrt(1 - alpha'^2) eps."""
    alphas_bar = sampling.alphas_cumprod()
    x0, eps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    a, b = alphas_bar[[749, 249]].sqrt()
    sigma, sigma_next = sampling.sigmas_at(torch.tensor([749, 249]), alphas_bar)
    x_vp = a * x0 + (1 - a**2).sqrt() * eps
    x = sampling.to_sigma_space(x_vp, sigma)
    torch.testing.assert_close(x, x0 + sigma * eps)
    predicted = sampling.predicted_x0(eps, x, sigma, "epsilon")
    stepped = sampling.to_variance_preserving(sampling.euler_step(x, predicted, sigma, sigma_next), sigma_next)
    torch.testing.assert_close(stepped, b * x0 + (1 - b**2).sqrt() * eps)
