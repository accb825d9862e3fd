"""The discriminator's health probe on the tiny model, through the trainer's own steps: a D trained against a frozen
student (the D-only warm-up) tells fresh teacher/student pairs apart; a D whose student steps at a far higher rate
stays at chance, as measured on the shapes 2-step stage (G 3e-4 against D 1e-4: 49-52 %); one at a lower rate learns."""

import copy
import sys
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from distill import steps as distill_steps
from distill.config import PhaseConfig, StageConfig, TrainConfig
from distill.discriminator import Discriminator
from distill.probe import AT_CHANCE, accuracy, d_heldout_accuracy
from distill.schedule import alphas_cumprod
from pipelines.architectures import tiny_components

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_inputs import tiny_latents  # noqa: E402

ALPHAS_BAR = alphas_cumprod()
STAGE = StageConfig("2step", 4, 2, ())
D_LR, STEPS = 1e-4, 20


def tiny_phase(g_lr: float, d_steps: int = 1):
    """(phase, models, optimizers, draw) of a conditional full-UNet phase on the tiny model, from a student that differs
    from its teacher by weight noise."""
    teacher = tiny_components(0)["unet"].requires_grad_(False).eval()
    student = copy.deepcopy(teacher).requires_grad_(True)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    torch.manual_seed(0)
    disc = Discriminator.from_unet(teacher, conditional=True, latent_size=8)
    phase = PhaseConfig("conditional", "full", STEPS, g_lr or 1.0, d_lr=D_LR, d_steps=d_steps)
    m = distill_steps.PhaseModels(student, teacher, lambda unet: torch.no_grad(), 4, "epsilon", disc, disc)
    betas = (0.0, 0.99)
    opt = distill_steps.Optimizers(
        list(student.parameters()),
        torch.optim.Adam(student.parameters(), lr=phase.lr, betas=betas),
        list(disc.parameters()),
        torch.optim.Adam(disc.parameters(), lr=D_LR, betas=betas),
    )
    data = tiny_latents(64)
    draw = lambda generator: distill_steps.draw_batch(data, STAGE, 8, generator, ALPHAS_BAR, "cpu")  # noqa: E731
    return phase, m, opt, draw


def trained_d(g_lr: float) -> float:
    """D's held-out accuracy after STEPS steps: D-only (g_lr = 0, the warm-up) or G and D alternating."""
    phase, m, opt, draw = tiny_phase(g_lr)
    accelerator, tc = Accelerator(cpu=True), TrainConfig()
    for k in range(STEPS):
        if g_lr == 0:
            distill_steps.discriminator_only_step(accelerator, tc, STAGE, phase, m, opt, draw, ALPHAS_BAR, (0, 0, 0, "warmup", k))
        else:
            distill_steps.optimization_step(accelerator, tc, STAGE, phase, m, opt, draw, ALPHAS_BAR, (0, 0, 0, k))
    held_out = [torch.Generator().manual_seed(1000 + k) for k in range(4)]  # seeds no step above drew
    return d_heldout_accuracy(STAGE, phase, m, draw, ALPHAS_BAR, held_out)


def test_accuracy_counts_each_side_on_its_own_sign():
    assert accuracy(torch.tensor([1.0, -1.0]), torch.tensor([-1.0, -2.0])) == 0.75
    assert accuracy(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 1.0])) == 0.5  # says "real" to everything: chance


@pytest.mark.parametrize(
    "g_lr, expect",
    [
        (0.0, "learns"),  # measured: 0.89
        (1e-6, "learns"),  # G far below D: 0.78
        (1e-2, "chance"),  # G 100x above D: 0.50, D's loss at 2 ln 2
    ],
)
def test_held_out_accuracy_tells_a_learning_d_from_a_drowned_one(g_lr, expect):
    held_out = trained_d(g_lr)
    if expect == "learns":
        assert held_out > 0.7, held_out
    else:
        assert held_out < AT_CHANCE, held_out


def test_d_steps_gives_d_that_many_optimizer_steps_per_g_step_each_extra_one_on_a_fresh_batch(monkeypatch):
    seen, original = [], distill_steps.discriminator_step

    def recording(accelerator, phase, m, x_t, *rest):
        seen.append(x_t)
        return original(accelerator, phase, m, x_t, *rest)

    monkeypatch.setattr(distill_steps, "discriminator_step", recording)
    phase, m, opt, draw = tiny_phase(1e-4, d_steps=3)
    accelerator, tc = Accelerator(cpu=True), TrainConfig()
    for k in range(2):
        record = distill_steps.optimization_step(accelerator, tc, STAGE, phase, m, opt, draw, ALPHAS_BAR, (0, 0, 0, k))
    assert record["finite"] and "loss_d" in record
    g_steps = {int(state["step"]) for state in opt.g_opt.state.values()}
    d_steps = {int(state["step"]) for state in opt.d_opt.state.values()}
    assert (g_steps, d_steps, len(seen)) == ({2}, {6}, 6)
    assert all(not torch.equal(a, b) for i, a in enumerate(seen) for b in seen[i + 1 :])  # six different batches
