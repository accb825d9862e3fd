"""Tests that would catch a broken GAN, on the tiny model in seconds: G and D each move the way their losses say,
and they alternate (D's step sees a fake from the student G has just updated)."""

import copy
from contextlib import nullcontext

import pytest
import torch
from accelerate import Accelerator

from distill.config import PhaseConfig, StageConfig
from distill.discriminator import Discriminator
from distill.schedule import alphas_cumprod, student_jump
from distill.solver import teacher_solve, zero_uncond
from distill.student import student_step
from distill.train import PhaseModels, discriminator_step, generator_step, optimizer_step, train_step
from pipelines.architectures import tiny_components

ALPHAS_BAR = alphas_cumprod()
STAGE = StageConfig("4step", 8, 4, (PhaseConfig("conditional", "full", 1, 1e-3),))
PHASE = STAGE.phases[0]
T = 749


def _cond(batch):
    g = torch.Generator().manual_seed(1)
    return {"encoder_hidden_states": torch.randn(batch, 77, 64, generator=g), "text_embeds": torch.randn(batch, 32, generator=g),
            "time_ids": torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]]).repeat(batch, 1)}


@pytest.fixture()
def setup():
    torch.manual_seed(0)
    teacher = tiny_components(0)["unet"].requires_grad_(False).eval()
    student = copy.deepcopy(teacher).requires_grad_(True)
    disc = Discriminator.from_unet(teacher, conditional=True)
    accelerator = Accelerator(cpu=True)
    models = PhaseModels(student, teacher, lambda unet: nullcontext(), 8, "epsilon", disc, disc)
    x_t = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    return accelerator, models, x_t, _cond(4)


def _d_fake_logit(m, x_t, cond):
    with torch.no_grad():
        x_fake, _ = student_step(m.student, x_t, T, student_jump(T, 8, 4), cond, ALPHAS_BAR, "epsilon")
        return float(m.disc(x_fake, torch.full((len(x_t),), student_jump(T, 8, 4)), cond, x_t, T).mean())


def test_with_d_fixed_a_student_step_raises_d_of_fake(setup):
    accelerator, m, x_t, cond = setup
    before = _d_fake_logit(m, x_t, cond)
    optimizer = torch.optim.SGD([p for p in m.student.parameters() if p.requires_grad], lr=0.05)
    generator_step(accelerator, STAGE, PHASE, m, x_t, T, student_jump(T, 8, 4), cond, ALPHAS_BAR, torch.Generator().manual_seed(3))
    assert all(p.grad is None for p in m.disc.parameters())  # G's loss reaches the student only
    optimizer_step(accelerator, [p for p in m.student.parameters() if p.requires_grad], optimizer, 1e9, "g")
    assert _d_fake_logit(m, x_t, cond) > before


def test_with_the_student_fixed_d_steps_raise_its_accuracy(setup):
    accelerator, m, x_t, cond = setup
    with torch.no_grad():  # a student some way from the teacher, as at the start of a stage
        for p in m.student.parameters():
            p.mul_(1.3)
    params = [p for p in m.disc.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=3e-4)
    t_next = student_jump(T, 8, 4)
    with torch.no_grad():
        x_real = teacher_solve(m.teacher, x_t, T, t_next, 8, cond, ALPHAS_BAR, "epsilon", 1.0, zero_uncond(cond))
    accuracies = []
    for k in range(20):
        loss_d, real_logits, fake_logits = discriminator_step(accelerator, STAGE, PHASE, m, x_t, T, t_next, cond, x_real, ALPHAS_BAR,
                                                              torch.Generator().manual_seed(5))
        accuracies.append(float(((real_logits > 0).float().mean() + (fake_logits < 0).float().mean()) / 2))
        optimizer_step(accelerator, params, optimizer, 1e9, "d")
    assert all(p.grad is None for p in m.student.parameters())  # D's loss never reaches the student
    assert accuracies[0] <= 0.75 and accuracies[-1] > 0.95


def test_d_steps_on_a_fake_from_the_student_g_just_updated(setup):
    accelerator, m, x_t, cond = setup
    t_next = student_jump(T, 8, 4)
    jump = lambda: student_step(m.student, x_t, T, t_next, cond, ALPHAS_BAR, "epsilon")[0].detach()
    before = jump()
    seen = []
    hook = m.disc.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()) if len(args[0]) == 2 * len(x_t) else None)
    g_params = [p for p in m.student.parameters() if p.requires_grad]
    d_params = [p for p in m.disc.parameters() if p.requires_grad]
    finite, record = train_step(accelerator, STAGE, PHASE, m, [(x_t, T, t_next, cond, torch.Generator().manual_seed(6))],
                                (m.student, g_params, torch.optim.SGD(g_params, lr=0.05)),
                                (m.disc, d_params, torch.optim.SGD(d_params, lr=0.0)), ALPHAS_BAR, 1e9)
    hook.remove()
    assert finite and {"loss_g", "loss_d", "d_acc_real", "d_acc_fake"} <= set(record)
    (d_input,) = seen  # the D step's one forward over real and fake concatenated
    fake_seen = d_input[len(x_t):]
    after = jump()
    assert (after - before).abs().max() > 1e-4  # G moved the student
    torch.testing.assert_close(fake_seen, after)  # and D judged the moved student's jump, not the stale one
