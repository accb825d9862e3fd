"""A stage's models and artefacts: the base components, the student each stage starts from and saves, its
structure per phase (LoRA added, merged onto fp32 weights), and the files a finished stage leaves in
<output_dir>/stages/<name>/ (unet/, lora.safetensors, lora_student/, stage.json with its lineage and D's
held-out accuracy per adversarial phase).
"""

import copy
import json
from pathlib import Path

import torch
import torch.utils.checkpoint
from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel

from pipelines.architectures import random_sdxl_components, tiny_components
from pipelines.errors import WeightsUnavailable
from pipelines.variants import SHAPES_FOLDER

from . import checkpoint
from .config import Config, config_diff, lineage
from .lora import add_lora, lora_state_dict_diffusers, merge_lora


def load_components(model) -> dict:
    """unet, vae, text encoders, tokenizers, scheduler of the base model (built in code for tiny / random-sdxl)."""
    if model.base == "tiny":
        return tiny_components(model.seed)
    if model.base == "random-sdxl":
        return random_sdxl_components(model.seed)
    source = SHAPES_FOLDER if model.base == "shapes" else model.base  # the embedded model, stored in fp16: train in fp32
    try:
        return StableDiffusionXLPipeline.from_pretrained(source, use_safetensors=True, dtype=torch.float32).components
    except OSError as e:
        raise WeightsUnavailable(
            f"cannot load the base model {model.base!r}: {str(e).splitlines()[0]}. Download it first "
            f"(`hf download {model.base}`) or point model.base at a local diffusers folder."
        ) from None


def stage_dir(config: Config, name: str) -> Path:
    return Path(config.train.output_dir) / "stages" / name


def finished(config: Config, index: int) -> bool:
    """Stage `index` has a saved student trained under this plan's lineage (so it is reused, not retrained)."""
    info = stage_dir(config, config.stages[index].name) / "stage.json"
    return info.is_file() and not config_diff(json.loads(info.read_text()).get("lineage") or {}, lineage(config, index))


def load_unet(config: Config, source: str, components: dict) -> UNet2DConditionModel:
    """A fresh fp32 copy of the base UNet ("base") or of a finished stage's student."""
    if source == "base":
        return copy.deepcopy(components["unet"]).float()
    folder = stage_dir(config, source) / "unet"
    if not (folder / "config.json").is_file():
        raise checkpoint.CheckpointError(f"stage {source!r} has no saved student at {folder}; run its stage first")
    return UNet2DConditionModel.from_pretrained(folder, use_safetensors=True)


def prediction_type_of(config: Config, source: str) -> str:
    return "epsilon" if source == "base" else next(s.prediction_type for s in config.stages if s.name == source)


def shape_student(student, stage, j: int, lora_rank: int, weight_dtype, seed: int, fp32_base: dict | None = None):
    """Give the student phase j's structure: a LoRA at a stage's first LoRA phase, merged (fp32) at the first full
    phase after it; trainable weights in fp32, a LoRA phase's frozen base in the compute dtype.
    -> (student, fp32_base): the stage's fp32 starting weights under the LoRA (None outside LoRA phases), which the
    caller keeps and hands back, so the merge lands on them."""
    phase = stage.phases[j]
    if phase.params == "lora" and (j == 0 or stage.phases[j - 1].params != "lora"):
        with torch.random.fork_rng(devices=[]):  # LoRA A's init must not depend on what ran before (resume)
            torch.manual_seed(seed)
            add_lora(student, rank=lora_rank)
        # The frozen base runs in the compute dtype below, but the merge must land on the stage's fp32 starting
        # weights: merging onto a bf16-rounded base would erase the small updates of the previous full phases.
        fp32_base = {n: p.detach().to("cpu", torch.float32, copy=True) for n, p in student.named_parameters() if not p.requires_grad}
    if phase.params == "full" and j > 0 and stage.phases[j - 1].params == "lora":
        student, fp32_base = merge_onto_fp32_base(student, fp32_base), None
    if phase.params == "full":
        return student.float().requires_grad_(True), fp32_base
    for p in student.parameters():  # per parameter, so the LoRA weights never pass through the compute dtype
        p.data = p.data.float() if p.requires_grad else p.data.to(weight_dtype)
    return student, fp32_base


def merge_onto_fp32_base(student, fp32_base: dict):
    """The LoRA student as one plain fp32 UNet: the stage's fp32 starting weights put back under the adapters (the
    frozen base may have run in bf16), then the LoRA merged into them."""
    for name, p in student.named_parameters():
        if name in fp32_base:
            p.data = fp32_base[name].to(p.device, copy=True)  # a copy: the caller may merge a deepcopy first
    return merge_lora(student.float())


def _checkpointed_call(module, *args):
    return torch.utils.checkpoint.checkpoint(module.__call__, *args, use_reentrant=False)


def checkpoint_blocks(module):
    """Gradient checkpointing for every diffusers block inside `module` (the discriminator's UNet backbone is not a
    ModelMixin, so it has no enable_gradient_checkpointing of its own)."""
    for block in module.modules():
        if hasattr(block, "gradient_checkpointing"):
            block._gradient_checkpointing_func, block.gradient_checkpointing = _checkpointed_call, True
    return module


def cast_to(module, dtype):
    """module.to(dtype) only when needed: diffusers warns on every cast of a UNet, even a no-op one."""
    if any(p.dtype != dtype for p in module.parameters()):
        module.to(dtype)
    return module


def save_lora(folder: Path, student, rank: int):
    """The LoRA of a stage's last LoRA phase (relative to the stage's starting UNet), diffusers keys, no prefix."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / ".tmp-lora.safetensors"
    save_file({k: v.detach().float().contiguous().cpu() for k, v in lora_state_dict_diffusers(student).items()}, tmp, metadata={"rank": str(rank)})
    tmp.replace(folder / "lora.safetensors")


def save_unet(folder: Path, unet):
    with checkpoint.atomic_dir(folder) as tmp:
        unet.float().save_pretrained(tmp, safe_serialization=True)


def save_stage(config: Config, index: int, student, d_heldout_accuracy: dict):
    stage = config.stages[index]
    folder = stage_dir(config, stage.name)
    save_unet(folder / "unet", student)
    info = {
        "name": stage.name,
        "teacher_steps": stage.teacher_steps,
        "student_steps": stage.student_steps,
        "prediction_type": stage.prediction_type,
        "base_model": config.model.base,
        "lora_file": "lora.safetensors" if (folder / "lora.safetensors").is_file() else None,
        "lora_rank": config.train.lora_rank,
        "lineage": lineage(config, index),
        "d_heldout_accuracy": d_heldout_accuracy,  # per adversarial phase: D's accuracy on fresh pairs at its end
    }
    checkpoint.atomic_write_text(folder / "stage.json", json.dumps(info, indent=1))
