"""Will a model fit a GPU, and where should its variants' weights live? (`python -m pipelines plan`)

Weights: exact bytes per component, from the real configs, counted on the meta device (accelerate's
init_empty_weights: no weights are loaded or allocated). The studio runs every variant on ONE UNet module
(pipelines.variant_weights), so the device always holds that module plus the copies of the variants placed
"resident"; the variants placed "swap" wait in pinned host memory.

Activations: the peak that torch's MemTracker (torch.distributed._tools) records for the UNet forward at the largest
batch and size and for each decode the studio runs (the live decoder at the largest batch, the full VAE at batch 1
for Compare), run under FakeTensorMode: every op runs for real on shapes and dtypes, no memory is allocated, so it
takes seconds on a CPU for the real SDXL architecture. The stages run one after another, so the activation peak is
the largest stage's. The text encoders' activations (77 tokens) are a few MB and are not counted.

What that count leaves out, derived from the one measured GPU anchor (docs/benchmarks.md §4: stock StableDiffusionXLPipeline,
fp16, 1024², 1 step, H200, peak 11.7 GiB): the same count for that call (UNet and text encoders in fp16, the VAE
upcast to fp32 as diffusers does for SDXL's own VAE, the fp32 decode at batch 1 being the largest stage) predicts
9.62 GiB; the 2.08 GiB difference is what the allocator and the cuDNN/cuBLAS workspaces add, and is added to every
plan as `allowance_bytes`. The CUDA context (CUDA_CONTEXT_BYTES, a typical CUDA 12 figure, unmeasured here) is taken
off a card's --vram; the studio plans from torch.cuda.mem_get_info()'s free memory, which already excludes it.
Both are checked on a GPU by docs/benchmarks/gpu.sh serve (plan against torch.cuda.max_memory_allocated).
"""

import json
import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, AutoencoderTiny, UNet2DConditionModel
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import LocalEntryNotFoundError
from safetensors import safe_open
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from . import architectures
from .conditioning import TOKEN_WINDOW
from .variant_weights import weight_set
from .variants import ModelSpec

GIB = 2**30
ANCHOR_STOCK_PEAK_BYTES = int(11.7 * GIB)  # docs/benchmarks.md §4, see the module docstring
ALLOWANCE_BYTES = int(2.08 * GIB)  # the anchor less this module's count of the same call (tests recompute it)
CUDA_CONTEXT_BYTES = GIB // 2
# The published size of ByteDance's rank-64 SDXL-Lightning LoRA files (docs/benchmarks.md §4): a plan needs it before a LoRA is at hand.
PUBLISHED_LORA_BYTES = 394 * 10**6


@dataclass
class MemoryPlan:
    model: str
    dtype: str
    vram_bytes: int
    budget_bytes: int  # what torch may allocate: vram_bytes less the CUDA context when vram_bytes is a card's size
    max_batch: int
    sizes: list[tuple[int, int]]
    preview_vae: str
    components: dict[str, int]  # weight bytes on the device besides the variants' copies
    activations: dict[str, int]  # peak activation bytes per stage
    allowance_bytes: int
    variants: list[dict] = field(default_factory=list)  # steps, weights (set), placement, bytes, live
    predicted_peak_bytes: int = 0
    host_bytes: int = 0
    fits: bool = False
    advice: str = ""

    def placement(self) -> dict[str, str]:
        """Weight set -> "resident" | "swap", what pipelines.variant_weights.VariantWeights.arrange takes."""
        return {v["weights"]: v["placement"] for v in self.variants}

    def to_json(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        where = ", ".join(f"{v['steps']}-step {v['placement']}{' (live)' if v['live'] else ''}" for v in self.variants)
        head = (
            f"memory plan for {self.model} ({self.dtype}, batch {self.max_batch}, {'/'.join(f'{w}x{h}' for w, h in self.sizes)}, "
            f"{self.preview_vae} preview): predicted peak {self.predicted_peak_bytes / GIB:.1f} GiB of {self.budget_bytes / GIB:.1f} GiB; {where}"
        )
        return head if self.fits else f"{head}\n{self.advice}"


def weight_bytes(build, dtype: torch.dtype) -> int:
    """Bytes of a module's parameters in `dtype`: sum of numel x itemsize, built on the meta device (its buffers, the
    text encoders' 77 position ids, are left out)."""
    with init_empty_weights():
        module = build()
    return sum(p.numel() for p in module.parameters()) * dtype.itemsize


def activation_bytes(build, dtype: torch.dtype, run) -> int:
    """Peak bytes beyond the weights while `run(module)` executes under inference_mode: MemTracker's peak total less the
    parameters and buffers, every tensor a fake one (shapes and dtypes only)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker

    with FakeTensorMode(), _default_dtype(dtype):
        module = build().eval()
        tracker = MemTracker()
        tracker.track_external(module)
        with torch.inference_mode(), tracker:
            run(module)
        peak = next(iter(tracker.get_tracker_snapshot("peak").values()))
    kinds = {str(kind).rsplit(".", 1)[-1]: value for kind, value in peak.items()}
    return int(kinds["Total"] - kinds.get("PARAM", 0) - kinds.get("BUFFER", 0))


@contextmanager
def _default_dtype(dtype: torch.dtype):
    """Build fake modules directly in `dtype`: a fake module cannot be cast afterwards (Module.to swaps tensors)."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def component_builders(spec: ModelSpec) -> dict:
    """name -> a function building that component on the current device/mode, from the model's real configs: the tiny
    model's in-code configs, a local diffusers folder's own, else SDXL's (assets/configs/sdxl: random-sdxl, lightning
    and lightning-lora on SDXL base 1.0; any other hub base is taken to be SDXL-shaped)."""
    folder = Path(spec.base)
    if spec.base == "tiny":
        text = CLIPTextConfig(**architectures.TINY_TEXT)
        configs = dict(unet=architectures.TINY_UNET, vae=architectures.TINY_VAE, vae_tiny=architectures.TINY_VAE_TINY, text_encoder=text, text_encoder_2=text)
    elif folder.is_dir():
        configs = {name: cls.load_config(folder / name) for name, cls in (("unet", UNet2DConditionModel), ("vae", AutoencoderKL))}
        tiny = folder / "vae_tiny"
        configs["vae_tiny"] = AutoencoderTiny.load_config(tiny) if tiny.is_dir() else architectures.read_config("vae_tiny")
        configs |= {name: CLIPTextConfig.from_pretrained(folder / name) for name in ("text_encoder", "text_encoder_2")}
    else:
        configs = {name: architectures.read_config(name) for name in ("unet", "vae", "vae_tiny")}
        configs |= {
            name: CLIPTextConfig(**{k: v for k, v in architectures.read_config(name).items() if k != "architectures"})
            for name in ("text_encoder", "text_encoder_2")
        }
    return {
        "unet": lambda: UNet2DConditionModel.from_config(configs["unet"]),
        "vae": lambda: AutoencoderKL.from_config(configs["vae"]),
        "vae_tiny": lambda: AutoencoderTiny.from_config(configs["vae_tiny"]),
        "text_encoder": lambda: CLIPTextModel(configs["text_encoder"]),
        "text_encoder_2": lambda: CLIPTextModelWithProjection(configs["text_encoder_2"]),
    }


def unet_run(batch: int, width: int, height: int):
    """One UNet forward on the studio's inputs: latents at 1/8 size, 77 text tokens, pooled embeddings, micro-conditioning."""

    def run(unet):
        c = unet.config
        pooled = c.projection_class_embeddings_input_dim - 6 * c.addition_time_embed_dim
        unet(
            torch.randn(batch, c.in_channels, height // 8, width // 8),
            torch.tensor(999),
            encoder_hidden_states=torch.randn(batch, TOKEN_WINDOW, c.cross_attention_dim),
            added_cond_kwargs={"text_embeds": torch.randn(batch, pooled), "time_ids": torch.randn(batch, 6)},
            return_dict=False,
        )

    return run


def decode_run(batch: int, width: int, height: int):
    return lambda vae: vae.decode(torch.randn(batch, vae.config.latent_channels, height // 8, width // 8), return_dict=False)


def lora_bytes(path: Path | None, dtype: torch.dtype) -> int:
    """A LoRA's bytes once loaded in `dtype` (numel x itemsize, from its safetensors header when the file is at hand),
    else the published fp16 size of a Lightning LoRA scaled to `dtype`."""
    if path is None:
        return PUBLISHED_LORA_BYTES * dtype.itemsize // 2
    with safe_open(str(path), "pt") as f:
        return sum(math.prod(f.get_slice(key).get_shape()) for key in f.keys()) * dtype.itemsize


def _lora_file(spec: ModelSpec, variant) -> Path | None:
    """The LoRA file if it is here (a local model, or the Hugging Face cache); planning never downloads."""
    if variant.repo is None:
        return Path(spec.root or ".") / variant.lora_file
    try:
        return Path(hf_hub_download(variant.repo, variant.lora_file, local_files_only=True))
    except (LocalEntryNotFoundError, OSError):
        return None


@dataclass(frozen=True)
class Footprint:
    """What a model needs on the device, whatever the card: weight bytes per component (one UNet module) and the peak
    activation bytes per stage at the largest batch and size."""

    spec: ModelSpec
    dtype: torch.dtype
    max_batch: int
    sizes: list[tuple[int, int]]
    preview_vae: str
    components: dict[str, int]
    activations: dict[str, int]


def measure(spec: ModelSpec, dtype: torch.dtype = torch.float16, max_batch: int = 4, sizes=None, preview_vae: str = "full") -> Footprint:
    """Count the model's weights (meta device) and its activation peaks (fake tensors); seconds on a CPU for SDXL."""
    sizes = [tuple(s) for s in sizes or [(spec.resolution or 1024,) * 2]]
    width, height = max(sizes, key=lambda s: s[0] * s[1])
    builders = component_builders(spec)
    decoders = ["vae", "vae_tiny"] if preview_vae == "tiny" else ["vae"]
    components = {name: weight_bytes(builders[name], dtype) for name in ("text_encoder", "text_encoder_2", *decoders, "unet")}
    components |= {f"lora_{v.steps}step": lora_bytes(_lora_file(spec, v), dtype) for v in spec.variants if v.is_lora}
    unet_batch = max_batch * (2 if any(v.guided for v in spec.variants) else 1)  # classifier-free guidance doubles it
    activations = {f"unet_batch{unet_batch}": activation_bytes(builders["unet"], dtype, unet_run(unet_batch, width, height))}
    activations[f"decode_{decoders[-1]}_batch{max_batch}"] = activation_bytes(builders[decoders[-1]], dtype, decode_run(max_batch, width, height))
    if max_batch > 1 and preview_vae == "tiny":
        activations["decode_vae_batch1"] = activation_bytes(builders["vae"], dtype, decode_run(1, width, height))  # Compare's full decode
    return Footprint(spec, dtype, max_batch, sizes, preview_vae, components, activations)


def make_plan(footprint: Footprint, vram_bytes: int, weights: str | None = None, card: bool = True) -> MemoryPlan:
    """Place the variants' weights on a device with `vram_bytes` (a card's size when `card`, else memory free now).
    The live variant always sits in the UNet module; the other weight sets are "resident" (a device copy), fewest
    steps first, while the predicted peak stays within the budget, else "swap"; `weights` forces either."""
    f, spec = footprint, footprint.spec
    budget = vram_bytes - (CUDA_CONTEXT_BYTES if card else 0)
    dtype = str(f.dtype).removeprefix("torch.")
    plan = MemoryPlan(spec.name, dtype, vram_bytes, budget, f.max_batch, f.sizes, f.preview_vae, f.components, f.activations, ALLOWANCE_BYTES)
    peak = sum(f.components.values()) + max(f.activations.values()) + ALLOWANCE_BYTES
    unet = f.components["unet"]
    live_set = weight_set(spec.variant(spec.default_steps))
    placed: dict[str, str] = {}
    for name in dict.fromkeys(weight_set(v) for v in sorted(spec.variants, key=lambda v: v.steps)):
        if name == live_set:
            placed[name] = "resident"  # the live weights sit in the module itself
        else:
            placed[name] = weights or ("resident" if peak + unet <= budget else "swap")
            peak += unet if placed[name] == "resident" else 0
    # With more than one set, every set has a home copy: the swapped ones' and the live one's in host memory.
    swapped = sum(1 for where in placed.values() if where == "swap")
    plan.host_bytes = unet * (swapped + 1) if len(placed) > 1 else 0
    plan.variants = [
        {"steps": v.steps, "weights": weight_set(v), "placement": placed[weight_set(v)], "bytes": unet, "live": v.steps == spec.default_steps}
        for v in sorted(spec.variants, key=lambda v: v.steps)
    ]
    plan.predicted_peak_bytes, plan.fits = peak, peak <= budget
    if not plan.fits:
        plan.advice = advice(plan)
    return plan


def largest_batch(plan: MemoryPlan) -> int:
    """The largest --max-batch whose plan would fit, taking every stage's activations as linear in the batch
    (measured: the SDXL VAE's 1024² decode needs 1.5 GiB at batch 1 and 6.0 GiB at batch 4): the peak less the
    activations, plus b x (activations / max_batch), at most the budget. 0 when not even one image fits."""
    activation = max(plan.activations.values())
    room = plan.budget_bytes - (plan.predicted_peak_bytes - activation)
    return max(0, min(plan.max_batch, room * plan.max_batch // activation))


def advice(plan: MemoryPlan) -> str:
    """One line: by how much the plan misses, and the changes that would close the gap."""
    over = plan.predicted_peak_bytes - plan.budget_bytes
    steps = []
    live = {v["weights"] for v in plan.variants if v["live"]}
    if any(v["placement"] == "resident" and v["weights"] not in live for v in plan.variants):  # a device copy to give up
        steps.append("--weights swap")
    if 0 < largest_batch(plan) < plan.max_batch:
        steps.append(f"--max-batch {largest_batch(plan)}")
    if plan.preview_vae != "tiny":
        steps.append("--preview-vae tiny")
    if plan.dtype == "float32":
        steps.append("--dtype float16")
    steps.append("smaller --sizes, or a GPU with more memory")
    return f"does not fit: {over / GIB:.1f} GiB over the {plan.budget_bytes / GIB:.1f} GiB budget; try " + ", ".join(steps)


def write_json(plan: MemoryPlan, path: Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(plan.to_json(), indent=2))
