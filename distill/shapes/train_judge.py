"""Train the judge on fresh renders of every kind of scene (0-3 objects, all colour x shape pairs) and report its
per-attribute accuracy on a held-out render set."""

import random
import time
from pathlib import Path

import torch
from accelerate.logging import get_logger

from . import judge as judge_lib
from .config import PretrainConfig
from .loop import Part, make_accelerator
from .parts import finish, lr_at, set_lr, train_part

log = get_logger(__name__)  # accelerate's: logs on the main process only, as accelerator.print did


def train_judge(c: PretrainConfig, resume: bool, stop_after: int | None = None) -> dict:
    folder = Path(c.train.output_dir) / "judge"
    accelerator = make_accelerator(folder)
    judge = judge_lib.Judge(c.world.resolution)
    optimizer = torch.optim.AdamW(judge.parameters(), lr=c.judge.lr, weight_decay=1e-4)

    def step(i: int, generator: torch.Generator) -> dict:
        set_lr(optimizer, lr := lr_at(i, c.judge.steps, c.judge.lr, 100))
        images, target = judge_lib.batch(random.Random(generator.initial_seed()), c.judge.batch_size, c.world.resolution)
        judge.train()
        loss = judge_lib.loss(judge(images), target)
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return {"loss": loss.item(), "lr": lr}

    began = time.perf_counter()
    train_part(c, Part("judge", {"judge": judge}, optimizer, step, c.judge.steps), accelerator, resume, stop_after)
    images, target = judge_lib.held_out_renders(c.judge.eval_images, c.world.resolution)
    report = {
        "held_out_accuracy": judge_lib.accuracy(judge, images, target),
        "held_out_images": c.judge.eval_images,
        "train_seconds_this_run": round(time.perf_counter() - began, 1),
    }
    log.info("judge accuracy on held-out renders: " + ", ".join(f"{k} {v:.2%}" for k, v in report["held_out_accuracy"].items()))
    return finish(c, "judge", lambda tmp: judge_lib.save(judge, tmp / "judge.safetensors"), report)
