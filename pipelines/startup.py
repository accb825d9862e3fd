"""load_engine: pick device, precision and model, load, compile, and say plainly what runs and why."""

import logging
import os
from dataclasses import dataclass

import torch

from . import backends, memory_plan, variants
from .engine import Engine
from .errors import InvalidModel, WeightsUnavailable
from .loading import load_model
from .sizes import check as check_sizes
from .variant_weights import PLACEMENTS, weight_set

log = logging.getLogger(__name__)
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
EMBEDDED_DEFAULT = "shapes"
LAST_RESORT = "tiny"  # built in code: starts even if the shipped shapes weights are missing
NO_CUDA = "No CUDA GPU found, so the embedded shapes model runs on the CPU: {description}. Start with --model lightning on a CUDA machine for SDXL-Lightning."


FALLBACKS = {  # default model -> (what runs instead, the page's notice)
    "lightning": (EMBEDDED_DEFAULT, "SDXL-Lightning could not be loaded ({error}) The embedded shapes model runs instead: {description}."),
    EMBEDDED_DEFAULT: (LAST_RESORT, "{error}. The built-in tiny model runs instead; it is untrained, so its pictures are noise."),
}


def default_model(device: torch.device) -> tuple[str, str | None]:
    """Lightning on CUDA; otherwise the embedded default, with the reason, so the UI can say which model runs."""
    if device.type == "cuda":
        return "lightning", None
    return EMBEDDED_DEFAULT, NO_CUDA


def load_engine(
    model: str | None = None,
    device: str | None = None,
    steps=None,
    backend: str = "eager",
    preview_vae: str | None = None,
    dtype: str | None = None,
    base: str | None = None,
    compile_cache: bool = True,
    decode_dtype: str | None = None,
    check_finite: bool = True,
    compiler: str = "inductor",
    sizes: tuple | None = None,
    weights: str | None = None,
    max_batch: int = 4,
) -> Engine:
    """Load a model's variants, wrap them for `backend`, and return the engine (not yet warm: call warmup()).

    `sizes`: the (width, height) pairs to serve (default: the model's native square, and twice it for a model trained
    small). `weights` places the variants' own UNet weights: "resident" (a copy each on the device), "swap" (in host
    memory, copied into the one UNet module when used) or None: on CUDA the memory plan decides from the free memory
    and `max_batch`, elsewhere resident. `max_batch` is also the largest batch the engine warms (and a compiled one
    pads to)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidModel("device 'cuda' was asked for but torch sees no CUDA GPU; use --device cpu")
    options = LoadOptions(
        device,
        tuple(steps) if steps else None,
        backend,
        preview_vae,
        dtype,
        base,
        compile_cache,
        check_finite,
        compiler,
        decode_dtype,
        weights,
        max_batch,
        sizes,
    )
    if model is not None:
        return _load(model, options)
    model, notice = default_model(device)
    while True:
        try:
            return _load(model, options, notice)
        except WeightsUnavailable as error:
            # The default must start anywhere: with no weights reachable, serve the next embedded model and say why.
            if model not in FALLBACKS:
                raise
            log.warning("default model %s unavailable: %s", model, error)
            model, template = FALLBACKS[model]
            notice = template.replace("{error}", str(error))


@dataclass(frozen=True)
class LoadOptions:
    """How to load whichever model is asked for (load_engine's arguments, resolved once)."""

    device: torch.device
    steps: tuple[int, ...] | None
    backend: str
    preview_vae: str | None
    dtype: str | None
    base: str | None
    compile_cache: bool
    check_finite: bool
    compiler: str
    decode_dtype: str | None = None  # the decoders' own precision (None: the model's)
    weights: str | None = None  # "resident" | "swap" | None (the memory plan's choice on CUDA, else resident)
    max_batch: int = 4  # what the memory plan sizes activations for, and the largest batch warmed
    sizes: tuple | None = None  # declared (width, height) sizes; None: the model's default


def _load(model: str, o: LoadOptions, notice: str | None = None) -> Engine:
    if o.weights not in (None, *PLACEMENTS):
        raise InvalidModel(f"weights must be one of {', '.join(PLACEMENTS)}, got {o.weights!r}")
    if o.preview_vae not in (None, "full", "tiny"):
        raise InvalidModel(f"preview_vae must be 'full' or 'tiny', got {o.preview_vae!r}")
    for name, value in (("dtype", o.dtype), ("decode_dtype", o.decode_dtype)):
        if value is not None and value not in DTYPES:
            raise InvalidModel(f"{name} must be one of {', '.join(DTYPES)}, got {value!r}")
    device, backend = o.device, o.backend
    torch_dtype = DTYPES[o.dtype] if o.dtype else (torch.float16 if device.type == "cuda" else torch.float32)
    spec = variants.resolve(model, o.base, o.steps).restricted_to(o.steps)

    size_limits, default_size = spec.sizes()
    # A model trained small (the shapes world) serves its own size and twice it; others their native square.
    native = (default_size, 2 * default_size) if spec.resolution else (default_size,)
    declared = check_sizes(tuple(o.sizes or ((side, side) for side in native)), *size_limits)  # before loading: fails fast

    cache = backends.cache_file(f"{model}|{backend}|{device}|{torch_dtype}") if backend == "compile" and o.compile_cache else None
    cache_loaded = cache is not None and backends.load_compiled_artifacts(cache)
    if notice:
        notice = notice.replace("{description}", spec.description or spec.name)
    plan = _plan(spec, device, torch_dtype, o, declared)  # from the memory free before any weight is loaded
    placement = plan.placement() if plan else {name: o.weights for name in map(weight_set, spec.variants) if o.weights}
    loaded = load_model(spec, device, torch_dtype, o.preview_vae == "tiny")
    engine = Engine(
        loaded,
        backend,
        sizes=declared,
        default_size=default_size,
        max_batch=o.max_batch,
        notice=notice,
        check_finite=o.check_finite,
        compiler=o.compiler,
        compile_cache=cache,
        compile_cache_loaded=cache_loaded,
        decode_dtype=DTYPES[o.decode_dtype] if o.decode_dtype else None,
        placement=placement,
        plan=plan,
    )
    if o.preview_vae == "tiny":
        engine.default_vae = "tiny"
    return engine


def _plan(spec, device: torch.device, dtype: torch.dtype, o: LoadOptions, sizes: tuple):
    """On CUDA, the memory plan for the memory free now (pipelines.memory_plan); None elsewhere. A plan that does not
    fit is logged with its advice and followed anyway: the allowance in it is an estimate. None on ZeroGPU, where CUDA
    is only real inside a spaces.GPU call: there the placement is resident unless --weights says otherwise."""
    if device.type != "cuda" or os.environ.get("SPACES_ZERO_GPU"):
        return None
    free, _ = torch.cuda.mem_get_info(device)
    footprint = memory_plan.measure(spec, dtype, o.max_batch, list(sizes), o.preview_vae or "full")
    plan = memory_plan.make_plan(footprint, free, o.weights, card=False)
    (log.info if plan.fits else log.warning)("%s", plan.summary())
    return plan
