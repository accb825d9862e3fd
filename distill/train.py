"""The distillation loop on accelerate: the plan's stages in order, each a sequence of phases.

Read `train` top to bottom. A stage starts from the previous stage's student (the base UNet for the first) and
ends by writing its student to <output_dir>/stages/<name>/. In a phase, every optimizer step draws a batch of
cached latents, noises each sample to its training timestep t, lets the teacher solve n small steps to t - ns
("real") and the student jump there in one ("fake"), then takes a student (G) step and, in adversarial phases, a
discriminator (D) step after it: distill/steps.py. A freshly built D first trains alone for train.d_warmup_steps
steps; every adversarial phase ends with D's held-out accuracy on fresh pairs (distill/probe.py), logged, warned
about when at chance, and written to the stage's stage.json. What a stage starts from, how its student is shaped per phase
and what it leaves on disk: distill/stages.py. A killed run resumes at the exact stage, phase and step.

Under FSDP (accelerate's fsdp_version 2, distill/configs/accelerate_fsdp.yaml) the student and the discriminator are
sharded in place for the length of a phase and rebuilt whole at its end (`unshard`), so everything between phases
(merging a LoRA, validation, saving a stage) sees plain modules; the frozen teacher is never sharded.
"""

import copy
from contextlib import nullcontext
from dataclasses import dataclass, field
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
from .losses import annealed_weight
from .probe import probe_discriminator
from .seeding import stable_seed
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
from .steps import Optimizers, PhaseModels, discriminator_only_step, draw_batch, optimization_step
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


@dataclass
class Run:
    """What every stage and phase of one run shares, and its running counters."""

    config: Config
    accelerator: Accelerator
    fsdp: bool
    writer: object
    components: dict
    data: LatentCache
    validation: tuple | None
    vae: torch.nn.Module
    alphas_bar: torch.Tensor
    latent_size: int
    resumed: object = None
    stop_after: int | None = None
    records: list = field(default_factory=list)
    global_step: int = 0
    steps_this_process: int = 0

    @property
    def device(self):
        return self.accelerator.device

    @property
    def weight_dtype(self):
        return DTYPES[self.config.train.mixed_precision]


@dataclass
class StageState:
    """One stage in progress: its student (and the fp32 weights its LoRA merges onto), the discriminator carried
    from phase to phase, frozen teachers by source, and D's held-out accuracy per finished adversarial phase."""

    index: int
    student: torch.nn.Module
    teacher_images: object = None
    fp32_base: dict | None = None
    disc: torch.nn.Module | None = None
    frozen_teachers: dict = field(default_factory=dict)
    d_accuracy: dict = field(default_factory=dict)


@dataclass
class Phase:
    """One phase's prepared models and optimizers, and where its loop starts."""

    j: int
    label: str
    models: PhaseModels
    opt: Optimizers
    prepared: tuple  # (student_model, disc_model, g_opt, d_opt) as accelerate prepared them
    skeletons: list | None
    fresh_disc: bool
    start: int = 0
    skipped: int = 0


def train(config: Config, resume: bool = False, stop_after: int | None = None) -> list[dict]:
    """Run the plan; returns the per-step records (also logged to tensorboard)."""
    run = start_run(config, resume, stop_after)
    for i, stage in enumerate(config.stages):
        if (run.resumed and i < run.resumed.position[0]) or (not run.resumed and finished(config, i)):
            log.info(f"stage {stage.name}: finished under this plan, reusing {stage_dir(config, stage.name)}")
            continue
        state = begin_stage(run, i)
        for j in range(len(stage.phases)):
            # Structure first (the same whether this phase trains or is being skipped over on resume).
            state.student, state.fp32_base = shape_student(
                state.student, stage, j, config.train.lora_rank, run.weight_dtype, stable_seed(config.train.seed, i, j, -1), state.fp32_base
            )
            if run.resumed is not None and (i, j) < run.resumed.position:
                continue
            phase = begin_phase(run, state, j)
            if not train_phase(run, state, phase):
                run.accelerator.end_training()
                return run.records  # as if killed here: nothing more is written
            end_phase(run, state, phase)
        end_stage(run, state)
    run.accelerator.end_training()
    return run.records


def start_run(config: Config, resume: bool, stop_after: int | None) -> Run:
    """The accelerator (DDP or FSDP2), tensorboard, the base components, the latent cache and the checkpoint to resume."""
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
    device = accelerator.device
    processes = f"{accelerator.num_processes} process{'es' if accelerator.num_processes > 1 else ''}"
    log.info(f"distilling on {processes} ({device}, {precision_name(tc.mixed_precision)}), writing to {out}")

    components = load_components(config.model)
    data = training_data(config, components, accelerator)
    validation = validation_inputs(config, components, device) if accelerator.is_main_process else None
    for name in ("text_encoder", "text_encoder_2"):  # training never runs the encoders again
        components[name] = None
    components["unet"].to("cpu")  # the base is only copied from (stage 0's student, its teacher): keep it off the GPU
    vae = components["vae"].to(device)
    latent_size = config.data.resolution // 2 ** (len(vae.config.block_out_channels) - 1)
    run = Run(config, accelerator, fsdp, writer, components, data, validation, vae, components["scheduler"].alphas_cumprod.to(device), latent_size)
    run.stop_after = stop_after
    if resume and (path := checkpoint.latest(out / "checkpoints")) is not None:
        run.resumed = checkpoint.load(path, config.to_dict())
        run.global_step = run.resumed.progress["global_step"]
        log.info(f"resuming from {path.name}: stage {run.resumed.position[0]}, phase {run.resumed.position[1]}, step {run.resumed.progress['step']}")
    return run


def begin_stage(run: Run, i: int) -> StageState:
    """The stage's student, loaded from the previous stage (the base for the first), and its teacher's pictures of
    the validation prompts."""
    config, stage = run.config, run.config.stages[i]
    student = load_unet(config, config.stages[i - 1].name if i else "base", run.components).to(run.device)
    if config.train.gradient_checkpointing:
        student.enable_gradient_checkpointing()
    state = StageState(i, student)
    if run.validation is not None:
        prev = config.stages[i - 1].prediction_type if i else "epsilon"
        latents = sample_latents(student, run.validation[1], stage.teacher_steps, run.validation[0], run.alphas_bar, prev, stage.phases[0].guidance_scale)
        state.teacher_images = decode(run.vae, latents)
    if run.resumed is not None and run.resumed.position[0] == i:  # the probes of phases an earlier session trained
        state.d_accuracy = dict(run.resumed.progress.get("d_heldout_accuracy", {}))
    return state


def phase_teacher(run: Run, state: StageState, j: int) -> tuple:
    """(teacher, its context, its steps, its prediction type) for phase j. One UNet in memory for a LoRA phase
    taught by the previous stage: adapters off = the teacher. Not under FSDP: the teacher takes a varying number of
    steps (1 from t = 249, 2 from 999), and sharded modules must run in lockstep on every rank."""
    config, phase = run.config, run.config.stages[state.index].phases[j]
    source, teacher_steps = teacher_of(config, state.index, j)
    prediction = prediction_type_of(config, source)
    if phase.params == "lora" and phase.teacher == "previous" and not run.fsdp:
        return state.student, teacher_context, teacher_steps, prediction
    if source not in state.frozen_teachers:
        unet = load_unet(config, source, run.components).to(run.device)
        state.frozen_teachers[source] = cast_to(unet, run.weight_dtype).requires_grad_(False).eval()
    return state.frozen_teachers[source], lambda unet: nullcontext(), teacher_steps, prediction


def build_discriminator(run: Run, state: StageState, j: int) -> Discriminator:
    """A fresh D (new head, backbone copied from the phase's teacher source), seeded so a resumed run builds the same."""
    config, phase = run.config, run.config.stages[state.index].phases[j]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(stable_seed(config.train.seed, state.index, j, -2))
        disc = Discriminator.from_unet(
            load_unet(config, teacher_of(config, state.index, j)[0], run.components),
            conditional=phase.objective == "conditional",
            trainable_backbone=phase.trainable_backbone,
            latent_size=run.latent_size,
        )
    disc = disc.to(run.device).float()
    return checkpoint_blocks(disc) if config.train.gradient_checkpointing else disc


def begin_phase(run: Run, state: StageState, j: int) -> Phase:
    """Phase j's teacher, D (a fresh one whenever the objective changes), optimizers, prepared by accelerate, with
    weights and optimizer states from the checkpoint when the run resumes inside this phase."""
    stage, accelerator = run.config.stages[state.index], run.accelerator
    phase = stage.phases[j]
    teacher, teacher_ctx, teacher_steps, teacher_prediction = phase_teacher(run, state, j)
    fresh_disc = phase.adversarial and (state.disc is None or stage.phases[j - 1].objective != phase.objective)
    if fresh_disc:
        state.disc = build_discriminator(run, state, j)
    if not phase.adversarial:
        state.disc = None
    student, disc = state.student, state.disc

    g_opt = torch.optim.Adam([p for p in student.parameters() if p.requires_grad], lr=phase.lr, betas=phase.betas, weight_decay=0.0)
    d_params = [p for p in disc.parameters() if p.requires_grad] if disc is not None else None
    d_opt = torch.optim.Adam(d_params, lr=phase.d_lr or phase.lr, betas=phase.betas, weight_decay=0.0) if disc is not None else None
    resumed = run.resumed if run.resumed is not None and (state.index, j) == run.resumed.position else None
    if resumed:  # weights into the whole modules now; optimizer states once they are (maybe) sharded
        load_trainable(student, resumed.weights["student"])
        if disc is not None:
            disc.load_state_dict(resumed.weights["discriminator"])

    # FSDP shards in place and needs each model prepared with its optimizer; keep empty copies of the
    # structure to rebuild the whole modules into at the end of the phase.
    skeletons = [meta_copy(student), meta_copy(disc) if disc is not None else None] if run.fsdp else None
    student_model, g_opt = accelerator.prepare(student, g_opt)
    disc_model, d_opt = accelerator.prepare(disc, d_opt) if disc is not None else (None, None)
    # Parameters as prepared (FSDP replaces them by sharded ones): what is clipped and checked.
    opt = Optimizers(
        [p for p in student_model.parameters() if p.requires_grad],
        g_opt,
        [p for p in disc_model.parameters() if p.requires_grad] if disc is not None else [],
        d_opt,
    )
    if resumed:
        load_optimizer(run.fsdp, student_model, g_opt, resumed.optimizers["g"])
        if disc is not None:
            load_optimizer(run.fsdp, disc_model, d_opt, resumed.optimizers["d"])
        run.resumed = None
    if not hasattr(student_model, "dtype"):  # the solver reads unet.dtype, which DDP wrappers do not forward
        student_model.dtype = student.dtype
    # FSDP shards in place: `disc` is then the sharded module itself.
    models = PhaseModels(student_model, teacher, teacher_ctx, teacher_steps, teacher_prediction, disc, disc_model)
    label = f"{stage.name}/{j}_{phase.objective}_{phase.params}"
    start, skipped = (resumed.progress["step"], resumed.progress["skipped"]) if resumed else (0, 0)
    return Phase(j, label, models, opt, (student_model, disc_model, g_opt, d_opt), skeletons, fresh_disc and not resumed, start, skipped)


def drawer(run: Run, stage, phase):
    """draw(generator) -> one micro-batch of the phase: (x_t, t, t_next, cond)."""
    terminal_only = phase.objective == "x0_convert"
    return lambda generator: draw_batch(run.data, stage, run.config.train.batch_size, generator, run.alphas_bar, run.device, terminal_only)


def train_phase(run: Run, state: StageState, p: Phase) -> bool:
    """The phase's optimizer steps (after D's warm-up when D is fresh), logged and checkpointed. False when the run
    stops here (stop_after), as if killed."""
    config, accelerator, tc = run.config, run.accelerator, run.config.train
    stage = config.stages[state.index]
    phase = stage.phases[p.j]
    draw = drawer(run, stage, phase)
    if p.fresh_disc and tc.d_warmup_steps:
        for k in tqdm(range(tc.d_warmup_steps), desc=f"{p.label} D warm-up", disable=not accelerator.is_local_main_process):
            warmup = discriminator_only_step(accelerator, tc, stage, phase, p.models, p.opt, draw, run.alphas_bar, (tc.seed, state.index, p.j, "warmup", k))
        accelerator.log({f"{p.label}/warmup_{key}": v for key, v in warmup.items() if key.startswith(("loss", "d_acc"))}, step=run.global_step)
    student_model, disc_model, g_opt, d_opt = p.prepared
    progress_bar = tqdm(range(p.start, phase.steps), desc=p.label, disable=not accelerator.is_local_main_process)
    for step in progress_bar:
        anchor = annealed_weight(phase.anchor_weight, step, phase.steps)
        record = optimization_step(accelerator, tc, stage, phase, p.models, p.opt, draw, run.alphas_bar, (tc.seed, state.index, p.j, step), anchor)
        p.skipped += not record.pop("finite")
        run.global_step += 1
        record = {
            "stage": state.index,
            "phase": p.j,
            "step": step + 1,
            "global_step": run.global_step,
            "lr": phase.lr,
            **({"lr_d": phase.d_lr or phase.lr} if phase.adversarial else {}),
            **({"anchor": anchor} if phase.anchor_weight else {}),
            "skipped_steps": p.skipped,
            **record,
        }
        run.records.append(record)
        if run.global_step % tc.log_every == 0 or step + 1 == phase.steps:
            accelerator.log({f"{p.label}/{k}": v for k, v in record.items() if k not in ("stage", "phase", "step", "global_step")}, step=run.global_step)
        progress_bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k.startswith("loss")})

        run.steps_this_process += 1
        if run.stop_after is not None and run.steps_this_process >= run.stop_after:
            return False
        if (step + 1) % tc.checkpoint_every == 0 or step + 1 == phase.steps:
            progress = {"stage": state.index, "phase": p.j, "step": step + 1, "global_step": run.global_step, "skipped": p.skipped}
            save_checkpoint(accelerator, config, run.fsdp, student_model, disc_model, g_opt, d_opt, progress | {"d_heldout_accuracy": state.d_accuracy})
    return True


def end_phase(run: Run, state: StageState, p: Phase):
    """Whole modules back (FSDP rebuilt them), then on the main process: D's held-out probe, the LoRA and the
    LoRA-only student when the stage's LoRA phases end, and the validation pictures."""
    config, accelerator = run.config, run.accelerator
    stage = config.stages[state.index]
    phase = stage.phases[p.j]
    student_model, disc_model = p.prepared[:2]
    if run.fsdp:  # every process rebuilds the whole modules: the next phase starts from them
        state.student = unshard(student_model, p.skeletons[0])
        state.disc = unshard(disc_model, p.skeletons[1]) if state.disc is not None else None
    else:
        state.student = accelerator.unwrap_model(student_model)
        state.disc = accelerator.unwrap_model(disc_model) if state.disc is not None else None
    m = p.models
    whole = PhaseModels(state.student, m.teacher, m.teacher_ctx, m.teacher_steps, m.teacher_prediction, state.disc, state.disc)
    del p.prepared, p.models, p.opt, student_model, disc_model, m
    accelerator.free_memory()  # drop the accelerator's references to this phase's wrappers and optimizers
    if accelerator.is_main_process:
        if phase.adversarial:
            draw, key = drawer(run, stage, phase), (state.index, p.j)
            state.d_accuracy[p.label.split("/", 1)[1]] = probe_discriminator(
                run.accelerator, config.train, stage, phase, p.label, key, whole, draw, run.alphas_bar, run.global_step
            )
        folder = stage_dir(config, stage.name)
        if phase.params == "lora" and (p.j + 1 == len(stage.phases) or stage.phases[p.j + 1].params != "lora"):
            save_lora(folder, state.student, config.train.lora_rank)
            # The student as its LoRA phases left it (before any full-UNet phase), to measure what they gave.
            save_unet(folder / "lora_student", merge_onto_fp32_base(copy.deepcopy(state.student), state.fp32_base))
        if run.validation is not None:
            prompts, seeds = run.validation[1], run.validation[0]
            latents = sample_latents(state.student, prompts, stage.student_steps, seeds, run.alphas_bar, stage.prediction_type)
            path = Path(config.train.output_dir) / "validation" / f"{stage.name}_{p.j}_{phase.objective}_{phase.params}.png"
            save_validation(path, state.teacher_images, decode(run.vae, latents), run.writer, f"{p.label}/teacher|student", run.global_step)
    accelerator.wait_for_everyone()


def end_stage(run: Run, state: StageState):
    """Merge a LoRA left on the student, and save the stage (with D's held-out accuracies)."""
    stage = run.config.stages[state.index]
    if stage.phases[-1].params == "lora":
        state.student = merge_onto_fp32_base(state.student, state.fp32_base)
    if run.accelerator.is_main_process:
        save_stage(run.config, state.index, state.student.float(), state.d_accuracy)
    run.accelerator.wait_for_everyone()
