"""What a step-count variant is, and where its weights come from.

A variant carries its step count, prediction type and scheduler settings together, so no caller can run a
checkpoint with the wrong scheduler. A model is a base (text encoders, VAE, base UNet) plus variants; the
published SDXL-Lightning sets and what `distill export` writes are described the same way (a manifest).
"""

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import assets

from .errors import InvalidModel, WeightsUnavailable

MANIFEST_NAME = "studio_manifest.json"
MANIFEST_FORMAT = "lightning-studio/1"
PREDICTION_TYPES = ("epsilon", "sample")

SDXL_BASE = "stabilityai/stable-diffusion-xl-base-1.0"
LIGHTNING_REPO = "ByteDance/SDXL-Lightning"
VAE_FP16_FIX = "madebyollin/sdxl-vae-fp16-fix"
TAESD_XL = "madebyollin/taesdxl"
# The embedded default: the shapes world's model, shipped with the code (trained by `python -m distill.shapes`).
SHAPES_FOLDER = assets.ROOT / "models" / "shapes"
# Manifest keys that describe the model as a whole (all optional).
MANIFEST_EXTRAS = ("description", "live_steps", "reference_steps", "resolution", "examples", "adherence_measure")
# A variant whose measured adherence is below this fraction of the best variant's is labelled "experimental".
FAR_BELOW = 0.25
# SDXL was trained from 512 to 2048 px; the tiny model is only useful small, and cheap enough on a CPU.
BUILTIN_SIZES = {"tiny": ((64, 1024), 256)}  # base -> ((smallest, largest side), default side)
SDXL_SIZES = ((256, 2048), 1024)


@dataclass(frozen=True)
class Variant:
    """One step count of a model.

    weights: None (the base UNet as it is), or a reference to a full UNet (`unet_file` in `repo`, or a local
    diffusers `unet_dir`) or a LoRA (`lora_file` in `repo` or a local path) applied to the base UNet.
    """

    steps: int
    prediction_type: str = "epsilon"
    repo: str | None = None
    unet_file: str | None = None
    unet_dir: str | None = None
    lora_file: str | None = None
    source_stage: str | None = None
    guidance_scale: float = 0.0  # > 1: classifier-free guidance against zeroed unconditional embeddings (SDXL base)
    adherence: float | None = None  # measured prompt adherence in [0, 1] (how: the model's adherence_measure), if any

    def __post_init__(self):
        if not isinstance(self.steps, int) or self.steps < 1:
            raise InvalidModel(f"variant steps must be a positive integer, got {self.steps!r}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise InvalidModel(f"variant {self.steps}-step: prediction_type must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}")
        if isinstance(self.guidance_scale, bool) or not isinstance(self.guidance_scale, (int, float)) or not 0 <= self.guidance_scale <= 30:
            raise InvalidModel(f"variant {self.steps}-step: guidance_scale must be a number in [0, 30], got {self.guidance_scale!r}")
        if self.adherence is not None and (isinstance(self.adherence, bool) or not isinstance(self.adherence, (int, float)) or not 0 <= self.adherence <= 1):
            raise InvalidModel(f"variant {self.steps}-step: adherence must be a measured fraction in [0, 1], got {self.adherence!r}")
        if sum(x is not None for x in (self.unet_file, self.unet_dir, self.lora_file)) > 1:
            raise InvalidModel(f"variant {self.steps}-step names more than one of unet_file, unet_dir, lora_file")

    @property
    def is_lora(self) -> bool:
        return self.lora_file is not None

    @property
    def guided(self) -> bool:
        """Whether this variant runs classifier-free guidance (as diffusers: only for a scale above 1)."""
        return self.guidance_scale > 1

    @property
    def adapter_name(self) -> str:
        return f"lightning_{self.steps}step"

    def scheduler(self, base_config):
        """The model-card recipe: Euler from the base config, trailing spacing, this variant's prediction type."""
        from diffusers import EulerDiscreteScheduler  # here, not at the top: resolving a model name needs no diffusers

        return EulerDiscreteScheduler.from_config(base_config, timestep_spacing="trailing", prediction_type=self.prediction_type)


@dataclass(frozen=True)
class ModelSpec:
    """A base model plus its variants. `base` is "tiny", "random-sdxl", a hub id or a local diffusers folder."""

    name: str
    base: str
    variants: tuple[Variant, ...]
    root: str | None = None  # folder that relative variant paths are resolved against
    base_kwargs: dict = field(default_factory=dict)
    description: str | None = None  # one line for the page: what this model is
    live_steps: int | None = None  # the variant the live stream types with (default: the fewest steps)
    reference_steps: int | None = None  # the slow, best-quality variant the Compare panel measures the others against
    resolution: int | None = None  # the size it was trained at (default image size)
    examples: tuple[str, ...] = ()  # prompts the page offers to click
    adherence_measure: str | None = None  # what the variants' `adherence` numbers are, and where they were measured

    @property
    def default_steps(self) -> int:
        """The variant a caller gets without asking: the live one if offered, else the fewest steps."""
        offered = [v.steps for v in self.variants]
        return self.live_steps if self.live_steps in offered else min(offered)

    def sizes(self) -> tuple[tuple[int, int], int]:
        """((smallest, largest side), default side): a model trained small (the shapes world) serves its own size and up
        to twice it; the built-in bases their own; everything else SDXL's range."""
        if self.resolution:
            return (min(64, self.resolution), 2 * self.resolution), self.resolution
        return BUILTIN_SIZES.get(self.base, SDXL_SIZES)

    def labels(self) -> dict[int, str]:
        """Short words per step count, from the manifest: "reference" (reference_steps), "live" (default_steps), and
        "experimental" where the measured adherence a satisfies a < FAR_BELOW * max(a over the measured variants)."""
        measured = [v.adherence for v in self.variants if v.adherence is not None]
        labels = {}
        for v in self.variants:
            words = ["reference"] if v.steps == self.reference_steps else []
            words += ["live"] if v.steps == self.default_steps else []
            words += ["experimental"] if v.adherence is not None and v.adherence < FAR_BELOW * max(measured) else []
            if words:
                labels[v.steps] = ", ".join(words)
        return labels

    def describe_steps(self) -> str:
        """'32 (reference), 8, 4, 2 (live), 1 (experimental)': the offered step counts, most first, with their labels."""
        labels = self.labels()
        return ", ".join(f"{n} ({labels[n]})" if n in labels else str(n) for n in sorted((v.steps for v in self.variants), reverse=True))

    def variant(self, steps: int) -> Variant:
        for v in self.variants:
            if v.steps == steps:
                return v
        raise KeyError(steps)

    def restricted_to(self, steps: tuple[int, ...] | None) -> "ModelSpec":
        if not steps:
            return self
        offered = {v.steps for v in self.variants}
        missing = sorted(set(steps) - offered)
        if missing:
            raise InvalidModel(f"model {self.name!r} offers {self.describe_steps()} steps, not {', '.join(map(str, missing))}")
        return replace(self, variants=tuple(v for v in self.variants if v.steps in steps))


def lightning_unets(base: str = SDXL_BASE) -> ModelSpec:
    """ByteDance's full UNets: 1-step is x0 ("sample") prediction, 2/4/8-step are epsilon."""
    variants = [Variant(1, "sample", LIGHTNING_REPO, unet_file="sdxl_lightning_1step_unet_x0.safetensors")]
    variants += [Variant(n, "epsilon", LIGHTNING_REPO, unet_file=f"sdxl_lightning_{n}step_unet.safetensors") for n in (2, 4, 8)]
    return ModelSpec("lightning", base, tuple(variants))


def lightning_loras(base: str = SDXL_BASE) -> ModelSpec:
    """ByteDance's rank-64 LoRAs (2/4/8 steps; there is no 1-step LoRA), on any SDXL base."""
    variants = tuple(Variant(n, "epsilon", LIGHTNING_REPO, lora_file=f"sdxl_lightning_{n}step_lora.safetensors") for n in (2, 4, 8))
    return ModelSpec("lightning-lora", base, variants)


def builtin(name: str, steps=(1, 2, 4, 8)) -> ModelSpec:
    """Models built in code share one UNet across step counts; the 1-step variant uses x0 prediction, as Lightning's."""
    return ModelSpec(name, name, tuple(Variant(n, "sample" if n == 1 else "epsilon") for n in steps))


def write_manifest(folder: Path, base: str, variants: list[Variant], **extra) -> Path:
    """Write the manifest that `pipelines` reads from a local model folder (what `distill export` produces); atomic
    (temp file + rename), so rewriting a model's manifest never leaves half of one."""
    entries = [{k: v for k, v in asdict(variant).items() if v is not None} for variant in variants]
    path = Path(folder) / MANIFEST_NAME
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"format": MANIFEST_FORMAT, "base_model": base, "variants": entries, **extra}, indent=2))
    tmp.replace(path)
    return path


def read_manifest(folder: Path) -> ModelSpec:
    """A local folder's manifest -> ModelSpec; variant paths are relative to the folder, and a base_model of "."
    is the folder itself (a diffusers folder that carries its own manifest, like the shapes model)."""
    folder = Path(folder)
    data = json.loads((folder / MANIFEST_NAME).read_text())
    if data.get("format") != MANIFEST_FORMAT:
        raise InvalidModel(f"{folder / MANIFEST_NAME}: format {data.get('format')!r} is not {MANIFEST_FORMAT!r}")
    known = set(Variant.__dataclass_fields__)
    variants = []
    for entry in data["variants"]:
        unknown = set(entry) - known
        if unknown:
            raise InvalidModel(f"{folder / MANIFEST_NAME}: unknown variant keys {sorted(unknown)}")
        variants.append(Variant(**entry))
    # "." is the folder itself (a diffusers folder carrying its own manifest); "shapes" the embedded model
    # (what `distill export` records for a student distilled from it).
    base = {".": str(folder), "shapes": str(SHAPES_FOLDER)}.get(data["base_model"], data["base_model"])
    extras = {key: data[key] for key in MANIFEST_EXTRAS if key in data}
    base_manifest = Path(base) / MANIFEST_NAME
    if data["base_model"] != "." and base_manifest.is_file():
        # A model built on a local base that carries a manifest (a student of the shapes model) serves at the
        # base's resolution, with its examples, unless it says otherwise.
        inherited = json.loads(base_manifest.read_text())
        extras = {key: inherited[key] for key in MANIFEST_EXTRAS if key in inherited} | extras
    extras["examples"] = tuple(extras.get("examples", ()))
    return ModelSpec(folder.name, base, tuple(variants), root=str(folder), **extras)


def resolve(model: str, base: str | None = None, steps: tuple[int, ...] | None = None) -> ModelSpec:
    """--model value -> ModelSpec: shapes | tiny | random-sdxl | lightning | lightning-lora | a local folder.

    A plain diffusers folder says nothing about its step count, so it serves the steps asked for (default 4)."""
    if model in ("tiny", "random-sdxl"):
        return builtin(model)
    if model == "shapes":
        if not (SHAPES_FOLDER / MANIFEST_NAME).is_file():
            raise WeightsUnavailable(
                f"the embedded shapes model is missing: {SHAPES_FOLDER / MANIFEST_NAME} does not exist "
                "(a checkout of the repository has it; retrain with `python -m distill.shapes pretrain`)"
            )
        return read_manifest(SHAPES_FOLDER)
    if model == "lightning":
        return lightning_unets(base or SDXL_BASE)
    if model == "lightning-lora":
        return lightning_loras(base or SDXL_BASE)
    folder = Path(model)
    if (folder / MANIFEST_NAME).is_file():
        return read_manifest(folder)
    if (folder / "model_index.json").is_file():
        return ModelSpec(folder.name, str(folder), tuple(Variant(n) for n in (steps or (4,))))
    if folder.exists():
        raise InvalidModel(f"{folder} holds neither {MANIFEST_NAME} nor a diffusers model_index.json")
    raise InvalidModel(f"unknown model {model!r}: use shapes, tiny, random-sdxl, lightning, lightning-lora, or a local folder path")
