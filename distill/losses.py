"""Losses of the distillation stages and the guard that skips steps with non-finite gradients."""

import torch
import torch.nn.functional as F


def mse_loss(student_out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mean((student - target)^2) in fp32: the 128 -> 32 stage and the eps -> x0 conversion."""
    return F.mse_loss(student_out.float(), target.float())


def annealed_weight(weight: float, step: int, steps: int) -> float:
    """lambda_k = lambda (1 - k / steps): the teacher-regression anchor's weight at step k of a phase, linear to 0."""
    return weight * (1 - step / steps)


def d_loss_nonsaturating(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """L_D = -log D(real) - log(1 - D(fake)) with D = sigmoid(logit): softplus(-real) + softplus(fake), batch means."""
    return F.softplus(-real_logits.float()).mean() + F.softplus(fake_logits.float()).mean()


def g_loss_nonsaturating(fake_logits: torch.Tensor) -> torch.Tensor:
    """L_G = -log D(fake) = softplus(-fake), the non-saturating form (strong gradients while D wins)."""
    return F.softplus(-fake_logits.float()).mean()


def grads_finite(parameters) -> bool:
    """True when every existing gradient is free of NaN/Inf. One device sync: per-tensor norms (NaN/Inf propagate
    into a norm) are reduced on the device before a single .item()."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return True
    norms = torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])
    return bool(torch.isfinite(norms).all().item())
