import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from pipelines.cli import main


def test_generate_writes_a_png_with_its_metadata(tmp_path, capsys):
    out = tmp_path / "fox.png"
    assert main(["generate", "a red fox in snow", "--model", "tiny", "--steps", "2", "--seed", "3", "--size", "64", "--out", str(out)]) == 0
    image = Image.open(out)
    assert image.size == (64, 64) and image.mode == "RGB"
    assert {k: image.text[k] for k in ("prompt", "seed", "steps", "model")} == {"prompt": "a red fox in snow", "seed": "3", "steps": "2", "model": "tiny"}
    assert f"wrote {out}" in capsys.readouterr().out


def test_generate_reports_truncation(tmp_path, capsys):
    assert main(["generate", "cat " * 90, "--model", "tiny", "--size", "64", "--out", str(tmp_path / "a.png")]) == 0
    assert "15 tokens were cut off" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--steps", "3"], "--steps 3: the tiny model offers 8, 4, 2, 1 (live)"),
        (["--size", "100"], "--size 100: the tiny model draws sides that are multiples of 8 from 64 to 1024 px"),
        (["--width", "2048"], "--width 2048: the tiny model"),
        (["--seed", "-4"], "seed must be an integer"),
        (["--model", "no/such/folder"], "unknown model 'no/such/folder'"),
        (["--out", "picture.gif"], "--out picture.gif: name a .png, .jpg or .webp file, or an existing folder"),
        (["--out", "no/such/folder/"], "--out no/such/folder/: no such folder"),
        (["--out", "x" * 100 + ".gif"], "--out " + "x" * 63 + "…: name"),
    ],
)
def test_bad_input_is_one_clear_line_and_exit_code_2(tmp_path, capsys, argv, message):
    code = main(["generate", "x", "--model", "tiny", "--out", str(tmp_path / "x.png"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "x.png").exists()


def test_mistakes_are_answered_before_torch_is_imported(tmp_path):
    """Arguments, model names, step counts, sizes and --out are checked from the manifest alone: no model loads."""
    script = (
        "import sys; from pipelines.cli import main\n"
        "for argv in (['--model', 'nosuch'], ['--model', 'shapes', '--steps', '3'], ['--model', 'shapes', '--size', '100'], ['--out', 'x.gif'],\n"
        "             ['--steps', '3'], ['--size', '100']):  # the last two: the default model, whichever it turns out to be\n"
        "    assert main(['generate', 'x', *argv]) == 2\n"
        "print('torch' in sys.modules, 'diffusers' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path, env=_here_first())
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False"]
    assert done.stderr.count("\n") == 6 and "Traceback" not in done.stderr  # one line each


def test_the_early_checks_know_every_model_the_default_can_turn_out_to_be():
    from pipelines import startup
    from pipelines.cli import DEFAULT_CANDIDATES

    chain = {"lightning", *startup.FALLBACKS, *(model for model, _ in startup.FALLBACKS.values())}
    assert set(DEFAULT_CANDIDATES) == chain and startup.default_model(torch.device("cpu"))[0] in chain


def _here_first() -> dict:
    """The environment for a subprocess run elsewhere that must import this checkout's packages."""
    return {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


def test_without_steps_the_model_draws_with_its_live_variant_into_a_folder(tmp_path, capsys):
    assert main(["generate", "a red circle on the left on a white background", "--model", "shapes", "--out", str(tmp_path)]) == 0
    image = Image.open(tmp_path / "out.png")
    assert image.text["steps"] == "2" and image.text["model"] == "shapes"  # the manifest's live_steps, not the fewest (1)
    assert "2 step(s) (live)" in capsys.readouterr().out


def test_offline_lightning_is_a_message_not_a_stack_trace(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "pipelines", "generate", "x", "--model", "lightning", "--device", "cpu"], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 2
    assert "sdxl_lightning_1step_unet_x0.safetensors from ByteDance/SDXL-Lightning" in done.stderr
    assert "Traceback" not in done.stderr


def test_without_a_network_lightning_says_so_without_huggingface_hubs_retries(tmp_path):
    """HF_HUB_OFFLINE unset and the hub unreachable (a closed local port stands in for a dead network): the cache is
    checked, one connection attempt fails, and the answer names the file and why, not a retry storm (~30 s)."""
    env = {"HF_HOME": str(tmp_path), "HF_ENDPOINT": "http://127.0.0.1:9", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "pipelines", "generate", "x", "--model", "lightning", "--device", "cpu"], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    expected = "sdxl_lightning_1step_unet_x0.safetensors from ByteDance/SDXL-Lightning: it is not in the Hugging Face cache and 127.0.0.1 cannot be reached"
    assert expected in done.stderr


def test_help_explains_models_and_examples(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    text = capsys.readouterr().out
    assert "lightning-lora" in text and "examples:" in text and "--out" in text
    assert "shapes offers 32 (reference), 8, 4, 2 (live), 1" in " ".join(text.split())  # from its manifest


def test_bench_on_tiny_writes_the_documented_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert (
        main(
            [
                "bench",
                "--model",
                "tiny",
                "--device",
                "cpu",
                "--size",
                "64",
                "--steps",
                "1",
                "2",
                "--batch",
                "1",
                "2",
                "--vae",
                "full",
                "tiny",
                "--repeats",
                "1",
                "--warmup",
                "1",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads(out.read_text())
    assert set(report) >= {"device", "torch", "results"}
    assert len(report["results"]) == 2 * 2 * 2
    keys = {"model", "size", "steps", "batch", "backend", "vae", "stock_ms", "engine_ms", "speedup", "stages_ms"}
    for row in report["results"]:
        assert keys <= set(row)
        assert set(row["stages_ms"]) == {"text", "denoise", "decode", "total"}
        assert row["speedup"] == pytest.approx(row["stock_ms"] / row["engine_ms"])
        assert row["unet_tflop"] > 0 and row["decode_tflop"] > 0
    assert {(r["steps"], r["batch"], r["vae"]) for r in report["results"]} == {(s, b, v) for s in (1, 2) for b in (1, 2) for v in ("full", "tiny")}
    assert "speedup" in capsys.readouterr().out


def test_a_plain_diffusers_folder_passes_the_early_checks_with_the_steps_asked_for(tmp_path):
    """Such a folder says nothing about its step count: it serves the steps asked for (as pipelines.variants.resolve)."""
    from argparse import Namespace

    from pipelines.cli import candidate_models, check_steps_and_sizes

    (tmp_path / "model_index.json").write_text("{}")
    what, specs = candidate_models(str(tmp_path), None, 2)
    check_steps_and_sizes(Namespace(steps=2, size=1024, width=None, height=None), what, specs)  # no error
    assert [v.steps for v in specs[0].variants] == [2]
