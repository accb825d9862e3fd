"""One optimizer step of every phase type on the exact SDXL UNet (random weights: real cost, meaningless pictures).

Seconds per optimizer step and peak GPU memory per phase type, through the training loop's own step functions
(train.optimization_step: the student's step, then D's on a fresh fake), bf16 autocast and gradient checkpointing, as a JSON file:

    python -m distill.bench_gpu --json docs/benchmarks/distill_$(nvidia-smi --query-gpu=name --format=csv,noheader | tr ' ' _).json
    python -m distill.bench_gpu --model tiny --resolution 64 --device cpu --precision no --json /tmp/bench.json  # smoke test

A phase that runs out of memory is recorded as such and the rest still run.
"""

import argparse
import copy
import json
import platform
import time
from contextlib import nullcontext
from pathlib import Path

import diffusers
import torch
from accelerate import Accelerator

from pipelines.architectures import sdxl_unet, tiny_components
from pipelines.conditioning import random_conditioning

from .config import PhaseConfig, StageConfig, TrainConfig
from .discriminator import Discriminator
from .lora import teacher_context
from .schedule import student_jump, training_timesteps
from .stages import cast_to, checkpoint_blocks, shape_student
from .steps import Optimizers, PhaseModels, optimization_step
from .train import DTYPES

PAPER = dict(betas=(0.0, 0.99))
PHASE_TYPES = [  # (name, stage, phase): each phase type of the paper's plan, on a stage where it occurs
    ("mse_full_cfg6", StageConfig("32step", 128, 32, (PhaseConfig("mse", "full", 1, 1e-5, (0.9, 0.999), guidance_scale=6.0),))),
    ("conditional_lora", StageConfig("4step", 8, 4, (PhaseConfig("conditional", "lora", 1, 1e-6, **PAPER),))),
    ("unconditional_lora", StageConfig("4step", 8, 4, (PhaseConfig("unconditional", "lora", 1, 1e-6, **PAPER),))),
    ("unconditional_full", StageConfig("4step", 8, 4, (PhaseConfig("unconditional", "full", 1, 5e-7, **PAPER),))),
    ("x0_convert_full", StageConfig("1step", 2, 1, (PhaseConfig("x0_convert", "full", 1, 1e-5, (0.9, 0.999)),), "sample")),
    (
        "conditional_full_x0_renoise",
        StageConfig("1step", 2, 1, (PhaseConfig("conditional", "full", 1, 5e-7, renoise_weights=(1, 1, 1, 1), **PAPER),), "sample"),
    ),
]


def bench_phase(accelerator, base, stage, batch, resolution, lora_rank, weight_dtype, steps, checkpointing) -> dict:
    device, phase = accelerator.device, stage.phases[0]
    student = copy.deepcopy(base).to(device)
    if checkpointing:
        student.enable_gradient_checkpointing()
    student, _ = shape_student(student, stage, 0, lora_rank, weight_dtype, seed=0)
    if phase.params == "lora":
        teacher, ctx = student, teacher_context
    else:
        teacher, ctx = cast_to(copy.deepcopy(base).to(device), weight_dtype).requires_grad_(False), lambda unet: nullcontext()
    disc = Discriminator.from_unet(teacher, conditional=phase.objective == "conditional").to(device) if phase.adversarial else None
    if disc is not None and checkpointing:
        checkpoint_blocks(disc)
    g_params = [p for p in student.parameters() if p.requires_grad]
    d_params = [p for p in disc.parameters() if p.requires_grad] if disc is not None else []
    g_opt = accelerator.prepare(torch.optim.Adam(g_params, lr=phase.lr, betas=phase.betas))
    d_opt = accelerator.prepare(torch.optim.Adam(d_params, lr=phase.lr, betas=phase.betas)) if disc is not None else None
    prepared = accelerator.prepare(student)
    models = PhaseModels(prepared, teacher, ctx, stage.teacher_steps, "epsilon", disc, accelerator.prepare(disc) if disc else None)

    size = resolution // 8
    generator = torch.Generator().manual_seed(0)
    x_t = torch.randn(batch, base.config.in_channels, size, size, generator=generator).to(device)
    t = training_timesteps(stage.student_steps)[0]
    t_next = student_jump(t, stage.teacher_steps, stage.student_steps)
    cond = random_conditioning(base.config, batch, resolution, device)
    alphas_bar = torch.linspace(0.9991, 0.0047, 1000, device=device)  # SDXL's range; values do not change the cost

    opt, settings = Optimizers(g_params, g_opt, d_params, d_opt), TrainConfig(batch_size=batch)

    def one_step():
        optimization_step(accelerator, settings, stage, phase, models, opt, lambda g: (x_t, t, t_next, cond), alphas_bar, (0, 0, 0, 0))
        if device.type == "cuda":
            torch.cuda.synchronize()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    one_step()  # warm-up: allocator, kernels, optimizer state
    start = time.perf_counter()
    for _ in range(steps):
        one_step()
    seconds = (time.perf_counter() - start) / steps
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return {
        "seconds_per_step": round(seconds, 4),
        "peak_memory_gib": round(peak, 2) if peak is not None else None,
        "trainable_params": sum(p.numel() for p in g_params),
        "discriminator_trainable_params": sum(p.numel() for p in d_params),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("random-sdxl", "tiny"), default="random-sdxl")
    parser.add_argument("--resolution", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--precision", choices=tuple(DTYPES), default="bf16")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--lora-rank", type=int, default=64)
    parser.add_argument("--steps", type=int, default=1, help="timed optimizer steps per phase (after one warm-up step)")
    parser.add_argument("--no-gradient-checkpointing", action="store_true")
    parser.add_argument("--phases", nargs="*", choices=[name for name, _ in PHASE_TYPES], help="default: all")
    parser.add_argument("--json", type=Path, required=True, help="where to write the report")
    args = parser.parse_args(argv)

    accelerator = Accelerator(mixed_precision=args.precision, cpu=args.device == "cpu")
    base = sdxl_unet(0) if args.model == "random-sdxl" else tiny_components(0)["unet"]
    results = []
    for name, stage in PHASE_TYPES:
        if args.phases and name not in args.phases:
            continue
        entry = {
            "phase": name,
            "objective": stage.phases[0].objective,
            "params": stage.phases[0].params,
            "teacher_steps": stage.teacher_steps,
            "student_steps": stage.student_steps,
        }
        try:
            entry.update(
                bench_phase(
                    accelerator,
                    base,
                    stage,
                    args.batch_size,
                    args.resolution,
                    args.lora_rank,
                    DTYPES[args.precision],
                    args.steps,
                    not args.no_gradient_checkpointing,
                ),
                status="ok",
            )
        except torch.OutOfMemoryError as e:
            entry.update(status=f"out of memory: {str(e).splitlines()[0]}")
        accelerator.free_memory()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        print(json.dumps(entry))
        results.append(entry)

    device_name = torch.cuda.get_device_name() if accelerator.device.type == "cuda" else platform.processor() or "cpu"
    report = {
        "device": device_name,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "model": args.model,
        "resolution": args.resolution,
        "batch_size": args.batch_size,
        "precision": args.precision,
        "gradient_checkpointing": not args.no_gradient_checkpointing,
        "lora_rank": args.lora_rank,
        "phases": results,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    main()
