"""Loading from local folders and manifests, LoRA variants hot-swapped on one UNet, and offline failures."""

import huggingface_hub
import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

from pipelines import GenerationRequest, WeightsUnavailable, load_engine, variants
from pipelines.architectures import tiny_components

SIZE = 64


def write_tiny_lora(folder, seed=0):
    """A LoRA on the tiny UNet with non-zero weights, saved the way diffusers saves LoRAs."""
    unet = tiny_components()["unet"]
    torch.manual_seed(seed)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False))
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionXLPipeline.save_lora_weights(folder, unet_lora_layers=layers, weight_name="lora.safetensors")
    return folder / "lora.safetensors"


@pytest.fixture(scope="module")
def lora_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lora_model")
    write_tiny_lora(folder)
    variants.write_manifest(folder, "tiny", [variants.Variant(1, "sample"), variants.Variant(2, lora_file="lora.safetensors")])
    return folder


def test_lora_variant_matches_stock_pipeline_with_load_lora_weights(lora_model):
    engine = load_engine(str(lora_model), device="cpu")
    assert engine.steps == (1, 2) and engine.model.adapters == {1: None, 2: "lightning_2step"}
    ours = engine.generate([GenerationRequest("a cat", seed=5, steps=2, width=SIZE, height=SIZE)], output_type="float")[0].image

    parts = tiny_components()
    parts.pop("vae_tiny")
    pipe = StableDiffusionXLPipeline(**parts)
    pipe.load_lora_weights(str(lora_model / "lora.safetensors"))
    pipe.scheduler = variants.Variant(2).scheduler(pipe.scheduler.config)
    stock = pipe(
        "a cat", num_inference_steps=2, guidance_scale=0.0, height=SIZE, width=SIZE, generator=torch.Generator().manual_seed(5), output_type="np"
    ).images[0]
    np.testing.assert_allclose(ours, stock, atol=1e-4)


def test_switching_between_lora_and_base_variants_does_not_leak_the_adapter(lora_model):
    engine = load_engine(str(lora_model), device="cpu")
    base_only = load_engine("tiny", device="cpu", steps=[1])
    one = GenerationRequest("a cat", seed=5, steps=1, width=SIZE, height=SIZE)
    two = GenerationRequest("a cat", seed=5, steps=2, width=SIZE, height=SIZE)
    first = engine.generate([one])[0].image
    engine.generate([two])
    after_lora = engine.generate([one])[0].image
    np.testing.assert_array_equal(first, after_lora)
    np.testing.assert_array_equal(first, base_only.generate([one])[0].image)


def test_full_unet_folder_variant_loads_and_is_used(tmp_path):
    unet = tiny_components(seed=1)["unet"]  # different weights from the base (seed 0)
    unet.save_pretrained(tmp_path / "unet_2step")
    variants.write_manifest(tmp_path, "tiny", [variants.Variant(2, unet_dir="unet_2step", source_stage="4->2")])
    engine = load_engine(str(tmp_path), device="cpu")
    loaded = engine.model.unets[2]
    assert loaded is engine.pipe.unet  # the one UNet module, holding the variant's weights
    assert engine.generate([GenerationRequest("x", steps=2, width=SIZE, height=SIZE)])[0].image.shape == (SIZE, SIZE, 3)
    torch.testing.assert_close(loaded.conv_in.weight, unet.conv_in.weight)
    assert not torch.equal(loaded.conv_in.weight, tiny_components()["unet"].conv_in.weight)


def test_manifest_naming_missing_weights_says_which(tmp_path):
    variants.write_manifest(tmp_path, "tiny", [variants.Variant(4, lora_file="missing.safetensors")])
    with pytest.raises(WeightsUnavailable, match="missing.safetensors do not exist"):
        load_engine(str(tmp_path), device="cpu")


@pytest.mark.parametrize(
    "model, repo, filename",
    [
        ("lightning", "ByteDance/SDXL-Lightning", "sdxl_lightning_1step_unet_x0.safetensors"),
        ("lightning-lora", "ByteDance/SDXL-Lightning", "sdxl_lightning_2step_lora.safetensors"),
    ],
)
def test_offline_without_cache_names_repo_file_and_remedy(monkeypatch, tmp_path, model, repo, filename):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(WeightsUnavailable) as error:
        load_engine(model, device="cpu")
    message = str(error.value)
    assert filename in message and repo in message
    assert "`hf download " in message and "--model shapes" in message and ".." not in message


def test_bare_unet_state_dict_variant_loads_on_the_base_config(tmp_path):
    """The Lightning full-UNet files are bare state dicts loaded onto the base UNet's config; same path, local file."""
    from safetensors.torch import save_file

    unet = tiny_components(seed=2)["unet"]
    save_file(unet.state_dict(), str(tmp_path / "unet_1step_x0.safetensors"))
    variants.write_manifest(tmp_path, "tiny", [variants.Variant(1, "sample", unet_file="unet_1step_x0.safetensors")])
    engine = load_engine(str(tmp_path), device="cpu")
    torch.testing.assert_close(engine.model.unets[1].conv_in.weight, unet.conv_in.weight)
    assert engine.schedules[1][0] == "sample"


def test_state_dict_for_another_architecture_is_refused(tmp_path):
    from safetensors.torch import save_file

    from pipelines import InvalidModel

    save_file({"not_a_unet.weight": torch.zeros(2)}, str(tmp_path / "wrong.safetensors"))
    variants.write_manifest(tmp_path, "tiny", [variants.Variant(2, unet_file="wrong.safetensors")])
    with pytest.raises(InvalidModel, match="not a UNet for this base"):
        load_engine(str(tmp_path), device="cpu")


def test_plain_diffusers_folder_loads_through_from_pretrained(tmp_path):
    parts = tiny_components(seed=3)
    parts.pop("vae_tiny")
    StableDiffusionXLPipeline(**parts).save_pretrained(tmp_path / "my-sdxl", safe_serialization=True)
    engine = load_engine(str(tmp_path / "my-sdxl"), device="cpu", steps=[2])
    assert engine.steps == (2,) and engine.model_name == "my-sdxl"
    torch.testing.assert_close(engine.pipe.unet.conv_in.weight, parts["unet"].conv_in.weight)
    image = engine.generate([GenerationRequest("a cat", steps=2, width=256, height=256)])[0].image
    assert image.shape == (256, 256, 3)


def test_default_model_falls_back_to_the_embedded_one_when_lightning_weights_are_missing(monkeypatch, tmp_path):
    from pipelines import startup

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(startup, "default_model", lambda device: ("lightning", None))  # as on a CUDA machine
    engine = load_engine(device="cpu", steps=[1])
    assert engine.model_name == "shapes"
    assert "SDXL-Lightning could not be loaded" in engine.notice and "sdxl_lightning_1step_unet_x0.safetensors" in engine.notice
    assert "coloured shapes" in engine.notice  # says what runs instead
    with pytest.raises(WeightsUnavailable):  # asked for by name, it is an error, not a silent substitution
        load_engine("lightning", device="cpu", steps=[1])


def test_default_falls_back_to_tiny_when_the_shapes_weights_are_missing_too(monkeypatch, tmp_path):
    from pipelines import variants

    monkeypatch.setattr(variants, "SHAPES_FOLDER", tmp_path / "no-shapes-here")
    engine = load_engine(device="cpu", steps=[1])
    assert engine.model_name == "tiny"
    assert "no-shapes-here" in engine.notice and "pictures are noise" in engine.notice
    with pytest.raises(WeightsUnavailable, match="no-shapes-here"):
        load_engine("shapes", device="cpu")


def test_lora_and_full_unet_variants_share_the_one_unet_module(tmp_path, lora_model):
    """A LoRA variant runs on the base weights (with its adapter), a full-UNet variant on its own weights copied in:
    each draws what a model holding only that variant draws, in whatever order they are asked for."""
    tiny_components(seed=1)["unet"].save_pretrained(tmp_path / "unet_4step")
    chosen = [variants.Variant(1, "sample"), variants.Variant(2, lora_file=str(lora_model / "lora.safetensors")), variants.Variant(4, unet_dir="unet_4step")]
    variants.write_manifest(tmp_path, "tiny", chosen)
    mixed = load_engine(str(tmp_path), device="cpu", weights="swap")
    only_full = tmp_path / "only_full"
    only_full.mkdir()
    (only_full / "unet_4step").symlink_to(tmp_path / "unet_4step")
    variants.write_manifest(only_full, "tiny", [variants.Variant(4, unet_dir="unet_4step")])
    alone = {2: load_engine(str(lora_model), device="cpu"), 4: load_engine(str(only_full), device="cpu"), 1: load_engine("tiny", device="cpu", steps=[1])}
    for steps in (4, 2, 1, 2, 4):
        request = GenerationRequest("a cat", seed=5, steps=steps, width=SIZE, height=SIZE)
        np.testing.assert_array_equal(mixed.generate([request])[0].image, alone[steps].generate([request])[0].image)
