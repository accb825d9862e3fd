"""The teacher's n-step deterministic solve from x_t to x_{t-ns}: the "real" sample the student is trained toward.

cond / uncond are dicts {"encoder_hidden_states": (B, 77, D), "text_embeds": (B, P), "time_ids": (B, 6)}.
"""

import torch

from distill.schedule import CLEAN, NUM_TRAIN_TIMESTEPS, ddim_step, split_prediction, teacher_grid
from pipelines.sampling import classifier_free_guidance


def unet_output(unet, x, t, cond: dict) -> torch.Tensor:
    """The SDXL UNet's raw output for latents x at timestep(s) t (int or (B,) tensor), in x's dtype."""
    timesteps = torch.as_tensor(t, device=x.device).reshape(-1).expand(x.shape[0])
    out = unet(
        x.to(unet.dtype),
        timesteps,
        encoder_hidden_states=cond["encoder_hidden_states"].to(unet.dtype),
        added_cond_kwargs={"text_embeds": cond["text_embeds"].to(unet.dtype), "time_ids": cond["time_ids"].to(unet.dtype)},
    ).sample
    return out.to(x.dtype)


def zero_uncond(cond: dict) -> dict:
    """SDXL's unconditional input (force_zeros_for_empty_prompt): zero text embeddings, the same micro-conditioning."""
    return {**cond, "encoder_hidden_states": torch.zeros_like(cond["encoder_hidden_states"]), "text_embeds": torch.zeros_like(cond["text_embeds"])}


def guided_output(unet, x, t, cond: dict, guidance_scale: float = 1.0, uncond: dict | None = None) -> torch.Tensor:
    """Classifier-free guidance: out_u + w (out_c - out_u), with both halves in one batched UNet call; out_c at w = 1."""
    if guidance_scale == 1.0:
        return unet_output(unet, x, t, cond)
    uncond = zero_uncond(cond) if uncond is None else uncond
    both = {key: torch.cat([uncond[key], cond[key]]) for key in cond}
    t_both = torch.as_tensor(t, device=x.device).reshape(-1).expand(x.shape[0]).repeat(2)
    out_u, out_c = unet_output(unet, torch.cat([x, x]), t_both, both).chunk(2)
    return classifier_free_guidance(out_u, out_c, guidance_scale)


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
    """x_{t_end} from n deterministic DDIM steps (= diffusers' Euler for these models) on the teacher's trailing grid;
    t_end = -1 returns the clean x0. Per step: x0, eps from the (guided) output, then x' = alpha' x0 + sigma' eps.

    No gradients: the teacher is a fixed target (in LoRA phases, call it inside lora.teacher_context)."""
    path = solve_path(t, t_end, teacher_steps)
    x = x_t
    for t_cur, t_next in zip(path, path[1:]):
        out = guided_output(unet, x, t_cur, cond, guidance_scale, uncond)
        x0, eps = split_prediction(out, x, t_cur, alphas_bar, prediction_type)
        x = ddim_step(x0, eps, t_next, alphas_bar)
    return x
