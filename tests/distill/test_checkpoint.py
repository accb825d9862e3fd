"""Checkpoints: atomic (a full disk never corrupts "latest"), rotated, refused when from another config."""

import errno
from pathlib import Path

import pytest
import torch

import distill.checkpoint as ckpt
from distill.config import load_config

CONFIG = load_config(Path(__file__).resolve().parents[2] / "distill" / "configs" / "tiny.toml").to_dict()


def _save(folder, step, value, keep=2, config=CONFIG):
    weights = {"student": {"w": torch.full((3,), float(value))}}
    optimizers = {"g": {"state": {0: {"exp_avg": torch.ones(2) * value}}, "param_groups": [{"lr": 0.1, "params": [0]}]}}
    return ckpt.save(folder, step, weights, optimizers, {"stage": 1, "phase": 0, "step": step}, config, keep)


def test_round_trip_and_rotation(tmp_path):
    for step in (1, 2, 3):
        _save(tmp_path, step, step)
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-00000002", "checkpoint-00000003"]
    resumed = ckpt.load(ckpt.latest(tmp_path), CONFIG)
    assert torch.equal(resumed.weights["student"]["w"], torch.full((3,), 3.0))
    assert torch.equal(resumed.optimizers["g"]["state"][0]["exp_avg"], torch.ones(2) * 3)
    assert resumed.progress == {"stage": 1, "phase": 0, "step": 3} and resumed.position == (1, 0)


def test_no_checkpoint_means_fresh_start(tmp_path):
    assert ckpt.latest(tmp_path) is None


def test_full_disk_never_leaves_a_corrupt_latest(tmp_path, monkeypatch):
    _save(tmp_path, 1, 1.0)
    real_save = torch.save

    def disk_full(obj, path, *args, **kwargs):
        Path(path).write_bytes(b"partial")  # the write got part-way, then the disk filled up
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", disk_full)
    with pytest.raises(ckpt.CheckpointError, match="No space left on device.*still names the previous checkpoint"):
        _save(tmp_path, 2, 2.0)
    monkeypatch.setattr(ckpt.torch, "save", real_save)
    assert ckpt.latest(tmp_path).name == "checkpoint-00000001"
    resumed = ckpt.load(ckpt.latest(tmp_path), CONFIG)
    assert torch.equal(resumed.weights["student"]["w"], torch.ones(3)) and resumed.progress["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] and not list(tmp_path.glob(".tmp-*"))


def test_failure_while_updating_latest_keeps_the_old_pointer(tmp_path, monkeypatch):
    _save(tmp_path, 1, 1.0)
    real_replace = ckpt.os.replace

    def fail_on_pointer(src, dst):
        if Path(dst).name == ckpt.LATEST:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", fail_on_pointer)
    with pytest.raises(ckpt.CheckpointError):
        _save(tmp_path, 2, 2.0)
    assert (tmp_path / ckpt.LATEST).read_text() == "checkpoint-00000001"
    assert not list(tmp_path.glob(".tmp-*"))


def test_checkpoint_from_another_config_is_refused_with_the_difference(tmp_path):
    _save(tmp_path, 1, 1.0)
    other = {**CONFIG, "train": {**CONFIG["train"], "lora_rank": 8, "output_dir": "moved"}}
    with pytest.raises(ckpt.CheckpointError) as e:
        ckpt.load(ckpt.latest(tmp_path), other)
    assert "train.lora_rank: checkpoint has 4, config has 8" in str(e.value)
    assert "output_dir: checkpoint has" not in str(e.value)  # moving the run folder is not a different plan


def test_rewriting_the_same_step_replaces_it(tmp_path):
    _save(tmp_path, 5, 1.0)
    _save(tmp_path, 5, 7.0)  # after a resume, the same step is reached and saved again
    assert torch.equal(ckpt.load(ckpt.latest(tmp_path), CONFIG).weights["student"]["w"], torch.full((3,), 7.0))
