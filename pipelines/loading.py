"""Turn a ModelSpec into resident modules: one StableDiffusionXLPipeline holding the shared components and ONE UNet
module that every step variant runs on: variants with their own full UNet weights swap them into it in place
(pipelines.variant_weights), LoRA variants switch adapters on it. Safetensors only; never pickle.

Weights come from the hub through huggingface_hub (its cache first, then the network unless HF_HUB_OFFLINE is
set), from a local folder, or are built in code (tiny, random-sdxl). Missing weights raise WeightsUnavailable
naming the repo, the file and how to get them, instead of a stack trace or a hang.
"""

import functools
import json
import logging
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, AutoencoderTiny, StableDiffusionXLPipeline, UNet2DConditionModel
from huggingface_hub import constants, hf_hub_download
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from . import architectures
from .errors import InvalidModel, WeightsUnavailable
from .variant_weights import BASE_SET, VariantWeights, weight_set
from .variants import TAESD_XL, VAE_FP16_FIX, ModelSpec, Variant

log = logging.getLogger(__name__)
BUILTIN_BASES = {"tiny": architectures.tiny_components, "random-sdxl": architectures.random_sdxl_components}


@dataclass
class LoadedModel:
    spec: ModelSpec
    pipe: StableDiffusionXLPipeline
    unets: dict[int, UNet2DConditionModel]  # per step count: the one UNet module every variant runs on
    adapters: dict[int, str | None]  # LoRA adapter to activate per step count (None: adapters off)
    weights: VariantWeights | None  # the full-UNet weight sets swapped into that module (None: only one set)
    vae_tiny: AutoencoderTiny | None
    device: torch.device
    dtype: torch.dtype


def fetch(repo: str, filename: str) -> str:
    """Path of `filename` from hub repo `repo` (cache first). Raises WeightsUnavailable with instructions."""
    return _from_hub(hf_hub_download, repo, filename, repo, filename)


@functools.cache
def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the hub's host accepts a TCP connection at all. Without a network, huggingface_hub retries its
    requests for ~30 s before it gives up; this answers in at most a few seconds, once per process."""
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def _from_hub(call, repo: str, filename: str | None, *args, **kwargs):
    """call(*args, **kwargs) against the Hugging Face cache only, then, if that misses and the hub can be reached, with
    the network; 'not found / offline / unreachable' becomes WeightsUnavailable."""
    try:
        return call(*args, local_files_only=True, **kwargs)
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as error:
        missing = error
    if not constants.HF_HUB_OFFLINE:
        if not hub_reachable():
            host = urlparse(constants.ENDPOINT).hostname
            raise WeightsUnavailable(_how_to_get(repo, filename, ConnectionError(f"it is not in the Hugging Face cache and {host} cannot be reached")))
        try:
            return call(*args, **kwargs)
        except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as error:
            missing = error
    raise WeightsUnavailable(_how_to_get(repo, filename, missing)) from None


def _how_to_get(repo: str, filename: str | None, error: Exception) -> str:
    what = f"{filename} from {repo}" if filename else f"the model {repo}"
    reason = (str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__).rstrip(".")
    target = f"{repo} {filename}" if filename else repo
    return (
        f"cannot load {what}: {reason}. Get it on a machine with internet access with "
        f"`hf download {target}` (and copy the Hugging Face cache here), unset HF_HUB_OFFLINE if "
        f"this machine is online, or run offline with --model shapes (the embedded model)."
    )


def _from_hub_or_folder(loader, source: str, **kwargs):
    """Call a diffusers from_pretrained on a local folder or a hub repo, turning 'not found / offline' into WeightsUnavailable."""
    if Path(source).is_dir():
        try:
            return loader(source, use_safetensors=True, **kwargs)
        except OSError as error:
            raise WeightsUnavailable(_how_to_get(source, None, error)) from None
    return _from_hub(loader, source, None, source, use_safetensors=True, **kwargs)


def _local_path(spec: ModelSpec, relative: str) -> Path:
    path = Path(spec.root or ".") / relative
    if not path.exists():
        raise WeightsUnavailable(f"{spec.name}: variant weights {path} do not exist (the manifest names them)")
    return path


def _builtin_pipeline(base: str) -> tuple[StableDiffusionXLPipeline, AutoencoderTiny]:
    parts = BUILTIN_BASES[base]()
    vae_tiny = parts.pop("vae_tiny")
    return StableDiffusionXLPipeline(**parts), vae_tiny


def check_local_weights(folder: Path) -> None:
    """Every weight file a local diffusers folder names must exist and be readable safetensors; otherwise one line
    naming the file (from_pretrained would fail deep inside with a traceback, or silently fall back to pickle)."""
    index = json.loads((folder / "model_index.json").read_text())
    for component, spec in index.items():
        if component.startswith("_") or not isinstance(spec, list) or spec[0] not in ("diffusers", "transformers"):
            continue
        sub = folder / component
        if not sub.is_dir():
            continue  # a tokenizer or scheduler the model index lists without files is diffusers' own business
        if (sub / "config.json").is_file() and not list(sub.glob("*.safetensors")):
            raise WeightsUnavailable(f"{sub}: no .safetensors weight file (model files are missing; restore them from the repository)")
        for path in sub.glob("*.safetensors"):
            try:
                with safe_open(str(path), "pt") as f:
                    f.keys()
            except (SafetensorError, OSError) as error:
                raise WeightsUnavailable(f"{path} is not a readable safetensors file ({error}); restore it from the repository") from None


def _hub_pipeline(spec: ModelSpec, dtype: torch.dtype, device: torch.device, unet) -> StableDiffusionXLPipeline:
    """A hub id or a local diffusers folder. On CUDA in fp16 it gets the fp16-safe VAE, so decoding never needs
    diffusers' slow fp32 upcast of the stock SDXL VAE."""
    kwargs = {"dtype": dtype}
    if unet is not None:
        kwargs["unet"] = unet
    if device.type == "cuda" and dtype == torch.float16:
        kwargs["vae"] = _from_hub_or_folder(AutoencoderKL.from_pretrained, VAE_FP16_FIX, dtype=dtype)
    if Path(spec.base).is_dir():
        check_local_weights(Path(spec.base))
    elif dtype == torch.float16:
        kwargs["variant"] = "fp16"
    return _from_hub_or_folder(StableDiffusionXLPipeline.from_pretrained, spec.base, **kwargs)


def _variant_state(spec: ModelSpec, variant: Variant) -> dict[str, torch.Tensor]:
    """A variant's full UNet weights as a state dict: a diffusers folder, or a bare state-dict file (the Lightning
    files); its architecture is checked against the shared UNet module's when the weight sets are built."""
    if variant.unet_dir is not None:
        return UNet2DConditionModel.from_pretrained(_local_path(spec, variant.unet_dir), use_safetensors=True).state_dict()
    return load_file(str(fetch(variant.repo, variant.unet_file) if variant.repo else _local_path(spec, variant.unet_file)))


def _unet_from_state(config, state: dict[str, torch.Tensor]) -> UNet2DConditionModel:
    """A UNet module on `config` that takes the tensors of `state` as its parameters (no second allocation)."""
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(config)
    _load_exactly(unet, state, assign=True)
    return unet


def _load_exactly(unet: UNet2DConditionModel, state: dict[str, torch.Tensor], assign: bool = False) -> None:
    missing, unexpected = unet.load_state_dict(state, strict=False, assign=assign)
    if missing or unexpected:
        raise InvalidModel(f"variant weights are not a UNet for this base ({len(missing)} missing, {len(unexpected)} unexpected keys)")


def _hub_unet_config(base: str):
    if not Path(base).is_dir():
        return _from_hub(UNet2DConditionModel.load_config, base, "unet/config.json", base, subfolder="unet")
    try:
        return UNet2DConditionModel.load_config(base, subfolder="unet")
    except OSError as error:
        raise WeightsUnavailable(_how_to_get(base, "unet/config.json", error)) from None


def load_model(spec: ModelSpec, device: torch.device, dtype: torch.dtype, preview_vae: bool) -> LoadedModel:
    with_unet = [v for v in spec.variants if v.unet_file or v.unet_dir]
    # Variant files first: they are what an offline user most likely lacks, so the error names them.
    lora_paths = {v.steps: fetch(v.repo, v.lora_file) if v.repo else _local_path(spec, v.lora_file) for v in spec.variants if v.is_lora}
    states = {weight_set(v): _variant_state(spec, v) for v in with_unet}
    uses_base = len(with_unet) < len(spec.variants)
    if spec.base in BUILTIN_BASES:
        pipe, vae_tiny = _builtin_pipeline(spec.base)
    else:
        # When every variant brings its own UNet the base UNet would be a whole UNet of dead weight: build the module from one.
        shared = None if uses_base else _unet_from_state(_hub_unet_config(spec.base), states[weight_set(with_unet[0])])
        pipe = _hub_pipeline(spec, dtype, device, unet=shared)
        # A local model may ship its own preview decoder (vae_tiny/), trained for its latent space; SDXL's is TAESD-XL.
        own_tiny = Path(spec.base) / "vae_tiny"
        vae_tiny = _from_hub_or_folder(AutoencoderTiny.from_pretrained, str(own_tiny) if own_tiny.is_dir() else TAESD_XL, dtype=dtype) if preview_vae else None
    if uses_base:
        states[BASE_SET] = dict(pipe.unet.state_dict())
    weights = None
    if len(states) > 1:  # built before any LoRA wraps the module's layers
        steps_to_set = {v.steps: weight_set(v) for v in spec.variants}
        weights = VariantWeights(pipe.unet, states, steps_to_set, live=steps_to_set[spec.default_steps])
    elif not uses_base:
        _load_exactly(pipe.unet, next(iter(states.values())))

    adapters: dict[int, str | None] = {}
    for v in spec.variants:
        adapters[v.steps] = v.adapter_name if v.is_lora else None
        if v.is_lora:
            pipe.load_lora_weights(str(lora_paths[v.steps]), adapter_name=v.adapter_name)
        source = v.lora_file or v.unet_file or v.unet_dir
        what = f"{'LoRA' if v.is_lora else 'UNet'} {source}" if source else "the base UNet"
        log.info("%s %d-step variant: %s (%s)", spec.name, v.steps, what, v.prediction_type)

    unets = {v.steps: pipe.unet for v in spec.variants}
    modules = [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]
    for module in {id(m): m for m in modules + [vae_tiny] if m is not None}.values():
        _place(module, device, dtype)
    return LoadedModel(spec, pipe, unets, adapters, weights, vae_tiny, device, dtype)


def _place(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """Move to the device, casting only when needed (diffusers warns about every cast, even a no-op one)."""
    if module.dtype != dtype:
        module.to(dtype=dtype)
    module.to(device=device).eval()
