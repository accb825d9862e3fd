"""`python -m distill.shapes compare`: rows of several models in one table, including the three views of a distill run
that are not model folders (the LoRA phases' students, the base with each stage's LoRA relative to it, and a stage's
kept checkpoints)."""

import copy
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

from distill import train as distill_train
from distill.config import parse_config
from distill.shapes.compare import Pair, Row, check_pairs, checkpoint_models, from_base_model, lora_phases_model, parse_pair, parse_row, resolve
from pipelines import load_engine
from pipelines.errors import StudioError
from pipelines.requests import GenerationRequest
from pipelines.variants import SHAPES_FOLDER, Variant, write_manifest

ROOT = Path(__file__).resolve().parents[2]


def test_parse_row():
    assert parse_row("MSE=runs/x:8,4,2,1") == Row("MSE", "runs/x", (8, 4, 2, 1))
    assert parse_row("LoRA on base=from-base:runs/e:2") == Row("LoRA on base", "from-base:runs/e", (2,))
    for bad in ("runs/x:8", "MSE=runs/x", "MSE=runs/x:eight", "=runs/x:8"):
        with pytest.raises(StudioError, match="LABEL=MODEL:STEPS"):
            parse_row(bad)


def test_parse_pair_and_check_it_against_the_rows():
    assert parse_pair("shipped:2,new run:2") == Pair(("shipped", 2), ("new run", 2))
    for bad in ("shipped:2", "shipped:2,new:2,x:1", "shipped,new:2", "shipped:two,new:2", ":2,new:2"):
        with pytest.raises(StudioError, match="A_LABEL:STEPS,B_LABEL:STEPS"):
            parse_pair(bad)
    rows = [Row("shipped", "shapes", (2, 1)), Row("new", "runs/x", (2,))]
    check_pairs([parse_pair("shipped:1,new:2")], rows)
    with pytest.raises(StudioError, match="no row evaluates new:1"):
        check_pairs([parse_pair("shipped:2,new:1")], rows)


def test_the_run_views_load_as_models_the_engine_serves(tmp_path):
    """A fake run/export whose 'student' is the shipped UNet and whose LoRA is zero: both views must load through the
    studio's real loading code and draw what the base draws at that step count."""
    from diffusers import UNet2DConditionModel

    from distill.export import _write_lora
    from distill.lora import add_lora, lora_state_dict_diffusers

    run = tmp_path / "run" / "stages" / "4step"
    (run / "lora_student").mkdir(parents=True)
    unet = UNet2DConditionModel.from_pretrained(SHAPES_FOLDER / "unet")
    unet.save_pretrained(run / "lora_student")
    (run / "stage.json").write_text(json.dumps({"student_steps": 4, "prediction_type": "epsilon"}))
    export = tmp_path / "export"
    add_lora(unet, rank=4)  # B = 0: the LoRA changes nothing
    entry = _write_lora(export / "4step" / "lora_from_base", "4step", lora_state_dict_diffusers(unet), 4)
    write_manifest(export, "shapes", [Variant(4, "epsilon", unet_dir="4step/unet", source_stage="4step")], loras={"4step": {"from_base": entry}})

    request = GenerationRequest("a red circle on the left on a white background", seed=3, steps=4, width=128, height=128)
    plain = tmp_path / "plain"  # the base UNet as it is, without the base model's CFG (students have none)
    plain.mkdir()
    write_manifest(plain, "shapes", [Variant(4)])
    reference = torch.as_tensor(load_engine(str(plain), device="cpu", steps=[4]).generate([request])[0].image).float()
    for view in (lora_phases_model(tmp_path / "run", tmp_path / "a"), from_base_model(export, tmp_path / "b")):
        image = torch.as_tensor(load_engine(str(view), device="cpu", steps=[4]).generate([request])[0].image).float()
        assert (image - reference).abs().max() <= 2  # the base's picture (the views load fp32 UNet / LoRA onto fp16)

    with pytest.raises(StudioError, match="no stage saved"):
        lora_phases_model(tmp_path, tmp_path / "c")


def test_checkpoints_view_draws_the_student_as_each_kept_checkpoint_holds_it(tmp_path):
    """A tiny run: a 4-step stage of two full-UNet MSE steps (a checkpoint after each), then a 2-step LoRA stage.
    The last checkpoint of the 4-step stage must draw exactly what the stage's saved student draws, the first one
    something else; the LoRA phase's checkpoint (adapters only) is refused."""
    raw = tomllib.loads((ROOT / "distill" / "configs" / "tiny.toml").read_text())
    mse = {"objective": "mse", "params": "full", "steps": 2, "lr": 5e-4}
    raw["stages"] = [
        {"name": "4step", "teacher_steps": 8, "student_steps": 4, "phases": [mse]},
        {"name": "2step", "teacher_steps": 4, "student_steps": 2, "phases": [mse | {"params": "lora", "steps": 1, "lr": 1e-3}]},
    ]
    raw["train"].update(output_dir=str(tmp_path / "run"), checkpoint_every=1, keep_checkpoints=10)
    distill_train.train(parse_config(copy.deepcopy(raw)))

    models = resolve(Row("stage", f"checkpoints:{tmp_path / 'run'}", (4,)), tmp_path)
    assert [(label, step) for label, _, step in models] == [("stage@1", 1), ("stage@2", 2)]
    saved = tmp_path / "saved"
    saved.mkdir()
    write_manifest(saved, "tiny", [Variant(4, unet_dir=str(tmp_path / "run" / "stages" / "4step" / "unet"))])
    request = GenerationRequest("a red car", seed=3, steps=4, width=64, height=64)
    draw = lambda model: torch.as_tensor(load_engine(str(model), device="cpu", steps=[4]).generate([request])[0].image)
    first, last, stage = (draw(model) for model in (models[0][1], models[1][1], saved))
    assert torch.equal(last, stage)
    assert not torch.equal(first, last)

    with pytest.raises(StudioError, match="LoRA phase's adapters"):
        checkpoint_models(tmp_path / "run", (2,), tmp_path / "lora")
    with pytest.raises(StudioError, match="no kept checkpoint"):
        checkpoint_models(tmp_path / "run", (8,), tmp_path / "none")


def test_compare_cli_writes_one_labelled_table_with_intervals_and_paired_comparisons(tmp_path):
    out = tmp_path / "table.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "distill.shapes",
            "compare",
            "--row",
            "base=shapes:2,1",
            "--row",
            "again=shapes:1",
            "--json",
            str(out),
            "--paired",
            "base:1,again:1",
            "--paired",
            "base:1,base:2",
            "--prompts-per-group",
            "2",
            "--seeds",
            "2",
            "--bootstrap",
            "20",
            "--threads",
            "1",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["label"], r["steps"]) for r in rows] == [("base", 2), ("base", 1), ("again", 1)]
    quality = lambda row: {k: v for k, v in row["summary"].items() if k != "cpu_ms_per_image"}
    assert quality(rows[1]) == quality(rows[2])  # the same model, prompts and seeds: the same scores
    assert "| base | 2 |" in result.stdout and "| again | 1 |" in result.stdout and "single w/o background" in result.stdout
    for row in rows:
        for group in ("all", "single", "two", "held_out"):
            lo, hi = row[group]["frechet_ci95"]
            assert lo <= hi and set(row[group]["adherence_ci95"]) == {"all", "no_background"}
        assert row["single"]["adherence"]["no_background"] >= row["single"]["adherence"]["all"]

    same, steps = json.loads(out.read_text())["paired"]
    assert (same["a"], same["b"]) == ("base:1", "again:1")
    for kinds in same["adherence"].values():  # identical images: nothing differs, and nothing is uncertain
        for d in kinds.values():
            assert d == {"difference": 0.0, "difference_ci95": [0.0, 0.0], "only_a_right": 0, "only_b_right": 0, "mcnemar_p": 1.0}
    assert all(d == {"difference": 0.0, "difference_ci95": [0.0, 0.0]} for d in same["frechet"].values())
    for group, kinds in steps["adherence"].items():  # 2 steps minus 1 step: the rows' own adherence, image by image
        for kind, d in kinds.items():
            gain = rows[0][group]["adherence"][kind] - rows[1][group]["adherence"][kind]
            assert d["difference"] == pytest.approx(gain) == pytest.approx((d["only_b_right"] - d["only_a_right"]) / 4)  # 2 prompts x 2 seeds
            assert d["difference_ci95"][0] <= d["difference_ci95"][1]
    for group, d in steps["frechet"].items():
        assert d["difference"] == pytest.approx(rows[0][group]["frechet_distance"] - rows[1][group]["frechet_distance"])
        assert d["difference_ci95"][0] <= d["difference_ci95"][1]
    assert "base:2 minus base:1, same prompts and seeds" in result.stdout


def test_a_model_that_draws_at_another_size_than_the_judge_reads_is_refused_before_any_row_runs(tmp_path, capsys):
    """A model folder whose manifest lacks the world's resolution draws at SDXL's size: the judge would fail on every
    image after the rows before it spent their minutes. compare and backgrounds refuse it at once, naming both sizes."""
    from distill.shapes.__main__ import main

    out = tmp_path / "table.json"
    assert main(["compare", "--row", "base=shapes:2", "--row", "big=tiny:2", "--json", str(out), "--per-group", "2"]) == 2
    assert "tiny draws at 256 px but the judge reads 128 px images" in capsys.readouterr().err
    assert not out.exists()
    assert main(["backgrounds", "--model", "tiny", "--steps", "2", "--json", str(out)]) == 2
    assert "tiny draws at 256 px but the judge reads 128 px images" in capsys.readouterr().err
