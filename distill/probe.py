"""The discriminator's health after an adversarial phase: its accuracy on fresh teacher/student pairs it never
trained on. A D at chance (~0.5) gives the student no information, whatever its training loss says: with the
generator's rate far above D's, each G step undoes what D just learned and D sits at 2 ln 2 (docs/distill.md)."""

import torch
from accelerate.logging import get_logger

from .seeding import stable_seed
from .steps import PhaseModels, discriminator_inputs, teacher_target
from .student import student_step

log = get_logger(__name__)  # accelerate's: logs on the main process only

AT_CHANCE = 0.55  # held-out accuracy below this: D ends the phase telling real from fake no better than a coin


def accuracy(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> float:
    """(#(real logit > 0) + #(fake logit < 0)) / (#real + #fake): how often D calls a sample what it is."""
    right = (real_logits > 0).sum() + (fake_logits < 0).sum()
    return float(right) / (len(real_logits) + len(fake_logits))


@torch.no_grad()
def d_heldout_accuracy(stage, phase, m: PhaseModels, draw, alphas_bar, generators) -> float:
    """D's accuracy over one fresh batch per generator: draw(generator) -> (x_t, t, t_next, cond); the teacher's
    target is real, the student's jump fake, both prepared for D as in training (re-noised where the phase does)."""
    real, fake = [], []
    for generator in generators:
        x_t, t, t_next, cond = draw(generator)
        x_real = teacher_target(phase, m, x_t, t, t_next, cond, alphas_bar)
        x_fake = student_step(m.student, x_t, t, t_next, cond, alphas_bar, stage.prediction_type)[0]
        real_in, fake_in, t_d = discriminator_inputs(phase, x_t, t, x_real, x_fake, t_next, alphas_bar, generator)
        given = (x_t, t) if phase.objective == "conditional" else ()
        real.append(m.disc(real_in, t_d, cond, *given))
        fake.append(m.disc(fake_in, t_d, cond, *given))
    return accuracy(torch.cat(real), torch.cat(fake))


def probe_discriminator(accelerator, tc, stage, phase, label: str, key: tuple, m: PhaseModels, draw, alphas_bar, global_step: int) -> float:
    """D's held-out accuracy at the end of adversarial phase `key` = (stage index, phase index), over
    tc.probe_batches fresh batches whose seeds no training step draws: logged to tensorboard under `label`, warned
    about when D ends the phase at chance, and returned for the stage's stage.json."""
    generators = [torch.Generator().manual_seed(stable_seed(tc.seed, *key, "probe", k)) for k in range(tc.probe_batches)]
    with accelerator.autocast():
        held_out = d_heldout_accuracy(stage, phase, m, draw, alphas_bar, generators)
    accelerator.log({f"{label}/d_heldout_accuracy": held_out}, step=global_step)
    if held_out < AT_CHANCE:
        log.warning(f"{label}: D ends the phase at chance (held-out accuracy {held_out:.3f} < {AT_CHANCE}): its student learned from noise")
    else:
        log.info(f"{label}: D's held-out accuracy {held_out:.3f}")
    return held_out
