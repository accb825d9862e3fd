"""The teacher's n-step deterministic solve from x_t to x_{t-ns}: the "real" sample the student is trained toward.

It is the studio's sampler (pipelines.sampling.sample_euler calling pipelines.denoiser.Denoiser), started from a
variance-preserving training latent x_t = alpha_t x0 + sigma_t eps and read back in the same form. In that form one
Euler step in sigma space is exactly one deterministic DDIM step, x' = alpha' x0 + sigma' eps.
"""

import torch

from distill.schedule import NUM_TRAIN_TIMESTEPS, teacher_grid
from pipelines.denoiser import Denoiser
from pipelines.sampling import CLEAN, sample_euler, sigmas_at, to_sigma_space, to_variance_preserving


def solve_path(t: int, t_end: int, teacher_steps: int) -> list[int]:
    """[t, points strictly between, t_end]: from a point of the teacher's trailing grid, the grid itself. From an
    off-grid t (the 1-step stage trains at 749 under a 2-step teacher) the teacher jumps by its own stride
    T / teacher_steps, 749 -> 249 -> x0, because that is the jump it was trained to make there: 1- and 2-step
    students train at {249, 499, 749, 999}, each jumping T / steps. (Stepping to its grid first, 749 -> 499, would
    ask it for a jump it never learned.)"""
    if not t > t_end >= CLEAN:
        raise ValueError(f"the teacher solves toward less noise: need t={t} > t_end={t_end} >= {CLEAN}")
    grid = teacher_grid(teacher_steps)
    if t in grid:
        between = [g for g in grid if t_end < g < t]
    else:
        stride = NUM_TRAIN_TIMESTEPS / teacher_steps
        between = [p for p in (int(round(t + 1 - k * stride)) - 1 for k in range(1, teacher_steps + 1)) if p > t_end]
    return [t] + between + [t_end]


@torch.no_grad()
def teacher_solve(
    unet,
    x_t,
    t: int,
    t_end: int,
    teacher_steps: int,
    cond: dict,
    alphas_bar,
    prediction_type: str = "epsilon",
    guidance_scale: float = 1.0,
    uncond: dict | None = None,
) -> torch.Tensor:
    """x_{t_end} from the teacher's Euler steps along solve_path (diffusers' trailing Euler, as the studio runs it);
    t_end = -1 returns the clean x0. x_t and the result are variance-preserving latents.

    No gradients: the teacher is a fixed target (in LoRA phases, call it inside lora.teacher_context)."""
    path = solve_path(t, t_end, teacher_steps)
    sigmas = sigmas_at(path, alphas_bar).to(x_t.device)
    denoiser = Denoiser(unet, prediction_type, cond, guidance_scale, uncond)
    x = sample_euler(denoiser, to_sigma_space(x_t.float(), sigmas[0]), path[:-1], sigmas)
    return to_variance_preserving(x, sigmas[-1]).to(x_t.dtype)


@torch.no_grad()
def teacher_solve_per_sample(
    unet, x_t, t, t_end, teacher_steps: int, cond: dict, alphas_bar, prediction_type: str = "epsilon", guidance_scale: float = 1.0, uncond: dict | None = None
) -> torch.Tensor:
    """teacher_solve for a batch whose samples start (t) and end (t_end, both (B,)) at different timesteps: one solve
    per distinct (t, t_end) pair over the samples that share it, results put back in batch order. (A solve path is
    one list of timesteps, so a batch cannot mix them in one call.)"""
    t, t_end = (torch.as_tensor(v, device=x_t.device).reshape(-1).expand(len(x_t)) for v in (t, t_end))
    out = torch.empty_like(x_t)
    for start, end in torch.unique(torch.stack([t, t_end], dim=1), dim=0).tolist():
        rows = ((t == start) & (t_end == end)).nonzero().squeeze(1)
        pick = lambda c: {k: v[rows] for k, v in c.items()}  # noqa: E731
        out[rows] = teacher_solve(unet, x_t[rows], start, end, teacher_steps, pick(cond), alphas_bar, prediction_type, guidance_scale, uncond and pick(uncond))
    return out
