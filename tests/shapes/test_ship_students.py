"""Distilled students take over step counts of the shipped shapes model: the student's own weights serve its step
count without CFG (the stock pipeline with the same weights draws the same picture), the reference and every other
step count stay the base's, shipping again with fewer students puts the base back, and bad requests are refused."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTokenizer

from distill.shapes.ship import record_adherence, ship_students
from pipelines import GenerationRequest, StudioError, load_engine
from pipelines.variants import MANIFEST_NAME, SHAPES_FOLDER, Variant, write_manifest

PROMPT, SEED, SIZE = "a red circle on the left on a white background", 3, 128


def stock_image(folder, unet_folder, steps: int, guidance: float):
    """diffusers' own pipeline from the model folder, with the given UNet and the model card's trailing Euler."""
    unet = UNet2DConditionModel.from_pretrained(unet_folder, dtype=torch.float32)
    pipe = StableDiffusionXLPipeline.from_pretrained(folder, unet=unet, dtype=torch.float32)
    pipe.scheduler = Variant(steps).scheduler(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        PROMPT, num_inference_steps=steps, guidance_scale=guidance, height=SIZE, width=SIZE, generator=torch.Generator().manual_seed(SEED), output_type="np"
    ).images[0]


@pytest.fixture
def model_and_export(tmp_path):
    """A copy of the shipped model (back to the base alone) and a `distill export`-shaped folder whose 4-step
    student is the base UNet perturbed, so that serving it is visible."""
    model = ship_students({}, 8, shutil.copytree(SHAPES_FOLDER, tmp_path / "shapes"))
    unet = UNet2DConditionModel.from_pretrained(model / "unet", dtype=torch.float32)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.2 * p.std() * torch.randn(p.shape, generator=generator))
    export = tmp_path / "export"
    unet.save_pretrained(export / "4step" / "unet")
    write_manifest(export, "shapes", [Variant(4, unet_dir="4step/unet", source_stage="4step")], distilled_with="plan.toml")
    return model, export


def test_a_student_serves_its_step_count_without_cfg_and_the_base_keeps_the_rest(model_and_export):
    model, export = model_and_export
    ship_students({4: export}, live_steps=4, folder=model)
    entry = next(e for e in json.loads((model / MANIFEST_NAME).read_text())["variants"] if e["steps"] == 4)
    assert entry["unet_dir"] == "students/4step/unet" and entry["source_stage"] == "4step of plan.toml"
    engine = load_engine(str(model), device="cpu", steps=[32, 8, 4])
    assert engine.live_steps == 4 and engine.reference_steps == 32 and engine.guidance == {32: 5.0, 8: 5.0}
    assert engine.description.endswith("its 4-step variants are distilled students")
    (served,) = engine.generate([GenerationRequest(PROMPT, seed=SEED, steps=4, width=SIZE, height=SIZE)], output_type="float")
    student = stock_image(model, model / "students" / "4step" / "unet", 4, 0.0)
    np.testing.assert_allclose(served.image, student, atol=2e-3, rtol=0)
    assert np.abs(stock_image(model, model / "unet", 4, 0.0) - student).mean() > 0.01  # the student is not the base
    (reference,) = engine.generate([GenerationRequest(PROMPT, seed=SEED, steps=32, width=SIZE, height=SIZE)], output_type="float")
    np.testing.assert_allclose(reference.image, stock_image(model, model / "unet", 32, 5.0), atol=2e-3, rtol=0)


def test_shipping_again_without_students_puts_the_base_back(model_and_export):
    model, export = model_and_export
    ship_students({4: export}, live_steps=4, folder=model)
    ship_students({}, live_steps=8, folder=model)
    assert not any((model / "students").iterdir())
    manifest = json.loads((model / MANIFEST_NAME).read_text())
    assert manifest["live_steps"] == 8 and "distilled" not in manifest["description"]
    assert all(e["guidance_scale"] == 5.0 and "unet_dir" not in e for e in manifest["variants"])


def test_bad_student_requests_are_refused(model_and_export):
    model, export = model_and_export
    with pytest.raises(StudioError, match="reference"):
        ship_students({32: export}, 8, model)
    with pytest.raises(StudioError, match=r"no 2-step student \(it has \[4\]\)"):
        ship_students({2: export}, 8, model)
    with pytest.raises(StudioError, match="live steps 3"):
        ship_students({4: export}, 3, model)
    result = subprocess.run(
        [sys.executable, "-m", "distill.shapes", "ship-students", "--student", "four=x", "--live-steps", "4", "--model", str(model)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "error: --student 'four=x': expected STEPS=EXPORT_DIR, e.g. 4=runs/exports/shapes-mse"
    ]


def benchmark(path, steps, prompts=256):
    """A `compare` JSON with one row per step count (single-object adherence 1/n), as `compare --json` writes it."""
    rows = [{"steps": n, "prompts_per_group": prompts, "seeds_per_prompt": 4, "summary": {"single": 1 / n}} for n in steps]
    path.write_text(json.dumps({"rows": rows}))
    return path


def test_measured_adherence_is_recorded_per_variant_and_dropped_when_a_student_changes(model_and_export, tmp_path):
    model, export = model_and_export
    assert record_adherence(benchmark(tmp_path / "b.json", [32, 8, 4, 2, 1]), model) == {32: 0.031, 8: 0.125, 4: 0.25, 2: 0.5, 1: 1.0}
    manifest = json.loads((model / MANIFEST_NAME).read_text())
    assert [e["adherence"] for e in manifest["variants"]] == [0.031, 0.125, 0.25, 0.5, 1.0]
    assert manifest["adherence_measure"].startswith("single-object prompts drawn with every asked attribute right (256 prompts x 4")
    assert load_engine(str(model), device="cpu", steps=[32, 1]).adherence == {32: 0.031, 1: 1.0}
    ship_students({4: export}, live_steps=4, folder=model)  # new weights at 4 steps: no figure is left to describe them
    manifest = json.loads((model / MANIFEST_NAME).read_text())
    assert "adherence_measure" not in manifest and not any("adherence" in e for e in manifest["variants"])


def test_adherence_from_an_incomplete_or_mixed_comparison_is_refused(model_and_export, tmp_path):
    model, _ = model_and_export
    with pytest.raises(StudioError, match=r"0 rows at 1 steps"):
        record_adherence(benchmark(tmp_path / "b.json", [32, 8, 4, 2]), model)
    with pytest.raises(StudioError, match=r"2 rows at 2 steps"):
        record_adherence(benchmark(tmp_path / "b.json", [32, 8, 4, 2, 2, 1]), model)
    mixed = benchmark(tmp_path / "b.json", [32, 8, 4, 2, 1])
    rows = json.loads(mixed.read_text())["rows"]
    rows[0]["prompts_per_group"] = 32
    mixed.write_text(json.dumps({"rows": rows}))
    with pytest.raises(StudioError, match="different prompt sets"):
        record_adherence(mixed, model)
    assert "adherence" not in json.loads((model / MANIFEST_NAME).read_text())["variants"][0]  # nothing written


def test_the_shipped_tokenizers_are_compact_and_give_clips_ids():
    for name in ("tokenizer", "tokenizer_2"):
        assert not (SHAPES_FOLDER / name / "tokenizer.json").exists()
        ids = CLIPTokenizer.from_pretrained(SHAPES_FOLDER / name)("a red circle on the left").input_ids
        assert ids == [49406, 320, 736, 7117, 525, 518, 1823, 49407]
