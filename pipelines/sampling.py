"""Sampling math for SDXL-Lightning: trailing timesteps and the Euler step, as small pure functions.

Notation follows diffusers' EulerDiscreteScheduler (k-diffusion's sigma space): a latent at noise level sigma is
x = x0 + sigma * eps, with sigma_t = sqrt((1 - alphabar_t) / alphabar_t). The UNet sees x / sqrt(sigma^2 + 1),
which is the variance-preserving latent sqrt(alphabar) * x0 + sqrt(1 - alphabar) * eps.
"""

import numpy as np
import torch


def alphas_cumprod(beta_start: float = 0.00085, beta_end: float = 0.012, num_train_timesteps: int = 1000) -> torch.Tensor:
    """alphabar_t = prod_{s<=t} (1 - beta_s), with SDXL's "scaled_linear" betas: beta = linspace(sqrt(b0), sqrt(b1))^2."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def alphas_cumprod_from_config(scheduler_config) -> torch.Tensor:
    """alphabar_t of a diffusers scheduler config; only SDXL's "scaled_linear" betas are supported."""
    if scheduler_config.get("beta_schedule", "scaled_linear") != "scaled_linear":
        raise ValueError(f"unsupported beta_schedule {scheduler_config['beta_schedule']!r} (SDXL uses 'scaled_linear')")
    return alphas_cumprod(scheduler_config["beta_start"], scheduler_config["beta_end"], scheduler_config.get("num_train_timesteps", 1000))


def trailing_timesteps(num_steps: int, num_train_timesteps: int = 1000) -> np.ndarray:
    """t_i = round(T - i * T / n) - 1 for i < n: 1 -> [999], 2 -> [999, 499], 4 -> [999, 749, 499, 249]."""
    step_ratio = num_train_timesteps / num_steps
    return np.round(np.arange(num_train_timesteps, 0, -step_ratio)).astype(np.float32) - 1


def sigmas_for(timesteps: np.ndarray, alphas_bar: torch.Tensor) -> torch.Tensor:
    """sigma(t) = sqrt((1 - alphabar_t) / alphabar_t) at each timestep, then a final 0 (the clean image)."""
    all_sigmas = ((1 - alphas_bar) / alphas_bar) ** 0.5
    sigmas = np.interp(timesteps, np.arange(len(all_sigmas)), all_sigmas.numpy())
    return torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32))


def initial_noise_scale(sigmas: torch.Tensor) -> float:
    """diffusers scales the unit noise by sigma_max for trailing spacing (not sqrt(sigma_max^2 + 1))."""
    return float(sigmas.max())


def model_input_scale(sigma: float) -> float:
    """c_in = 1 / sqrt(sigma^2 + 1): turns x = x0 + sigma * eps into the UNet's variance-preserving input."""
    return 1.0 / (sigma**2 + 1) ** 0.5


def predicted_x0(model_output: torch.Tensor, x: torch.Tensor, sigma: float, prediction_type: str) -> torch.Tensor:
    """x0 = x - sigma * eps for epsilon models; the output itself for "sample" (x0) models such as the 1-step UNet."""
    if prediction_type == "epsilon":
        return x - sigma * model_output
    if prediction_type == "sample":
        return model_output
    raise ValueError(f"unsupported prediction_type {prediction_type!r} (expected 'epsilon' or 'sample')")


def euler_step(x: torch.Tensor, x0: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """x_next = x + (sigma_next - sigma) * d with d = (x - x0) / sigma; lands on x0 exactly when sigma_next = 0."""
    derivative = (x - x0) / sigma
    return x + (sigma_next - sigma) * derivative


def classifier_free_guidance(uncond: torch.Tensor, cond: torch.Tensor, scale: float) -> torch.Tensor:
    """out = out_u + w (out_c - out_u): the unconditional prediction pushed w times towards the conditional one."""
    return uncond + scale * (cond - uncond)
