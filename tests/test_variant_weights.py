"""One UNet module for every variant: swapping a variant's weights in place draws what a dedicated UNet draws, keeps
the parameters' storage (so a compiled graph never recompiles), and resident and swapped homes agree."""

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from PIL import Image
from torch._dynamo.utils import counters

from pipelines import GenerationRequest, backends, cli, load_engine, variants
from pipelines.architectures import tiny_components
from pipelines.variants import SHAPES_FOLDER

SHAPES_UNETS = {8: "unet", 4: "students/4step/unet", 2: "students/2step/unet", 1: "students/1step/unet"}  # 8: the base UNet, with CFG
SIZE = 64


def dedicated_unet(folder: str) -> torch.nn.Module:
    """The variant's UNet as its own module, laid out as the engine lays out its one UNet."""
    return backends.prepare(UNet2DConditionModel.from_pretrained(SHAPES_FOLDER / folder).eval(), "eager", torch.device("cpu"))


@pytest.mark.parametrize("weights", ["resident", "swap"])
def test_swapped_weights_draw_what_dedicated_unets_draw_bit_for_bit(monkeypatch, weights):
    engine = load_engine("shapes", device="cpu", steps=list(SHAPES_UNETS), weights=weights)
    storage = [p.data_ptr() for p in engine.pipe.unet.parameters()]
    request = lambda steps: GenerationRequest("a red circle on the left", seed=3, steps=steps, width=128, height=128)
    swapped = {steps: engine.generate([request(steps)], output_type="float")[0] for steps in (1, 4, 8, 2, 1)}
    assert [p.data_ptr() for p in engine.pipe.unet.parameters()] == storage  # the same storage throughout
    for steps, folder in SHAPES_UNETS.items():
        with monkeypatch.context() as patch:
            patch.setitem(engine.run_unet, steps, dedicated_unet(folder))
            expected = engine.generate([request(steps)], output_type="float")[0].image
        np.testing.assert_array_equal(swapped[steps].image, expected)
    assert "swap" in swapped[4].timings_ms and not np.array_equal(swapped[4].image, swapped[2].image)


@pytest.mark.parametrize("weights", ["resident", "swap"])
def test_the_memory_report_says_where_each_variants_weights_live(weights):
    engine = load_engine("shapes", device="cpu", steps=[1, 2, 4, 8], weights=weights)
    report = engine.memory()
    unet_bytes = report["unet_1+2+4+8step"]
    # Weight sets: the base UNet (8 steps) and three students; the live 2-step set sits in the module, its home on the host.
    assert report["weights"]["homes"] == {"1": weights, "2": "swap", "4": weights, "8": weights}
    copies = {"resident": (3, 1), "swap": (0, 4)}[weights]
    assert (report["weights"]["device_copies_bytes"], report["weights"]["host_copies_bytes"]) == (copies[0] * unet_bytes, copies[1] * unet_bytes)
    assert report["unet_device_copies"] == copies[0] * unet_bytes
    assert report["parameters_total"] == sum(v for k, v in report.items() if k not in ("parameters_total", "weights"))


def test_a_call_across_variants_swaps_through_them_and_leaves_the_live_weights_loaded():
    engine = load_engine("shapes", device="cpu", steps=[1, 2, 4])
    live = engine.model.weights.steps_to_set[engine.live_steps]
    assert engine.live_steps == 2 and engine.model.weights.current == live
    results = engine.generate([GenerationRequest("a blue star", seed=1, steps=s, width=128, height=128) for s in (4, 2, 1)])
    assert ["swap" in r.timings_ms for r in results] == [True, True, True]  # 2 -> 4 -> 2 -> 1: each call reports its swap stage
    assert engine.model.weights.current == live
    weights = engine.memory()["weights"]
    assert weights["swaps"] == 4 and weights["last_swap_ms"] is not None  # and 1 -> 2 at the end


def write_tiny_variants(folder):
    """A tiny model whose 2- and 4-step variants bring their own UNets (other seeds than the base's)."""
    for steps, seed in ((2, 1), (4, 2)):
        tiny_components(seed=seed)["unet"].save_pretrained(folder / f"unet_{steps}step")
    chosen = [variants.Variant(1, "sample"), variants.Variant(2, unet_dir="unet_2step"), variants.Variant(4, unet_dir="unet_4step")]
    variants.write_manifest(folder, "tiny", chosen, live_steps=2)
    return folder


def test_swapping_weights_never_recompiles_the_compiled_unet(tmp_path):
    folder = write_tiny_variants(tmp_path)
    torch._dynamo.reset()
    compiled = load_engine(
        str(folder), device="cpu", backend="compile", compiler="aot_eager", compile_cache=False, weights="swap", sizes=((SIZE, SIZE),), max_batch=1
    )
    compiled.warmup(vaes=["tiny"])
    graphs, compiles = counters["stats"]["unique_graphs"], counters["aot_autograd"]["total"]
    assert graphs > 0
    eager = load_engine(str(folder), device="cpu")
    images = {}
    for steps in (4, 1, 2, 4, 2, 1):
        request = GenerationRequest("a cat", seed=2, steps=steps, width=SIZE, height=SIZE)
        images[steps] = compiled.generate([request], vae="tiny", output_type="float")[0].image
        np.testing.assert_allclose(images[steps], eager.generate([request], vae="tiny", output_type="float")[0].image, atol=1e-5)
    assert (counters["stats"]["unique_graphs"], counters["aot_autograd"]["total"]) == (graphs, compiles)  # nothing compiled after warm-up
    assert compiled.memory()["weights"]["swaps"] >= 5 and not np.array_equal(images[2], images[4])  # the swaps did change the weights


@pytest.mark.parametrize("weights", ["resident", "swap"])
def test_generate_from_the_command_line_with_either_placement_draws_the_same_png(tmp_path, weights):
    out = tmp_path / f"{weights}.png"
    argv = ["generate", "a green square", "--model", "shapes", "--steps", "4", "--seed", "5", "--weights", weights, "--out", str(out)]
    assert cli.main(argv) == 0
    reference = tmp_path / "default.png"
    assert cli.main(argv[:-4] + ["--out", str(reference)]) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(reference)))
