"""What every pre-training part of the shapes world shares: its folder, its atomic final artefact, its lr schedule."""

import json
import math
from pathlib import Path

from pipelines.errors import StudioError

from ..checkpoint import atomic_dir
from ..config import config_diff
from .config import PretrainConfig
from .loop import run

DONE = "done.json"


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up to `peak` over `warmup` steps, then cosine decay to peak / 10 at `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))


def set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def final_dir(c: PretrainConfig, part: str) -> Path:
    return Path(c.train.output_dir) / part / "final"


class StalePart(StudioError):
    """A finished part was made with another config than the one asked for now."""


def is_done(c: PretrainConfig, part: str) -> bool:
    """Whether `part` has finished with this config; a part finished with another config is refused, not reused."""
    done = final_dir(c, part) / DONE
    if not done.is_file():
        return False
    recorded = json.loads(done.read_text()).get("config")
    diff = config_diff(recorded, c.section(part)) if recorded is not None else []
    if diff:
        raise StalePart(
            f"{final_dir(c, part)} was made with another config ({'; '.join(diff)}); remove {final_dir(c, part).parent} to train it again with this one"
        )
    return True


def finish(c: PretrainConfig, part: str, write, report: dict) -> dict:
    """Write a part's final folder in one atomic rename: write(tmp) puts the artefacts, DONE records the report."""
    with atomic_dir(final_dir(c, part)) as tmp:
        write(tmp)
        (tmp / DONE).write_text(json.dumps(report | {"config": c.section(part)}, indent=1))
    return report


def train_part(c: PretrainConfig, part, accelerator, resume: bool, stop_after: int | None) -> None:
    """Run a loop.Part in <output_dir>/<name> with the config's seed, checkpoint and logging settings; its
    checkpoints must agree with the config sections the part depends on."""
    t = c.train
    run(
        part,
        Path(t.output_dir) / part.name,
        c.section(part.name),
        t.seed,
        accelerator,
        resume=resume,
        checkpoint_every=t.checkpoint_every,
        keep=t.keep_checkpoints,
        log_every=t.log_every,
        stop_after=stop_after,
    )
