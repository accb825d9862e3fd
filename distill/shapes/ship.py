"""Ship the trained base model into the studio: a diffusers SDXL folder in fp16 (unet, vae, vae_tiny, both text
encoders and tokenizers, scheduler) plus the studio manifest. The base UNet is the reference variant (32 Euler
steps, CFG 5) and also serves the fewer-step variants, so the Compare panel shows what plain few-step sampling of
an undistilled model looks like."""

import shutil
from pathlib import Path

import torch
from diffusers import AutoencoderTiny, StableDiffusionXLPipeline

from pipelines.variants import SHAPES_FOLDER, Variant, write_manifest

from ..checkpoint import atomic_dir
from .config import PretrainConfig
from .parts import final_dir
from .train_autoencoders import load_vae

REFERENCE_STEPS, REFERENCE_GUIDANCE = 32, 5.0
# The live stream types with the fewest steps at which the undistilled base still draws its prompt as well as at its
# reference (8 Euler steps: 58 % vs 59 % single-object adherence; 4 steps: 31 %; docs/shapes.md).
LIVE_STEPS = 8
# The judge is an evaluation tool, not part of the model: it ships beside the model folder.
JUDGE_FILE = SHAPES_FOLDER.parent.parent / "shapes_judge.safetensors"
EXAMPLES = ("a red circle on the left on a white background", "a small blue star at the top right on a black background",
            "green square, center, gray background", "a yellow triangle on the left and a purple heart on the right",
            "a pink heart at the bottom", "a red star in the middle")
DESCRIPTION = "a small model trained on a world of coloured shapes"


def base_variants(steps=(REFERENCE_STEPS, 8, 4, 2, 1), guidance: float = REFERENCE_GUIDANCE) -> list[Variant]:
    return [Variant(n, "epsilon", guidance_scale=guidance) for n in steps]


def ship(c: PretrainConfig, out: Path, judge_out: Path = JUDGE_FILE, variants: list[Variant] | None = None,
         live_steps: int = LIVE_STEPS) -> Path:
    """Write <out> (replacing it atomically) and the judge from the finished pre-training run of config `c`."""
    source = final_dir(c, "unet") / "pipeline"
    if not (source / "model_index.json").is_file():
        raise FileNotFoundError(f"{source} does not exist: finish `python -m distill.shapes pretrain` first")
    # The autoencoder as it stands now (its decoder may have been refined after the UNet finished; same encoder).
    pipe = StableDiffusionXLPipeline.from_pretrained(source, use_safetensors=True, vae=load_vae(c))
    vae_tiny = AutoencoderTiny.from_pretrained(final_dir(c, "vae_tiny") / "vae_tiny", use_safetensors=True)
    variants = variants or base_variants()
    with atomic_dir(Path(out)) as tmp:
        pipe.to(torch.float16).save_pretrained(tmp)
        vae_tiny.to(torch.float16).save_pretrained(tmp / "vae_tiny")
        write_manifest(tmp, ".", variants, description=DESCRIPTION, reference_steps=REFERENCE_STEPS,
                       live_steps=live_steps, resolution=c.world.resolution,
                       examples=list(EXAMPLES))
    shutil.copyfile(final_dir(c, "judge") / "judge.safetensors", judge_out)
    return Path(out)
