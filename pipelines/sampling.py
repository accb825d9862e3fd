"""Sampling math for SDXL-Lightning: trailing timesteps, the Euler step and the sampler, as small pure functions.

The one sampler in the project: the studio serves with it, and distill's teacher, student and validation pictures
step with it (k-diffusion's sampling.py; the denoiser it calls is pipelines.denoiser, k-diffusion's external.py).

Notation follows diffusers' EulerDiscreteScheduler (k-diffusion's sigma space): a latent at noise level sigma is
x = x0 + sigma * eps, with sigma_t = sqrt((1 - alphabar_t) / alphabar_t). The UNet sees x / sqrt(sigma^2 + 1),
which is the variance-preserving latent sqrt(alphabar) * x0 + sqrt(1 - alphabar) * eps. Timestep t = -1 (CLEAN)
stands for the clean image, sigma = 0.
"""

import numpy as np
import torch

CLEAN = -1


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


def sigmas_at(timesteps, alphas_bar: torch.Tensor) -> torch.Tensor:
    """sigma(t) = sqrt((1 - alphabar_t) / alphabar_t) at each integer timestep, 0 at t = CLEAN; float32, t's shape."""
    t = torch.as_tensor(np.asarray(timesteps) if not torch.is_tensor(timesteps) else timesteps).long()
    all_sigmas = ((1 - alphas_bar) / alphas_bar) ** 0.5
    return torch.where(t == CLEAN, 0.0, all_sigmas.to(t.device)[t.clamp(min=0)]).float()


def trailing_schedule(num_steps: int, alphas_bar: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
    """(timesteps, sigmas) of an n-step trailing solve from pure noise: n timesteps, n + 1 sigmas ending at 0. The
    sigmas are Python floats, as diffusers' scheduler steps with them (float64 arithmetic on float32 values)."""
    timesteps = trailing_timesteps(num_steps, len(alphas_bar))
    return torch.from_numpy(timesteps), sigmas_at(np.append(timesteps, CLEAN), alphas_bar).tolist()


def initial_noise_scale(sigmas: torch.Tensor) -> float:
    """diffusers scales the unit noise by sigma_max for trailing spacing (not sqrt(sigma_max^2 + 1))."""
    return float(max(sigmas))


def model_input_scale(sigma: float) -> float:
    """c_in = 1 / sqrt(sigma^2 + 1): turns x = x0 + sigma * eps into the UNet's variance-preserving input."""
    return 1.0 / (sigma**2 + 1) ** 0.5


def to_sigma_space(x_vp: torch.Tensor, sigma) -> torch.Tensor:
    """x = x_vp * sqrt(sigma^2 + 1): a variance-preserving latent alpha x0 + sqrt(1 - alpha^2) eps as x0 + sigma eps."""
    return x_vp / model_input_scale(sigma)


def to_variance_preserving(x: torch.Tensor, sigma) -> torch.Tensor:
    """x_vp = x / sqrt(sigma^2 + 1), the inverse of to_sigma_space (and the UNet's input)."""
    return x * model_input_scale(sigma)


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


def sample_euler(denoiser, x: torch.Tensor, timesteps, sigmas) -> torch.Tensor:
    """k-diffusion's sample_euler: for each timestep, x0 = denoiser(x, t, sigma_i), then one Euler step to sigma_i+1.
    len(sigmas) = len(timesteps) + 1; the last sigma is where the solve stops (0: the clean image)."""
    for i, t in enumerate(timesteps):
        x = euler_step(x, denoiser(x, t, sigmas[i]), sigmas[i], sigmas[i + 1])
    return x


def sample_from_noise(denoiser, noise: torch.Tensor, timesteps, sigmas) -> torch.Tensor:
    """Clean latents from unit noise, as the studio renders: x = noise * sigma_max, then sample_euler to sigma = 0."""
    return sample_euler(denoiser, noise * initial_noise_scale(sigmas), timesteps, sigmas)
