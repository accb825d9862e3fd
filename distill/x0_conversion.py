"""The 1-step model's switch from epsilon to x0 ("sample") prediction (paper §4): copy the 2-step epsilon student,
regress the copy's raw output onto the x0 the epsilon model implies (MSE), then train it adversarially in x0 form.

Why: at t = 999 an epsilon model's x0 = (x_t - sigma eps) / alpha divides by alpha_999 ~ 0.07, amplifying any
error ~15x; predicting x0 directly avoids that. The teacher of the adversarial phase stays an epsilon model."""

import copy

import torch

from distill.lora import lora_layers
from distill.losses import mse_loss
from distill.schedule import eps_to_x0
from distill.solver import unet_output


def x0_student_from(eps_unet):
    """A trainable, independent copy of a plain (merged) epsilon UNet: the x0 student's initialisation."""
    if lora_layers(eps_unet):
        raise ValueError("merge the epsilon student's LoRA (lora.merge_lora) before copying it into an x0 student")
    return copy.deepcopy(eps_unet).requires_grad_(True)


@torch.no_grad()
def implied_x0(eps_unet, x_t, t, cond: dict, alphas_bar) -> torch.Tensor:
    """The conversion target: x0 = (x_t - sigma_t eps(x_t, t)) / alpha_t from the frozen epsilon model."""
    return eps_to_x0(unet_output(eps_unet, x_t, t, cond), x_t, t, alphas_bar)


def x0_conversion_loss(x0_unet, eps_unet, x_t, t, cond: dict, alphas_bar) -> torch.Tensor:
    """mean((x0_student(x_t, t) - implied_x0)^2); gradients reach the x0 student only."""
    return mse_loss(unet_output(x0_unet, x_t, t, cond), implied_x0(eps_unet, x_t, t, cond, alphas_bar))
