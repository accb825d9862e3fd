"""The distillation loop on accelerate: the plan's stages in order, each a sequence of phases.

Read `train` top to bottom. A stage starts from the previous stage's student (the base UNet for the first) and
ends by writing its student to <output_dir>/stages/<name>/. In a phase, every optimizer step draws a batch of
cached latents, noises it to a training timestep t, lets the teacher solve n small steps to t - ns ("real") and
the student jump there in one ("fake"), then takes a student (G) step and, in adversarial phases, a
discriminator (D) step after it: distill/steps.py. What a stage starts from, how its student is shaped per phase
and what it leaves on disk: distill/stages.py. A killed run resumes at the exact stage, phase and step.

Under FSDP (accelerate's fsdp_version 2, distill/configs/accelerate_fsdp.yaml) the student and the discriminator are
sharded in place for the length of a phase and rebuilt whole at its end (`unshard`), so everything between phases
(merging a LoRA, validation, saving a stage) sees plain modules; the frozen teacher is never sharded.
"""

import copy
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.utils.checkpoint
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DistributedType, ProjectConfiguration
from torch.distributed.fsdp import MixedPrecisionPolicy
from tqdm.auto import tqdm

from . import checkpoint
from .config import Config, ConfigError, precision_name, teacher_of
from .data import LatentCache, precompute
from .discriminator import Discriminator
from .lora import teacher_context
from .sharding import load_optimizer, load_trainable, meta_copy, save_checkpoint, unshard
from .stages import (
    cast_to,
    checkpoint_blocks,
    finished,
    load_components,
    load_unet,
    merge_onto_fp32_base,
    prediction_type_of,
    save_lora,
    save_stage,
    save_unet,
    shape_student,
    stage_dir,
)
from .steps import Optimizers, PhaseModels, draw_batch, optimization_step, step_seed
from .validation import decode, sample_latents, save_validation, validation_inputs

log = get_logger(__name__)  # accelerate's: logs on the main process only, as accelerator.print did

DTYPES = {"no": torch.float32, "bf16": torch.bfloat16}


def training_data(config: Config, components: dict, accelerator) -> LatentCache:
    """The latent cache; built on the main process first (other ranks wait) unless data.source is already one."""
    folder = Path(config.data.path) if config.data.source == "cache" else Path(config.train.output_dir) / "cache"
    if config.data.source != "cache":
        with accelerator.main_process_first():
            if accelerator.is_main_process and not (folder / "index.json").is_file():
                index = precompute(config, components, folder, accelerator.device)
                log.info(f"cached {index['count']} training samples (skipped {index['skipped']})")
    return LatentCache(folder)


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
    processes = f"{accelerator.num_processes} process{'es' if accelerator.num_processes > 1 else ''}"
    log.info(f"distilling on {processes} ({device}, {precision_name(tc.mixed_precision)}), writing to {out}")

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
        log.info(f"resuming from {path.name}: stage {resumed.position[0]}, phase {resumed.position[1]}, step {resumed.progress['step']}")
    global_step = resumed.progress["global_step"] if resumed else 0
    records, steps_this_process = [], 0

    for i, stage in enumerate(config.stages):
        if (resumed and i < resumed.position[0]) or (not resumed and finished(config, i)):
            log.info(f"stage {stage.name}: finished under this plan, reusing {stage_dir(config, stage.name)}")
            continue
        student = load_unet(config, config.stages[i - 1].name if i else "base", components).to(device)
        if tc.gradient_checkpointing:
            student.enable_gradient_checkpointing()
        teacher_images = None
        if validation is not None:
            prev = config.stages[i - 1].prediction_type if i else "epsilon"
            latents = sample_latents(student, validation[1], stage.teacher_steps, validation[0], alphas_bar, prev, stage.phases[0].guidance_scale)
            teacher_images = decode(vae, latents)
        disc, frozen_teachers = None, {}

        for j, phase in enumerate(stage.phases):
            label = f"{stage.name}/{j}_{phase.objective}_{phase.params}"
            # Structure first (the same whether this phase trains or is being skipped over on resume).
            student = shape_student(student, stage, j, tc.lora_rank, weight_dtype, step_seed(tc.seed, i, j, -1))

            resume_here = resumed is not None and (i, j) == resumed.position
            if resumed is not None and (i, j) < resumed.position:
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
                load_trainable(student, resumed.weights["student"])
                if disc is not None:
                    disc.load_state_dict(resumed.weights["discriminator"])
                start, skipped = resumed.progress["step"], resumed.progress["skipped"]

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
                load_optimizer(fsdp, student_model, g_opt, resumed.optimizers["g"])
                if disc is not None:
                    load_optimizer(fsdp, disc_model, d_opt, resumed.optimizers["d"])
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
                    save_lora(stage_dir(config, stage.name), student, tc.lora_rank)
                    # The student as its LoRA phases left it (before any full-UNet phase), to measure what they gave.
                    save_unet(stage_dir(config, stage.name) / "lora_student", merge_onto_fp32_base(copy.deepcopy(student)))
                if validation is not None:
                    latents = sample_latents(student, validation[1], stage.student_steps, validation[0], alphas_bar, stage.prediction_type)
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
            save_stage(config, i, student.float())
        accelerator.wait_for_everyone()
    accelerator.end_training()
    return records
