"""The 1-step model's switch from epsilon to x0 ("sample") prediction (paper §4): copy the 2-step epsilon student,
regress the copy's raw output at t = 999 (pure noise) onto the teacher's real n-step output from that noise (MSE),
then train it adversarially in x0 form.

Why x0: at t = 999 an epsilon model's x0 = (x_t - sigma eps) / alpha divides by alpha_999 ~ 0.07, amplifying any
error ~15x; predicting x0 directly avoids that. Why that target: the 1-step student replaces the teacher's whole
n-step solve from pure noise, so that solve is what it must reproduce. (The epsilon model's own one-evaluation x0
at t = 999 is 0.71 rms from the teacher's 2-step output on the shapes model and scores 0 % adherence against 31 %.)
The teacher of the adversarial phases stays an epsilon model."""

import copy

import torch

from distill.lora import lora_layers
from distill.schedule import NUM_TRAIN_TIMESTEPS
from distill.solver import teacher_solve
from pipelines.sampling import CLEAN

CONVERSION_T = NUM_TRAIN_TIMESTEPS - 1  # the conversion trains where the 1-step student runs: pure noise


def x0_student_from(eps_unet):
    """A trainable, independent copy of a plain (merged) epsilon UNet: the x0 student's initialisation."""
    if lora_layers(eps_unet):
        raise ValueError("merge the epsilon student's LoRA (lora.merge_lora) before copying it into an x0 student")
    return copy.deepcopy(eps_unet).requires_grad_(True)


@torch.no_grad()
def conversion_target(teacher, noise, teacher_steps: int, cond: dict, alphas_bar, prediction_type: str = "epsilon") -> torch.Tensor:
    """The conversion target: the teacher's n-step solve from pure noise at t = 999 to the clean image, x0."""
    return teacher_solve(teacher, noise, CONVERSION_T, CLEAN, teacher_steps, cond, alphas_bar, prediction_type)
