"""Pre-training of the shapes world in miniature (every part, seconds): it learns, it ships a model the studio loads,
a real SIGKILL mid-run resumes to the uninterrupted weights, and a bad config is refused naming the key."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from distill.config import ConfigError
from distill.shapes import config as shapes_config
from distill.shapes.pretrain import PARTS, pretrain

MINI = """
[world]
resolution = 64
train_scenes = 64
[judge]
steps = 4
batch_size = 8
eval_images = 16
[vae]
steps = 30
batch_size = 8
crop = 32
lr = 3e-3
[decoder]
steps = 4
batch_size = 4
[vae_tiny]
steps = 4
batch_size = 4
[text]
hidden_size = 16
intermediate_size = 32
[unet]
block_out_channels = [16, 32]
transformer_layers_per_block = [1, 1]
attention_head_dim = [2, 4]
steps = 40
batch_size = 8
lr = 3e-3
warmup_steps = 5
sample_every = 40
sample_steps = 2
[train]
output_dir = "{out}"
checkpoint_every = 10
log_every = 1
"""


def mini_config(tmp: Path, name: str = "run") -> Path:
    path = tmp / f"{name}.toml"
    path.write_text(MINI.replace("{out}", str(tmp / name)))
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("shapes")
    c = shapes_config.load(mini_config(tmp))
    return c, pretrain(c)


def _scalars(folder: Path, tag: str) -> list[float]:
    events = EventAccumulator(str(folder / "logs" / "shapes"))  # accelerate writes under the tracker's project name
    events.Reload()
    return [e.value for e in events.Scalars(tag)]


def test_every_part_finishes_with_its_report(finished):
    c, reports = finished
    assert set(reports) == set(PARTS)
    assert reports["vae"]["scaling_factor"] > 0 and np.isfinite(reports["vae"]["psnr"])
    assert reports["latents"]["count"] == 64
    assert set(reports["judge"]["held_out_accuracy"]) >= {"count", "colour", "shape"}
    assert (Path(c.train.output_dir) / "unet" / "samples" / "step-000040.png").is_file()  # the sample grid


def test_the_miniature_run_lowers_its_losses(finished):
    c, _ = finished
    out = Path(c.train.output_dir)
    for part, tag in (("vae", "vae/loss"), ("unet", "unet/loss")):
        losses = _scalars(out / part, tag)
        assert len(losses) == {"vae": c.vae.steps, "unet": c.unet.steps}[part]
        assert np.mean(losses[-8:]) < 0.8 * np.mean(losses[:8]), (part, losses)


def test_shipped_miniature_loads_in_the_engine_with_its_manifest(finished, tmp_path):
    from distill.shapes.ship import ship
    from pipelines import GenerationRequest, load_engine

    c, _ = finished
    out = ship(c, tmp_path / "model", judge_out=tmp_path / "judge.safetensors")
    assert (tmp_path / "judge.safetensors").is_file()
    assert all(f.dtype == torch.float16 for f in load_file(out / "unet" / "diffusion_pytorch_model.safetensors").values())
    engine = load_engine(str(out), device="cpu", preview_vae="tiny")
    assert engine.steps == (1, 2, 4, 8, 32) and engine.reference_steps == 32 and engine.guidance == {n: 5.0 for n in engine.steps}
    assert engine.default_size == 64 and "coloured shapes" in engine.description and engine.examples
    (result,) = engine.generate([GenerationRequest("a photo of a cat", seed=1, steps=2, width=64, height=64)])
    assert result.image.shape == (64, 64, 3)  # a prompt from outside the world still renders


def test_a_part_finished_with_another_config_is_refused_not_reused(finished):
    import dataclasses

    from distill.shapes.parts import StalePart, is_done

    c, _ = finished
    assert is_done(c, "vae_tiny")
    changed = dataclasses.replace(c, decoder=dataclasses.replace(c.decoder, steps=5))  # vae_tiny learned from that decoder
    with pytest.raises(StalePart, match=r"decoder\.steps"):
        is_done(changed, "vae_tiny")
    assert is_done(changed, "unet")  # the UNet does not depend on the decoder


def test_a_config_with_an_unknown_key_is_refused_naming_it(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[unet]\nstep = 10\n")
    with pytest.raises(ConfigError, match=r"^unet\.step: unknown key"):
        shapes_config.load(path)
    result = subprocess.run([sys.executable, "-m", "distill.shapes", "pretrain", "--config", str(path)], capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "error: unet.step: unknown key (known: " + result.stderr.split("(known: ")[1].strip()
    ]


def test_sigkill_mid_unet_training_then_resume_gives_the_uninterrupted_weights(finished, tmp_path):
    c_done, _ = finished
    config = mini_config(tmp_path, "killed")
    # The parts before the UNet, as the uninterrupted run finished them: the killed run skips them as done (the
    # resume path's own check) and starts on the UNet, where it is killed. Each part's weights depend only on
    # (seed, part), so the UNet's do not depend on which process trained the parts before it.
    for part in PARTS[: PARTS.index("unet")]:
        shutil.copytree(Path(c_done.train.output_dir) / part / "final", tmp_path / "killed" / part / "final")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    command = [sys.executable, "-m", "distill.shapes", "pretrain", "--config", str(config)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = tmp_path / "killed" / "unet" / "checkpoints" / "latest"
    deadline = time.time() + 240
    while not latest.is_file() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)  # somewhere after the first UNet checkpoint, wherever it happens to be
    process.wait()
    assert latest.is_file() and not (tmp_path / "killed" / "unet" / "final").exists()
    subprocess.run(command + ["--resume"], env=env, check=True, capture_output=True)
    resumed = load_file(tmp_path / "killed" / "unet" / "final" / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors")
    expected = load_file(Path(c_done.train.output_dir) / "unet" / "final" / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors")
    for key, value in expected.items():
        torch.testing.assert_close(resumed[key], value, rtol=0, atol=1e-6)


def test_ship_cli_to_another_folder_leaves_the_shipped_judge_alone(finished, tmp_path):
    from distill.shapes.__main__ import main
    from distill.shapes.ship import JUDGE_FILE

    c, _ = finished
    shipped_judge = JUDGE_FILE.read_bytes()
    config = Path(c.train.output_dir).with_suffix(".toml")
    assert main(["ship", "--config", str(config), "--out", str(tmp_path / "trial")]) == 0
    assert (tmp_path / "trial" / "studio_manifest.json").is_file()
    assert JUDGE_FILE.read_bytes() == shipped_judge  # a trial model never replaces the judge every benchmark uses
    assert main(["ship", "--config", str(config), "--out", str(tmp_path / "trial"), "--judge-out", str(tmp_path / "j.safetensors")]) == 0
    assert (tmp_path / "j.safetensors").read_bytes() == (Path(c.train.output_dir) / "judge" / "final" / "judge.safetensors").read_bytes()


def test_eval_cli_scores_a_shipped_model_and_writes_json_table_and_grid(finished, tmp_path):
    import json

    from distill.shapes.ship import ship

    c, _ = finished
    model = ship(c, tmp_path / "model", judge_out=tmp_path / "judge.safetensors")
    out = tmp_path / "eval.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "distill.shapes",
            "eval",
            "--model",
            str(model),
            "--steps",
            "2",
            "1",
            "--json",
            str(out),
            "--prompts-per-group",
            "2",
            "--seeds",
            "2",
            "--bootstrap",
            "20",
            "--judge",
            str(tmp_path / "judge.safetensors"),
            "--grid",
            str(tmp_path / "grid.png"),
            "--round-trip",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [r["steps"] for r in rows] == [2, 1, "autoencoder round trip"] and rows[0]["images"] == 3 * 2 * 2
    for key in ("single", "two", "held_out", "frechet", "frechet_floor", "sharpness", "diversity", "colour_bias", "count_errors", "cpu_ms_per_image"):
        assert key in rows[0]["summary"]
    assert "| model | steps |" in result.stdout
    from PIL import Image

    assert Image.open(tmp_path / "grid.png").size == (150 + 6 * 64, 3 * 64)  # a label strip, then 2 prompts per group


def test_offset_noise_shifts_each_sample_and_channel_by_one_constant():
    from distill.shapes.train_base import offset_noise

    noise = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    assert offset_noise(noise, 0.0, torch.Generator()) is noise
    shifted = offset_noise(noise, 0.1, torch.Generator().manual_seed(1))
    shift = shifted - noise
    torch.testing.assert_close(shift, shift[..., :1, :1].expand_as(shift))  # constant over H, W
    expected = 0.1 * torch.randn((3, 4, 1, 1), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(shift[..., :1, :1], expected)  # offset x N(0, 1) per (sample, channel)
    assert len(set(shift[..., 0, 0].flatten().tolist())) == 12


def test_a_fine_tune_imports_the_shipped_parts_and_continues_its_unet_with_the_text_encoders_frozen(finished, tmp_path):
    import dataclasses

    from diffusers import StableDiffusionXLPipeline

    from distill.shapes.pretrain import import_parts
    from distill.shapes.ship import ship

    c, _ = finished
    model = ship(c, tmp_path / "model", judge_out=tmp_path / "judge.safetensors")
    unet = dataclasses.replace(c.unet, steps=4, lr=1e-5, warmup_steps=1, sample_every=4, noise_offset=0.1, init_from=str(model), train_text_encoders=False)
    tuned = dataclasses.replace(c, unet=unet, train=dataclasses.replace(c.train, output_dir=str(tmp_path / "tuned")))

    assert import_parts(tuned, model, tmp_path / "judge.safetensors") == ["judge", "vae", "decoder", "vae_tiny"]
    assert import_parts(tuned, model, tmp_path / "judge.safetensors") == []  # finished parts stay as they are
    reports = pretrain(tuned)
    assert reports["vae"]["imported_from"] == str(model) and reports["judge"]["imported_from"] == str(tmp_path / "judge.safetensors")
    assert reports["latents"]["count"] == c.world.train_scenes

    before = StableDiffusionXLPipeline.from_pretrained(model, dtype=torch.float32, use_safetensors=True)
    after = StableDiffusionXLPipeline.from_pretrained(Path(tuned.train.output_dir) / "unet" / "final" / "pipeline", use_safetensors=True)
    for name in ("text_encoder", "text_encoder_2"):  # frozen: the shipped students' conditioning is unchanged
        for p, q in zip(getattr(before, name).parameters(), getattr(after, name).parameters(), strict=True):
            assert torch.equal(p, q), name
    moved = [(q - p).norm() / p.norm() for p, q in zip(before.unet.parameters(), after.unet.parameters(), strict=True) if p.norm() > 0]
    assert max(moved) > 0  # it trained
    assert max(moved) < 0.05  # from the shipped UNet's weights, not fresh ones
