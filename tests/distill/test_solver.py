import sys
from pathlib import Path

import pytest
import torch
from diffusers import EulerDiscreteScheduler

from distill.schedule import add_noise, alpha_sigma, alphas_cumprod, teacher_grid
from distill.solver import solve_path, teacher_solve
from pipelines.architectures import base_scheduler, tiny_components
from pipelines.denoiser import zero_uncond

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared tiny inputs beside this file
from tiny_inputs import make_cond  # noqa: E402

ALPHAS_BAR = alphas_cumprod()


@pytest.fixture(scope="module")
def unet():
    return tiny_components(0)["unet"].eval()


def diffusers_solve(unet, x_t, t, t_end, teacher_steps, cond, prediction_type, guidance_scale):
    """The reference: diffusers' Euler scheduler (trailing) stepping over the same grid, as the SDXL pipeline does it."""
    scheduler = EulerDiscreteScheduler.from_config(base_scheduler().config, timestep_spacing="trailing", prediction_type=prediction_type)
    scheduler.set_timesteps(teacher_steps)
    alpha, _ = alpha_sigma(ALPHAS_BAR, t)
    sample = x_t / alpha  # diffusers' sigma-space latent: x0 + (sigma/alpha) eps
    uncond = zero_uncond(cond)
    for ts in scheduler.timesteps:
        if not t_end < ts <= t:
            continue
        model_input = scheduler.scale_model_input(sample, ts)

        def call(c):
            return unet(
                model_input,
                ts,
                encoder_hidden_states=c["encoder_hidden_states"],
                added_cond_kwargs={"text_embeds": c["text_embeds"], "time_ids": c["time_ids"]},
            ).sample

        out = call(cond)
        if guidance_scale != 1.0:
            out_u = call(uncond)
            out = out_u + guidance_scale * (out - out_u)
        sample = scheduler.step(out, ts, sample).prev_sample
    alpha_end, _ = alpha_sigma(ALPHAS_BAR, t_end)
    return sample * alpha_end


@pytest.mark.parametrize(
    "t, t_end, teacher_steps, prediction_type, guidance_scale",
    [
        (749, 249, 8, "epsilon", 1.0),  # n = 4 steps between grid points
        (249, -1, 8, "epsilon", 1.0),  # last jump: ends on the clean x0
        (999, 499, 4, "sample", 1.0),  # x0-prediction teacher
        (499, -1, 4, "epsilon", 6.0),  # CFG 6 with zero unconditional embeddings (the MSE stage)
    ],
)
def test_teacher_solve_matches_diffusers_euler(unet, t, t_end, teacher_steps, prediction_type, guidance_scale):
    torch.manual_seed(0)
    x_t = add_noise(torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), t, ALPHAS_BAR)
    cond = make_cond(2)
    with torch.no_grad():
        expected = diffusers_solve(unet, x_t, t, t_end, teacher_steps, cond, prediction_type, guidance_scale)
    got = teacher_solve(unet, x_t, t, t_end, teacher_steps, cond, ALPHAS_BAR, prediction_type, guidance_scale)
    assert got.shape == x_t.shape
    assert not torch.allclose(got, x_t, atol=1e-2)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_explicit_uncond_is_used(unet):
    x_t, cond = torch.randn(1, 4, 8, 8), make_cond(1)
    default = teacher_solve(unet, x_t, 499, 249, 4, cond, ALPHAS_BAR, guidance_scale=3.0)
    explicit_zeros = teacher_solve(unet, x_t, 499, 249, 4, cond, ALPHAS_BAR, guidance_scale=3.0, uncond=zero_uncond(cond))
    other = teacher_solve(unet, x_t, 499, 249, 4, cond, ALPHAS_BAR, guidance_scale=3.0, uncond=make_cond(1, seed=1))
    assert torch.equal(default, explicit_zeros)
    assert not torch.allclose(default, other)


def test_solve_path():
    assert solve_path(749, 249, 8) == [749, 624, 499, 374, 249]
    assert solve_path(249, -1, 8) == [249, 124, -1]
    # off-grid start: the 2-step teacher makes the jump it was trained to make from 749 (to 249), then to x0
    assert solve_path(749, -1, 2) == [749, 249, -1]
    for steps in (4, 8, 32):  # from any grid point, the path is the teacher's own grid
        grid = teacher_grid(steps)
        assert solve_path(grid[0], -1, steps) == grid + [-1]
        assert solve_path(grid[1], grid[-1], steps) == grid[1:]
    with pytest.raises(ValueError, match="less noise"):
        solve_path(249, 499, 4)


def test_frozen_teacher_gets_no_gradients(unet):
    x_t = torch.randn(1, 4, 8, 8, requires_grad=True)
    out = teacher_solve(unet, x_t, 499, -1, 2, make_cond(1), ALPHAS_BAR)
    assert not out.requires_grad
    assert all(p.grad is None for p in unet.parameters())
