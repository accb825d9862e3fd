"""The hot path: a model loaded once, serving many generation requests.

Per request the engine does only what must repeat: prompt embeddings come from a bounded LRU cache, initial noise
from a per-(seed, size) cache, and the denoising loop is a handful of UNet calls on static shapes. The math is
diffusers' EulerDiscreteScheduler with trailing spacing (pipelines.sampling); a parity test pins the output to
the stock StableDiffusionXLPipeline.
"""

import copy
import logging
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager

import torch

from . import backends, sampling
from .conditioning import TOKEN_WINDOW, time_ids
from .denoiser import Denoiser
from .errors import InvalidRequest, NonFiniteOutput
from .loading import LoadedModel
from .requests import GenerationRequest, GenerationResult, ServingLimits
from .sizes import Size

TRUNCATION_NOTICE = "The following part of your input was truncated"
log = logging.getLogger(__name__)


def drop_truncated_text(record: logging.LogRecord) -> bool:
    """A logging filter: diffusers logs the cut-off part of every over-long prompt (user text, twice per prompt) at
    warning level. Prompts stay out of server logs; the page already tells the user what was truncated."""
    return not str(record.msg).startswith(TRUNCATION_NOTICE)


class LRUCache:
    """A bounded mapping that forgets the least recently used entry; counts hits and misses."""

    def __init__(self, capacity: int):
        self.capacity, self.hits, self.misses = capacity, 0, 0
        self._items: OrderedDict = OrderedDict()

    def get(self, key):
        if key in self._items:
            self.hits += 1
            self._items.move_to_end(key)
            return self._items[key]
        self.misses += 1
        return None

    def put(self, key, value) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def __contains__(self, key) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)


class Timer:
    """Wall-clock milliseconds per stage; synchronises CUDA so a stage's kernels are counted in that stage."""

    def __init__(self, device: torch.device):
        self.device, self.ms = device, {}

    @contextmanager
    def stage(self, name: str):
        start = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.ms[name] = self.ms.get(name, 0.0) + (time.perf_counter() - start) * 1000


class Engine:
    def __init__(
        self,
        model: LoadedModel,
        backend: str = "eager",
        sizes: tuple[Size, ...] = ((1024, 1024),),
        default_size: int = 1024,
        max_batch: int = 1,
        notice: str | None = None,
        check_finite: bool = True,
        prompt_cache_size: int = 512,
        noise_cache_size: int = 64,
        compiler: str = "inductor",
        compile_cache=None,
        compile_cache_loaded: bool = False,
        decode_dtype: torch.dtype | None = None,
        placement: dict[str, str] | None = None,
        plan=None,
    ):
        self.model, self.backend, self.notice = model, backend, notice
        self.pipe, self.device, self.dtype = model.pipe, model.device, model.dtype
        self.default_size, self.check_finite = default_size, check_finite
        self.steps = tuple(sorted(model.unets))
        self.sizes = tuple(sizes)  # the declared sizes: warmed at start, the only ones a server accepts
        self.limits = ServingLimits(self.steps, self.sizes)
        # The batch sizes the engine runs, every one warmed at every declared size. Compiled graphs have static
        # shapes, so there a partial batch is padded up to a bucket, 1 or max_batch: two graphs per size instead of
        # one per batch size. Eager runs each batch size as it is and warms them all: on the CPU the first batch of a
        # new shape grows the process's memory (docs/benchmarks.md §2d), which must happen at start, not in service.
        self.pad_batches = backend != "eager"
        self.batch_buckets = buckets_up_to(max_batch) if self.pad_batches else tuple(range(1, max_batch + 1))
        # One generate call at a time: it swaps variant weights into the shared UNet and denoise switches LoRA
        # adapters, and a second caller (a Gradio handler beside the worker) must not switch them mid-call.
        self._lock = threading.Lock()
        self.model_name, self.description, self.examples = model.spec.name, model.spec.description, model.spec.examples
        # The variant the live stream types with: the model's choice if loaded, else the fewest steps.
        self.live_steps = model.spec.default_steps
        self.plan = plan  # the memory plan the weights were placed by (pipelines.memory_plan), when one was made
        self.reference_steps = model.spec.reference_steps if model.spec.reference_steps in self.steps else None
        self.guidance = {n: model.spec.variant(n).guidance_scale for n in self.steps if model.spec.variant(n).guided}
        self.labels = model.spec.labels()  # "reference", "live", "experimental" per step count, for the page and CLI
        self.adherence = {v.steps: v.adherence for v in model.spec.variants if v.adherence is not None}
        self.adherence_measure = model.spec.adherence_measure
        self.prompt_cache, self.noise_cache = LRUCache(prompt_cache_size), LRUCache(noise_cache_size)
        encoder_log = logging.getLogger(type(self.pipe).encode_prompt.__module__)  # where encode_prompt logs from
        if drop_truncated_text not in encoder_log.filters:
            encoder_log.addFilter(drop_truncated_text)
        self.warmup_seconds: float | None = None
        # Where torch.compile's artifacts are kept between runs (None: not kept), and whether this start found them.
        self.compile_cache, self.compile_cache_loaded = compile_cache, compile_cache_loaded
        alphas_bar = sampling.alphas_cumprod_from_config(self.pipe.scheduler.config)
        self.schedules = {}
        for steps in self.steps:
            variant = model.spec.variant(steps)
            timesteps, sigmas = sampling.trailing_schedule(steps, alphas_bar)
            guidance = variant.guidance_scale if variant.guided else None
            self.schedules[steps] = (variant.prediction_type, timesteps.to(self.device), sigmas, guidance)
        if backend != "eager":  # one graph per declared size and batch bucket of the one UNet module
            backends.allow_graphs(len(self.sizes) * len(self.batch_buckets))
        unet = backends.prepare(self.pipe.unet, backend, self.device, compiler)  # every variant runs on this one module
        self.run_unet = {steps: unet for steps in self.steps}
        if model.weights is not None:  # homes laid out like the prepared module's parameters, so a swap is a plain copy
            model.weights.arrange(placement or {})
        decoders = {"full": self.pipe.vae, "tiny": model.vae_tiny}
        self.run_decode = {
            name: backends.prepare(_Decoder(_in_dtype(vae, decode_dtype)), backend, self.device, compiler) for name, vae in decoders.items() if vae is not None
        }
        self.default_vae = "full"

    # ---- validation -------------------------------------------------------------------------------------------
    def validate(self, request: GenerationRequest) -> None:
        """Raise InvalidRequest with a message a user can act on; does no model work. Serving code asks this once
        per request, before queueing it; generate itself does not ask again."""
        if not isinstance(request, GenerationRequest):
            raise InvalidRequest(f"expected a GenerationRequest, got {type(request).__name__}")
        if not isinstance(request.prompt, str):
            raise InvalidRequest(f"prompt must be a string, got {type(request.prompt).__name__}")
        for name in ("steps", "seed", "width", "height"):
            if not _is_int(getattr(request, name)):
                raise InvalidRequest(f"{name} must be an integer, got {getattr(request, name)!r}")
        self.limits.check(request)

    def count_tokens(self, prompt: str) -> tuple[int, int]:
        """(tokens kept, tokens dropped) against the 77-token window, start and end tokens included."""
        count = len(self.pipe.tokenizer(prompt, truncation=False, verbose=False).input_ids)
        return min(count, TOKEN_WINDOW), max(0, count - TOKEN_WINDOW)

    # ---- generation -------------------------------------------------------------------------------------------
    def generate(self, requests: list[GenerationRequest], vae: str | None = None, output_type: str = "uint8") -> list[GenerationResult]:
        """Render every request; compatible ones (same steps and size) run as one batch, at most the largest batch
        bucket at a time. Results keep input order. Requests are not validated here (see validate)."""
        vae = vae or self.default_vae
        if vae not in self.run_decode:
            raise InvalidRequest(f"vae={vae!r} is not loaded; available: {', '.join(self.run_decode)}")
        groups: dict[tuple, list[int]] = {}
        for index, request in enumerate(requests):
            groups.setdefault(request.batch_key, []).append(index)
        largest = self.batch_buckets[-1] if self.pad_batches else len(requests)
        results: list[GenerationResult | None] = [None] * len(requests)
        with self._lock:  # weight swaps and adapter switches included
            for group in groups.values():
                for start in range(0, len(group), largest):
                    indices = group[start : start + largest]
                    for i, result in zip(indices, self._generate_batch([requests[i] for i in indices], vae, output_type)):
                        results[i] = result
            if len({r.steps for r in requests}) > 1:
                self.hold(self.live_steps)  # a call across variants (Compare) leaves the live weights loaded
        return results

    @torch.inference_mode()
    def _generate_batch(self, batch: list[GenerationRequest], vae: str, output_type: str) -> list[GenerationResult]:
        steps, width, height = batch[0].batch_key
        timer = Timer(self.device)
        start = time.perf_counter()
        served = len(batch)
        if self.pad_batches:  # pad with copies of the last request; their images are dropped below
            batch = batch + batch[-1:] * (bucket_for(served, self.batch_buckets) - served)
        cached = all(r.prompt in self.prompt_cache for r in batch)
        with timer.stage("text"):
            embeds, pooled = self._prompt_embeddings([r.prompt for r in batch])
        if cached:  # no encoder ran: timings list only the stages that did
            del timer.ms["text"]
        swap_ms = self.hold(steps)
        if swap_ms:  # only calls that swapped weights report (and feed /metrics) a "swap" stage
            timer.ms["swap"] = swap_ms
        with timer.stage("denoise"):
            latents = self.denoise(steps, self._initial_noise(batch), embeds, pooled, height, width)
        self._raise_if_nonfinite(latents, batch, "latents")
        with timer.stage("decode"):
            images = self.run_decode[vae](latents).float()
            self._raise_if_nonfinite(images, batch, "image")
            images = (images / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)
            images = (images * 255).round().to(torch.uint8) if output_type == "uint8" else images
            images = images.cpu().numpy()
        timer.ms["total"] = (time.perf_counter() - start) * 1000
        return [GenerationResult(r, image, dict(timer.ms), self.count_tokens(r.prompt)[1], served) for r, image in zip(batch[:served], images)]

    def hold(self, steps: int) -> float:
        """Load `steps`' weights into the shared UNet in place; -> milliseconds spent (0 when they are already there,
        or when the model has one weight set, the LoRA variants' adapters switching in denoise instead)."""
        return self.model.weights.use(steps) if self.model.weights is not None else 0.0

    def denoise(self, steps: int, noise: torch.Tensor, embeds, pooled, height: int, width: int) -> torch.Tensor:
        """Trailing Euler from pure noise to x0 with the variant's UNet (its weights already swapped in) (pipelines.sampling.sample_from_noise, the
        sampler distill validates with); latents stay fp32 between steps as in diffusers. A guided variant runs the
        unconditional half (zeroed embeddings, as SDXL's force_zeros_for_empty_prompt) and the conditional half as one
        doubled batch, like StableDiffusionXLPipeline."""
        prediction_type, timesteps, sigmas, guidance = self.schedules[steps]
        adapter = self.model.adapters[steps]
        if adapter is not None:
            self.pipe.enable_lora()
            self.pipe.set_adapters([adapter])
        elif any(self.model.adapters.values()):
            self.pipe.disable_lora()  # this variant is the bare base UNet that the LoRA variants share
        unet = self.run_unet[steps]

        def run_unet(*args, **kwargs):
            backends.step_begin(self.backend, self.device)  # one UNet call per step (CFG's halves are one batch)
            return unet(*args, **kwargs)

        cond = {"encoder_hidden_states": embeds, "text_embeds": pooled, "time_ids": time_ids(height, width, len(noise), self.device, self.dtype)}
        denoiser = Denoiser(run_unet, prediction_type, cond, guidance, dtype=self.dtype)
        return sampling.sample_from_noise(denoiser, noise, timesteps, sigmas)

    def _prompt_embeddings(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Both encoders' penultimate states (concatenated) and the pooled projection, one encoder pass per new prompt."""
        found = {p: self.prompt_cache.get(p) for p in dict.fromkeys(prompts)}
        new = [p for p, entry in found.items() if entry is None]
        if new:
            embeds, _, pooled, _ = self.pipe.encode_prompt(new, device=self.device, num_images_per_prompt=1, do_classifier_free_guidance=False)
            for prompt, e, p in zip(new, embeds, pooled):
                found[prompt] = (e, p)
                self.prompt_cache.put(prompt, (e, p))
        return torch.stack([found[p][0] for p in prompts]), torch.stack([found[p][1] for p in prompts])

    def _initial_noise(self, batch: list[GenerationRequest]) -> torch.Tensor:
        """Unit Gaussian noise from the seed alone (CPU generator), identical across variants, devices and batch mates."""
        noise = []
        for r in batch:
            key = (r.seed, r.height, r.width)
            sample = self.noise_cache.get(key)
            if sample is None:
                generator = torch.Generator("cpu").manual_seed(r.seed)
                shape = (1, self.pipe.unet.config.in_channels, r.height // self.pipe.vae_scale_factor, r.width // self.pipe.vae_scale_factor)
                sample = torch.randn(shape, generator=generator, dtype=torch.float32).to(self.device)
                self.noise_cache.put(key, sample)
            noise.append(sample)
        return torch.cat(noise)

    def _raise_if_nonfinite(self, tensor: torch.Tensor, batch, what: str) -> None:
        if self.check_finite and not torch.isfinite(tensor).all():
            bad = [i for i in range(len(tensor)) if not torch.isfinite(tensor[i]).all()]
            prompts = ", ".join(repr(batch[i].prompt[:40]) for i in bad)
            raise NonFiniteOutput(
                f"the model produced NaN/Inf {what} for {len(bad)} of {len(batch)} request(s) ({prompts}); with fp16 try --dtype bfloat16, or check the weights"
            )

    # ---- start-up ---------------------------------------------------------------------------------------------
    def warmup(self, vaes=None) -> float:
        """Run every shape a request can meet (declared size × batch bucket × decoder) and every variant once, so no
        request meets a cold or uncompiled shape: with a compiled backend, len(sizes) × len(batch buckets) graphs per
        UNet and per decoder."""
        start = time.perf_counter()
        for steps, (width, height), batch_size, vae in self.warmup_runs(vaes or [self.default_vae]):
            requests = [GenerationRequest("warm-up", seed=i, steps=steps, width=width, height=height) for i in range(batch_size)]
            self.generate(requests, vae=vae)
        self.hold(self.live_steps)  # at rest the UNet holds the live variant's weights
        if self.compile_cache is not None:
            backends.save_compiled_artifacts(self.compile_cache)  # the next start skips most compilation
        self.warmup_seconds = time.perf_counter() - start
        log.info("%s warm in %.1f s (steps %s, backend %s)", self.model_name, self.warmup_seconds, self.steps, self.backend)
        return self.warmup_seconds

    def warmup_runs(self, vaes) -> list[tuple[int, tuple[int, int], int, str]]:
        """(steps, size, batch size, decoder) of each warm-up generation. Compiled: every variant at every shape, since
        each variant's first call through a graph may guard or recompile. Eager: what grows the process is the shape
        (docs/benchmarks.md §2d), and the variants share one UNet module, so every shape once with the fewest-step
        variant and every other variant once at the first shape; the shapes model's 32-step reference at every batch
        size was most of its CPU start."""
        shapes = [(size, batch_size, vae) for size in self.sizes for batch_size in self.batch_buckets for vae in vaes]
        if self.pad_batches:
            return [(steps, *shape) for steps in self.steps for shape in shapes]
        fewest, *others = self.steps
        return [(fewest, *shape) for shape in shapes] + [(steps, *shapes[0]) for steps in others]

    def memory(self) -> dict:
        """Parameter bytes per module on the device (the one UNet module and, with several weight sets, their copies
        kept on the device), where each variant's weights live ("weights"), and, on CUDA, the allocator's view."""
        modules = {"text_encoder": self.pipe.text_encoder, "text_encoder_2": self.pipe.text_encoder_2, "vae": self.pipe.vae}
        if self.model.vae_tiny is not None:
            modules["vae_tiny"] = self.model.vae_tiny
        modules["unet_" + "+".join(map(str, self.steps)) + "step"] = self.pipe.unet
        report = {name: _param_bytes(m) for name, m in modules.items()}
        weights = self.model.weights.report() if self.model.weights is not None else None
        if weights is not None:
            report["unet_device_copies"] = weights["device_copies_bytes"]
        report["parameters_total"] = sum(report.values())
        if weights is not None:
            report["weights"] = weights
        if self.plan is not None:  # what the plan predicted, beside what the allocator saw
            report["plan"] = {key: getattr(self.plan, key) for key in ("fits", "budget_bytes", "predicted_peak_bytes")}
        if self.device.type == "cuda":
            report["cuda_allocated"] = torch.cuda.memory_allocated(self.device)
            report["cuda_reserved"] = torch.cuda.memory_reserved(self.device)
            report["cuda_peak_allocated"] = torch.cuda.max_memory_allocated(self.device)
        return report


def buckets_up_to(max_batch: int) -> tuple[int, ...]:
    """The batch sizes compiled graphs exist for: 1 (a lone typist) and max_batch (a full batch)."""
    return tuple(sorted({1, max_batch}))


def bucket_for(count: int, buckets: tuple[int, ...]) -> int:
    """The smallest bucket that holds `count` requests (buckets ascending, count <= the largest)."""
    return next(b for b in buckets if b >= count)


class _Decoder(torch.nn.Module):
    """latents (in the UNet's scaled space) -> images in [-1, 1]; a module so backends can compile it whole."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        latents = latents.to(self.vae.dtype) / self.vae.config.scaling_factor
        return self.vae.decode(latents, return_dict=False)[0]


def _in_dtype(vae: torch.nn.Module, dtype: torch.dtype | None) -> torch.nn.Module:
    """The decoder in its own precision, on a copy: the pipeline's VAE (what the stock recipe and the autoencoder
    round trip use) keeps the model's. bfloat16 on a CPU with native bf16 (AVX512-BF16, AMX) decodes the shapes
    model's 128 px pictures in 17-21 ms instead of 27, at 57-60 dB PSNR against fp32 (docs/benchmarks.md)."""
    return vae if dtype in (None, vae.dtype) else copy.deepcopy(vae).to(dtype)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _param_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())
