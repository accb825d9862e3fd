"""Side-by-side benchmark: the stock diffusers recipe and the engine, on the same weights, in the same run.

For every (backend, steps, batch, decoder) it reports medians after warm-up: the stock call
`pipe(prompts, num_inference_steps=n, guidance_scale=0)` with PIL output, the engine's per-stage times, the ratio,
images/s, and UNet/decoder TFLOP/s against the dense-matmul peak measured on this device in this run. Every
repetition uses a new prompt, so text encoding is paid as it is on a real keystroke.
"""

import itertools
import json
import statistics
import time
from pathlib import Path

import torch
from diffusers import StableDiffusionXLPipeline

from .conditioning import random_conditioning
from .flops import count_flops, measured_peak_tflops
from .requests import GenerationRequest
from .startup import load_engine

PROMPT = "a photograph of an astronaut riding a horse on the moon, detailed, 8k"
_PROMPT_IDS = itertools.count()  # every timed call gets prompts never seen before: no cache hits


def median_ms(fn, repeats: int, warmup: int, device: torch.device) -> float:
    """Median wall time of fn() in ms after `warmup` untimed calls; CUDA events on a GPU."""
    for i in range(warmup):
        fn(i)
    times = []
    for i in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(warmup + i)
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
        else:
            begin = time.perf_counter()
            fn(warmup + i)
            times.append((time.perf_counter() - begin) * 1000)
    return statistics.median(times)


def stock_pipeline(engine, steps: int) -> StableDiffusionXLPipeline:
    """The model-card recipe on the engine's own weights: trailing Euler for this variant, eager modules in PyTorch's
    default memory layout (loading them into an engine made them channels_last, which stock diffusers does not do)."""
    engine.hold(steps)  # the variant's weights in the shared UNet
    for module in (*engine.pipe.components.values(), engine.model.unets[steps]):
        if isinstance(module, torch.nn.Module):
            module.to(memory_format=torch.contiguous_format)
    pipe = StableDiffusionXLPipeline(
        **{**engine.pipe.components, "unet": engine.model.unets[steps], "scheduler": engine.model.spec.variant(steps).scheduler(engine.pipe.scheduler.config)}
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def bench_engine(engine, steps, batch, size, vae, repeats, warmup) -> dict:
    stages: dict[str, list[float]] = {}

    def run(i):
        requests = [GenerationRequest(f"{PROMPT} #{next(_PROMPT_IDS)}", seed=b, steps=steps, width=size, height=size) for b in range(batch)]
        for name, ms in engine.generate(requests, vae=vae)[0].timings_ms.items():
            stages.setdefault(name, []).append(ms)

    total = median_ms(run, repeats, warmup, engine.device)
    return {"engine_ms": total, "stages_ms": {k: statistics.median(v[warmup:]) for k, v in stages.items()}}


def bench_stock(engine, steps, batch, size, repeats, warmup) -> float:
    pipe = stock_pipeline(engine, steps)
    guidance = engine.model.spec.variant(steps).guidance_scale  # 0 for Lightning; the shapes base model's reference: 5

    def run(i):
        engine.hold(steps)  # the engine's rows may have swapped other weights in since
        generators = [torch.Generator("cpu").manual_seed(b) for b in range(batch)]
        pipe(
            [f"{PROMPT} #{next(_PROMPT_IDS)}" for b in range(batch)],
            num_inference_steps=steps,
            guidance_scale=guidance,
            height=size,
            width=size,
            generator=generators,
            output_type="pil",
        )

    return median_ms(run, repeats, warmup, engine.device)


def module_flops(engine, steps: int, batch: int, size: int, vae: str) -> tuple[int, int]:
    """FLOPs of one UNet forward and one decode at this batch and size (eager modules, random inputs)."""
    unet, device, dtype = engine.model.unets[steps], engine.device, engine.dtype
    latent = size // engine.pipe.vae_scale_factor
    x = torch.randn(batch, unet.config.in_channels, latent, latent, device=device, dtype=dtype)
    cond = random_conditioning(unet.config, batch, size, device, dtype)
    text = cond.pop("encoder_hidden_states")
    unet_flops = count_flops(unet, x, torch.tensor(999.0, device=device), encoder_hidden_states=text, added_cond_kwargs=cond)
    decoder = engine.pipe.vae if vae == "full" else engine.model.vae_tiny
    decode_flops = count_flops(decoder.decode, x.to(decoder.dtype))
    return unet_flops, decode_flops


def run_benchmark(model, device, size, steps_list, batches, backends, vaes, repeats=5, warmup=2, dtype=None, decode_dtype=None, log=print) -> dict:
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "model": model,
        "results": [],
        "warmup_s": {},
        "compile_cache_loaded": {},
    }
    load = dict(device=str(device), steps=steps_list, preview_vae="tiny" if "tiny" in vaes else None, dtype=dtype, check_finite=model != "random-sdxl")

    # The stock recipe gets its own eagerly loaded copy of the same weights: the engine's backends change modules
    # in place (channels_last, compiled graphs) and stock diffusers upcasts its VAE in place; neither may leak.
    stock = load_engine(model, backend="eager", **load)
    report["dtype"] = str(stock.dtype).removeprefix("torch.")
    report["decode_dtype"] = decode_dtype or report["dtype"]  # the engine's decoders; the stock recipe's are in dtype
    report["peak_tflops"] = measured_peak_tflops(device, stock.dtype)
    log(f"stock diffusers recipe on {report['device']} ...")
    stock_ms = {(s, b): bench_stock(stock, s, b, size, repeats, warmup) for s in steps_list for b in batches}
    flops = {(s, b, v): module_flops(stock, s, b, size, v) for s in steps_list for b in batches for v in vaes}
    del stock
    _free(device)

    for backend in backends:
        # A compiled engine pads a batch up to 1 or max_batch: the batches between are measured at the larger bucket.
        engine = load_engine(model, backend=backend, decode_dtype=decode_dtype, sizes=((size, size),), max_batch=max(batches), **load)
        log(f"[{backend}] warming up {len(steps_list)} variants x batch sizes {engine.batch_buckets} x {len(vaes)} decoders at {size}px ...")
        report["warmup_s"][backend] = engine.warmup(vaes)
        report["compile_cache_loaded"][backend] = engine.compile_cache_loaded
        for steps in steps_list:
            for batch in batches:
                for vae in vaes:
                    unet_flops, decode_flops = flops[(steps, batch, vae)]
                    row = bench_engine(engine, steps, batch, size, vae, repeats, warmup)
                    passes = steps * (2 if steps in engine.guidance else 1)  # CFG runs every step on a doubled batch
                    unet_tflops = unet_flops * passes / (row["stages_ms"]["denoise"] / 1000) / 1e12
                    decode_tflops = decode_flops / (row["stages_ms"]["decode"] / 1000) / 1e12
                    stock_row = stock_ms[(steps, batch)]
                    row.update(
                        model=model,
                        size=size,
                        steps=steps,
                        batch=batch,
                        backend=backend,
                        vae=vae,
                        stock_ms=stock_row,
                        speedup=stock_row / row["engine_ms"],
                        images_per_s=batch / row["engine_ms"] * 1000,
                        unet_tflops=unet_tflops,
                        decode_tflops=decode_tflops,
                        unet_peak_fraction=unet_tflops / report["peak_tflops"],
                        decode_peak_fraction=decode_tflops / report["peak_tflops"],
                        unet_tflop=unet_flops / 1e12,
                        decode_tflop=decode_flops / 1e12,
                    )
                    report["results"].append(row)
                    log(format_row(row))
        report.setdefault("memory", {})[backend] = engine.memory()
        del engine
        _free(device)
    return report


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


HEADER = (
    f"{'backend':8} {'vae':4} {'steps':>5} {'batch':>5} {'stock ms':>9} {'engine ms':>9} {'speedup':>7} {'img/s':>7} "
    f"{'text':>6} {'denoise':>8} {'decode':>7} {'UNet TF/s':>9} {'dec TF/s':>8}"
)


def format_row(r: dict) -> str:
    s = r["stages_ms"]
    return (
        f"{r['backend']:8} {r['vae']:4} {r['steps']:5d} {r['batch']:5d} {r['stock_ms']:9.1f} {r['engine_ms']:9.1f} "
        f"{r['speedup']:6.2f}x {r['images_per_s']:7.2f} {s['text']:6.1f} {s['denoise']:8.1f} {s['decode']:7.1f} "
        f"{r['unet_tflops']:9.2f} {r['decode_tflops']:8.2f}"
    )


def print_table(report: dict, log=print) -> None:
    log(
        f"\n{report['model']} on {report['device']}, torch {report['torch']}, {report.get('dtype')} (decoders {report.get('decode_dtype')}); "
        f"measured matmul peak {report['peak_tflops']:.1f} TFLOP/s; warm-up s: " + ", ".join(f"{k} {v:.1f}" for k, v in report["warmup_s"].items())
    )
    log(HEADER)
    for row in report["results"]:
        log(format_row(row))


def write_json(report: dict, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
