"""The training loop on the tiny model: every phase type trains and changes the student, a killed run resumes to
the uninterrupted run's exact weights, two processes work under `accelerate launch`, and it learns."""

import copy
import json
import math
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from distill import stages as distill_stages
from distill import steps as distill_steps
from distill import train as distill_train
from distill.checkpoint import CheckpointError
from distill.config import parse_config
from distill.lora import add_lora, merge_lora
from distill.solver import teacher_solve
from distill.student import student_step
from distill.validation import encode_prompts
from pipelines.architectures import tiny_components
from pipelines.denoiser import zero_uncond

ROOT = Path(__file__).resolve().parents[2]
TINY = tomllib.loads((ROOT / "distill" / "configs" / "tiny.toml").read_text())


def plan(tmp_path, stages, **train):
    raw = copy.deepcopy(TINY)
    raw["stages"] = stages
    raw["train"].update(output_dir=str(tmp_path / "run"), **train)
    return raw


def phase(objective, params, steps=2, **extra):
    lr = 1e-3 if params == "lora" else 5e-4
    return {"objective": objective, "params": params, "steps": steps, "lr": lr, **extra}


# Two stages: LoRA (conditional, unconditional) -> merge -> full, then a re-noised 2-step stage with a skip-level teacher.
SHORT = [
    {
        "name": "4step",
        "teacher_steps": 8,
        "student_steps": 4,
        "phases": [phase("conditional", "lora"), phase("unconditional", "lora"), phase("unconditional", "full")],
    },
    {
        "name": "2step",
        "teacher_steps": 4,
        "student_steps": 2,
        "phases": [phase("conditional", "lora", renoise_weights=[1, 1, 1, 1]), phase("unconditional", "full", teacher="skip", renoise_weights=[5, 1, 1, 1])],
    },
]


def stage_unet(out, name):
    return load_file(Path(out) / "stages" / name / "unet" / "diffusion_pytorch_model.safetensors")


def phase_end_weights(out) -> dict:
    """{(stage, phase): the student's trainable weights} from the checkpoint written at each phase's end."""
    found = {}
    for folder in sorted((Path(out) / "checkpoints").glob("checkpoint-*")):
        progress = json.loads((folder / "state.json").read_text())["progress"]
        found[(progress["stage"], progress["phase"])] = load_file(folder / "student.safetensors")
    return found


def differs(before: dict, after: dict) -> bool:
    assert set(before) <= set(after), "compared weights must share names"
    return any(not torch.equal(before[k], after[k]) for k in before)


def test_every_phase_type_trains_with_finite_losses_and_changes_the_student(tmp_path):
    raw = copy.deepcopy(TINY)
    for stage in raw["stages"]:
        for p in stage["phases"]:
            p["steps"] = 1
    raw["train"].update(output_dir=str(tmp_path / "run"), checkpoint_every=1000, keep_checkpoints=1000)
    config = parse_config(raw)
    records = distill_train.train(config)

    seen = {(r["stage"], r["phase"]) for r in records}
    assert seen == {(i, j) for i, s in enumerate(config.stages) for j in range(len(s.phases))}
    for r in records:
        phase_config = config.stages[r["stage"]].phases[r["phase"]]
        losses = [r["loss_g"]] + ([r["loss_d"]] if phase_config.adversarial else [])
        assert all(math.isfinite(x) for x in losses) and r["skipped_steps"] == 0
        assert ("d_acc_real" in r) == phase_config.adversarial

    out, ends = tmp_path / "run", phase_end_weights(tmp_path / "run")
    base = {k: v.float() for k, v in tiny_components(0)["unet"].state_dict().items()}
    for i, stage in enumerate(config.stages):
        start = base if i == 0 else stage_unet(out, config.stages[i - 1].name)
        for j, p in enumerate(stage.phases):
            after = ends[(i, j)]
            if p.params == "lora" and (j == 0 or stage.phases[j - 1].params != "lora"):
                changed = any(v.abs().sum() > 0 for k, v in after.items() if "lora_B" in k)  # B starts at zero
            elif j == 0:
                changed = differs(start, after)
            elif p.params == "lora" or stage.phases[j - 1].params == "full":  # same parameters as the phase before
                changed = differs(ends[(i, j - 1)], after)
            else:  # full after LoRA: compare with the merged LoRA student it started from
                unet = tiny_components(0)["unet"]
                unet.load_state_dict(start)
                add_lora(unet, rank=config.train.lora_rank)
                unet.load_state_dict(ends[(i, j - 1)], strict=False)
                changed = differs(merge_lora(unet).state_dict(), after)
            assert changed, f"stage {stage.name} phase {j} ({p.objective}, {p.params}) left the student unchanged"
        info = json.loads((out / "stages" / stage.name / "stage.json").read_text())
        assert info["student_steps"] == stage.student_steps and info["prediction_type"] == stage.prediction_type
        probed = {f"{j}_{p.objective}_{p.params}" for j, p in enumerate(stage.phases) if p.adversarial}
        assert set(info["d_heldout_accuracy"]) == probed  # D's held-out accuracy after every adversarial phase
        assert all(0 <= v <= 1 for v in info["d_heldout_accuracy"].values())
    assert json.loads((out / "stages" / "1step" / "stage.json").read_text())["prediction_type"] == "sample"
    assert (out / "stages" / "8step" / "lora.safetensors").is_file()


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory) -> Path:
    """The SHORT plan run without interruption (with validation pictures): what every resumed run must reproduce."""
    tmp = tmp_path_factory.mktemp("whole")
    distill_train.train(parse_config(plan(tmp, SHORT, checkpoint_every=2, validation_prompts=["a cat"])))
    return tmp / "run"


def assert_same_students(a_run: Path, b_run: Path):
    for name in ("4step", "2step"):
        a, b = stage_unet(a_run, name), stage_unet(b_run, name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"stage {name} differs after resume"


def test_kill_and_resume_reproduce_the_uninterrupted_run(tmp_path, whole_run):
    killed = parse_config(plan(tmp_path / "killed", SHORT, checkpoint_every=2))
    distill_train.train(killed, stop_after=3)  # dies one step after a checkpoint (global step 2): step 3 is redone
    second = distill_train.train(killed, resume=True, stop_after=3)  # and dies again, in the next phase
    assert not (tmp_path / "killed" / "run" / "stages" / "2step").exists()
    # checkpoint_every may change across a resume: checkpoint every step, so the next kill resumes mid-full-phase
    every_step = parse_config(plan(tmp_path / "killed", SHORT, checkpoint_every=1))
    third = distill_train.train(every_step, resume=True, stop_after=2)  # checkpoint at 5 (4step's full phase), dies at 6
    fourth = distill_train.train(every_step, resume=True)
    assert [[r["global_step"] for r in run] for run in (second, third, fourth)] == [[3, 4, 5], [5, 6], [6, 7, 8, 9, 10]]
    assert_same_students(whole_run, tmp_path / "killed" / "run")

    # Validation pictures per phase, teacher | student side by side, and the tensorboard log.
    pictures = sorted(p.name for p in (whole_run / "validation").glob("*.png"))
    assert pictures == [
        "2step_0_conditional_lora.png",
        "2step_1_unconditional_full.png",
        "4step_0_conditional_lora.png",
        "4step_1_unconditional_lora.png",
        "4step_2_unconditional_full.png",
    ]
    from PIL import Image

    assert Image.open(whole_run / "validation" / pictures[0]).size == (128, 64)
    assert list((whole_run / "logs").rglob("events.out.tfevents.*"))

    changed = copy.deepcopy(SHORT)
    changed[1]["phases"][0]["lr"] = 0.5
    with pytest.raises(CheckpointError, match=r"stages\[1\]\.phases\[0\]\.lr: checkpoint has 0\.001, config has 0\.5"):
        distill_train.train(parse_config(plan(tmp_path / "killed", changed)), resume=True)


def test_sigkill_at_an_arbitrary_moment_then_resume(tmp_path, whole_run):
    """A real SIGKILL of `python -m distill train`, wherever it lands (mid-step, mid-checkpoint, mid-stage-save)."""
    raw = plan(tmp_path, SHORT, checkpoint_every=1)
    config_file = tmp_path / "plan.toml"
    config_file.write_text(_toml(raw))
    # The same thread count as this process: the comparison is bitwise, and reductions split differently per thread.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(torch.get_num_threads())}
    process = subprocess.Popen(
        [sys.executable, "-m", "distill", "train", "--config", str(config_file)], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    latest = tmp_path / "run" / "checkpoints" / "latest"
    deadline = time.monotonic() + 600  # a guard against a hung child, not a timing assertion
    while process.poll() is None and time.monotonic() < deadline and not (latest.is_file() and latest.read_text() >= "checkpoint-00000004"):
        time.sleep(0.01)
    process.kill()
    assert process.wait() == -signal.SIGKILL  # killed mid-run (stage 4step's third phase), not finished
    distill_train.train(parse_config(raw), resume=True)
    assert_same_students(whole_run, tmp_path / "run")


def test_accelerate_launch_two_processes_on_cpu(ddp_run):
    run, stdout = ddp_run  # tests/distill/two_processes.py: the shipped DDP accelerate config on two CPU processes
    assert (run / "stages" / "2step" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert "distilling on 2 processes" in stdout


def _toml(raw: dict) -> str:
    """A minimal TOML writer for the plan dicts above (tomllib only reads)."""

    def value(v):
        return json.dumps(v) if not isinstance(v, bool) else str(v).lower()

    lines = []
    for section in ("model", "data", "train"):
        lines.append(f"[{section}]")
        lines += [f"{k} = {value(v)}" for k, v in raw[section].items()]
    for stage in raw["stages"]:
        lines.append("[[stages]]")
        lines += [f"{k} = {value(v)}" for k, v in stage.items() if k != "phases"]
        for p in stage["phases"]:
            lines.append("[[stages.phases]]")
            lines += [f"{k} = {value(v)}" for k, v in p.items()]
    return "\n".join(lines) + "\n"


PROMPTS = ["a photo of a cat", "a red car", "a bowl of fruit", "a mountain lake at dawn"]


def one_step_gap(unet, teacher, cond, noise, alphas_bar) -> float:
    """MSE between the student's one jump 999 -> 499 from pure noise and the 8-step teacher's four steps there."""
    with torch.no_grad():
        target = teacher_solve(teacher, noise, 999, 499, 8, cond, alphas_bar, "epsilon", 1.0, zero_uncond(cond))
        jump = student_step(unet, noise, 999, 499, cond, alphas_bar, "epsilon")[0]
    return float(((jump - target) ** 2).mean())


def test_a_short_run_brings_the_one_step_student_closer_to_the_teacher(tmp_path):
    stages = [
        {
            "name": "2step",
            "teacher_steps": 8,
            "student_steps": 2,
            "phases": [{"objective": "mse", "params": "full", "steps": 60, "lr": 3e-5, "betas": [0.9, 0.999]}],
        }
    ]
    raw = plan(tmp_path, stages, batch_size=4, gradient_checkpointing=False, checkpoint_every=1000)
    raw["data"].update(prompts=PROMPTS, samples_per_prompt=2)
    config = parse_config(raw)
    distill_train.train(config)

    components = tiny_components(0)
    teacher = components["unet"].eval()
    cond = encode_prompts(components, PROMPTS, config.data.resolution, "cpu")
    noise = torch.randn((len(PROMPTS), 4, 8, 8), generator=torch.Generator().manual_seed(1234))  # noise never trained on
    alphas_bar = components["scheduler"].alphas_cumprod
    student = distill_stages.load_unet(config, "2step", components).eval()
    before = one_step_gap(teacher, teacher, cond, noise, alphas_bar)  # the student starts as the teacher
    after = one_step_gap(student, teacher, cond, noise, alphas_bar)
    # ~0.55x here after 60 steps; 0.75 leaves room for other BLAS/CPU rounding without letting "no learning" pass.
    assert after < 0.75 * before, (before, after)


def test_steps_with_non_finite_gradients_are_skipped_and_counted(tmp_path, monkeypatch):
    stages = [
        {
            "name": "2step",
            "teacher_steps": 4,
            "student_steps": 2,
            "phases": [{"objective": "mse", "params": "full", "steps": 3, "lr": 1e-3, "betas": [0.9, 0.999]}],
        }
    ]
    config = parse_config(plan(tmp_path, stages, gradient_accumulation_steps=2, checkpoint_every=1000))
    calls = {"n": 0}
    real_mse = distill_steps.mse_loss

    def poisoned_on_second_step(a, b):
        calls["n"] += 1
        loss = real_mse(a, b)
        return loss * float("nan") if calls["n"] in (3, 4) else loss  # micro-batches 3 and 4 = optimizer step 2

    monkeypatch.setattr(distill_steps, "mse_loss", poisoned_on_second_step)
    records = distill_train.train(config)
    assert calls["n"] == 6  # 3 optimizer steps x 2 accumulated micro-batches
    assert [r["skipped_steps"] for r in records] == [0, 1, 1]
    assert "grad_norm_g" in records[0] and "grad_norm_g" not in records[1]  # no clipping/step on the poisoned one
    student = stage_unet(tmp_path / "run", "2step")
    assert all(torch.isfinite(v).all() for v in student.values())


@pytest.fixture
def fresh_accelerator_state():
    """accelerate keeps one process-wide state; a run with another mixed precision needs it cleared (and after)."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    yield
    AcceleratorState._reset_state()


def test_bf16_mixed_precision_with_accumulation(tmp_path, fresh_accelerator_state):
    stages = [{**SHORT[0], "phases": [dict(p, steps=1) for p in SHORT[0]["phases"]]}]
    config = parse_config(plan(tmp_path, stages, mixed_precision="bf16", gradient_accumulation_steps=2, checkpoint_every=1000))
    records = distill_train.train(config)
    assert len(records) == 3 and all(math.isfinite(r["loss_g"]) and math.isfinite(r["loss_d"]) for r in records)
    assert all(r["skipped_steps"] == 0 and r["grad_norm_g"] > 0 for r in records)
    saved = stage_unet(tmp_path / "run", "4step")
    assert {v.dtype for v in saved.values()} == {torch.float32}  # the merged student is saved in full precision
    base = tiny_components(0)["unet"].state_dict()
    assert differs({k: v.float() for k, v in base.items()}, saved)
