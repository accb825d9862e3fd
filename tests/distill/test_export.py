"""Export: stage UNets + manifest load in the engine; the LoRA loads in the stock diffusers SDXL pipeline and
reproduces the student, and so does the kohya file through the same loader."""

import copy
import dataclasses
import json
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
from safetensors.torch import load_file

from distill import __main__ as cli
from distill import export as distill_export
from distill import train as distill_train
from distill.config import parse_config
from pipelines import GenerationRequest, StudioError, load_engine
from pipelines.architectures import tiny_components
from pipelines.variants import read_manifest

ROOT = Path(__file__).resolve().parents[2]
TINY = tomllib.loads((ROOT / "distill" / "configs" / "tiny.toml").read_text())


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 4-step stage that ends on its LoRA (so the LoRA is exactly the stage's change to the base), then a
    2-step stage trained on the full UNet."""
    tmp = tmp_path_factory.mktemp("export")
    raw = copy.deepcopy(TINY)
    raw["train"].update(output_dir=str(tmp / "run"), checkpoint_every=1000)
    raw["stages"] = [
        {"name": "4step", "teacher_steps": 8, "student_steps": 4, "phases": [{"objective": "conditional", "params": "lora", "steps": 2, "lr": 1e-2}]},
        {"name": "2step", "teacher_steps": 4, "student_steps": 2, "phases": [{"objective": "unconditional", "params": "full", "steps": 1, "lr": 1e-4}]},
    ]
    config = parse_config(raw)
    distill_train.train(config)
    return config, distill_export.export(config, tmp / "export")


def stock_pipeline():
    parts = tiny_components(0)
    parts.pop("vae_tiny")
    return StableDiffusionXLPipeline(**parts)


def unet_out(unet, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, ehs = torch.randn((1, 4, 8, 8), generator=g), torch.randn((1, 77, 64), generator=g)
    cond = {"text_embeds": torch.randn((1, 32), generator=g), "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}
    with torch.no_grad():
        return unet(x, torch.tensor([749]), encoder_hidden_states=ehs, added_cond_kwargs=cond).sample


def test_manifest_names_every_stage_with_its_scheduler_settings(run):
    config, folder = run
    spec = read_manifest(folder)
    assert spec.base == "tiny"
    assert [(v.steps, v.prediction_type, v.unet_dir, v.source_stage) for v in spec.variants] == [
        (4, "epsilon", "4step/unet", "4step"),
        (2, "epsilon", "2step/unet", "2step"),
    ]
    for v in spec.variants:
        assert (folder / v.unet_dir / "config.json").is_file()
    assert v.scheduler(stock_pipeline().scheduler.config).config.timestep_spacing == "trailing"


def load_and_check_lora(folder, lora_file, key_prefix: str):
    """Load `lora_file` into the stock pipeline with load_lora_weights: it must change the base UNet into the trained
    4-step student. -> the pipeline, LoRA loaded."""
    assert all(k.startswith(key_prefix) for k in load_file(lora_file))
    pipe = stock_pipeline()
    base_out = unet_out(pipe.unet)
    pipe.load_lora_weights(str(lora_file.parent), weight_name=lora_file.name)
    lora_out = unet_out(pipe.unet)
    student_out = unet_out(UNet2DConditionModel.from_pretrained(folder / "4step" / "unet"))
    assert (lora_out - base_out).abs().max() > 1e-4  # the LoRA changes the pipeline's UNet
    torch.testing.assert_close(lora_out, student_out, atol=1e-4, rtol=1e-4)  # ... into the trained student
    return pipe


def test_diffusers_lora_loads_in_the_stock_pipeline_and_reproduces_the_student(run):
    _, folder = run
    pipe = load_and_check_lora(folder, folder / "4step" / "lora" / distill_export.DIFFUSERS_LORA, "unet.")
    prompt = dict(prompt="a photo of a cat", num_inference_steps=2, height=64, width=64, output_type="np", guidance_scale=0.0)
    with_lora = pipe(generator=torch.Generator().manual_seed(0), **prompt).images
    pipe.unload_lora_weights()
    without = pipe(generator=torch.Generator().manual_seed(0), **prompt).images
    assert np.abs(with_lora - without).max() > 0


def test_kohya_file_loads_in_the_stock_pipeline_as_the_diffusers_lora_does(run):
    """A real consumer of kohya keys (diffusers' load_lora_weights converts them) gives the UNet the diffusers-format
    LoRA gives it, which is the trained student."""
    _, folder = run
    load_and_check_lora(folder, folder / "4step" / "lora" / "4step_kohya.safetensors", "lora_unet_")


def test_exported_manifest_runs_in_the_engine(run):
    _, folder = run
    engine = load_engine(model=str(folder), device="cpu", steps=(2, 4))
    results = engine.generate([GenerationRequest("a photo of a cat", seed=0, steps=s, width=64, height=64) for s in (2, 4)])
    assert [r.image.shape for r in results] == [(64, 64, 3)] * 2
    assert not np.array_equal(results[0].image, results[1].image)


def test_students_of_a_base_folder_without_manifest_serve_at_their_training_size(run, tmp_path):
    """A local base of one's own carries no size; the export records the data's resolution so the students do not
    default to SDXL's 1024 (a base with a manifest, like the shapes model, passes its own on instead)."""
    config, _ = run
    stock_pipeline().save_pretrained(tmp_path / "my-base")
    own_base = dataclasses.replace(config, model=dataclasses.replace(config.model, base=str(tmp_path / "my-base")))
    spec = read_manifest(distill_export.export(own_base, tmp_path / "export", base_lora_rank=None))
    assert spec.resolution == config.data.resolution == 64
    assert spec.sizes()[1] == 64
    assert read_manifest(distill_export.export(config, tmp_path / "tiny-export", base_lora_rank=None)).resolution is None


def test_export_cli_and_refusals(run, tmp_path, capsys):
    config, _ = run
    config_file = tmp_path / "plan.toml"  # the tiny plan pointed at this run: its 4step and 2step stages are finished
    text = (ROOT / "distill" / "configs" / "tiny.toml").read_text()
    config_file.write_text(text.replace('output_dir = "runs/tiny"', f'output_dir = "{config.train.output_dir}"'))
    cli.main(["export", "--config", str(config_file), "--out", str(tmp_path / "only2"), "--stages", "2step"])
    assert "python -m pipelines generate --model" in capsys.readouterr().out
    assert [v.steps for v in read_manifest(tmp_path / "only2").variants] == [2]
    with pytest.raises(SystemExit):
        cli.main(["export", "--config", str(config_file), "--out", str(tmp_path / "x"), "--stages", "1step"])
    assert "stage(s) ['1step'] have not finished training" in capsys.readouterr().err
    with pytest.raises(StudioError, match=r"unknown stage\(s\) \['8step'\]"):
        distill_export.export(config, tmp_path / "x", ["8step"])
    unfinished = copy.deepcopy(TINY)
    unfinished["train"]["output_dir"] = str(tmp_path / "never-trained")
    with pytest.raises(StudioError, match="no finished stage"):
        distill_export.export(parse_config(unfinished), tmp_path / "y")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_lora_from_the_original_base_turns_the_base_into_each_stage_student(run):
    """Unlike a stage's trained LoRA (relative to the previous stage), `lora_from_base` applies to the original
    base, as the published Lightning LoRAs do: base + it reproduces the 2-step student (two stages away), up to what
    a LoRA cannot hold (norms and biases moved by the full phase), which the manifest states."""
    _, folder = run
    entry = json.loads((folder / "studio_manifest.json").read_text())["loras"]["2step"]["from_base"]
    assert entry["applies_to"] == "base" and entry["rank"] == 64
    assert entry["relative_error"] < 1e-3  # the tiny UNet's layers are narrower than rank 64: exact up to float error
    pipe = stock_pipeline()
    base_out = unet_out(pipe.unet)
    student_out = unet_out(UNet2DConditionModel.from_pretrained(folder / "2step" / "unet"))
    pipe.load_lora_weights(str(folder / "2step" / "lora_from_base"), weight_name=distill_export.DIFFUSERS_LORA)
    lora_out = unet_out(pipe.unet)
    assert (lora_out - student_out).abs().max() < 0.1 * (base_out - student_out).abs().max()
    if entry["untargeted_change"] == 0:
        torch.testing.assert_close(lora_out, student_out, atol=1e-4, rtol=1e-4)
