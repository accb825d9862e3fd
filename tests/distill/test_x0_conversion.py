import copy
import sys
from pathlib import Path

import pytest
import torch

from distill.lora import add_lora
from distill.losses import mse_loss
from distill.schedule import add_noise, alphas_cumprod, training_timesteps
from distill.student import student_step
from distill.x0_conversion import implied_x0, x0_student_from
from pipelines.architectures import tiny_components

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared tiny inputs beside this file
from tiny_inputs import make_cond  # noqa: E402

ALPHAS_BAR = alphas_cumprod()


@pytest.fixture(scope="module")
def eps_unet():
    return tiny_components(0)["unet"].requires_grad_(False)


def make_batch(batch=4):
    g = torch.Generator().manual_seed(1)
    t = torch.tensor(training_timesteps(1))[:batch]  # the 1-step stage trains at 999, 749, 499, 249
    x_t = add_noise(torch.randn(batch, 4, 8, 8, generator=g), torch.randn(batch, 4, 8, 8, generator=g), t, ALPHAS_BAR)
    return x_t, t, make_cond(batch)


def test_copy_is_independent_and_refuses_an_unmerged_lora(eps_unet):
    student = x0_student_from(eps_unet)
    assert all(p.requires_grad for p in student.parameters())
    assert student.conv_in.weight.data_ptr() != eps_unet.conv_in.weight.data_ptr()
    with_lora = copy.deepcopy(eps_unet)
    add_lora(with_lora, rank=4)
    with pytest.raises(ValueError, match="merge"):
        x0_student_from(with_lora)


def test_conversion_trains_only_the_x0_student_and_reduces_the_loss(eps_unet):
    torch.manual_seed(0)
    student = x0_student_from(eps_unet)
    x_t, t, cond = make_batch()
    optimizer = torch.optim.Adam(student.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        optimizer.zero_grad(set_to_none=True)
        _, x0_student = student_step(student, x_t, t, -1, cond, ALPHAS_BAR, "sample")  # what the x0_convert phase trains
        loss = mse_loss(x0_student, implied_x0(eps_unet, x_t, t, cond, ALPHAS_BAR))
        loss.backward()
        assert all(p.grad is None for p in eps_unet.parameters())
        assert all(p.grad is not None for p in student.parameters())
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.85 * losses[0], losses
    # After conversion, the x0 student's one jump lands closer to the epsilon model's x0 than before.
    with torch.no_grad():
        before, _ = student_step(eps_unet, x_t, t, -1, cond, ALPHAS_BAR, "sample")
        after, _ = student_step(student, x_t, t, -1, cond, ALPHAS_BAR, "sample")
    target = implied_x0(eps_unet, x_t, t, cond, ALPHAS_BAR)
    assert (after - target).square().mean() < (before - target).square().mean()
