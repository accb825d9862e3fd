"""Ship the trained base model into the studio: a diffusers SDXL folder in fp16 (unet, vae, vae_tiny, both text
encoders and tokenizers, scheduler) plus the studio manifest. The base UNet is the reference variant (32 Euler
steps, CFG 5) and serves the fewer-step variants until `ship_students` puts distilled students in their place, so
the Compare panel shows the reference against what serves each step count."""

import json
import shutil
from pathlib import Path

import torch
from diffusers import AutoencoderTiny, StableDiffusionXLPipeline, UNet2DConditionModel

from pipelines.architectures import ASSETS
from pipelines.errors import StudioError
from pipelines.variants import MANIFEST_NAME, SHAPES_FOLDER, Variant, read_manifest, write_manifest

from ..checkpoint import atomic_dir
from .config import PretrainConfig
from .parts import final_dir
from .train_autoencoders import load_vae

REFERENCE_STEPS, REFERENCE_GUIDANCE = 32, 5.0
# Without students, the live stream types with the fewest steps at which the undistilled base still draws its prompt
# nearly as well as at its reference (8 Euler steps: 81 % single-object adherence against 86 % for the shipped base,
# 58 against 59 % for the pre-trained one, whose 4 steps fell to 31 %; docs/shapes.md).
LIVE_STEPS = 8
# The judge is an evaluation tool, not part of the model: it ships beside the model folder.
JUDGE_FILE = SHAPES_FOLDER.parent.parent / "shapes_judge.safetensors"
EXAMPLES = (
    "a red circle on the left on a white background",
    "a small blue star at the top right on a black background",
    "green square, center, gray background",
    "a yellow triangle on the left and a purple heart on the right",
    "a pink heart at the bottom",
    "a red star in the middle",
)
DESCRIPTION = "a small model trained on a world of coloured shapes"


def base_variants(steps=(REFERENCE_STEPS, 8, 4, 2, 1), guidance: float = REFERENCE_GUIDANCE) -> list[Variant]:
    return [Variant(n, "epsilon", guidance_scale=guidance) for n in steps]


def ship(c: PretrainConfig, out: Path, judge_out: Path | None = JUDGE_FILE, variants: list[Variant] | None = None, live_steps: int = LIVE_STEPS) -> Path:
    """Write <out> (replacing it atomically) and, unless `judge_out` is None, the judge from the finished pre-training
    run of config `c`."""
    source = final_dir(c, "unet") / "pipeline"
    if not (source / "model_index.json").is_file():
        raise FileNotFoundError(f"{source} does not exist: finish `python -m distill.shapes pretrain` first")
    # The autoencoder as it stands now (its decoder may have been refined after the UNet finished; same encoder).
    pipe = StableDiffusionXLPipeline.from_pretrained(source, use_safetensors=True, vae=load_vae(c))
    vae_tiny = AutoencoderTiny.from_pretrained(final_dir(c, "vae_tiny") / "vae_tiny", use_safetensors=True)
    variants = variants or base_variants()
    with atomic_dir(Path(out)) as tmp:
        pipe.to(torch.float16).save_pretrained(tmp)
        compact_tokenizers(tmp)
        vae_tiny.to(torch.float16).save_pretrained(tmp / "vae_tiny")
        write_manifest(
            tmp,
            ".",
            variants,
            description=DESCRIPTION,
            reference_steps=REFERENCE_STEPS,
            live_steps=live_steps,
            resolution=c.world.resolution,
            examples=list(EXAMPLES),
        )
    if judge_out is not None:
        shutil.copyfile(final_dir(c, "judge") / "judge.safetensors", judge_out)
    return Path(out)


def compact_tokenizers(folder: Path) -> None:
    """Put the repository's CLIP tokenizer files (vocab.json + merges.txt, 1.5 MB) where save_pretrained wrote a 3.5 MB
    tokenizer.json per tokenizer: the same ids for every text, and room in the model's size budget for the students."""
    for name in ("tokenizer", "tokenizer_2"):
        shutil.rmtree(Path(folder) / name, ignore_errors=True)
        shutil.copytree(ASSETS / name, Path(folder) / name)


def ship_students(students: dict[int, Path], live_steps: int, folder: Path = SHAPES_FOLDER) -> Path:
    """Serve these step counts with distilled students: `students` maps a step count to a `distill export` folder,
    whose UNet for that count is copied in fp16 to <folder>/students/<n>step/unet and replaces the base in the
    manifest (without CFG: the students have it distilled in). Every other step count is served by the base again."""
    folder = Path(folder)
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    variants = {v.steps: v for v in base_variants([entry["steps"] for entry in manifest["variants"]])}
    if REFERENCE_STEPS in students:
        raise StudioError(f"{REFERENCE_STEPS} steps is the base model's reference; it is not replaced by a student")
    for steps, export in sorted(students.items()):
        if steps not in variants:
            raise StudioError(f"the model offers {sorted(variants)} steps, not {steps}")
        offered = read_manifest(export)
        try:
            student = offered.variant(steps)
        except KeyError:
            raise StudioError(f"{export} has no {steps}-step student (it has {sorted(v.steps for v in offered.variants)})") from None
        if student.unet_dir is None:
            raise StudioError(f"{export}: the {steps}-step variant is not a full UNet (only `distill export` folders are shipped)")
        target = f"students/{steps}step/unet"
        with atomic_dir(folder / target) as tmp:
            UNet2DConditionModel.from_pretrained(Path(export) / student.unet_dir).to(torch.float16).save_pretrained(tmp)
        plan = json.loads((Path(export) / MANIFEST_NAME).read_text()).get("distilled_with", str(export))
        variants[steps] = Variant(steps, student.prediction_type, unet_dir=target, source_stage=f"{student.source_stage} of {plan}")
    if live_steps not in variants:
        raise StudioError(f"live steps {live_steps}: the model offers {sorted(variants)}")
    for stale in (folder / "students").glob("*step"):  # students shipped before and not now
        if int(stale.name.removesuffix("step")) not in students:
            shutil.rmtree(stale)
    distilled = sorted(students, reverse=True)
    # The variants are rebuilt without their measured adherence (new weights are unmeasured), and so lose what it means.
    extras = {k: v for k, v in manifest.items() if k not in ("format", "base_model", "variants", "adherence_measure")} | {
        "live_steps": live_steps,
        "description": DESCRIPTION + (f"; its {'/'.join(map(str, distilled))}-step variants are distilled students" if distilled else ""),
    }
    write_manifest(folder, manifest["base_model"], list(variants.values()), **extras)
    return folder


def record_adherence(benchmark: Path, folder: Path = SHAPES_FOLDER) -> dict[int, float]:
    """Write each variant's measured adherence into the model's manifest, from a `compare` JSON whose rows judged the
    shipped weights: exactly one row per variant's step count, all on the same prompts and seeds. The figure is the
    row's single-object adherence (every asked attribute right); the studio labels variants from it."""
    rows = json.loads(Path(benchmark).read_text())["rows"]
    manifest = json.loads((Path(folder) / MANIFEST_NAME).read_text())
    judged = {(row["prompts_per_group"], row["seeds_per_prompt"]) for row in rows}
    if len(judged) != 1:
        raise StudioError(f"{benchmark}: its rows were judged on different prompt sets {sorted(judged)}; one comparison is needed")
    variants = []
    for entry in manifest["variants"]:
        matching = [row for row in rows if row["steps"] == entry["steps"]]
        if len(matching) != 1:
            raise StudioError(f"{benchmark}: {len(matching)} rows at {entry['steps']} steps; {folder} needs one per variant")
        variants.append(Variant(**entry | {"adherence": round(matching[0]["summary"]["single"], 3)}))
    ((prompts, seeds),) = judged
    extras = {k: v for k, v in manifest.items() if k not in ("format", "base_model", "variants")} | {
        "adherence_measure": f"single-object prompts drawn with every asked attribute right ({prompts} prompts x {seeds} held-out seeds, by the "
        f"shapes judge); {benchmark}"
    }
    write_manifest(folder, manifest["base_model"], variants, **extras)
    return {v.steps: v.adherence for v in variants}
