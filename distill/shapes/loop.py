"""One resumable training loop for every part of the shapes world (judge, autoencoders, base UNet).

The loop is distill's recipe at small scale: accelerate for device placement, backward and tensorboard;
checkpoints through `distill.checkpoint` (atomic folders, `latest` pointer, rotation, refusal of a checkpoint from
another config); a step's randomness comes from a generator seeded by (seed, part, step), so a run killed at any
moment and resumed draws exactly the batches the uninterrupted run would have.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration
from tqdm.auto import tqdm

from .. import checkpoint
from ..seeding import stable_seed

log = get_logger(__name__)  # accelerate's: logs on the main process only, as accelerator.print did

OPTIMIZER = "optimizer"
EMA = "ema"


class StopRequested(Exception):
    """Raised after `stop_after` steps (tests use it to simulate a kill without checkpointing)."""


@dataclass
class Part:
    """A training job: modules whose weights are checkpointed, one optimizer, and a step function.

    step(step_index, generator) runs forward, backward and the optimizer step and returns scalars to log.
    ema (optional): a diffusers EMAModel over the trained parameters, checkpointed with them.
    on_checkpoint(step): called after each checkpoint is written (sample grids, accuracy reports)."""

    name: str
    modules: dict[str, torch.nn.Module]
    optimizer: torch.optim.Optimizer
    step: Callable[[int, torch.Generator], dict]
    total_steps: int
    ema: object | None = None
    on_checkpoint: Callable[[int], None] | None = None
    extra_state: dict = field(default_factory=dict)


def step_generator(seed: int, part: str, step: int) -> torch.Generator:
    """A CPU generator for (seed, part, step): the same draws whether the run was interrupted or not."""
    return torch.Generator().manual_seed(stable_seed(seed, part, step))


def make_accelerator(folder: Path) -> Accelerator:
    accelerator = Accelerator(log_with="tensorboard", project_config=ProjectConfiguration(project_dir=str(folder), logging_dir=str(folder / "logs")))
    accelerator.init_trackers("shapes")
    return accelerator


def run(
    part: Part,
    folder: Path,
    config: dict,
    seed: int,
    accelerator: Accelerator,
    *,
    resume: bool,
    checkpoint_every: int,
    keep: int = 2,
    log_every: int = 10,
    stop_after: int | None = None,
) -> None:
    """Train `part` to its total_steps, writing checkpoints under folder/checkpoints; resume from the latest one."""
    ckpt_dir = Path(folder) / "checkpoints"
    start = 0
    latest = checkpoint.latest(ckpt_dir)
    if latest is not None and not resume:
        raise checkpoint.CheckpointError(f"{ckpt_dir} already holds {latest.name}: pass --resume to continue it, or remove {folder}")
    if latest is not None:
        resumed = checkpoint.load(latest, config)
        for name, module in part.modules.items():
            module.load_state_dict(resumed.weights[name])
        part.optimizer.load_state_dict(resumed.optimizers[OPTIMIZER])
        if part.ema is not None:
            part.ema.load_state_dict(resumed.optimizers[EMA])
        start = resumed.progress["step"]
        log.info(f"{part.name}: resuming from {latest.name} (step {start} of {part.total_steps})")
    writer = accelerator.get_tracker("tensorboard", unwrap=True) if accelerator.is_main_process else None
    bar = tqdm(
        range(start, part.total_steps),
        initial=start,
        total=part.total_steps,
        desc=part.name,
        dynamic_ncols=True,
        disable=not accelerator.is_main_process,
        mininterval=2.0,
    )
    began, done_here = time.perf_counter(), 0
    for step in bar:
        logs = part.step(step, step_generator(seed, part.name, step))
        if part.ema is not None:
            part.ema.step([p for m in part.modules.values() for p in m.parameters() if p.requires_grad])
        done_here += 1
        if (step + 1) % log_every == 0 and writer is not None:
            for key, value in logs.items():
                writer.add_scalar(f"{part.name}/{key}", value, step + 1)
            writer.add_scalar(f"{part.name}/seconds_per_step", (time.perf_counter() - began) / done_here, step + 1)
            bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items()}, refresh=False)
        if (step + 1) % checkpoint_every == 0 or step + 1 == part.total_steps:
            optimizers = {OPTIMIZER: part.optimizer.state_dict()}
            if part.ema is not None:
                optimizers[EMA] = part.ema.state_dict()
            weights = {name: module.state_dict() for name, module in part.modules.items()}
            checkpoint.save(ckpt_dir, step + 1, weights, optimizers, {"step": step + 1}, config, keep)
            if part.on_checkpoint is not None:
                part.on_checkpoint(step + 1)
        if stop_after is not None and done_here >= stop_after:
            raise StopRequested(f"{part.name}: stopped after {done_here} steps")
    if writer is not None:
        writer.flush()
