"""The tiny model's 2-step stage (an adversarial LoRA phase with re-noising, then a full one; 2 steps each) trained on
two gloo-connected CPU processes under `accelerate launch --config_file` with a shipped accelerate config. The DDP run
is launched once per session (tests/distill/conftest.py) and read by every test that compares against it."""

import os
import subprocess
import sys
from pathlib import Path

from test_train import _toml, phase, plan

ROOT = Path(__file__).resolve().parents[2]
STAGES = [
    {
        "name": "2step",
        "teacher_steps": 4,
        "student_steps": 2,
        "phases": [phase("conditional", "lora", renoise_weights=[1, 1, 1, 1]), phase("unconditional", "full", teacher="previous")],
    }
]


def two_step_plan(folder: Path, **train) -> dict:
    """The plan, batch 1 per process and a checkpoint after every step (a kill can resume mid-phase)."""
    return plan(folder, STAGES, **{"batch_size": 1, "checkpoint_every": 1, "keep_checkpoints": 10, **train})


def launch(folder: Path, raw: dict, accelerate_config: str, entry: list[str], *extra) -> subprocess.CompletedProcess:
    """`accelerate launch --config_file distill/configs/<accelerate_config>` of `entry` (["-m", "distill"] or a
    script) on two CPU processes (torchrun, as for GPUs), training the plan `raw` written to <folder>/plan.toml."""
    config_file = folder / "plan.toml"
    config_file.write_text(_toml(raw))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "distill" / "configs" / accelerate_config)]
    command += ["--num_processes", "2", "--mixed_precision", "no", "--dynamo_backend", "no", *entry, "train", "--config", str(config_file), *extra]
    result = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result
