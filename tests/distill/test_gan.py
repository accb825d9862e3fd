"""Tests that would catch a broken GAN, through the trainer's own student and D steps: a student step against a fixed D
raises D(fake); D steps against a fixed student raise D's accuracy; only the conditional D reads x_t; each stage
learns from the previous stage's merged student; two DDP processes train what one process trains on the same batch."""

import copy
import json
import sys
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file

from distill import solver as distill_solver
from distill import stages as distill_stages
from distill import steps as distill_steps
from distill import train as distill_train
from distill.config import PhaseConfig, StageConfig, parse_config
from distill.discriminator import Discriminator, mid_block_size
from distill.schedule import add_noise, alphas_cumprod
from distill.student import student_step
from pipelines.architectures import tiny_components
from pipelines.denoiser import unet_output

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_train import phase, plan, stage_unet  # noqa: E402
from tiny_inputs import make_cond  # noqa: E402
from two_processes import two_step_plan  # noqa: E402

ALPHAS_BAR = alphas_cumprod()


def gan_setup(student_noise: float = 0.0):
    """A 2-step stage's student (the teacher, plus Gaussian weight noise of that std), a 4-step teacher, a fresh
    conditional D, a batch at t = 999."""
    teacher = tiny_components(0)["unet"].requires_grad_(False).eval()
    student = copy.deepcopy(teacher).requires_grad_(True)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(student_noise * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    torch.manual_seed(0)
    disc = Discriminator.from_unet(teacher, conditional=True, latent_size=8)  # as the trainer builds it for 64 px
    stage = StageConfig("2step", 4, 2, ())
    phase_config = PhaseConfig("conditional", "full", 1, 1e-3)
    models = distill_steps.PhaseModels(student, teacher, lambda unet: torch.no_grad(), 4, "epsilon", disc, disc)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(8, 4, 8, 8, generator=g)
    x_t = add_noise(x0, torch.randn(8, 4, 8, 8, generator=g), 999, ALPHAS_BAR)
    return Accelerator(cpu=True), stage, phase_config, models, x_t, make_cond(8)


@pytest.fixture
def setup():
    return gan_setup()


def step(setup):
    """The trainer's student step, then its D step on the same fake (what the student's step started from)."""
    accelerator, stage, phase_config, m, x_t, cond = setup
    generator = torch.Generator().manual_seed(2)
    loss_g, x_real, x_fake = distill_steps.generator_step(accelerator, stage, phase_config, m, x_t, 999, 499, cond, ALPHAS_BAR, generator)
    return (loss_g, *distill_steps.discriminator_step(accelerator, phase_config, m, x_t, 999, 499, cond, x_real, x_fake, ALPHAS_BAR, generator))


def d_of_fake(m, x_t, cond) -> float:
    with torch.no_grad():
        fake = student_step(m.student, x_t, 999, 499, cond, ALPHAS_BAR)[0]
        return float(m.disc(fake, torch.full((len(x_t),), 499), cond, x_t, 999).mean())


def test_with_d_fixed_one_student_step_raises_d_of_fake(setup):
    _, _, _, m, x_t, cond = setup
    before = d_of_fake(m, x_t, cond)
    step(setup)  # computes both losses' gradients; only the student's are applied
    with torch.no_grad():
        for p in m.student.parameters():
            p -= 1e-2 * p.grad / (p.grad.norm() + 1e-12)
    assert d_of_fake(m, x_t, cond) > before + 1e-3


def test_with_the_student_fixed_d_steps_raise_its_accuracy():
    """A student that differs from the teacher (weight noise): 20 D steps take D from chance to telling them apart."""
    setup = gan_setup(student_noise=0.02)
    m = setup[3]
    optimizer = torch.optim.Adam(m.disc.parameters(), lr=3e-4, betas=(0.0, 0.99))
    losses, accuracies = [], []
    for _ in range(20):
        optimizer.zero_grad()
        m.student.zero_grad()
        _, loss_d, real, fake = step(setup)
        optimizer.step()
        losses.append(float(loss_d.detach()))
        accuracies.append(float(torch.cat([real > 0, fake < 0]).float().mean()))
    assert losses[-1] < 0.25 * losses[0], losses  # measured: 1.39 -> 0.03
    assert accuracies[0] == 0.5 and accuracies[-1] == 1.0, accuracies


def test_the_head_normalizes_only_on_maps_big_enough_to_keep_what_tells_real_from_fake():
    """GroupNorm on a 4x4 map strips each group's mean and scale; with it, the D above stays at 2 ln 2 (chance)."""
    teacher = tiny_components(0)["unet"]
    normalized = lambda latent: isinstance(Discriminator.from_unet(teacher, latent_size=latent).head[0].norm, torch.nn.GroupNorm)
    assert mid_block_size(teacher.config, 8) < 8 and not normalized(8)
    assert mid_block_size(teacher.config, 128) >= 8 and normalized(128)  # 1024 px SDXL: a 32x32 map, the paper's head


def test_only_the_conditional_discriminator_reads_x_t():
    teacher = tiny_components(0)["unet"].requires_grad_(False)
    x_next, cond = torch.randn(2, 4, 8, 8), make_cond(2)
    a, b = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    conditional = Discriminator.from_unet(teacher, conditional=True)
    unconditional = Discriminator.from_unet(teacher, conditional=False)
    with torch.no_grad():
        assert not torch.allclose(conditional(x_next, 499, cond, a, 999), conditional(x_next, 499, cond, b, 999))
        assert torch.equal(unconditional(x_next, 499, cond, a, 999), unconditional(x_next, 499, cond, b, 999))
        assert not torch.allclose(unconditional(x_next, 499, cond), unconditional(x_next + 1, 499, cond))


STAGES = [
    {"name": "4step", "teacher_steps": 8, "student_steps": 4, "phases": [phase("mse", "full", steps=1)]},
    {
        "name": "2step",
        "teacher_steps": 4,
        "student_steps": 2,
        "phases": [phase("conditional", "lora", steps=1), phase("unconditional", "full", steps=1), phase("unconditional", "full", steps=1, teacher="skip")],
    },
]


def test_each_stage_learns_from_the_previous_stages_merged_student(tmp_path, monkeypatch):
    """What teacher_solve runs, probed on a fixed input at every call: the base in stage 0; stage 0's saved student in
    stage 1 (through the LoRA student with its adapters off, then as a frozen copy); the base again for a skip phase."""
    probe_x, probe_cond, seen = torch.randn(1, 4, 8, 8), make_cond(1, seed=3), []
    solve = distill_solver.teacher_solve

    def probing_solve(unet, *args, **kwargs):
        with torch.no_grad():
            seen.append(unet_output(unet, probe_x, 499, probe_cond).float())
        return solve(unet, *args, **kwargs)

    monkeypatch.setattr(distill_solver, "teacher_solve", probing_solve)
    monkeypatch.setattr(distill_train, "probe_discriminator", lambda *args: None)  # its own solves: tests/distill/test_probe.py
    # Batch 1 and no D warm-up: exactly one solve per optimizer step, one step per phase.
    config = parse_config(plan(tmp_path, STAGES, checkpoint_every=1000, batch_size=1, d_warmup_steps=0))
    distill_train.train(config)

    components = tiny_components(0)
    stage0 = distill_stages.load_unet(config, "4step", components)
    with torch.no_grad():
        base_out = unet_output(components["unet"], probe_x, 499, probe_cond)
        stage0_out = unet_output(stage0, probe_x, 499, probe_cond)
    assert not torch.allclose(base_out, stage0_out)  # stage 0 trained: the two teachers are distinguishable
    assert len(seen) == 4
    assert torch.allclose(seen[0], base_out, atol=1e-6)
    assert torch.allclose(seen[1], stage0_out, atol=1e-6) and torch.allclose(seen[2], stage0_out, atol=1e-6)
    assert torch.allclose(seen[3], base_out, atol=1e-6)


def test_two_ddp_processes_train_what_one_process_trains_on_the_same_global_batch(tmp_path, ddp_run):
    """2 processes x batch 1 (tests/distill/two_processes.py) against this process x batch 1 x 2 accumulated
    micro-batches: the same samples (micro-batch k of process r draws with the seed of global micro-batch
    k * processes + r), the same averaged gradients, so the same students after two steps of every phase kind,
    adversarial ones included."""
    distill_train.train(parse_config(two_step_plan(tmp_path, gradient_accumulation_steps=2)))
    one, two = tmp_path / "run", ddp_run[0]
    a, b = stage_unet(one, "2step"), stage_unet(two, "2step")
    base = tiny_components(0)["unet"].state_dict()
    assert any(not torch.equal(a[k], base[k]) for k in a)
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-5, worst
    lora_a, lora_b = (load_file(run / "stages" / "2step" / "lora.safetensors") for run in (one, two))
    assert all(torch.allclose(lora_a[k], lora_b[k], atol=1e-5) for k in lora_a)
    assert json.loads((two / "stages" / "2step" / "stage.json").read_text())["student_steps"] == 2


@pytest.mark.parametrize("mode", ["alternating", "simultaneous"])
def test_d_steps_on_the_fake_of_the_updated_student_when_updates_alternate(tmp_path, monkeypatch, mode):
    """One optimizer step of an adversarial phase: alternating, D's fake is the jump of the student after its step;
    simultaneous, the jump of the student before it (the one the step started from)."""
    seen, original = [], distill_steps.discriminator_step

    def recording(accelerator, phase_config, m, x_t, t, t_next, cond, x_real, x_fake, *rest):
        seen.append((x_t, t, t_next, cond, x_fake))
        return original(accelerator, phase_config, m, x_t, t, t_next, cond, x_real, x_fake, *rest)

    monkeypatch.setattr(distill_steps, "discriminator_step", recording)
    stages = [{"name": "4step", "teacher_steps": 8, "student_steps": 4, "phases": [phase("unconditional", "full", steps=1, lr=5e-3)]}]
    config = parse_config(plan(tmp_path, stages, checkpoint_every=1000, gan_updates=mode, d_warmup_steps=0))
    distill_train.train(config)

    ((x_t, t, t_next, cond, x_fake),) = seen
    components = tiny_components(0)
    students = {"after": distill_stages.load_unet(config, "4step", components), "before": components["unet"]}
    with torch.no_grad():
        jumps = {when: student_step(unet, x_t, t, t_next, cond, ALPHAS_BAR)[0] for when, unet in students.items()}
    expected, other = ("after", "before") if mode == "alternating" else ("before", "after")
    assert torch.allclose(x_fake, jumps[expected], atol=1e-5)
    assert (x_fake - jumps[other]).abs().max() > 1e-3


def test_the_anchor_adds_its_weighted_mse_to_the_teachers_target_to_the_g_loss():
    """The same G step with anchor 0 and 0.5: the loss grows by 0.5 x MSE(student's jump, teacher's target), and the
    gradient pulls the student's jump toward the target (it changes the student's gradient)."""
    accelerator, stage, phase_config, m, x_t, cond = gan_setup(student_noise=0.02)
    losses, grads = [], []
    for anchor in (0.0, 0.5):
        m.student.zero_grad()
        loss_g, x_real, x_fake = distill_steps.generator_step(
            accelerator, stage, phase_config, m, x_t, 999, 499, cond, ALPHAS_BAR, torch.Generator().manual_seed(2), anchor
        )
        losses.append(float(loss_g))
        grads.append(m.student.conv_in.weight.grad.clone())
    torch.testing.assert_close(losses[1] - losses[0], 0.5 * float((x_fake - x_real).square().mean()), rtol=1e-4, atol=1e-6)
    assert not torch.allclose(grads[0], grads[1])
