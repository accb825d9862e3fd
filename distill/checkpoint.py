"""Checkpoints that survive a kill at any moment and a full disk.

A checkpoint is a folder `checkpoint-<global step>` holding safetensors weights, the optimizer states and
`state.json` (where in the plan it stopped, and the config it was trained with). It is written under a temporary
name and renamed into place only when complete; `latest` (a one-line file) is then replaced atomically. A crash or
ENOSPC mid-write therefore leaves the previous checkpoint as "latest", never a half-written one.
"""

import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from pipelines.errors import StudioError

from .config import config_diff

LATEST = "latest"
STATE = "state.json"
OPTIMIZERS = "optimizers.pt"


class CheckpointError(StudioError):
    """A checkpoint that cannot be resumed: from another config, or unreadable."""


def _fsync(path: Path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def link_tree(source: Path, target: Path) -> None:
    """Copy a folder as hard links where the filesystem allows (UNet weights and latent caches are hundreds of MB to
    GBs), as copies otherwise; existing folders are merged into."""
    shutil.copytree(source, target, copy_function=_link_or_copy, dirs_exist_ok=True)


def _link_or_copy(src, dst):
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


@contextmanager
def atomic_dir(final: Path):
    """Yield a temporary sibling folder; on success it replaces `final` in one rename, on error it is removed."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                _fsync(f)
        if final.exists():  # re-writing the same step (e.g. after a resume): move the old one aside first
            old = final.parent / f".old-{final.name}-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final)
        _fsync(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: Path, text: str):
    path = Path(path)
    tmp = path.parent / f".tmp-{path.name}-{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save(folder: Path, step: int, weights: dict[str, dict[str, torch.Tensor]], optimizers: dict, progress: dict, config: dict, keep: int) -> Path:
    """Write checkpoint-<step> (weights: file stem -> state dict), point `latest` at it, keep the newest `keep`."""
    folder = Path(folder)
    final = folder / f"checkpoint-{step:08d}"
    try:
        with atomic_dir(final) as tmp:
            for name, tensors in weights.items():
                save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp / f"{name}.safetensors")
            torch.save(optimizers, tmp / OPTIMIZERS)
            (tmp / STATE).write_text(json.dumps({"progress": progress, "config": config}, indent=1))
        atomic_write_text(folder / LATEST, final.name)
    except OSError as e:
        raise CheckpointError(f"could not write {final} ({e.strerror or e}); {folder / LATEST} still names the previous checkpoint") from e
    _rotate(folder, keep)
    return final


def _rotate(folder: Path, keep: int):
    latest = (folder / LATEST).read_text().strip()
    for old in sorted(folder.glob("checkpoint-*"))[:-keep]:
        if old.name != latest:
            shutil.rmtree(old, ignore_errors=True)


def latest(folder: Path) -> Path | None:
    pointer = Path(folder) / LATEST
    if not pointer.is_file():
        return None
    path = Path(folder) / pointer.read_text().strip()
    if not (path / STATE).is_file():
        raise CheckpointError(f"{pointer} names {path.name}, which is missing or incomplete")
    return path


@dataclass(frozen=True)
class Resume:
    """What a checkpoint hands back: weights by file stem, optimizer states, and progress (stage, phase, step...)."""

    weights: dict
    optimizers: dict
    progress: dict

    @property
    def position(self) -> tuple[int, int]:
        """(stage, phase) of a distillation checkpoint."""
        return self.progress["stage"], self.progress["phase"]


def load(path: Path, config: dict) -> Resume:
    """The checkpoint at `path`, if it was trained with `config`; else refuse, listing the differing keys."""
    path = Path(path)
    state = json.loads((path / STATE).read_text())
    diff = config_diff(state["config"], config)
    if diff:
        raise CheckpointError(
            f"{path} was trained with another config; differences:\n  "
            + "\n  ".join(diff)
            + "\nuse the original config, or another train.output_dir to start afresh"
        )
    weights = {f.stem: load_file(f) for f in sorted(path.glob("*.safetensors"))}
    optimizers = torch.load(path / OPTIMIZERS, weights_only=True)
    return Resume(weights, optimizers, state["progress"])
