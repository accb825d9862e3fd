import json
from pathlib import Path

import pytest
import torch

from pipelines import InvalidModel, variants
from pipelines.architectures import base_scheduler

ROOT = Path(__file__).resolve().parents[1]


def test_lightning_full_unets_carry_their_recipe():
    spec = variants.resolve("lightning")
    assert [v.steps for v in spec.variants] == [1, 2, 4, 8]
    assert spec.base == variants.SDXL_BASE
    one = spec.variant(1)
    assert one.prediction_type == "sample" and one.unet_file == "sdxl_lightning_1step_unet_x0.safetensors"
    assert all(spec.variant(n).prediction_type == "epsilon" for n in (2, 4, 8))
    for v in spec.variants:
        scheduler = v.scheduler(base_scheduler().config)
        assert scheduler.config.timestep_spacing == "trailing"
        assert scheduler.config.prediction_type == v.prediction_type


def test_lightning_loras_exist_for_two_four_eight_steps_on_any_base():
    spec = variants.resolve("lightning-lora", base="someone/their-sdxl")
    assert [v.steps for v in spec.variants] == [2, 4, 8]
    assert spec.base == "someone/their-sdxl"
    assert all(v.is_lora and v.lora_file == f"sdxl_lightning_{v.steps}step_lora.safetensors" for v in spec.variants)


def test_restricting_to_missing_steps_is_refused():
    with pytest.raises(InvalidModel, match=r"offers 8, 4, 2 \(live\) steps, not 1"):
        variants.resolve("lightning-lora").restricted_to((1,))


def test_unknown_model_and_bad_variant_fields_are_refused(tmp_path):
    with pytest.raises(InvalidModel, match="unknown model 'nonsense'"):
        variants.resolve("nonsense")
    with pytest.raises(InvalidModel, match="prediction_type"):
        variants.Variant(2, "v_prediction_typo")
    with pytest.raises(InvalidModel, match="positive integer"):
        variants.Variant(0)
    with pytest.raises(InvalidModel, match="neither"):
        variants.resolve(str(tmp_path))


def test_manifest_round_trip(tmp_path):
    written = [variants.Variant(2, "epsilon", unet_dir="unet_2step", source_stage="4->2"), variants.Variant(1, "sample", lora_file="lora_1step.safetensors")]
    variants.write_manifest(tmp_path, "tiny", written, note="test")
    spec = variants.resolve(str(tmp_path))
    assert spec.base == "tiny" and spec.root == str(tmp_path)
    assert list(spec.variants) == written


def test_manifest_with_unknown_keys_is_refused(tmp_path):
    (tmp_path / variants.MANIFEST_NAME).write_text('{"format": "lightning-studio/1", "base_model": "tiny", "variants": [{"steps": 2, "shedule": "x"}]}')
    with pytest.raises(InvalidModel, match="unknown variant keys"):
        variants.resolve(str(tmp_path))


def test_random_sdxl_is_the_exact_sdxl_architecture():
    from pipelines.architectures import sdxl_unet

    with torch.device("meta"):
        unet = sdxl_unet()
    assert sum(p.numel() for p in unet.parameters()) == 2_567_463_684


def test_plain_diffusers_folder_serves_the_steps_asked_for(tmp_path):
    (tmp_path / "model_index.json").write_text("{}")
    assert [v.steps for v in variants.resolve(str(tmp_path)).variants] == [4]
    spec = variants.resolve(str(tmp_path), steps=(2, 8))
    assert [(v.steps, v.prediction_type) for v in spec.variants] == [(2, "epsilon"), (8, "epsilon")]
    assert spec.base == str(tmp_path)


def test_labels_come_from_the_manifest_and_experimental_from_measured_adherence():
    spec = variants.ModelSpec(
        "m",
        "tiny",
        tuple(variants.Variant(n, adherence=a) for n, a in ((32, 0.6), (4, 0.2), (2, 0.16), (1, 0.14))),
        live_steps=4,
        reference_steps=32,
    )
    # 0.25 x the best (0.6) = 0.15: 0.14 is far below, 0.16 is not
    assert spec.labels() == {32: "reference", 4: "live", 1: "experimental"}
    assert spec.describe_steps() == "32 (reference), 4 (live), 2, 1 (experimental)"
    unmeasured = variants.builtin("tiny")
    assert unmeasured.labels() == {1: "live"}  # no live_steps in the manifest: the fewest steps, as the studio types with


def test_the_shipped_model_labels_its_variants_from_its_measurements():
    shapes = variants.resolve("shapes")
    benchmark = json.loads((ROOT / "docs" / "benchmarks" / "shapes-shipped.json").read_text())["rows"]
    assert {v.steps: v.adherence for v in shapes.variants} == {row["steps"]: round(row["summary"]["single"], 3) for row in benchmark}
    assert shapes.labels() == {32: "reference", 2: "live"}  # 1 step: 43.1 %, above a quarter of 85.5 %


def test_a_manifest_adherence_outside_zero_to_one_is_refused():
    with pytest.raises(InvalidModel, match="adherence must be a measured fraction"):
        variants.Variant(2, adherence=29)
