"""The 1-step model's switch from epsilon to x0 ("sample") prediction (paper §4): copy the 2-step epsilon student,
regress the copy's raw output onto the x0 the epsilon model implies (MSE), then train it adversarially in x0 form.

Why: at t = 999 an epsilon model's x0 = (x_t - sigma eps) / alpha divides by alpha_999 ~ 0.07, amplifying any
error ~15x; predicting x0 directly avoids that. The teacher of the adversarial phase stays an epsilon model."""

import copy

import torch

from distill.lora import lora_layers
from distill.student import student_step
from pipelines.sampling import CLEAN


def x0_student_from(eps_unet):
    """A trainable, independent copy of a plain (merged) epsilon UNet: the x0 student's initialisation."""
    if lora_layers(eps_unet):
        raise ValueError("merge the epsilon student's LoRA (lora.merge_lora) before copying it into an x0 student")
    return copy.deepcopy(eps_unet).requires_grad_(True)


@torch.no_grad()
def implied_x0(eps_unet, x_t, t, cond: dict, alphas_bar) -> torch.Tensor:
    """The conversion target: x0 = (x_t - sigma_t eps(x_t, t)) / alpha_t, the frozen epsilon model's own x0
    prediction (its student_step's). The x0 student's output is regressed onto it (MSE)."""
    return student_step(eps_unet, x_t, t, CLEAN, cond, alphas_bar, "epsilon")[1]
