"""The distillation loop on accelerate: the plan's stages in order, each a sequence of phases.

Read `train` top to bottom. A stage starts from the previous stage's student (the base UNet for the first) and
ends by writing its student to <output_dir>/stages/<name>/. In a phase, every optimizer step draws a batch of
cached latents, noises it to a training timestep t, lets the teacher solve n small steps to t - ns ("real") and
the student jump there in one ("fake"), then takes a student (G) step and, in adversarial phases, a
discriminator (D) step after it, on the updated student's fresh fake (alternating, as the paper; see
`optimization_step`). Randomness is drawn from generators seeded by (seed, stage, phase, step, global micro-batch),
so a resumed run draws exactly what the uninterrupted one would have.

Under FSDP (accelerate's fsdp_version 2, distill/configs/accelerate_fsdp.yaml) the student and the discriminator are
sharded in place for the length of a phase and rebuilt whole at its end (`unshard`), so everything between phases
(merging a LoRA, validation, saving a stage) sees plain modules; the frozen teacher is never sharded.
"""

import copy
import json
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.utils.checkpoint
from accelerate import Accelerator
from accelerate.utils import DistributedType, ProjectConfiguration
from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy
from tqdm.auto import tqdm

from pipelines.architectures import random_sdxl_components, tiny_components
from pipelines.errors import WeightsUnavailable
from pipelines.variants import SHAPES_FOLDER

from . import checkpoint
from .config import Config, ConfigError, lineage, teacher_of
from .data import LatentCache, precompute
from .discriminator import Discriminator, renoise_timesteps
from .lora import add_lora, lora_state_dict_diffusers, merge_lora, teacher_context
from .losses import d_loss_nonsaturating, g_loss_nonsaturating, grads_finite, mse_loss
from .schedule import add_noise, alpha_sigma, student_jump, training_timesteps
from .sharding import load_optimizer, load_trainable, meta_copy, save_checkpoint, unshard, whole
from .solver import teacher_solve, zero_uncond
from .student import student_step
from .validation import decode, sample, save_validation, validation_inputs
from .x0_conversion import implied_x0

DTYPES = {"no": torch.float32, "bf16": torch.bfloat16}
COND_KEYS = ("encoder_hidden_states", "text_embeds", "time_ids")


def load_components(model) -> dict:
    """unet, vae, text encoders, tokenizers, scheduler of the base model (built in code for tiny / random-sdxl)."""
    if model.base == "tiny":
        return tiny_components(model.seed)
    if model.base == "random-sdxl":
        return random_sdxl_components(model.seed)
    source = SHAPES_FOLDER if model.base == "shapes" else model.base  # the embedded model, stored in fp16: train in fp32
    try:
        return StableDiffusionXLPipeline.from_pretrained(source, use_safetensors=True, dtype=torch.float32).components
    except OSError as e:
        raise WeightsUnavailable(
            f"cannot load the base model {model.base!r}: {str(e).splitlines()[0]}. Download it first "
            f"(`hf download {model.base}`) or point model.base at a local diffusers folder."
        ) from None


def stage_dir(config: Config, name: str) -> Path:
    return Path(config.train.output_dir) / "stages" / name


def finished(config: Config, index: int) -> bool:
    """Stage `index` has a saved student trained under this plan's lineage (so it is reused, not retrained)."""
    info = stage_dir(config, config.stages[index].name) / "stage.json"
    return info.is_file() and json.loads(info.read_text()).get("lineage") == lineage(config, index)


def load_unet(config: Config, source: str, components: dict) -> UNet2DConditionModel:
    """A fresh fp32 copy of the base UNet ("base") or of a finished stage's student."""
    if source == "base":
        return copy.deepcopy(components["unet"]).float()
    folder = stage_dir(config, source) / "unet"
    if not (folder / "config.json").is_file():
        raise checkpoint.CheckpointError(f"stage {source!r} has no saved student at {folder}; run its stage first")
    return UNet2DConditionModel.from_pretrained(folder, use_safetensors=True)


def prediction_type_of(config: Config, source: str) -> str:
    return "epsilon" if source == "base" else next(s.prediction_type for s in config.stages if s.name == source)


def step_seed(*parts: int) -> int:
    """One 63-bit seed per (seed, stage, phase, step, global micro-batch): resumable, and distinct across ranks."""
    return hash(tuple(parts)) & ((1 << 63) - 1)


def line_x0(x_t, t, x_next, t_next, alphas_bar):
    """The x0 of the single DDIM line through (x_t, t) and (x_next, t_next):
    x0 = (sigma' x_t - sigma x') / (sigma' alpha - sigma alpha'). For the student's jump this is its own x0
    prediction; for the teacher's n steps it is the x0 its trajectory implies. Used to re-noise both to t*."""
    alpha, sigma = alpha_sigma(alphas_bar, t)
    alpha_n, sigma_n = alpha_sigma(alphas_bar, t_next)
    return (sigma_n * x_t.float() - sigma * x_next.float()) / (sigma_n * alpha - sigma * alpha_n)


def draw_batch(data: LatentCache, stage, batch_size: int, generator, alphas_bar, device):
    """Latents at a training timestep t (pure noise at t = 999 unless the stage ablates it), their conditioning, and
    the jump target t - ns."""
    batch = data.batch(torch.randint(len(data), (batch_size,), generator=generator).tolist())
    grid = training_timesteps(stage.student_steps)
    t = grid[int(torch.randint(len(grid), (1,), generator=generator))]
    noise = torch.randn(batch["latents"].shape, generator=generator)
    x_t = add_noise(batch["latents"], noise, t, alphas_bar.cpu(), **({} if stage.pure_noise else {"terminal_t": None})).to(device)
    cond = {k: batch[k].to(device) for k in COND_KEYS}
    return x_t, t, student_jump(t, stage.teacher_steps, stage.student_steps), cond


def training_data(config: Config, components: dict, accelerator) -> LatentCache:
    """The latent cache; built on the main process first (other ranks wait) unless data.source is already one."""
    folder = Path(config.data.path) if config.data.source == "cache" else Path(config.train.output_dir) / "cache"
    if config.data.source != "cache":
        with accelerator.main_process_first():
            if accelerator.is_main_process and not (folder / "index.json").is_file():
                index = precompute(config, components, folder, accelerator.device)
                accelerator.print(f"cached {index['count']} training samples (skipped {index['skipped']})")
    return LatentCache(folder)


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


def shape_student(student, stage, j: int, lora_rank: int, weight_dtype, seed: int):
    """Give the student phase j's structure: a LoRA at a stage's first LoRA phase, merged (fp32) at the first full
    phase after it; trainable weights in fp32, a LoRA phase's frozen base in the compute dtype."""
    phase = stage.phases[j]
    if phase.params == "lora" and (j == 0 or stage.phases[j - 1].params != "lora"):
        with torch.random.fork_rng(devices=[]):  # LoRA A's init must not depend on what ran before (resume)
            torch.manual_seed(seed)
            add_lora(student, rank=lora_rank)
        # The frozen base runs in the compute dtype below, but the merge must land on the stage's fp32 starting
        # weights: merging onto a bf16-rounded base would erase the small updates of the previous full phases.
        student.fp32_base = {n: p.detach().to("cpu", torch.float32, copy=True) for n, p in student.named_parameters() if not p.requires_grad}
    if phase.params == "full" and j > 0 and stage.phases[j - 1].params == "lora":
        student = merge_onto_fp32_base(student)
    if phase.params == "full":
        return student.float().requires_grad_(True)
    for p in student.parameters():  # per parameter, so the LoRA weights never pass through the compute dtype
        p.data = p.data.float() if p.requires_grad else p.data.to(weight_dtype)
    return student


def merge_onto_fp32_base(student):
    """The LoRA student as one plain fp32 UNet: the stage's fp32 starting weights put back under the adapters (the
    frozen base may have run in bf16), then the LoRA merged into them."""
    for name, p in student.named_parameters():
        if name in student.fp32_base:
            p.data = student.fp32_base[name].to(p.device)
    del student.fp32_base
    return merge_lora(student.float())


def generator_step(accelerator, stage, phase, m: PhaseModels, x_t, t, t_next, cond, alphas_bar, generator):
    """One micro-batch of the student's (G) step, backpropagated: MSE to the teacher's n small steps (or to its x0,
    converting to x0), or the non-saturating GAN loss through D. -> (loss_g, the teacher's x_real, the student's
    x_fake detached)."""
    with accelerator.autocast():
        x_fake, x0_fake = student_step(m.student, x_t, t, t_next, cond, alphas_bar, stage.prediction_type)
        with m.teacher_ctx(m.teacher), torch.no_grad():
            if phase.objective == "x0_convert":  # same t: the x0 the epsilon teacher implies
                x_real = implied_x0(m.teacher, x_t, t, cond, alphas_bar)
            else:
                x_real = teacher_solve(
                    m.teacher, x_t, t, t_next, m.teacher_steps, cond, alphas_bar, m.teacher_prediction, phase.guidance_scale, zero_uncond(cond)
                )
        if not phase.adversarial:
            loss_g = mse_loss(x0_fake if phase.objective == "x0_convert" else x_fake, x_real)
            accelerator.backward(loss_g)
            return loss_g, x_real, x_fake.detach()
        real_in, fake_in, t_d = _discriminator_inputs(phase, x_t, t, x_real, x_fake, t_next, alphas_bar, generator)
        given = (x_t, t) if phase.objective == "conditional" else ()
        loss_g = g_loss_nonsaturating(m.disc(fake_in, t_d, cond, *given))
    # Only the student's weights take the G gradient; it still flows through D to reach them. So: D's backward to
    # its input alone (autograd.grad accumulates into no .grad), then the student's backward from there. Naming the
    # student's parameters as backward inputs would not do under FSDP, whose forward runs on gathered copies of them;
    # and toggling D's requires_grad would change what its checkpointed blocks recompute.
    (fake_grad,) = torch.autograd.grad(loss_g, fake_in)
    accelerator.backward((fake_in * fake_grad).sum())
    return loss_g, x_real, x_fake.detach()


def fresh_fake(accelerator, stage, m: PhaseModels, x_t, t, t_next, cond, alphas_bar):
    """The (just updated) student's jump again, without gradient: what D steps on when G and D alternate."""
    with accelerator.autocast(), torch.no_grad():
        x_fake = student_step(m.student, x_t, t, t_next, cond, alphas_bar, stage.prediction_type)[0]
    # After a forward that no backward follows, FSDP2 leaves weights gathered (the root's at least), and the optimizer's
    # state dict then misses its sharded parameters (KeyError at the next checkpoint): shard them all again.
    for module in m.student.modules():
        if isinstance(module, FSDPModule):
            module.reshard()
    return x_fake


def discriminator_step(accelerator, phase, m: PhaseModels, x_t, t, t_next, cond, x_real, x_fake, alphas_bar, generator):
    """One micro-batch of D's step on real (the teacher's) and fake (the student's, no gradient), one forward over
    both concatenated, backpropagated. -> (loss_d, real logits, fake logits)."""
    real_in, fake_in, t_d = _discriminator_inputs(phase, x_t, t, x_real, x_fake, t_next, alphas_bar, generator)
    with accelerator.autocast():
        both = {k: torch.cat([v, v]) for k, v in cond.items()}
        given = (torch.cat([x_t, x_t]), t) if phase.objective == "conditional" else ()
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


def optimization_step(accelerator, tc, stage, phase, m: PhaseModels, opt: Optimizers, draw, alphas_bar, seeds: tuple) -> dict:
    """One optimizer step of a phase. The student (G) steps first, over all micro-batches, against the current D;
        then, in adversarial phases, D steps over the same micro-batches: on the updated student's fresh fake when
        updates alternate (the paper, `train.gan_updates = "alternating"`), or on the fake the student's step started
        from ("simultaneous"). draw(generator) -> (x_t, t, t_next, cond), one micro-batch; seeds = (seed, stage, phase,
    step). -> the step's losses, D's accuracy, gradient norms, and whether every gradient was finite."""
    kept, finite, record = [], True, {}
    for micro in range(tc.gradient_accumulation_steps):
        # Global micro-batch index: N processes x 1 micro-batch draw what 1 process x N micro-batches draws.
        generator = torch.Generator().manual_seed(step_seed(*seeds, micro * accelerator.num_processes + accelerator.process_index))
        x_t, t, t_next, cond = draw(generator)
        with accelerator.accumulate(m.student):
            loss_g, x_real, x_fake = generator_step(accelerator, stage, phase, m, x_t, t, t_next, cond, alphas_bar, generator)
            finite_g, norms = optimizer_step(accelerator, opt.g_params, opt.g_opt, tc.max_grad_norm, "g")
        kept.append((x_t, t, t_next, cond, x_real, x_fake, generator))
        record.update(loss_g=loss_g.item(), **norms)
        finite &= finite_g
    if not phase.adversarial:
        return record | {"finite": finite}
    for x_t, t, t_next, cond, x_real, x_fake, generator in kept:
        if tc.gan_updates == "alternating":
            x_fake = fresh_fake(accelerator, stage, m, x_t, t, t_next, cond, alphas_bar)
        with accelerator.accumulate(m.disc_model):
            loss_d, real_logits, fake_logits = discriminator_step(accelerator, phase, m, x_t, t, t_next, cond, x_real, x_fake, alphas_bar, generator)
            finite_d, norms = optimizer_step(accelerator, opt.d_params, opt.d_opt, tc.max_grad_norm, "d")
        record.update(loss_d=loss_d.item(), d_acc_real=float((real_logits > 0).float().mean()), d_acc_fake=float((fake_logits < 0).float().mean()), **norms)
        finite &= finite_d
    return record | {"finite": finite}


def train(config: Config, resume: bool = False, stop_after: int | None = None) -> list[dict]:
    """Run the plan; returns the per-step records (also logged to tensorboard)."""
    tc = config.train
    out = Path(tc.output_dir)
    accelerator = Accelerator(
        mixed_precision=tc.mixed_precision,
        gradient_accumulation_steps=tc.gradient_accumulation_steps,
        log_with="tensorboard",
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
    )
    accelerator.init_trackers("distill")
    fsdp = accelerator.distributed_type == DistributedType.FSDP
    if fsdp and not accelerator.is_fsdp2:
        raise ConfigError("FSDP runs need fsdp_version: 2 in the accelerate config (distill/configs/accelerate_fsdp.yaml)")
    if fsdp:  # gather weights in the compute dtype, but average gradients in fp32 as DDP does (accelerate's: bf16)
        accelerator.state.fsdp_plugin.mixed_precision_policy = MixedPrecisionPolicy(
            param_dtype=DTYPES[tc.mixed_precision], reduce_dtype=torch.float32, output_dtype=DTYPES[tc.mixed_precision]
        )
    writer = accelerator.get_tracker("tensorboard", unwrap=True) if accelerator.is_main_process else None
    device, weight_dtype = accelerator.device, DTYPES[tc.mixed_precision]
    accelerator.print(
        f"distilling on {accelerator.num_processes} process{'es' if accelerator.num_processes > 1 else ''} ({device}, {tc.mixed_precision}), writing to {out}"
    )

    components = load_components(config.model)
    data = training_data(config, components, accelerator)
    validation = validation_inputs(config, components, device) if accelerator.is_main_process else None
    for name in ("text_encoder", "text_encoder_2"):  # training never runs the encoders again
        components[name] = None
    components["unet"].to("cpu")  # the base is only copied from (stage 0's student, its teacher): keep it off the GPU
    vae = components["vae"].to(device)
    alphas_bar = components["scheduler"].alphas_cumprod.to(device)
    latent_size = config.data.resolution // 2 ** (len(vae.config.block_out_channels) - 1)

    resumed = None
    if resume and (path := checkpoint.latest(out / "checkpoints")) is not None:
        resumed = checkpoint.load(path, config.to_dict())
        accelerator.print(f"resuming from {path.name}: stage {resumed[2]['stage']}, phase {resumed[2]['phase']}, step {resumed[2]['step']}")
    global_step = resumed[2]["global_step"] if resumed else 0
    records, steps_this_process = [], 0

    for i, stage in enumerate(config.stages):
        if (resumed and i < resumed[2]["stage"]) or (not resumed and finished(config, i)):
            accelerator.print(f"stage {stage.name}: finished under this plan, reusing {stage_dir(config, stage.name)}")
            continue
        student = load_unet(config, config.stages[i - 1].name if i else "base", components).to(device)
        if tc.gradient_checkpointing:
            student.enable_gradient_checkpointing()
        teacher_images = None
        if validation is not None:
            prev = config.stages[i - 1].prediction_type if i else "epsilon"
            latents = sample(student, validation[1], stage.teacher_steps, validation[0], alphas_bar, prev, stage.phases[0].guidance_scale)
            teacher_images = decode(vae, latents)
        disc, frozen_teachers = None, {}

        for j, phase in enumerate(stage.phases):
            label = f"{stage.name}/{j}_{phase.objective}_{phase.params}"
            # Structure first (the same whether this phase trains or is being skipped over on resume).
            student = shape_student(student, stage, j, tc.lora_rank, weight_dtype, step_seed(tc.seed, i, j, -1))

            resume_here = resumed is not None and (i, j) == (resumed[2]["stage"], resumed[2]["phase"])
            if resumed is not None and (i, j) < (resumed[2]["stage"], resumed[2]["phase"]):
                continue
            source, teacher_steps = teacher_of(config, i, j)
            teacher_prediction = prediction_type_of(config, source)
            # One UNet in memory: adapters off = the teacher. Not under FSDP: the teacher takes a rank-dependent
            # number of steps (1 from t = 249, 2 from 999), and sharded modules must run in lockstep on every rank.
            if phase.params == "lora" and phase.teacher == "previous" and not fsdp:
                teacher, teacher_ctx = student, teacher_context
            else:
                if source not in frozen_teachers:
                    frozen_teachers[source] = cast_to(load_unet(config, source, components).to(device), weight_dtype).requires_grad_(False).eval()
                teacher, teacher_ctx = frozen_teachers[source], lambda unet: nullcontext()

            if phase.adversarial and (disc is None or stage.phases[j - 1].objective != phase.objective):
                with torch.random.fork_rng(devices=[]):  # a fresh D (new head) whenever the objective changes
                    torch.manual_seed(step_seed(tc.seed, i, j, -2))
                    disc = (
                        Discriminator.from_unet(
                            load_unet(config, source, components),
                            conditional=phase.objective == "conditional",
                            trainable_backbone=phase.trainable_backbone,
                            latent_size=latent_size,
                        )
                        .to(device)
                        .float()
                    )
                if tc.gradient_checkpointing:
                    checkpoint_blocks(disc)
            if not phase.adversarial:
                disc = None

            g_opt = torch.optim.Adam([p for p in student.parameters() if p.requires_grad], lr=phase.lr, betas=phase.betas, weight_decay=0.0)
            d_opt = (
                torch.optim.Adam([p for p in disc.parameters() if p.requires_grad], lr=phase.d_lr or phase.lr, betas=phase.betas, weight_decay=0.0)
                if disc is not None
                else None
            )
            start, skipped = 0, 0
            if resume_here:  # weights into the whole modules now; optimizer states once they are (maybe) sharded
                weights, optimizers, progress = resumed
                load_trainable(student, weights["student"])
                if disc is not None:
                    disc.load_state_dict(weights["discriminator"])
                start, skipped = progress["step"], progress["skipped"]

            # FSDP shards in place and needs each model prepared with its optimizer; keep empty copies of the
            # structure to rebuild the whole modules into at the end of the phase.
            skeletons = [meta_copy(student), meta_copy(disc) if disc is not None else None] if fsdp else None
            student_model, g_opt = accelerator.prepare(student, g_opt)
            disc_model, d_opt = accelerator.prepare(disc, d_opt) if disc is not None else (None, None)
            # Parameters as prepared (FSDP replaces them by sharded ones): what is clipped and checked.
            opt = Optimizers(
                [p for p in student_model.parameters() if p.requires_grad],
                g_opt,
                [p for p in disc_model.parameters() if p.requires_grad] if disc is not None else [],
                d_opt,
            )
            if resume_here:
                load_optimizer(fsdp, student_model, g_opt, optimizers["g"])
                if disc is not None:
                    load_optimizer(fsdp, disc_model, d_opt, optimizers["d"])
                resumed = None
            if not hasattr(student_model, "dtype"):  # the solver reads unet.dtype, which DDP wrappers do not forward
                student_model.dtype = student.dtype
            # FSDP shards in place: `disc` is then the sharded module itself.
            m = PhaseModels(student_model, teacher, teacher_ctx, teacher_steps, teacher_prediction, disc, disc_model)
            progress_bar = tqdm(range(start, phase.steps), desc=label, disable=not accelerator.is_local_main_process)

            draw = lambda generator: draw_batch(data, stage, tc.batch_size, generator, alphas_bar, device)  # noqa: E731
            for step in progress_bar:
                record = optimization_step(accelerator, tc, stage, phase, m, opt, draw, alphas_bar, (tc.seed, i, j, step))
                skipped += not record.pop("finite")
                global_step += 1
                record = {
                    "stage": i,
                    "phase": j,
                    "step": step + 1,
                    "global_step": global_step,
                    "lr": phase.lr,
                    **({"lr_d": phase.d_lr or phase.lr} if phase.adversarial else {}),
                    "skipped_steps": skipped,
                    **record,
                }
                records.append(record)
                if global_step % tc.log_every == 0 or step + 1 == phase.steps:
                    accelerator.log({f"{label}/{k}": v for k, v in record.items() if k not in ("stage", "phase", "step", "global_step")}, step=global_step)
                progress_bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k.startswith("loss")})

                steps_this_process += 1
                if stop_after is not None and steps_this_process >= stop_after:
                    accelerator.end_training()
                    return records  # as if killed here: nothing more is written
                if (step + 1) % tc.checkpoint_every == 0 or step + 1 == phase.steps:
                    save_checkpoint(
                        accelerator,
                        config,
                        fsdp,
                        student_model,
                        disc_model,
                        g_opt,
                        d_opt,
                        {"stage": i, "phase": j, "step": step + 1, "global_step": global_step, "skipped": skipped},
                    )

            if fsdp:  # every process rebuilds the whole modules: the next phase starts from them
                student = unshard(student_model, skeletons[0])
                disc = unshard(disc_model, skeletons[1]) if disc is not None else None
            else:
                student = accelerator.unwrap_model(student_model)
                disc = accelerator.unwrap_model(disc_model) if disc is not None else None
            del student_model, disc_model, m, opt, g_opt, d_opt
            accelerator.free_memory()  # drop the accelerator's references to this phase's wrappers and optimizers
            if accelerator.is_main_process:
                if phase.params == "lora" and (j + 1 == len(stage.phases) or stage.phases[j + 1].params != "lora"):
                    _save_lora(stage_dir(config, stage.name), student, tc.lora_rank)
                    # The student as its LoRA phases left it (before any full-UNet phase), to measure what they gave.
                    _save_unet(stage_dir(config, stage.name) / "lora_student", merge_onto_fp32_base(copy.deepcopy(student)))
                if validation is not None:
                    latents = sample(student, validation[1], stage.student_steps, validation[0], alphas_bar, stage.prediction_type)
                    save_validation(
                        out / "validation" / f"{stage.name}_{j}_{phase.objective}_{phase.params}.png",
                        teacher_images,
                        decode(vae, latents),
                        writer,
                        f"{label}/teacher|student",
                        global_step,
                    )
            accelerator.wait_for_everyone()

        if stage.phases[-1].params == "lora":
            student = merge_onto_fp32_base(student)
        if accelerator.is_main_process:
            _save_stage(config, i, student.float())
        accelerator.wait_for_everyone()
    accelerator.end_training()
    return records


def _discriminator_inputs(phase, x_t, t, x_real, x_fake, t_next, alphas_bar, generator):
    """D sees x_{t-ns} at t - ns, or (re-noise) both samples' x0 noised again to t* with shared noise."""
    batch = x_t.shape[0]
    if not phase.renoise_weights:
        return x_real, x_fake, torch.full((batch,), t_next, device=x_t.device)
    t_star = renoise_timesteps(batch, weights=phase.renoise_weights, generator=generator).to(x_t.device)
    noise = torch.randn(x_t.shape, generator=generator).to(x_t.device)
    real0 = line_x0(x_t, t, x_real, t_next, alphas_bar)
    fake0 = line_x0(x_t, t, x_fake, t_next, alphas_bar)
    return add_noise(real0, noise, t_star, alphas_bar), add_noise(fake0, noise, t_star, alphas_bar), t_star


def _checkpointed_call(module, *args):
    return torch.utils.checkpoint.checkpoint(module.__call__, *args, use_reentrant=False)


def checkpoint_blocks(module):
    """Gradient checkpointing for every diffusers block inside `module` (the discriminator's UNet backbone is not a
    ModelMixin, so it has no enable_gradient_checkpointing of its own)."""
    for block in module.modules():
        if hasattr(block, "gradient_checkpointing"):
            block._gradient_checkpointing_func, block.gradient_checkpointing = _checkpointed_call, True
    return module


def cast_to(module, dtype):
    """module.to(dtype) only when needed: diffusers warns on every cast of a UNet, even a no-op one."""
    if any(p.dtype != dtype for p in module.parameters()):
        module.to(dtype)
    return module


def _save_lora(folder: Path, student, rank: int):
    """The LoRA of a stage's last LoRA phase (relative to the stage's starting UNet), diffusers keys, no prefix."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / ".tmp-lora.safetensors"
    save_file({k: v.detach().float().contiguous().cpu() for k, v in lora_state_dict_diffusers(student).items()}, tmp, metadata={"rank": str(rank)})
    tmp.replace(folder / "lora.safetensors")


def _save_unet(folder: Path, unet):
    with checkpoint.atomic_dir(folder) as tmp:
        unet.float().save_pretrained(tmp, safe_serialization=True)


def _save_stage(config: Config, index: int, student):
    stage = config.stages[index]
    folder = stage_dir(config, stage.name)
    _save_unet(folder / "unet", student)
    info = {
        "name": stage.name,
        "teacher_steps": stage.teacher_steps,
        "student_steps": stage.student_steps,
        "prediction_type": stage.prediction_type,
        "base_model": config.model.base,
        "lora_file": "lora.safetensors" if (folder / "lora.safetensors").is_file() else None,
        "lora_rank": config.train.lora_rank,
        "lineage": lineage(config, index),
    }
    checkpoint.atomic_write_text(folder / "stage.json", json.dumps(info, indent=1))
