import numpy as np
import pytest
import torch

from pipelines import GenerationRequest, InvalidModel, InvalidRequest, NonFiniteOutput, load_engine

SIZE = 64


def request(prompt="a cat", seed=0, steps=1, width=SIZE, height=SIZE):
    return GenerationRequest(prompt, seed=seed, steps=steps, width=width, height=height)


def test_a_batch_of_three_equals_three_single_requests(tiny_engine):
    batch = [request("a cat", 1), request("a dog", 2), request("a boat", 3)]
    together = tiny_engine.generate(batch, output_type="float")
    alone = [tiny_engine.generate([r], output_type="float")[0] for r in batch]
    assert [r.batch_size for r in together] == [3, 3, 3] and [r.batch_size for r in alone] == [1, 1, 1]
    for a, b in zip(together, alone):
        np.testing.assert_allclose(a.image, b.image, atol=1e-5)


def test_mixed_requests_are_grouped_by_steps_and_size_and_returned_in_order(tiny_engine):
    batch = [request(steps=1), request(steps=2), request(steps=1, width=SIZE + 8), request(steps=1, seed=5)]
    results = tiny_engine.generate(batch)
    assert [r.request for r in results] == batch
    assert [r.batch_size for r in results] == [2, 1, 1, 2]
    assert results[2].image.shape == (SIZE, SIZE + 8, 3)


def test_same_seed_is_deterministic_and_seeds_differ(tiny_engine):
    first, again, other = (tiny_engine.generate([request(seed=s)])[0].image for s in (11, 11, 12))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_initial_noise_depends_on_seed_and_size_only(tiny_engine):
    one = tiny_engine._initial_noise([request(seed=4, steps=1)])
    eight = tiny_engine._initial_noise([request(seed=4, steps=8)])
    alone = torch.randn(one.shape, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(one, eight)
    torch.testing.assert_close(one, alone)


def test_prompt_cache_hits_and_evicts():
    engine = load_engine("tiny", device="cpu", steps=[1])
    engine.prompt_cache.capacity = 2
    engine.generate([request("one"), request("two"), request("one", seed=1)])  # a repeat inside a batch encodes once
    assert (engine.prompt_cache.hits, engine.prompt_cache.misses) == (0, 2)
    (again,) = engine.generate([request("one")])
    assert (engine.prompt_cache.hits, engine.prompt_cache.misses) == (1, 2)
    assert "text" not in again.timings_ms and {"denoise", "decode", "total"} <= set(again.timings_ms)  # only stages that ran
    (new,) = engine.generate([request("three")])  # evicts "two", the least recently used
    assert "text" in new.timings_ms
    assert "one" in engine.prompt_cache and "three" in engine.prompt_cache and "two" not in engine.prompt_cache
    cached = engine.prompt_cache.get("one")[0].clone()
    fresh = engine.pipe.encode_prompt("one", device="cpu", do_classifier_free_guidance=False)[0][0]
    torch.testing.assert_close(cached, fresh)


def test_empty_prompt_is_a_valid_unconditional_request(tiny_engine):
    result = tiny_engine.generate([request("")])[0]
    assert result.image.shape == (SIZE, SIZE, 3) and result.dropped_tokens == 0


def test_long_prompt_is_truncated_and_says_how_much(tiny_engine):
    prompt = " ".join(["cat"] * 100)  # 100 word tokens + start/end = 102 tokens
    result = tiny_engine.generate([request(prompt)])[0]
    assert result.dropped_tokens == 102 - 77
    assert tiny_engine.count_tokens(prompt) == (77, 25)
    assert tiny_engine.count_tokens("a cat") == (4, 0)


def test_a_long_prompt_never_reaches_the_log(tiny_engine, log_records):
    """diffusers logs the truncated part of an over-long prompt (user text) from its SDXL pipeline module's logger;
    nothing of the prompt may reach that logger's handlers."""
    records = log_records("diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl")
    tiny_engine.generate([request("my private words " * 40)])
    assert not [r for r in records if "private" in r.getMessage()]


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(prompt=42), "prompt must be a string"),
        (dict(prompt=None), "prompt must be a string"),
        (dict(steps=3), "steps=3 is not loaded; this model offers 1, 2, 4, 8"),
        (dict(steps="2"), "steps must be an integer, got '2'"),
        (dict(width=70), "size 70x64 is not served; this server offers 64x64, 128x96"),
        (dict(height=8), "size 64x8 is not served"),
        (dict(width=128), "size 128x64 is not served"),  # a servable side, but not a declared size
        (dict(seed=-1), "seed must be an integer"),
        (dict(seed=2**64), "seed must be an integer"),
        (dict(seed=1.5), "seed must be an integer"),
    ],
)
def test_bad_requests_are_refused_clearly_by_validate(bad, message):
    engine = load_engine("tiny", device="cpu", steps=[1, 2, 4, 8], sizes=((64, 64), (128, 96)))
    with pytest.raises(InvalidRequest, match=message.replace("(", r"\(")):
        engine.validate(request(**bad))
    engine.validate(request(width=128, height=96))  # a declared size passes


def test_declared_sizes_are_checked_against_what_the_model_can_render():
    with pytest.raises(InvalidModel, match="size 1004x64 is not servable: both sides must be multiples of 8 between 64 and 1024"):
        load_engine("tiny", device="cpu", steps=[1], sizes=((1004, 64),))
    assert load_engine("tiny", device="cpu", steps=[1]).sizes == ((256, 256),)  # the tiny model's own size by default


def test_eager_warms_every_batch_size_and_compiled_backends_pad_to_two_buckets():
    """Every batch size the engine will run is warmed: eager runs (and warms) 1..max_batch as they are, compile pads a
    partial batch to 1 or max_batch (tests/realtime/test_compiled_serving.py counts its graphs)."""
    eager = load_engine("tiny", device="cpu", steps=[1], max_batch=4)
    assert eager.batch_buckets == (1, 2, 3, 4) and not eager.pad_batches
    compiled = load_engine("tiny", device="cpu", steps=[1], max_batch=4, backend="compile", compiler="aot_eager", compile_cache=False)
    assert compiled.batch_buckets == (1, 4) and compiled.pad_batches


def test_unknown_decoder_and_unknown_variant_are_refused(tiny_engine):
    with pytest.raises(InvalidRequest, match="vae='huge' is not loaded"):
        tiny_engine.generate([request()], vae="huge")
    with pytest.raises(InvalidModel, match=r"offers 8, 4, 2, 1 \(live\) steps, not 3"):
        load_engine("tiny", device="cpu", steps=[3])


def test_nan_output_is_reported_not_returned_as_black():
    engine = load_engine("tiny", device="cpu", steps=[1])
    with torch.no_grad():
        engine.model.unets[1].conv_out.bias.fill_(float("nan"))
    with pytest.raises(NonFiniteOutput, match="NaN/Inf latents for 1 of 1"):
        engine.generate([request()])


def test_tiny_decoder_gives_an_image_of_the_same_size(tiny_engine):
    full, tiny = (tiny_engine.generate([request()], vae=v)[0].image for v in ("full", "tiny"))
    assert full.shape == tiny.shape == (SIZE, SIZE, 3)
    assert not np.array_equal(full, tiny)


def test_warmup_and_memory_report(tiny_engine):
    seconds = tiny_engine.warmup()
    assert seconds > 0 and tiny_engine.warmup_seconds == seconds
    memory = tiny_engine.memory()
    assert memory["unet_1+2+4+8step"] == sum(p.numel() * 4 for p in tiny_engine.pipe.unet.parameters())
    assert memory["parameters_total"] == sum(v for k, v in memory.items() if k != "parameters_total")
    assert "weights" not in memory  # one weight set: nothing to swap


def test_eager_warmup_meets_every_shape_and_every_variant_once(monkeypatch):
    """Every declared size × batch size × decoder runs before service (the shape is what grows an eager process), and
    every variant runs once; the slower variants do not run at every shape."""
    engine = load_engine("tiny", device="cpu", max_batch=3, sizes=((64, 64), (128, 64)), steps=(1, 2, 8))
    runs = []
    monkeypatch.setattr(engine, "generate", lambda requests, vae: runs.append((requests[0].steps, requests[0].width, requests[0].height, len(requests), vae)))
    engine.warmup(vaes=["full", "tiny"])
    shapes = {(w, h, n, vae) for w, h in ((64, 64), (128, 64)) for n in (1, 2, 3) for vae in ("full", "tiny")}
    assert {run[1:] for run in runs} == shapes and len(runs) == len(shapes) + 2
    assert sorted(steps for steps, *_ in runs if steps != 1) == [2, 8]


def test_decoders_in_bfloat16_draw_the_fp32_picture_and_leave_the_pipelines_vae_alone():
    """The shapes model's real weights: the bf16 decode is a faster rendering of the same picture (measured 61 dB PSNR
    on one decode), not another picture; the stock pipeline's VAE stays in the model's dtype."""
    fp32 = load_engine("shapes", device="cpu", steps=[1], preview_vae="tiny")
    bf16 = load_engine("shapes", device="cpu", steps=[1], preview_vae="tiny", decode_dtype="bfloat16")
    assert bf16.pipe.vae.dtype == torch.float32 and bf16.run_decode["full"].vae.dtype == torch.bfloat16
    assert bf16.run_decode["tiny"].vae.dtype == torch.bfloat16 and fp32.run_decode["full"].vae is fp32.pipe.vae
    for vae in ("full", "tiny"):
        requests = [GenerationRequest(p, seed=s, steps=1, width=128, height=128) for p in ("a red circle", "a blue star") for s in (0, 1)]
        a = np.stack([r.image for r in fp32.generate(requests, vae=vae, output_type="float")])
        b = np.stack([r.image for r in bf16.generate(requests, vae=vae, output_type="float")])
        psnr = 10 * np.log10(1 / np.mean((a - b) ** 2))
        assert 40 < psnr < 200, psnr  # bf16 rounding is visible to arithmetic (not bit-equal), invisible to the eye


def test_an_unknown_decode_dtype_is_refused():
    with pytest.raises(InvalidModel, match="decode_dtype must be one of float16, bfloat16, float32, got 'int8'"):
        load_engine("tiny", device="cpu", steps=[1], decode_dtype="int8")


def test_generate_calls_from_two_threads_take_turns_through_the_denoiser():
    """Denoise switches the shared UNet's LoRA adapters per variant, so two callers (the GPU worker and a Gradio
    handler on ZeroGPU) must not be inside it at once: the first caller waits there up to 1 s for a second one to
    arrive, which it only could if the engine let both in."""
    import threading

    engine = load_engine("tiny", device="cpu", steps=[1, 2], sizes=((SIZE, SIZE),))
    denoise, inside, most = engine.denoise, [], []
    second_arrived = threading.Event()

    def watched_denoise(*args, **kwargs):
        inside.append(1)
        most.append(len(inside))
        if len(inside) > 1:
            second_arrived.set()
        second_arrived.wait(1.0)
        try:
            return denoise(*args, **kwargs)
        finally:
            inside.pop()

    engine.denoise = watched_denoise
    threads = [threading.Thread(target=engine.generate, args=([request(steps=steps)],)) for steps in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most == [1, 1]
