"""Schedule math for distillation: noise levels, the pure-noise fix, and the nested trailing grids students jump on.
(Sampling itself, the teacher's and the student's steps included, is pipelines.sampling's, shared with the studio.)

Latents are variance-preserving: x_t = alpha_t x0 + sigma_t eps with alpha_t = sqrt(alphabar_t) and
sigma_t = sqrt(1 - alphabar_t). Timesteps are the UNet's 0-based indices (999 = the paper's T = 1000); t = -1
stands for the clean image (alphabar = 1), so "step to -1" means "return x0".
"""

import torch

from pipelines.sampling import CLEAN, alphas_cumprod, trailing_timesteps  # noqa: F401 (alphas_cumprod re-exported)

NUM_TRAIN_TIMESTEPS = 1000


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


def draw_timesteps(grid: list[int], batch: int, generator, terminal_share: float | None = None) -> torch.Tensor:
    """One training timestep per sample (B,): uniform over `grid`; or, with terminal_share = p, grid[0] (t = 999,
    where a 1-step student runs) with probability p and uniform over the rest of the grid otherwise."""
    if terminal_share is None:
        return torch.as_tensor(grid)[torch.randint(len(grid), (batch,), generator=generator)]
    terminal = torch.rand(batch, generator=generator) < terminal_share
    rest = torch.as_tensor(grid[1:] or grid[:1])
    return torch.where(terminal, grid[0], rest[torch.randint(len(rest), (batch,), generator=generator)])
