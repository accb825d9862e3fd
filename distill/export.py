"""Export a training run for the app and for other tools.

For every finished stage: its student as a diffusers UNet folder (what the manifest points at), and, when the stage
trained a LoRA, that LoRA in diffusers format (`StableDiffusionXLPipeline.load_lora_weights`) and kohya/ComfyUI
format. A stage's trained LoRA is relative to the UNet its stage started from (the previous stage's student; the
base model for the first stage), because each stage's LoRA is merged before the next stage trains; the full UNet
folders need no base. So that a step count can also be applied to the original base (as the published Lightning
LoRAs are), every stage also gets a LoRA relative to the base: the low-rank extraction of student - base
(`lora_from_base/`, rank 64 by default), with its approximation error recorded in the manifest.
"""

import json
from pathlib import Path

import torch
from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
from safetensors.torch import load_file, save_file

from pipelines.errors import StudioError
from pipelines.variants import MANIFEST_NAME, SDXL_SIZES, Variant, write_manifest

from .checkpoint import atomic_dir, link_tree
from .config import Config
from .lora import extract_lora, lora_state_dict_diffusers
from .stages import load_components, stage_dir

DIFFUSERS_LORA = "pytorch_lora_weights.safetensors"


def to_kohya(state_dict: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """`down_blocks.1.attentions.0.proj_in.lora_A.weight` -> `lora_unet_down_blocks_1_attentions_0_proj_in.lora_down.weight`
    (lora_B -> lora_up) plus one `.alpha` per module; kohya scales by alpha / rank, PEFT by lora_alpha / r."""
    out = {}
    for key, value in state_dict.items():
        module, kind = key.rsplit(".lora_", 1)  # kind: "A.weight" / "B.weight"
        name = "lora_unet_" + module.replace(".", "_")
        out[f"{name}.{'lora_down' if kind.startswith('A') else 'lora_up'}.weight"] = value
        out[f"{name}.alpha"] = torch.tensor(float(alpha))
    return out


def _write_lora(folder: Path, name: str, state_dict: dict, rank: int) -> dict:
    StableDiffusionXLPipeline.save_lora_weights(folder, unet_lora_layers=state_dict, weight_name=DIFFUSERS_LORA)
    save_file(to_kohya(state_dict, rank), folder / f"{name}_kohya.safetensors")
    return {"diffusers": f"{folder.parent.name}/{folder.name}/{DIFFUSERS_LORA}", "kohya": f"{folder.parent.name}/{folder.name}/{name}_kohya.safetensors"}


def export(config: Config, out, stages=None, base_lora_rank: int | None = 64) -> Path:
    """Write every finished stage (or the named ones) and the manifest under `out`; returns the folder.
    base_lora_rank: rank of each stage's LoRA relative to the original base (None: do not extract)."""
    out = Path(out)
    finished = [s for s in config.stages if (stage_dir(config, s.name) / "stage.json").is_file()]
    if stages:
        unknown = sorted(set(stages) - {s.name for s in config.stages})
        if unknown:
            raise StudioError(f"unknown stage(s) {unknown}; the plan has {[s.name for s in config.stages]}")
        unfinished = sorted(set(stages) - {s.name for s in finished})
        if unfinished:
            raise StudioError(f"stage(s) {unfinished} have not finished training in {config.train.output_dir}")
        finished = [s for s in finished if s.name in stages]
    if not finished:
        raise StudioError(f"no finished stage under {Path(config.train.output_dir) / 'stages'}; train first")

    variants, loras = [], {}
    base_unet = load_components(config.model)["unet"] if base_lora_rank else None
    with atomic_dir(out) as tmp:
        for stage in finished:
            source = stage_dir(config, stage.name)
            info = json.loads((source / "stage.json").read_text())
            link_tree(source / "unet", tmp / stage.name / "unet")
            variants.append(Variant(stage.student_steps, stage.prediction_type, unet_dir=f"{stage.name}/unet", source_stage=stage.name))
            entry = {}
            if info["lora_file"]:
                previous = config.stages[config.stages.index(stage) - 1].name if config.stages.index(stage) else "base"
                entry = _write_lora(tmp / stage.name / "lora", stage.name, load_file(source / info["lora_file"]), info["lora_rank"])
                entry["applies_to"] = previous
            if base_unet is not None:
                student = UNet2DConditionModel.from_pretrained(source / "unet", use_safetensors=True)
                wrapped, errors = extract_lora(student, base_unet, base_lora_rank)
                state = {k: v.contiguous() for k, v in lora_state_dict_diffusers(wrapped).items()}
                entry["from_base"] = _write_lora(tmp / stage.name / "lora_from_base", stage.name, state, base_lora_rank) | {
                    "applies_to": "base",
                    "rank": base_lora_rank,
                    **errors,
                }
            if entry:
                loras[stage.name] = entry
        base = config.model.base
        sized = {}
        if Path(base).exists():  # a local base folder: record where it is, not where the run happened to start
            base = str(Path(base).resolve())
            if not (Path(base) / MANIFEST_NAME).is_file() and config.data.resolution != SDXL_SIZES[1]:
                # A base of one's own says nothing of its size, so its students would serve SDXL's 1024: record the
                # size they were trained at (a base with a manifest passes its own on to the students it loads).
                sized["resolution"] = config.data.resolution
        write_manifest(
            tmp,
            base,
            variants,
            scheduler={"name": "EulerDiscreteScheduler", "timestep_spacing": "trailing"},
            loras=loras,
            distilled_with=config.path or "inline config",
            **sized,
        )
    return out
