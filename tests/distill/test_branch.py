"""Runs that share leading stages: a finished stage is reused only under the same lineage, and `--branch-from`
starts an ablation from another run's shared stages instead of retraining them."""

import copy
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from peft import set_peft_model_state_dict
from safetensors.torch import load_file

from distill import train as distill_train
from distill.branch import branch
from distill.checkpoint import CheckpointError
from distill.config import lineage, parse_config
from distill.lora import ADAPTER, add_lora, merge_lora
from pipelines.architectures import tiny_components

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_train import phase, plan, stage_unet  # noqa: E402

STAGES = [
    {"name": "4step", "teacher_steps": 8, "student_steps": 4, "phases": [phase("conditional", "lora", steps=1), phase("unconditional", "full", steps=1)]},
    {"name": "2step", "teacher_steps": 4, "student_steps": 2, "phases": [phase("unconditional", "full", steps=1)]},
]


def run_dir(config) -> Path:
    return Path(config.train.output_dir)


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("source")
    config = parse_config(plan(tmp, STAGES, checkpoint_every=1000))
    distill_train.train(config)
    return config


def test_lineage_covers_the_plan_up_to_a_stage_and_ignores_where_and_how_often_it_logs(source_run):
    moved = parse_config(plan(run_dir(source_run).parent / "elsewhere", STAGES, log_every=7, checkpoint_every=3))
    assert lineage(moved, 0) == lineage(source_run, 0) and lineage(moved, 1) == lineage(source_run, 1)
    later = copy.deepcopy(STAGES)
    later[1]["phases"][0]["lr"] = 1e-4
    changed = parse_config(plan(run_dir(source_run).parent / "x", later))
    assert lineage(changed, 0) == lineage(source_run, 0) and lineage(changed, 1) != lineage(source_run, 1)
    seeded = parse_config(plan(run_dir(source_run).parent / "x", STAGES, seed=5))
    assert lineage(seeded, 0) != lineage(source_run, 0)


def test_a_branch_reuses_the_shared_stage_and_trains_the_one_that_differs(tmp_path, source_run):
    ablation = copy.deepcopy(STAGES)
    ablation[1]["pure_noise"] = False
    config = parse_config(plan(tmp_path, ablation, checkpoint_every=1000))
    assert branch(config, run_dir(source_run)) == ["4step"]
    assert (tmp_path / "run" / "cache" / "index.json").is_file()
    records = distill_train.train(config)

    assert {r["stage"] for r in records} == {1}  # stage 0 was not trained again
    shared, source = stage_unet(tmp_path / "run", "4step"), stage_unet(run_dir(source_run), "4step")
    assert all(torch.equal(shared[k], source[k]) for k in source)
    ablated, original = stage_unet(tmp_path / "run", "2step"), stage_unet(run_dir(source_run), "2step")
    assert any(not torch.equal(ablated[k], original[k]) for k in original)  # t = 999 saw x_T = 0.068 x0 + sigma eps
    info = json.loads((tmp_path / "run" / "stages" / "2step" / "stage.json").read_text())
    assert info["lineage"] == lineage(config, 1)


def test_a_stage_saved_under_another_plan_is_retrained_not_reused(tmp_path, source_run):
    seeded = parse_config(plan(tmp_path, STAGES, seed=1, checkpoint_every=1000))
    assert branch(seeded, run_dir(source_run)) == []
    assert not (tmp_path / "run" / "stages").exists()
    # Even copied in by hand, a stage whose lineage differs is trained again.
    shutil.copytree(run_dir(source_run) / "stages", tmp_path / "run" / "stages")
    records = distill_train.train(seeded)
    assert {r["stage"] for r in records} == {0, 1}


def test_branch_refuses_a_folder_that_is_not_a_run(tmp_path, source_run):
    config = parse_config(plan(tmp_path, STAGES))
    with pytest.raises(CheckpointError, match="no stages/ folder"):
        branch(config, tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="own output_dir"):
        branch(source_run, run_dir(source_run))


def test_the_lora_phases_student_is_saved_before_the_full_phase(source_run):
    """stages/<name>/lora_student = the stage's starting UNet with the trained LoRA merged in (what the LoRA phases gave)."""
    folder = run_dir(source_run) / "stages" / "4step"
    unet = tiny_components(0)["unet"]
    add_lora(unet, rank=source_run.train.lora_rank)
    set_peft_model_state_dict(unet, load_file(folder / "lora.safetensors"), adapter_name=ADAPTER)
    expected = merge_lora(unet).state_dict()
    saved = load_file(folder / "lora_student" / "diffusion_pytorch_model.safetensors")
    assert saved.keys() == expected.keys()
    assert all(torch.allclose(saved[k], expected[k], atol=1e-6) for k in saved)
    assert any(not torch.equal(saved[k], stage_unet(run_dir(source_run), "4step")[k]) for k in saved)  # the full phase moved on
