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
        timesteps = sampling.trailing_timesteps(steps)
        sigmas = sampling.sigmas_for(timesteps, sampling.alphas_cumprod())
        np.testing.assert_array_equal(scheduler.timesteps.numpy(), timesteps)
        torch.testing.assert_close(sigmas, scheduler.sigmas, rtol=1e-6, atol=0)
        assert sampling.initial_noise_scale(sigmas) == float(scheduler.init_noise_sigma)


def test_euler_step_lands_on_x0_at_sigma_zero_and_x0_inverts_eps():
    x0, eps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    sigma = 3.0
    x = x0 + sigma * eps
    predicted = sampling.predicted_x0(eps, x, sigma, "epsilon")
    torch.testing.assert_close(predicted, x0)
    torch.testing.assert_close(sampling.euler_step(x, predicted, sigma, 0.0), x0)
    assert sampling.predicted_x0(x0, x, sigma, "sample") is x0
