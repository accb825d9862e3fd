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


def trained_d(g_lr: float) -> float:
    """D's held-out accuracy after STEPS steps of a conditional phase: D-only (g_lr = 0, the warm-up) or G and D
    alternating, from a student that differs from its teacher by weight noise."""
    teacher = tiny_components(0)["unet"].requires_grad_(False).eval()
    student = copy.deepcopy(teacher).requires_grad_(True)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    torch.manual_seed(0)
    disc = Discriminator.from_unet(teacher, conditional=True, latent_size=8)
    phase = PhaseConfig("conditional", "full", STEPS, g_lr or 1.0, d_lr=D_LR)
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
    accelerator, tc = Accelerator(cpu=True), TrainConfig()
    for k in range(STEPS):
        if g_lr == 0:
            distill_steps.discriminator_warmup_step(accelerator, tc, STAGE, phase, m, opt, draw, ALPHAS_BAR, (0, 0, 0, "warmup", k))
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
