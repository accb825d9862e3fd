"""`python -m distill.shapes eval`: generate the fixed evaluation prompts with a model through the studio's engine
(what the studio serves is what is measured), render real images of the same prompts, and score both with the judge.

Prompt groups: `single` (one object), `two` (two objects) and `held_out` (one object of a colour x shape pair the
base model never saw). Prompts come from a fixed seed; each is generated with several seeds (diversity needs them).
"""

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipelines.errors import StudioError

from . import judge as judge_lib
from . import metrics, stats
from .captions import Spec, caption, scene_for
from .world import HELD_OUT_PAIRS, render, scene_from_seed

PROMPT_SEED = 30_000_001
GROUPS = ("single", "two", "held_out")
ADHERENCE_KINDS = ("all", "no_background")  # every asked attribute right; the same without the background
BOOTSTRAP_SEED = 7  # every row resamples the same prompts, so rows of one run are comparable
NOT_JSON = ("samples", "per_image", "frechet_resamples")


@dataclass(frozen=True)
class Prompt:
    text: str
    spec: Spec
    group: str


def _group_scene(group: str, rng: random.Random):
    while True:
        scene = scene_from_seed(rng.getrandbits(62), n_objects=2 if group == "two" else 1, held_out=group == "held_out")
        pair_held_out = any((o.colour, o.shape) in HELD_OUT_PAIRS for o in scene.objects)
        if pair_held_out == (group == "held_out"):
            return scene


def prompt_set(per_group: int) -> dict[str, list[Prompt]]:
    """The first `per_group` prompts of each group (a fixed sequence, so smaller sets are prefixes of larger ones).
    Every prompt names each object's place, as a user of this world would."""
    out = {}
    for group in GROUPS:
        rng = random.Random(f"{PROMPT_SEED}-{group}")
        prompts = []
        while len(prompts) < per_group:
            text, spec = caption(_group_scene(group, rng), rng)
            if all(o.position for o in spec.objects):
                prompts.append(Prompt(text, spec, group))
        out[group] = prompts
    return out


def real_images(prompts: list[Prompt], seeds: list[int], resolution: int, salt: str = "real") -> np.ndarray:
    """One render per (prompt, seed) of a scene the prompt truly describes (open attributes drawn from the seed)."""
    return np.stack([render(scene_for(p.spec, random.Random(f"{salt}-{p.text}-{s}")), resolution) for p in prompts for s in seeds])


def judged_resolution(engine, judge, model: str) -> int:
    """The size to generate at: the model's own, which must be the one the judge reads (a model without the world's
    resolution in its manifest draws at SDXL's 1024 px, slowly, and the judge then fails on every image)."""
    if engine.default_size != judge.resolution:
        raise StudioError(
            f"{model} draws at {engine.default_size} px but the judge reads {judge.resolution} px images: give the model a "
            f'studio_manifest.json with "resolution": {judge.resolution} (as `python -m distill.shapes ship` writes)'
        )
    return judge.resolution


def generate(engine, prompts: list[Prompt], seeds: list[int], steps: int, resolution: int, batch_size: int = 8):
    """uint8 images for every (prompt, seed), and the engine's mean wall milliseconds per image."""
    from pipelines.requests import GenerationRequest

    requests = [GenerationRequest(p.text, seed=s, steps=steps, width=resolution, height=resolution) for p in prompts for s in seeds]
    engine.generate(requests[:1])  # warm caches and allocator before timing
    images, began = [], time.perf_counter()
    for i in range(0, len(requests), batch_size):
        images += [r.image for r in engine.generate(requests[i : i + batch_size])]
    return np.stack(images), (time.perf_counter() - began) * 1000 / len(requests)


def evaluate(engine, judge, steps: int, per_group: int, seeds_per_prompt: int, resolution: int, resamples: int) -> dict:
    """A variant's images of the evaluation prompts, scored per group and over all prompts."""
    prompts, seeds = _prompts_and_seeds(per_group, seeds_per_prompt)
    images, ms = generate(engine, prompts, seeds, steps, resolution)
    return score(images, prompts, seeds, judge, resolution, resamples) | {"steps": steps, "cpu_ms_per_image": round(ms, 1)}


@torch.no_grad()
def round_trip(vae, judge, per_group: int, seeds_per_prompt: int, resolution: int, resamples: int) -> dict:
    """The autoencoder's ceiling: real renders of the same prompts through encode -> decode, scored as if generated.
    No UNet can do better than its autoencoder lets it."""
    prompts, seeds = _prompts_and_seeds(per_group, seeds_per_prompt)
    x = judge_lib.to_tensor(real_images(prompts, seeds, resolution, salt="round-trip")).to(vae.dtype)
    decoded = torch.cat([vae.decode(vae.encode(b).latent_dist.mode()).sample for b in x.split(32)]).float()
    images = ((decoded.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return score(images, prompts, seeds, judge, resolution, resamples) | {"steps": "autoencoder round trip", "cpu_ms_per_image": None}


def _prompts_and_seeds(per_group: int, seeds_per_prompt: int):
    groups = prompt_set(per_group)
    seeds = list(range(1000, 1000 + seeds_per_prompt))  # held-out seeds: training never samples with a seed
    return [p for g in GROUPS for p in groups[g]], seeds


def score(images: np.ndarray, prompts: list[Prompt], seeds: list[int], judge, resolution: int, resamples: int) -> dict:
    """Metrics per group and over all prompts against real renders of the same prompts, plus the real-vs-real floor
    of the Fréchet distance (two independent real sets of the same size), and 95 % intervals of adherence and the
    Fréchet distance from `resamples` resamples of the prompts."""
    real, real_again = real_images(prompts, seeds, resolution), real_images(prompts, seeds, resolution, salt="floor")
    to_pred = lambda x: judge_lib.predict(judge, judge_lib.to_tensor(x))
    pred, pred_real, pred_again = to_pred(images), to_pred(real), to_pred(real_again)
    specs = [p.spec for p in prompts for _ in seeds]
    names = np.array([p.text for p in prompts for _ in seeds])
    group_of = np.array([p.group for p in prompts for _ in seeds])

    def subset(mask):
        pick = lambda d: {k: v[torch.from_numpy(mask)] for k, v in d.items()}
        idx = np.flatnonzero(mask)
        return metrics.report(pick(pred), pick(pred_real), images[idx], real[idx], [specs[i] for i in idx], names[idx].tolist())

    result = {
        "images": len(images),
        "prompts_per_group": len(prompts) // len(GROUPS),
        "seeds_per_prompt": len(seeds),
        "all": subset(np.ones(len(images), bool)),
    }
    result["all"]["frechet_floor_real_vs_real"] = metrics.frechet_distance(pred_again["features"].numpy(), pred_real["features"].numpy())
    for g in GROUPS:
        result[g] = subset(group_of == g)
    judged = [metrics.image_adherence(pred, i, spec) for i, spec in enumerate(specs)]
    right = {name: np.array([r[name] for r in judged]) for name in ADHERENCE_KINDS}
    features, features_real = pred["features"].numpy(), pred_real["features"].numpy()
    # what paired comparisons need (dropped from JSON): every image's verdicts, and every resample's Fréchet distances
    result["frechet_resamples"] = add_intervals(result, right, features, features_real, names, group_of, resamples)
    result["per_image"] = {"prompt": names, "group": group_of, "right": right}
    result["samples"] = images  # callers that make figures take these; dropped from JSON
    return result


def add_intervals(result: dict, right: dict, features, features_real, names, group_of, resamples: int) -> dict:
    """95 % intervals of every group's and the whole set's adherence (percentile) and Fréchet distance (percentile,
    centred on the point value: stats.centred_interval), from a bootstrap over prompts within each group (seeds stay
    with their prompt; generated and real images are resampled together). Returns the resamples' Fréchet distances
    per group and for "all"."""
    weights = stats.stratified_cluster_weights(names, group_of, resamples, BOOTSTRAP_SEED)
    frechet_groups, frechet_all = stats.frechet_bootstrap(features, features_real, weights, group_of)
    frechet = {"all": frechet_all} | frechet_groups
    everything = np.ones(len(names), bool)
    for key, mask in [("all", everything)] + [(g, group_of == g) for g in GROUPS]:
        result[key]["frechet_ci95"] = stats.centred_interval(result[key]["frechet_distance"], frechet[key])
        result[key]["adherence_ci95"] = {k: stats.percentile_interval(stats.weighted_means(v[mask], weights[:, mask])) for k, v in right.items()}
    return frechet


def summary_row(result: dict) -> dict:
    """The table's columns for one evaluated model, with the 95 % intervals of single-object adherence and Fréchet."""
    a, single = result["all"], result["single"]
    return {
        "single": single["adherence"]["all"],
        "single_ci95": single["adherence_ci95"]["all"],
        "single_no_background": single["adherence"]["no_background"],
        "single_no_background_ci95": single["adherence_ci95"]["no_background"],
        "two": result["two"]["adherence"]["all"],
        "held_out": result["held_out"]["adherence"]["all"],
        "frechet": a["frechet_distance"],
        "frechet_ci95": a["frechet_ci95"],
        "frechet_floor": a["frechet_floor_real_vs_real"],
        "sharpness": a["sharpness"],
        "diversity": a["diversity"],
        "colour_bias": a["mean_colour_bias"],
        "count_errors": a["count_error"],
        "cpu_ms_per_image": result["cpu_ms_per_image"],
    }


def write_json(results: list[dict], path: Path, model: str, paired: list[dict] | None = None) -> None:
    """One row per evaluated variant: the summary columns and every metric per prompt group; then the paired
    comparisons, if any."""
    rows = [{"model": model} | {k: v for k, v in r.items() if k not in NOT_JSON} | {"summary": summary_row(r)} for r in results]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({"rows": rows} | ({"paired": paired} if paired else {}), indent=1))


COLUMNS = (  # key, title, format; a key with a `key_ci95` in the summary shows its interval in brackets
    ("single", "single", "{:.0%}"),
    ("single_no_background", "single w/o background", "{:.0%}"),
    ("two", "two-object", "{:.0%}"),
    ("held_out", "held-out pairs", "{:.0%}"),
    ("frechet", "Fréchet", "{:.0f}"),
    ("frechet_floor", "(floor)", "{:.0f}"),
    ("sharpness", "sharpness", "{:.2f}"),
    ("diversity", "diversity", "{:.2f}"),
    ("colour_bias", "colour bias", "{:.1f}"),
    ("count_errors", "count errors", "{:.0%}"),
    ("cpu_ms_per_image", "CPU ms/image", "{:.0f}"),
)


def _cell(row: dict, key: str, fmt: str) -> str:
    if row[key] is None:
        return "–"
    interval = row.get(f"{key}_ci95")
    return fmt.format(row[key]) + (" [" + "–".join(fmt.format(x) for x in interval) + "]" if interval else "")


def markdown_table(results: list[dict], model: str) -> str:
    head = "| model | steps | " + " | ".join(title for _, title, _ in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 2)]
    for r in results:
        row = summary_row(r)
        lines.append(f"| {r.get('label', model)} | {r['steps']} | " + " | ".join(_cell(row, key, fmt) for key, _, fmt in COLUMNS) + " |")
    return "\n".join(lines)


def save_grid(results: list[dict], path: Path, per_group: int = 2, labels: list[str] | None = None) -> None:
    """Rows: the evaluated variants (labelled on the left); columns: the first `per_group` prompts of each group at
    the first seed."""
    from PIL import Image, ImageDraw

    first = results[0]
    seeds, n = first["seeds_per_prompt"], first["prompts_per_group"]
    picks = [(g * n + k) * seeds for g in range(len(GROUPS)) for k in range(per_group)]
    rows = []
    for r, label in zip(results, labels or [_row_label(r) for r in results]):
        strip = np.concatenate([r["samples"][i] for i in picks], axis=1)
        tag = Image.new("RGB", (150, strip.shape[0]), (255, 255, 255))
        ImageDraw.Draw(tag).multiline_text((6, strip.shape[0] // 2 - 12), label, fill=(0, 0, 0))
        rows.append(np.concatenate([np.asarray(tag), strip], axis=1))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)


def _row_label(result: dict) -> str:
    steps = result["steps"]
    text = steps.replace(" round ", "\nround ") if isinstance(steps, str) else f"{steps} step{'s' if steps > 1 else ''}"
    return f"{result['label']}\n{text}" if "label" in result else text
