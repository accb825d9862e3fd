"""The student's one jump t -> t - ns: an epsilon student for 8/4/2 steps, an x0 ("sample") student for 1 step."""

import torch

from pipelines.denoiser import Denoiser
from pipelines.sampling import euler_step, sigmas_at, to_sigma_space, to_variance_preserving


def student_step(unet, x_t, t, t_next, cond: dict, alphas_bar, prediction_type: str = "epsilon") -> tuple[torch.Tensor, torch.Tensor]:
    """(x_{t_next}, x0_pred) from one UNet call: the studio's denoiser and Euler step, on variance-preserving
    latents (x_{t_next} = alpha' x0 + sigma' eps; it is x0_pred when t_next = -1). Differentiable; t and t_next may
    be ints or (B,) tensors."""
    sigma = sigmas_at(t, alphas_bar).to(x_t.device).reshape(-1, 1, 1, 1)
    sigma_next = sigmas_at(t_next, alphas_bar).to(x_t.device).reshape(-1, 1, 1, 1)
    x = to_sigma_space(x_t.float(), sigma)
    x0 = Denoiser(unet, prediction_type, cond)(x, torch.as_tensor(t, device=x_t.device), sigma)
    x_next = to_variance_preserving(euler_step(x, x0, sigma, sigma_next), sigma_next)
    return x_next.to(x_t.dtype), x0.to(x_t.dtype)
