"""Schedule math for distillation: noise levels, nested trailing grids, and conversions between predictions.

Latents are variance-preserving: x_t = alpha_t x0 + sigma_t eps with alpha_t = sqrt(alphabar_t) and
sigma_t = sqrt(1 - alphabar_t). Timesteps are the UNet's 0-based indices (999 = the paper's T = 1000); t = -1
stands for the clean image (alphabar = 1), so "step to -1" means "return x0".
"""

import torch

from pipelines.sampling import alphas_cumprod, alphas_cumprod_from_config, trailing_timesteps  # noqa: F401 (alphas_cumprod re-exported)

NUM_TRAIN_TIMESTEPS = 1000
CLEAN = -1


def alphas_bar_from_config(scheduler_config) -> torch.Tensor:
    """alphabar_t of a diffusers scheduler config, via pipelines.sampling; the grids here assume T = 1000."""
    if scheduler_config.get("num_train_timesteps", NUM_TRAIN_TIMESTEPS) != NUM_TRAIN_TIMESTEPS:
        raise ValueError(f"the distillation grids assume {NUM_TRAIN_TIMESTEPS} training timesteps")
    return alphas_cumprod_from_config(scheduler_config)


def _timesteps(t, device) -> torch.Tensor:
    return torch.as_tensor(t, device=device).long().reshape(-1)


def alpha_sigma(alphas_bar: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
    """alpha_t = sqrt(alphabar_t), sigma_t = sqrt(1 - alphabar_t), shaped (B, 1, 1, 1); t = -1 gives (1, 0).

    t is an int or a (B,) tensor of 0-based timesteps."""
    t = _timesteps(t, alphas_bar.device)
    clean = t == CLEAN
    abar = torch.where(clean, torch.ones((), dtype=alphas_bar.dtype, device=alphas_bar.device), alphas_bar[t.clamp(min=0)])
    abar = abar.reshape(-1, 1, 1, 1)
    return abar.sqrt(), (1 - abar).sqrt()


def _coefficients(alphas_bar, t, like: torch.Tensor):
    alpha, sigma = alpha_sigma(alphas_bar.to(like.device), t)
    return alpha.float(), sigma.float()


def add_noise(x0, noise, t, alphas_bar, terminal_t: int | None = NUM_TRAIN_TIMESTEPS - 1) -> torch.Tensor:
    """x_t = alpha_t x0 + sigma_t eps, except x_t = eps exactly where t == terminal_t (None: nowhere).

    The paper's schedule fix: SDXL's alphabar_999 > 0, so the stock schedule never shows the model pure noise, yet
    inference starts from it. Feeding eps at t = T (keeping alphabar for every other use) closes that gap."""
    alpha, sigma = _coefficients(alphas_bar, t, x0)
    noisy = alpha * x0.float() + sigma * noise.float()
    if terminal_t is None:
        return noisy.to(x0.dtype)
    terminal = (_timesteps(t, x0.device) == terminal_t).reshape(-1, 1, 1, 1)
    return torch.where(terminal, noise.float(), noisy).to(x0.dtype)


def eps_to_x0(eps, x_t, t, alphas_bar) -> torch.Tensor:
    """x0 = (x_t - sigma_t eps) / alpha_t."""
    alpha, sigma = _coefficients(alphas_bar, t, x_t)
    return ((x_t.float() - sigma * eps.float()) / alpha).to(x_t.dtype)


def x0_to_eps(x0, x_t, t, alphas_bar) -> torch.Tensor:
    """eps = (x_t - alpha_t x0) / sigma_t (t >= 0: sigma_t > 0 everywhere on SDXL's schedule)."""
    alpha, sigma = _coefficients(alphas_bar, t, x_t)
    return ((x_t.float() - alpha * x0.float()) / sigma).to(x_t.dtype)


def v_to_x0(v, x_t, t, alphas_bar) -> torch.Tensor:
    """x0 = alpha_t x_t - sigma_t v, for v = alpha_t eps - sigma_t x0."""
    alpha, sigma = _coefficients(alphas_bar, t, x_t)
    return (alpha * x_t.float() - sigma * v.float()).to(x_t.dtype)


def x0_to_v(x0, x_t, t, alphas_bar) -> torch.Tensor:
    """v = alpha_t eps - sigma_t x0 = (alpha_t x_t - x0) / sigma_t (using alpha^2 + sigma^2 = 1)."""
    alpha, sigma = _coefficients(alphas_bar, t, x_t)
    return ((alpha * x_t.float() - x0.float()) / sigma).to(x_t.dtype)


def split_prediction(model_output, x_t, t, alphas_bar, prediction_type: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, eps) implied by a UNet output of the given prediction_type ("epsilon", "sample" or "v_prediction")."""
    if prediction_type == "epsilon":
        return eps_to_x0(model_output, x_t, t, alphas_bar), model_output
    if prediction_type == "sample":
        x0 = model_output
    elif prediction_type == "v_prediction":
        x0 = v_to_x0(model_output, x_t, t, alphas_bar)
    else:
        raise ValueError(f"unsupported prediction_type {prediction_type!r} (expected 'epsilon', 'sample' or 'v_prediction')")
    return x0, x0_to_eps(x0, x_t, t, alphas_bar)


def ddim_step(x0, eps, t_next, alphas_bar) -> torch.Tensor:
    """Deterministic DDIM: x_{t'} = alpha_{t'} x0 + sigma_{t'} eps; returns x0 itself at t' = -1.

    For an epsilon model this is exactly diffusers' Euler step in sigma space (x / alpha = x0 + (sigma/alpha) eps)."""
    alpha, sigma = _coefficients(alphas_bar, t_next, x0)
    return (alpha * x0.float() + sigma * eps.float()).to(x0.dtype)


def teacher_grid(teacher_steps: int) -> list[int]:
    """The teacher's trailing timesteps, e.g. 4 -> [999, 749, 499, 249]; grids of powers of two nest."""
    return [int(t) for t in trailing_timesteps(teacher_steps, NUM_TRAIN_TIMESTEPS)]


def student_jump(t: int, teacher_steps: int, student_steps: int) -> int:
    """Where the student's one jump from t lands: t - n s with n = teacher_steps / student_steps teacher steps of
    size s = T / teacher_steps, i.e. T / student_steps below t, snapped to the teacher's grid; -1 once it passes 0.

    Snapping (not plain arithmetic) keeps the target on the rounded trailing grid when T / steps is fractional
    (32 steps: 31.25). A start off the teacher's grid is allowed: the 1-step stage trains at 749 with a 2-step teacher."""
    if student_steps >= teacher_steps or teacher_steps % student_steps:
        raise ValueError(f"a {student_steps}-step student cannot be distilled from a {teacher_steps}-step teacher")
    target = (t + 1) - NUM_TRAIN_TIMESTEPS / student_steps  # in 1-based units, where the grids are exact multiples
    if target < 1:
        return CLEAN
    return min(teacher_grid(teacher_steps), key=lambda g: abs(g + 1 - target))


def training_timesteps(student_steps: int) -> list[int]:
    """Timesteps the student trains at: its own trailing grid, except that 1- and 2-step students train at the
    4-step grid [999, 749, 499, 249] (the paper's {250, 500, 750, 1000}) for stability."""
    return teacher_grid(max(student_steps, 4))
