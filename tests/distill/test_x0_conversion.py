"""The x0 conversion of the 1-step student: an independent copy of the epsilon student, regressed at t = 999 onto
the teacher's real n-step solve from that pure noise (not onto the epsilon model's one-evaluation x0)."""

import copy
import sys
from pathlib import Path

import pytest
import torch

from distill import steps as distill_steps
from distill.config import PhaseConfig, StageConfig
from distill.lora import add_lora
from distill.losses import mse_loss
from distill.schedule import alphas_cumprod
from distill.solver import teacher_solve
from distill.student import student_step
from distill.x0_conversion import conversion_target, x0_student_from
from pipelines.architectures import tiny_components

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared tiny inputs beside this file
from tiny_inputs import make_cond, tiny_latents  # noqa: E402

ALPHAS_BAR = alphas_cumprod()
STAGE = StageConfig("1step", 2, 1, (), prediction_type="sample")


@pytest.fixture(scope="module")
def eps_unet():
    return tiny_components(0)["unet"].requires_grad_(False)


def pure_noise(batch=4):
    return torch.randn(batch, 4, 8, 8, generator=torch.Generator().manual_seed(1)), make_cond(batch)


def test_copy_is_independent_and_refuses_an_unmerged_lora(eps_unet):
    student = x0_student_from(eps_unet)
    assert all(p.requires_grad for p in student.parameters())
    assert student.conv_in.weight.data_ptr() != eps_unet.conv_in.weight.data_ptr()
    with_lora = copy.deepcopy(eps_unet)
    add_lora(with_lora, rank=4)
    with pytest.raises(ValueError, match="merge"):
        x0_student_from(with_lora)


def test_the_trainers_conversion_target_is_the_teachers_solve_from_pure_noise(eps_unet):
    """The x0_convert phase draws every sample at t = 999 as pure noise, and its target is distill.solver's 2-step
    solve from there to x0; the epsilon model's one-evaluation x0 (the old target) is something else."""
    phase = PhaseConfig("x0_convert", "full", 1, 1e-3)
    m = distill_steps.PhaseModels(None, eps_unet, lambda unet: torch.no_grad(), 2, "epsilon")
    x_t, t, t_next, cond = distill_steps.draw_batch(tiny_latents(), STAGE, 6, torch.Generator().manual_seed(0), ALPHAS_BAR, "cpu", terminal_only=True)
    assert t.tolist() == [999] * 6 and t_next.tolist() == [-1] * 6
    target = distill_steps.teacher_target(phase, m, x_t, t, t_next, cond, ALPHAS_BAR)
    torch.testing.assert_close(target, teacher_solve(eps_unet, x_t, 999, -1, 2, cond, ALPHAS_BAR))
    one_evaluation = student_step(eps_unet, x_t, 999, -1, cond, ALPHAS_BAR, "epsilon")[1]
    assert (target - one_evaluation).abs().max() > 1e-2


def test_conversion_trains_only_the_x0_student_toward_the_teachers_output(eps_unet):
    torch.manual_seed(0)
    student = x0_student_from(eps_unet)
    noise, cond = pure_noise()
    target = conversion_target(eps_unet, noise, 2, cond, ALPHAS_BAR)
    optimizer = torch.optim.Adam(student.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        optimizer.zero_grad(set_to_none=True)
        x0_student = student_step(student, noise, 999, -1, cond, ALPHAS_BAR, "sample")[0]  # what the x0_convert phase trains
        loss = mse_loss(x0_student, target)
        loss.backward()
        assert all(p.grad is None for p in eps_unet.parameters())
        assert all(p.grad is not None for p in student.parameters())
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.85 * losses[0], losses
