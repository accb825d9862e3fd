"""One optimizer step of a distillation phase, and what it is made of.

Every optimizer step draws a batch of cached latents, noises each sample to its own training timestep t, lets the
teacher solve n small steps to t - ns ("real", one solve per distinct t) and the student jump there in one ("fake"). The student (G) steps first; in
adversarial phases D then steps on the updated student's fresh fake (the paper's alternation) or, when G and D are
simultaneous, on the fake the student's step started from. Randomness comes from generators seeded by (seed, stage,
phase, step, global micro-batch), so a resumed run draws exactly what the uninterrupted one would have.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.distributed.fsdp import FSDPModule

from pipelines.denoiser import COND_KEYS, zero_uncond

from .data import LatentCache
from .discriminator import renoise_timesteps
from .losses import d_loss_nonsaturating, g_loss_nonsaturating, grads_finite, mse_loss
from .schedule import add_noise, alpha_sigma, draw_timesteps, student_jump, training_timesteps
from .seeding import stable_seed
from .sharding import whole
from .solver import teacher_solve_per_sample
from .student import student_step
from .x0_conversion import conversion_target


def line_x0(x_t, t, x_next, t_next, alphas_bar):
    """The x0 of the single DDIM line through (x_t, t) and (x_next, t_next):
    x0 = (sigma' x_t - sigma x') / (sigma' alpha - sigma alpha'). For the student's jump this is its own x0
    prediction; for the teacher's n steps it is the x0 its trajectory implies. Used to re-noise both to t*."""
    alpha, sigma = alpha_sigma(alphas_bar, t)
    alpha_n, sigma_n = alpha_sigma(alphas_bar, t_next)
    return (sigma_n * x_t.float() - sigma * x_next.float()) / (sigma_n * alpha - sigma * alpha_n)


def draw_batch(data: LatentCache, stage, batch_size: int, generator, alphas_bar, device, terminal_only: bool = False):
    """Latents at one training timestep per sample (pure noise at t = 999 unless the stage ablates it), their
    conditioning, and each sample's jump target t - ns: (x_t, t (B,), t_next (B,), cond). terminal_only: every sample
    at t = 999 (the x0 conversion)."""
    batch = data.batch(torch.randint(len(data), (batch_size,), generator=generator).tolist())
    t = draw_timesteps(training_timesteps(stage.student_steps), batch_size, generator, 1.0 if terminal_only else stage.terminal_share)
    noise = torch.randn(batch["latents"].shape, generator=generator)
    x_t = add_noise(batch["latents"], noise, t, alphas_bar.cpu(), **({} if stage.pure_noise else {"terminal_t": None})).to(device)
    t_next = torch.tensor([student_jump(int(s), stage.teacher_steps, stage.student_steps) for s in t])
    cond = {k: batch[k].to(device) for k in COND_KEYS}
    return x_t, t.to(device), t_next.to(device), cond


@dataclass
class PhaseModels:
    """What one phase trains and learns from. `disc` is the plain D module (the G loss runs it outside any DDP
    wrapper, so D's gradient sync is not involved; under FSDP it is the sharded module itself); `disc_model` is the
    prepared one its own step runs."""

    student: torch.nn.Module
    teacher: torch.nn.Module
    teacher_ctx: Callable
    teacher_steps: int
    teacher_prediction: str
    disc: torch.nn.Module | None = None
    disc_model: torch.nn.Module | None = None


def teacher_target(phase, m: PhaseModels, x_t, t, t_next, cond, alphas_bar):
    """The "real" sample: the teacher's n small steps from each x_t to its t_next (solves grouped by t), or, in the
    x0 conversion, its whole solve from pure noise to x0."""
    with m.teacher_ctx(m.teacher), torch.no_grad():
        if phase.objective == "x0_convert":
            return conversion_target(m.teacher, x_t, m.teacher_steps, cond, alphas_bar, m.teacher_prediction)
        return teacher_solve_per_sample(
            m.teacher, x_t, t, t_next, m.teacher_steps, cond, alphas_bar, m.teacher_prediction, phase.guidance_scale, zero_uncond(cond)
        )


def generator_step(accelerator, stage, phase, m: PhaseModels, x_t, t, t_next, cond, alphas_bar, generator, anchor: float = 0.0):
    """One micro-batch of the student's (G) step, backpropagated: MSE to the teacher's target, or the non-saturating
    GAN loss through D plus `anchor` x MSE to the teacher's target (0: the paper's pure GAN loss).
    -> (loss_g, the teacher's x_real, the student's x_fake detached)."""
    with accelerator.autocast():
        x_fake = student_step(m.student, x_t, t, t_next, cond, alphas_bar, stage.prediction_type)[0]
        x_real = teacher_target(phase, m, x_t, t, t_next, cond, alphas_bar)
        if not phase.adversarial:  # (x0_convert: t_next is the clean image, so the jump is the student's x0)
            loss_g = mse_loss(x_fake, x_real)
            accelerator.backward(loss_g)
            return loss_g, x_real, x_fake.detach()
        real_in, fake_in, t_d = discriminator_inputs(phase, x_t, t, x_real, x_fake, t_next, alphas_bar, generator)
        given = (x_t, t) if phase.objective == "conditional" else ()
        loss_g = g_loss_nonsaturating(m.disc(fake_in, t_d, cond, *given))
        loss_anchor = anchor * mse_loss(x_fake, x_real) if anchor else None
    # Only the student's weights take the G gradient; it still flows through D to reach them. So: D's backward to
    # its input alone (autograd.grad accumulates into no .grad), then the student's backward from there. Naming the
    # student's parameters as backward inputs would not do under FSDP, whose forward runs on gathered copies of them;
    # and toggling D's requires_grad would change what its checkpointed blocks recompute.
    (fake_grad,) = torch.autograd.grad(loss_g, fake_in)
    surrogate = (fake_in * fake_grad).sum()
    accelerator.backward(surrogate if loss_anchor is None else surrogate + loss_anchor)
    return (loss_g if loss_anchor is None else loss_g + loss_anchor.detach()), x_real, x_fake.detach()


def fresh_fake(accelerator, stage, m: PhaseModels, x_t, t, t_next, cond, alphas_bar):
    """The (just updated) student's jump again, without gradient: what D steps on when G and D alternate."""
    with accelerator.autocast(), torch.no_grad():
        x_fake = student_step(m.student, x_t, t, t_next, cond, alphas_bar, stage.prediction_type)[0]
    # After a forward that no backward follows, FSDP2 leaves weights gathered (the root's at least), and the optimizer's
    # state dict then misses its sharded parameters (KeyError at the next checkpoint): shard them all again.
    if isinstance(m.student, FSDPModule):
        for module in m.student.modules():
            if isinstance(module, FSDPModule):
                module.reshard()
    return x_fake


def discriminator_step(accelerator, phase, m: PhaseModels, x_t, t, t_next, cond, x_real, x_fake, alphas_bar, generator):
    """One micro-batch of D's step on real (the teacher's) and fake (the student's, no gradient), one forward over
    both concatenated, backpropagated. -> (loss_d, real logits, fake logits)."""
    real_in, fake_in, t_d = discriminator_inputs(phase, x_t, t, x_real, x_fake, t_next, alphas_bar, generator)
    with accelerator.autocast():
        both = {k: torch.cat([v, v]) for k, v in cond.items()}
        t_each = torch.as_tensor(t, device=x_t.device).reshape(-1).expand(len(x_t))
        given = (torch.cat([x_t, x_t]), torch.cat([t_each, t_each])) if phase.objective == "conditional" else ()
        logits = m.disc_model(torch.cat([real_in, fake_in]), torch.cat([t_d, t_d]), both, *given)
        real_logits, fake_logits = logits.float().chunk(2)
        loss_d = d_loss_nonsaturating(real_logits, fake_logits)
    accelerator.backward(loss_d)
    return loss_d, real_logits, fake_logits


def optimizer_step(accelerator, params, optimizer, max_grad_norm: float, name: str) -> tuple[bool, dict]:
    """Clip and step one optimizer on the accumulation boundary, unless a gradient is NaN/Inf (then skip).
    Off the boundary accelerate's optimizers ignore step/zero_grad, so this is safe to call every micro-batch.
    Under FSDP each process holds shards of the gradients; the check and the norm are over whole gradients (DTensor
    reductions), so every process gets the same verdict and skips together."""
    finite, norms = True, {}
    if accelerator.sync_gradients:
        finite = grads_finite(params)
        if finite:
            norms[f"grad_norm_{name}"] = float(whole(accelerator.clip_grad_norm_(params, max_grad_norm)))
    if finite:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return finite, norms


@dataclass
class Optimizers:
    """A phase's optimizers with the (prepared) parameters each one clips and checks; D's are None without D."""

    g_params: list
    g_opt: torch.optim.Optimizer
    d_params: list
    d_opt: torch.optim.Optimizer | None


def micro_generator(accelerator, seeds: tuple, micro: int) -> torch.Generator:
    """The generator of one micro-batch. Global micro-batch index: N processes x 1 micro-batch draw what 1 process x
    N micro-batches draws."""
    return torch.Generator().manual_seed(stable_seed(*seeds, micro * accelerator.num_processes + accelerator.process_index))


def optimization_step(accelerator, tc, stage, phase, m: PhaseModels, opt: Optimizers, draw, alphas_bar, seeds: tuple, anchor: float = 0.0) -> dict:
    """One optimizer step of a phase. The student (G) steps first, over all micro-batches, against the current D;
    then, in adversarial phases, D steps over the same micro-batches: on the updated student's fresh fake when
    updates alternate (the paper, `train.gan_updates = "alternating"`), or on the fake the student's step started
    from ("simultaneous"). draw(generator) -> (x_t, t, t_next, cond), one micro-batch; seeds = (seed, stage, phase,
    step); anchor: this step's teacher-anchor weight. phase.d_steps > 1: D steps again that many times minus one, each
    on a fresh batch. -> the step's losses, D's (last step's) accuracy, gradient norms, and whether every gradient was
    finite."""
    kept, finite, record = [], True, {}
    for micro in range(tc.gradient_accumulation_steps):
        generator = micro_generator(accelerator, seeds, micro)
        x_t, t, t_next, cond = draw(generator)
        with accelerator.accumulate(m.student):
            loss_g, x_real, x_fake = generator_step(accelerator, stage, phase, m, x_t, t, t_next, cond, alphas_bar, generator, anchor)
            finite_g, norms = optimizer_step(accelerator, opt.g_params, opt.g_opt, tc.max_grad_norm, "g")
        kept.append((x_t, t, t_next, cond, x_real, x_fake, generator))
        record.update(loss_g=loss_g.item(), **norms)
        finite &= finite_g
    if not phase.adversarial:
        return record | {"finite": finite}
    d_record = discriminator_steps(accelerator, tc, stage, phase, m, opt, kept, alphas_bar, fresh=tc.gan_updates == "alternating")
    finite &= d_record["finite"]
    for k in range(1, phase.d_steps):
        d_record = discriminator_only_step(accelerator, tc, stage, phase, m, opt, draw, alphas_bar, (*seeds, "d", k))
        finite &= d_record["finite"]
    return record | d_record | {"finite": finite}


def discriminator_only_step(accelerator, tc, stage, phase, m: PhaseModels, opt: Optimizers, draw, alphas_bar, seeds: tuple) -> dict:
    """One D-only optimizer step on a fresh batch, the student left as it is: the warm-up of a fresh D (a G that steps
    against an untrained D follows noise, and undoes what D has just learned), and D's extra steps (phase.d_steps)."""
    kept = []
    for micro in range(tc.gradient_accumulation_steps):
        generator = micro_generator(accelerator, seeds, micro)
        x_t, t, t_next, cond = draw(generator)
        with accelerator.autocast():
            x_real = teacher_target(phase, m, x_t, t, t_next, cond, alphas_bar)
        kept.append((x_t, t, t_next, cond, x_real, None, generator))
    return discriminator_steps(accelerator, tc, stage, phase, m, opt, kept, alphas_bar, fresh=True)


def discriminator_steps(accelerator, tc, stage, phase, m: PhaseModels, opt: Optimizers, kept: list, alphas_bar, fresh: bool) -> dict:
    """D's step over kept micro-batches (x_t, t, t_next, cond, x_real, x_fake, generator); fresh: on the student's
    jump made now instead of the kept x_fake."""
    finite, record = True, {}
    for x_t, t, t_next, cond, x_real, x_fake, generator in kept:
        if fresh:
            x_fake = fresh_fake(accelerator, stage, m, x_t, t, t_next, cond, alphas_bar)
        with accelerator.accumulate(m.disc_model):
            loss_d, real_logits, fake_logits = discriminator_step(accelerator, phase, m, x_t, t, t_next, cond, x_real, x_fake, alphas_bar, generator)
            finite_d, norms = optimizer_step(accelerator, opt.d_params, opt.d_opt, tc.max_grad_norm, "d")
        record.update(loss_d=loss_d.item(), d_acc_real=float((real_logits > 0).float().mean()), d_acc_fake=float((fake_logits < 0).float().mean()), **norms)
        finite &= finite_d
    return record | {"finite": finite}


def discriminator_inputs(phase, x_t, t, x_real, x_fake, t_next, alphas_bar, generator):
    """D sees x_{t-ns} at t - ns, or (re-noise) both samples' x0 noised again to t* with shared noise."""
    batch = x_t.shape[0]
    if not phase.renoise_weights:
        return x_real, x_fake, torch.as_tensor(t_next, device=x_t.device).reshape(-1).expand(batch)
    t_star = renoise_timesteps(batch, weights=phase.renoise_weights, generator=generator).to(x_t.device)
    noise = torch.randn(x_t.shape, generator=generator).to(x_t.device)
    real0 = line_x0(x_t, t, x_real, t_next, alphas_bar)
    fake0 = line_x0(x_t, t, x_fake, t_next, alphas_bar)
    return add_noise(real0, noise, t_star, alphas_bar), add_noise(fake0, noise, t_star, alphas_bar), t_star
