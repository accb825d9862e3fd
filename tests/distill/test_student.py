import sys
from pathlib import Path

import pytest
import torch

from distill.schedule import add_noise, alphas_cumprod
from distill.solver import teacher_solve
from distill.student import student_step
from pipelines.architectures import tiny_components
from pipelines.denoiser import unet_output

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared tiny inputs beside this file
from tiny_inputs import make_cond  # noqa: E402

ALPHAS_BAR = alphas_cumprod()


@pytest.fixture(scope="module")
def unet():
    return tiny_components(0)["unet"]


def test_one_student_step_equals_a_one_step_solve(unet):
    x_t, cond = torch.randn(2, 4, 8, 8), make_cond(2)
    x_next, x0 = student_step(unet, x_t, 999, 499, cond, ALPHAS_BAR, "epsilon")
    torch.testing.assert_close(x_next, teacher_solve(unet, x_t, 999, 499, 2, cond, ALPHAS_BAR))
    torch.testing.assert_close(x0, teacher_solve(unet, x_t, 999, -1, 1, cond, ALPHAS_BAR))


def test_x0_student_jumps_straight_to_its_output(unet):
    x_t, cond = torch.randn(1, 4, 8, 8), make_cond(1)
    x_next, x0 = student_step(unet, x_t, 999, -1, cond, ALPHAS_BAR, "sample")
    output = unet_output(unet, x_t, 999, cond)
    torch.testing.assert_close(x_next, x0)  # the Euler step to sigma = 0 lands on x0, up to rounding (as diffusers')
    torch.testing.assert_close(x0, output)


def test_per_sample_timesteps_and_gradients(unet):
    """The 1/2-step stages draw a training timestep per sample; the jump must stay differentiable."""
    unet.zero_grad(set_to_none=True)
    t, t_next = torch.tensor([999, 749]), torch.tensor([499, 249])
    x_t = add_noise(torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), t, ALPHAS_BAR)
    cond = make_cond(2)
    x_next, _ = student_step(unet, x_t, t, t_next, cond, ALPHAS_BAR, "epsilon")
    single, _ = student_step(unet, x_t[1:], 749, 249, {k: v[1:] for k, v in cond.items()}, ALPHAS_BAR, "epsilon")
    torch.testing.assert_close(x_next[1:], single)
    x_next.square().mean().backward()
    assert all(p.grad is not None for p in unet.parameters())
