"""Data: centre crop + resize with SDXL micro-conditioning, bad samples skipped-and-counted or stopped with their
path, folders and tar shards alike, and caches that hold exactly what training reads."""

import io
import tarfile

import pytest
import torch
from PIL import Image

from distill.config import parse_config
from distill.data import DataError, LatentCache, Skipped, folder_samples, precompute, prepare_image, tar_samples
from pipelines.architectures import tiny_components


def jpeg(w, h, colour=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (w, h), colour).save(buffer, "JPEG")
    return buffer.getvalue()


def make_folder(root):
    root.mkdir()
    (root / "a.jpg").write_bytes(jpeg(96, 64))
    (root / "a.txt").write_text("a red square")
    (root / "b.png").write_bytes(jpeg(64, 64))  # a JPEG named .png still decodes: content decides
    (root / "b.txt").write_text("another one")
    (root / "no_caption.jpg").write_bytes(jpeg(64, 64))
    (root / "broken.jpg").write_bytes(b"not an image at all")
    (root / "broken.txt").write_text("caption of a broken file")
    return root


def config(source, path, on_bad="skip", **data):
    return parse_config(
        {
            "model": {"base": "tiny"},
            "data": {"source": source, "path": str(path), "on_bad": on_bad, "resolution": 32, **data},
            "train": {"mixed_precision": "no"},
            "stages": [{"name": "s", "teacher_steps": 4, "student_steps": 2, "phases": [{"objective": "mse", "params": "full", "steps": 1, "lr": 1e-4}]}],
        }
    )


@pytest.fixture(scope="module")
def components():
    return tiny_components(0)


def test_centre_crop_and_resize_record_sdxl_micro_conditioning():
    image = Image.new("RGB", (80, 40), (0, 0, 255))
    image.paste((255, 0, 0), (30, 0, 50, 40))  # a red band in the middle of a wide image
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    pixels, micro = prepare_image(buffer.getvalue(), 16)
    assert pixels.shape == (3, 16, 16) and pixels.min() >= -1 and pixels.max() <= 1
    assert micro == (40, 80, 0, 8)  # (orig_h, orig_w, crop_top, crop_left) after resizing to 32x16
    assert pixels[0, 8, 8] > 0.9 and pixels[2, 8, 8] < -0.9  # the centre of the crop is the red band
    assert pixels[2, 8, 0] > 0.9  # the crop's left edge is still blue


def test_folder_bad_samples_are_skipped_and_counted(tmp_path, components):
    folder = make_folder(tmp_path / "images")
    index = precompute(config("folder", folder), components, tmp_path / "cache", batch_size=2)
    assert index["count"] == 2 and index["skipped"] == 2
    assert index["skipped_reasons"] == {"missing caption": 1, "unreadable image (UnidentifiedImageError)": 1}
    cache = LatentCache(tmp_path / "cache")
    batch = cache.batch([1, 0, 1])
    assert batch["latents"].shape == (3, 4, 4, 4) and batch["encoder_hidden_states"].shape == (3, 77, 64)
    assert batch["text_embeds"].shape == (3, 32) and torch.equal(batch["latents"][0], batch["latents"][2])
    assert batch["time_ids"][1].tolist() == [64, 96, 0, 8, 32, 32]  # a.jpg: 96x64 resized to 48x32, centre crop
    assert torch.isfinite(batch["latents"]).all()


def test_folder_stop_mode_names_the_path(tmp_path, components):
    folder = make_folder(tmp_path / "images")
    with pytest.raises(DataError, match=r"broken\.jpg: unreadable image"):
        precompute(config("folder", folder, on_bad="stop"), components, tmp_path / "cache")
    assert not (tmp_path / "cache" / "index.json").exists()  # an interrupted cache never looks complete


def test_tar_shards_hold_the_same_pairs(tmp_path, components):
    shard = tmp_path / "data-000.tar"
    with tarfile.open(shard, "w") as tar:
        for name, payload in [("x.jpg", jpeg(64, 64)), ("x.txt", b"a cat"), ("y.jpg", jpeg(64, 64)), ("z.jpg", b"garbage"), ("z.txt", b"z")]:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    skipped = Skipped()
    found = [(s.name.split(":")[1], s.caption) for s in tar_samples(str(tmp_path / "*.tar"), skipped, "skip")]
    assert found == [("x", "a cat"), ("z", "z")] and skipped.reasons == {"missing caption": [f"{shard}:y"]}
    index = precompute(config("tar", tmp_path / "*.tar"), components, tmp_path / "cache")
    assert index["count"] == 1 and index["skipped"] == 2
    with pytest.raises(DataError, match=r"data-000\.tar:y: missing caption"):
        list(tar_samples(str(shard), Skipped(), "stop"))


def test_prompts_mode_has_the_teacher_generate_latents(tmp_path, components):
    c = config("prompts", "", prompts=["a cat", "a dog"], samples_per_prompt=2, generate_steps=2, shard_size=3)
    index = precompute(c, components, tmp_path / "cache", batch_size=1)
    assert [s["count"] for s in index["shards"]] == [3, 1]  # shards split at shard_size
    latents = LatentCache(tmp_path / "cache").batch([0, 1, 2])["latents"]
    assert torch.isfinite(latents).all() and not torch.allclose(latents[0], latents[1])  # different noise per sample


def test_missing_cache_says_how_to_build_it(tmp_path):
    with pytest.raises(DataError, match="python -m distill precompute"):
        LatentCache(tmp_path)


def test_folder_without_usable_samples_is_an_error(tmp_path, components):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no usable samples"):
        precompute(config("folder", tmp_path / "empty"), components, tmp_path / "cache")
    assert list(folder_samples(tmp_path / "empty", Skipped(), "skip")) == []


def test_precompute_cli_reports_counts(tmp_path, capsys):
    from distill import __main__ as cli

    folder = make_folder(tmp_path / "images")
    config_file = tmp_path / "plan.toml"
    config_file.write_text(f"""
[data]
source = "folder"
path = "{folder}"
resolution = 32
[model]
base = "tiny"
[train]
output_dir = "{tmp_path / "run"}"
mixed_precision = "no"
[[stages]]
name = "s"
teacher_steps = 4
student_steps = 2
  [[stages.phases]]
  objective = "mse"
  params = "full"
  steps = 1
  lr = 1e-4
""")
    cli.main(["precompute", "--config", str(config_file), "--device", "cpu"])
    out = capsys.readouterr().out
    assert f"cached 2 samples in 1 shard(s) under {tmp_path / 'run' / 'cache'}; skipped 2" in out
    assert len(LatentCache(tmp_path / "run" / "cache")) == 2
