"""The student's one jump t -> t - ns: an epsilon student for 8/4/2 steps, an x0 ("sample") student for 1 step."""

import torch

from distill.schedule import ddim_step, split_prediction
from distill.solver import unet_output


def student_step(unet, x_t, t, t_next, cond: dict, alphas_bar, prediction_type: str = "epsilon") -> tuple[torch.Tensor, torch.Tensor]:
    """(x_{t_next}, x0_pred) from one UNet call: x0, eps from the output, then x_{t_next} = alpha' x0 + sigma' eps
    (x_{t_next} is x0_pred when t_next = -1). Differentiable; t may be an int or a (B,) tensor."""
    out = unet_output(unet, x_t, t, cond)
    x0, eps = split_prediction(out, x_t, t, alphas_bar, prediction_type)
    return ddim_step(x0, eps, t_next, alphas_bar), x0
