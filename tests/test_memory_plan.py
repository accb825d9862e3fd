"""The memory plan: exact weight bytes from the real configs (no weights loaded), placements that fit the common cards,
a one-line way out when a plan cannot fit, and the JSON deployment scripts read."""

import json

import pytest
import torch

from pipelines import cli, load_engine, memory_plan, variants
from pipelines.memory_plan import GIB


@pytest.fixture(scope="module")
def lightning():
    """SDXL-Lightning's footprint at the studio's defaults (batch 4, 1024², fp16, full VAE preview): counted once."""
    return memory_plan.measure(variants.resolve("lightning"))


def placements(plan) -> dict[int, str]:
    return {v["steps"]: v["placement"] for v in plan.variants}


def test_sdxl_weight_bytes_are_the_published_parameter_counts_in_fp16(lightning):
    # UNet 2.567 B, text encoders 0.123 B + 0.695 B, VAE 0.084 B parameters (docs/benchmarks.md §4), 2 bytes each.
    assert lightning.components["unet"] == 2 * 2_567_463_684
    assert round(lightning.components["text_encoder"] / 2e9, 3) == 0.123 and round(lightning.components["text_encoder_2"] / 2e9, 3) == 0.695
    assert round(lightning.components["vae"] / 2e9, 3) == 0.084


def test_lightning_fits_a_16_and_a_24_gb_card_with_the_live_variant_loaded_and_keeps_all_resident_on_80(lightning):
    for vram, expected in ((16, {1: "resident", 2: "swap", 4: "swap", 8: "swap"}), (24, {1: "resident", 2: "resident", 4: "swap", 8: "swap"})):
        plan = memory_plan.make_plan(lightning, vram * GIB)
        assert plan.fits and plan.predicted_peak_bytes <= plan.budget_bytes < vram * GIB
        assert placements(plan) == expected and [v["steps"] for v in plan.variants if v["live"]] == [1]
    roomy = memory_plan.make_plan(lightning, 80 * GIB)
    assert roomy.fits and set(placements(roomy).values()) == {"resident"}
    # the device holds the one UNet module and three copies: four UNets, as four dedicated UNets did
    assert roomy.predicted_peak_bytes - memory_plan.make_plan(lightning, 16 * GIB).predicted_peak_bytes == 3 * lightning.components["unet"]


def test_a_plan_that_cannot_fit_says_what_to_change_in_one_line(lightning):
    plan = memory_plan.make_plan(lightning, 12 * GIB)
    assert not plan.fits
    assert "\n" not in plan.advice and plan.advice.startswith("does not fit: ")
    assert "--max-batch 1" in plan.advice and "--preview-vae tiny" in plan.advice
    forced = memory_plan.make_plan(lightning, 24 * GIB, weights="resident")
    assert not forced.fits and "--weights swap" in forced.advice


def test_the_allowance_is_the_measured_stock_peak_less_this_models_count_of_that_call(lightning):
    """The stock call of docs/benchmarks.md §4 (fp16 UNet and text encoders, the VAE upcast to fp32, 1024², batch 1) peaked at
    11.7 GiB; the allowance added to every plan is what this module's count of that same call leaves out."""
    build = memory_plan.component_builders(variants.resolve("random-sdxl"))
    weights = sum(lightning.components[name] for name in ("unet", "text_encoder", "text_encoder_2")) + memory_plan.weight_bytes(build["vae"], torch.float32)
    decode = memory_plan.activation_bytes(build["vae"], torch.float32, memory_plan.decode_run(1, 1024, 1024))
    assert decode > lightning.activations["unet_batch4"]  # the fp32 decode is that call's largest stage (its UNet ran at batch 1)
    assert abs(memory_plan.ANCHOR_STOCK_PEAK_BYTES - weights - decode - memory_plan.ALLOWANCE_BYTES) < 0.01 * GIB


def test_the_shapes_plan_counts_the_bytes_the_loaded_model_holds():
    engine = load_engine("shapes", device="cpu", dtype="float32")
    footprint = memory_plan.measure(engine.model.spec, torch.float32, sizes=[(128, 128)])
    memory = engine.memory()
    for name in ("unet", "text_encoder", "text_encoder_2", "vae"):
        assert footprint.components[name] == memory[name if name != "unet" else "unet_1+2+4+8+32step"]
    plan = memory_plan.make_plan(footprint, 4 * GIB)
    assert plan.fits and plan.placement() == {
        "students/1step/unet": "resident",
        "students/2step/unet": "resident",
        "students/4step/unet": "resident",
        "base": "resident",
    }


def test_plan_from_the_command_line_writes_the_json_deployment_scripts_read(tmp_path, capsys):
    path = tmp_path / "plan.json"
    assert cli.main(["plan", "--model", "tiny", "--vram", "4", "--max-batch", "2", "--sizes", "256", "320x192", "--json", str(path)]) == 0
    plan = json.loads(path.read_text())
    assert plan["fits"] is True and plan["vram_bytes"] == 4 * GIB and 0 < plan["predicted_peak_bytes"] <= plan["budget_bytes"]
    assert [(v["steps"], v["placement"]) for v in plan["variants"]] == [(1, "resident"), (2, "resident"), (4, "resident"), (8, "resident")]
    assert plan["sizes"] == [[256, 256], [320, 192]] and "unet_batch2" in plan["activations"]
    assert "memory plan for tiny" in capsys.readouterr().out
    assert cli.main(["plan", "--model", "tiny", "--vram", "1"]) == 1
    assert "does not fit" in capsys.readouterr().out


def test_lora_variants_count_their_adapters_and_have_no_copies_to_swap(tmp_path):
    from safetensors.torch import save_file

    save_file({"unet.down.lora_A.weight": torch.zeros(4, 32), "unet.down.lora_B.weight": torch.zeros(32, 4)}, str(tmp_path / "lora.safetensors"))
    variants.write_manifest(tmp_path, "tiny", [variants.Variant(1, "sample"), variants.Variant(2, lora_file="lora.safetensors")])
    footprint = memory_plan.measure(variants.resolve(str(tmp_path)), sizes=[(256, 256)])
    assert footprint.components["lora_2step"] == 2 * 4 * 32 * 2  # two 4x32 matrices in fp16, read from the file's header
    plan = memory_plan.make_plan(footprint, GIB)
    assert not plan.fits and plan.host_bytes == 0 and "--weights swap" not in plan.advice
