"""One table across models: `python -m distill.shapes compare --row LABEL=MODEL:STEPS,... ... --json out.json`,
and paired comparisons between two of its entries (`--paired A_LABEL:STEPS,B_LABEL:STEPS`).

Every row is evaluated on the same prompts and held-out seeds with the same judge. MODEL is anything `--model`
takes (shapes, a `distill export` folder), or one of three views of a distill run that are not model folders yet:
  lora-phases:RUN_DIR   each stage's student as its LoRA phases left it (before the full-UNet phase)
  from-base:EXPORT_DIR  the original base model with each stage's LoRA relative to it (the "LoRA on any base" row)
  checkpoints:RUN_DIR   one row per kept checkpoint (labelled LABEL@<global step>) of a stage whose student runs the
                        row's step count: the student as training stood there, so a stage can be validated on the
                        judge every `checkpoint_every` steps (keep them all with a large `keep_checkpoints`)
"""

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from safetensors.torch import load_file
from tqdm.auto import tqdm

from pipelines import load_engine
from pipelines.errors import StudioError
from pipelines.variants import MANIFEST_NAME, Variant, write_manifest

from . import evaluate, stats


@dataclass(frozen=True)
class Row:
    label: str
    model: str
    steps: tuple[int, ...]


def parse_row(text: str) -> Row:
    """ "MSE=runs/exports/mse:8,4,2,1" -> Row("MSE", "runs/exports/mse", (8, 4, 2, 1))."""
    label, sep, rest = text.partition("=")
    model, sep2, steps = rest.rpartition(":")
    try:
        counts = tuple(int(s) for s in steps.split(","))
    except ValueError:
        counts = ()
    if not (sep and sep2 and label and model and counts):
        raise StudioError(f"--row {text!r}: expected LABEL=MODEL:STEPS[,STEPS...], e.g. 'MSE=runs/exports/mse:8,4,2,1'")
    return Row(label, model, counts)


def lora_phases_model(run_dir: Path, out: Path) -> Path:
    """A model folder whose variants are the run's stages/<name>/lora_student UNets."""
    variants = []
    for info_path in sorted(Path(run_dir).glob("stages/*/stage.json")):
        info = json.loads(info_path.read_text())
        unet = info_path.parent / "lora_student"
        if unet.is_dir():
            variants.append(Variant(info["student_steps"], info["prediction_type"], unet_dir=str(unet.resolve())))
    if not variants:
        raise StudioError(f"{run_dir}: no stage saved a LoRA-phases student (stages/*/lora_student)")
    Path(out).mkdir(parents=True, exist_ok=True)
    write_manifest(out, "shapes", variants)
    return out


def from_base_model(export_dir: Path, out: Path) -> Path:
    """A model folder: the export's base with, per step count, the export's LoRA relative to that base."""
    manifest = json.loads((Path(export_dir) / MANIFEST_NAME).read_text())
    variants = []
    for entry in manifest["variants"]:
        lora = manifest.get("loras", {}).get(entry.get("source_stage"), {}).get("from_base")
        if lora:
            path = (Path(export_dir) / lora["diffusers"]).resolve()
            variants.append(Variant(entry["steps"], entry["prediction_type"], lora_file=str(path)))
    if not variants:
        raise StudioError(f"{export_dir}: the export has no LoRA relative to the base (export with --base-lora-rank > 0)")
    Path(out).mkdir(parents=True, exist_ok=True)
    write_manifest(out, manifest["base_model"], variants)
    return out


def checkpoint_models(run_dir: Path, steps: tuple[int, ...], out: Path) -> list[tuple[int, Path]]:
    """(global step, model folder) per kept checkpoint of the run whose stage's student runs one of `steps` steps;
    the folder's one variant is the student as the checkpoint holds it. Only a full-UNet phase's checkpoint holds the
    whole student (a LoRA phase's holds its adapters alone), so any other is refused."""
    from distill.config import ModelConfig
    from distill.stages import load_components

    models, structure = [], None
    for folder in sorted(Path(run_dir).glob("checkpoints/checkpoint-*")):  # written atomically: never a half one
        state = json.loads((folder / "state.json").read_text())
        config, progress = state["config"], state["progress"]
        stage = config["stages"][progress["stage"]]
        if stage["student_steps"] not in steps:
            continue
        if stage["phases"][progress["phase"]]["params"] != "full":
            raise StudioError(f"{folder} holds a LoRA phase's adapters, not a whole student: only full-UNet phases' checkpoints can be judged")
        structure = structure or load_components(ModelConfig(**config["model"]))["unet"]  # the UNet's shape; every weight is replaced
        structure.load_state_dict(load_file(folder / "student.safetensors"), strict=True)
        model = Path(out) / folder.name
        structure.save_pretrained(model / "unet", safe_serialization=True)
        write_manifest(model, config["model"]["base"], [Variant(stage["student_steps"], stage["prediction_type"], unet_dir=str((model / "unet").resolve()))])
        models.append((progress["global_step"], model))
    if not models:
        raise StudioError(f"{run_dir}: no kept checkpoint of a stage whose student runs {', '.join(map(str, steps))} steps")
    return models


def resolve(row: Row, scratch: Path) -> list[tuple[str, str, int | None]]:
    """(label, model, global step of a checkpoint or None) for each model the row stands for."""
    kind, _, path = row.model.partition(":")
    views = {"lora-phases": lora_phases_model, "from-base": from_base_model}
    out = scratch / f"{kind}-{len(list(scratch.iterdir()))}"
    if kind == "checkpoints":
        return [(f"{row.label}@{step}", str(model), step) for step, model in checkpoint_models(Path(path), row.steps, out)]
    return [(row.label, str(views[kind](Path(path), out)) if kind in views else row.model, None)]


def compare(rows: list[Row], scorer, per_group: int, seeds: int, resamples: int) -> list[dict]:
    """Evaluate every (row, step count); each result carries its row's label and model."""
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        models = [(row, *model) for row in rows for model in resolve(row, Path(scratch))]
        # Every model is loaded and its size checked before any row spends minutes generating.
        engines = [load_engine(model, device="cpu", steps=list(row.steps)) for row, _, model, _ in models]
        sizes = [evaluate.judged_resolution(engine, scorer, model) for engine, (_, _, model, _) in zip(engines, models)]
        progress = tqdm(total=sum(len(row.steps) for row, *_ in models), desc="compare", unit="row")
        for (row, label, model, trained_steps), engine, resolution in zip(models, engines, sizes):
            for steps in row.steps:
                progress.set_postfix_str(f"{label} {steps}")
                result = evaluate.evaluate(engine, scorer, steps, per_group, seeds, resolution, resamples)
                results.append(result | {"label": label, "model": row.model} | ({"trained_steps": trained_steps} if trained_steps is not None else {}))
                progress.update()
    progress.close()
    return results


@dataclass(frozen=True)
class Pair:
    """Two evaluated (label, steps) entries; differences are b - a."""

    a: tuple[str, int]
    b: tuple[str, int]


def parse_pair(text: str) -> Pair:
    """ "shipped:2,new:2" -> Pair(("shipped", 2), ("new", 2)): the second minus the first."""
    sides = []
    for side in text.split(","):
        label, sep, steps = side.rpartition(":")
        if sep and label and steps.isdigit():
            sides.append((label, int(steps)))
    if len(sides) != 2 or len(text.split(",")) != 2:
        raise StudioError(f"--paired {text!r}: expected A_LABEL:STEPS,B_LABEL:STEPS (differences are B - A), e.g. 'shipped:2,new:2'")
    return Pair(*sides)


def check_pairs(pairs: list[Pair], rows: list[Row]) -> None:
    """Every side of every pair names a row's label and one of its step counts."""
    entries = [(row.label, steps) for row in rows for steps in row.steps]
    for side in (side for pair in pairs for side in (pair.a, pair.b)):
        if side not in entries:
            raise StudioError(f"--paired: no row evaluates {side[0]}:{side[1]} (the rows give {', '.join(f'{k[0]}:{k[1]}' for k in entries)})")


def paired(results: list[dict], pair: Pair, resamples: int) -> dict:
    """B minus A on the same prompts and seeds, per group: adherence (the difference, its 95 % interval from a
    bootstrap over prompts in which both sides take the same resample, McNemar's discordant images with the exact p)
    and the Fréchet distance (the difference and its centred 95 % interval, both against the same real images)."""
    by_key = {(r["label"], r["steps"]): r for r in results}
    a, b = by_key[pair.a]["per_image"], by_key[pair.b]["per_image"]
    weights = stats.stratified_cluster_weights(a["prompt"], a["group"], resamples, evaluate.BOOTSTRAP_SEED)
    adherence = {}
    for group in evaluate.GROUPS:
        mask = a["group"] == group
        adherence[group] = {
            kind: stats.paired_difference(a["right"][kind][mask], b["right"][kind][mask], weights[:, mask]) for kind in evaluate.ADHERENCE_KINDS
        }
    frechet = {}
    for group in ("all",) + evaluate.GROUPS:  # both rows' resamples drew the same prompts (the same weights)
        point = by_key[pair.b][group]["frechet_distance"] - by_key[pair.a][group]["frechet_distance"]
        resampled = by_key[pair.b]["frechet_resamples"][group] - by_key[pair.a]["frechet_resamples"][group]
        frechet[group] = {"difference": point, "difference_ci95": stats.centred_interval(point, resampled)}
    return {"a": "{}:{}".format(*pair.a), "b": "{}:{}".format(*pair.b), "adherence": adherence, "frechet": frechet}


def paired_table(comparison: dict) -> str:
    """Markdown: per group, B - A in adherence (with and without the background) and in Fréchet distance, each with
    its interval, and McNemar's discordant images for adherence."""
    lines = [
        f"{comparison['b']} minus {comparison['a']}, same prompts and seeds:",
        "| group | measure | B - A | 95 % interval | only A right | only B right | McNemar p |",
        "|---|---|---|---|---|---|---|",
    ]
    for group, kinds in comparison["adherence"].items():
        for kind, d in kinds.items():
            lo, hi = d["difference_ci95"]
            cells = (
                group,
                f"adherence ({kind})",
                f"{d['difference']:+.1%}",
                f"[{lo:+.1%}, {hi:+.1%}]",
                d["only_a_right"],
                d["only_b_right"],
                f"{d['mcnemar_p']:.3g}",
            )
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    for group, d in comparison["frechet"].items():
        lo, hi = d["difference_ci95"]
        lines.append(f"| {group} | Fréchet | {d['difference']:+.0f} | [{lo:+.0f}, {hi:+.0f}] | | | |")
    return "\n".join(lines)
