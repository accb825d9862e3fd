"""Training data: image+caption pairs (a folder or tar shards) or prompts alone, cached once as latents.

`precompute` runs the VAE and both text encoders once and writes safetensors shards (latents, prompt embeddings,
pooled embeddings, SDXL micro-conditioning time_ids); training reads only those shards. In prompts mode there are
no images: the base teacher generates each training latent from pure noise (with CFG), as the paper's data-free
stages would.
"""

import io
import json
import tarfile
from dataclasses import dataclass, field
from glob import glob
from pathlib import Path

import torch
from diffusers import StableDiffusionXLPipeline
from PIL import Image, UnidentifiedImageError
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from pipelines.conditioning import micro_conditioning
from pipelines.denoiser import COND_KEYS
from pipelines.errors import StudioError

from .checkpoint import atomic_write_text
from .validation import sample_latents

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
INDEX = "index.json"
KEYS = ("latents", *COND_KEYS)


class DataError(StudioError):
    """A sample that stops the run (on_bad = "stop"), or a data source with nothing usable."""


@dataclass
class Sample:
    name: str  # path, or shard:member, for messages
    caption: str
    image: bytes | None = None  # None: prompts mode, the teacher generates the latent


@dataclass
class Skipped:
    """What was skipped and why, so a run can report "skipped 12 of 10000 (3 unreadable, 9 without caption)"."""

    reasons: dict = field(default_factory=dict)

    def add(self, name: str, reason: str, on_bad: str):
        if on_bad == "stop":
            raise DataError(f'{name}: {reason} (set data.on_bad = "skip" to skip such samples)')
        self.reasons.setdefault(reason, []).append(name)

    @property
    def count(self) -> int:
        return sum(len(v) for v in self.reasons.values())


def folder_samples(folder: Path, skipped: Skipped, on_bad: str):
    """name.jpg + name.txt pairs in a folder (recursively), in sorted order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder")
    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        caption = path.with_suffix(".txt")
        if not caption.is_file():
            skipped.add(str(path), "missing caption", on_bad)
            continue
        yield Sample(str(path), caption.read_text().strip(), path.read_bytes())


def tar_samples(pattern: str, skipped: Skipped, on_bad: str):
    """The same pairs inside tar shards (webdataset layout: members sharing a stem form one sample)."""
    shards = sorted(glob(pattern))
    if not shards:
        raise DataError(f"{pattern}: no tar shards match")
    for shard in shards:
        groups: dict[str, dict[str, bytes]] = {}
        try:
            with tarfile.open(shard) as tar:
                for member in tar:
                    if member.isfile():
                        stem, _, suffix = member.name.rpartition(".")
                        groups.setdefault(stem, {})["." + suffix.lower()] = tar.extractfile(member).read()
        except (tarfile.TarError, OSError) as e:
            skipped.add(shard, f"unreadable shard ({e})", on_bad)
            continue
        for stem in sorted(groups):
            files = groups[stem]
            image = next((files[s] for s in IMAGE_SUFFIXES if s in files), None)
            if image is None:
                continue  # a caption without an image is not a sample
            if ".txt" not in files:
                skipped.add(f"{shard}:{stem}", "missing caption", on_bad)
                continue
            yield Sample(f"{shard}:{stem}", files[".txt"].decode().strip(), image)


def prompt_samples(prompts, samples_per_prompt: int):
    for i, prompt in enumerate(prompts):
        for k in range(samples_per_prompt):
            yield Sample(f"prompt {i} #{k}", prompt)


def prepare_image(data: bytes, resolution: int) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Resize the short side to `resolution`, centre-crop square; -> (3,R,R) in [-1, 1] and SDXL's
    (orig_h, orig_w, crop_top, crop_left) micro-conditioning."""
    image = Image.open(io.BytesIO(data))
    image.load()
    image = image.convert("RGB")
    w, h = image.size
    scale = resolution / min(w, h)
    rw, rh = max(resolution, round(w * scale)), max(resolution, round(h * scale))
    image = image.resize((rw, rh), Image.BICUBIC)
    top, left = (rh - resolution) // 2, (rw - resolution) // 2
    image = image.crop((left, top, left + resolution, top + resolution))
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(resolution, resolution, 3)
    return pixels.permute(2, 0, 1).float() / 127.5 - 1, (h, w, top, left)


def samples(data_config, skipped: Skipped):
    d = data_config
    if d.source == "folder":
        return folder_samples(Path(d.path), skipped, d.on_bad)
    if d.source == "tar":
        return tar_samples(d.path, skipped, d.on_bad)
    if d.source == "prompts":
        return prompt_samples(read_prompts(d), d.samples_per_prompt)
    raise DataError(f"data.source {d.source!r} is already a cache; nothing to precompute")


def read_prompts(d) -> list[str]:
    prompts = list(d.prompts)
    if d.prompts_file:
        prompts += [line.strip() for line in Path(d.prompts_file).read_text().splitlines() if line.strip()]
    return prompts


@torch.no_grad()
def precompute(config, components: dict, out: Path, device="cpu", batch_size: int = 8) -> dict:
    """Encode every sample once into safetensors shards under `out`; returns the index (counts, skipped)."""
    d = config.data
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pipe = StableDiffusionXLPipeline(
        **{k: components[k] for k in ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet", "scheduler")}
    ).to(device)
    alphas_bar = components["scheduler"].alphas_cumprod.to(device)
    generator = torch.Generator(device).manual_seed(config.train.seed)
    skipped, buffer, shards, total = Skipped(), [], [], 0

    def flush():
        nonlocal buffer
        name = f"shard-{len(shards):05d}.safetensors"
        tensors = {k: torch.cat([b[k] for b in buffer]).contiguous().cpu() for k in KEYS}
        tmp = out / f".tmp-{name}"
        save_file(tensors, tmp, metadata={"captions": json.dumps([c for b in buffer for c in b["captions"]])})
        tmp.replace(out / name)
        shards.append({"file": name, "count": len(tensors["latents"])})
        buffer = []

    batch = []
    for sample in tqdm(samples(d, skipped), desc="precompute", unit="sample"):
        if sample.image is not None:
            try:
                pixels, micro = prepare_image(sample.image, d.resolution)
            except (UnidentifiedImageError, OSError, ValueError) as e:
                skipped.add(sample.name, f"unreadable image ({type(e).__name__})", d.on_bad)
                continue
            batch.append((sample, pixels, micro))
        else:
            batch.append((sample, None, (d.resolution, d.resolution, 0, 0)))
        if len(batch) == batch_size:
            buffer.append(_encode(pipe, batch, d, alphas_bar, generator, device))
            batch = []
        if sum(len(b["captions"]) for b in buffer) >= d.shard_size:
            total += sum(len(b["captions"]) for b in buffer)
            flush()
    if batch:
        buffer.append(_encode(pipe, batch, d, alphas_bar, generator, device))
    if buffer:
        total += sum(len(b["captions"]) for b in buffer)
        flush()
    if total == 0:
        raise DataError(f"no usable samples from data.source={d.source!r} {d.path} (skipped {skipped.count})")
    index = {
        "count": total,
        "resolution": d.resolution,
        "shards": shards,
        "skipped": skipped.count,
        "skipped_reasons": {k: len(v) for k, v in skipped.reasons.items()},
        "skipped_names": skipped.reasons,
    }
    atomic_write_text(out / INDEX, json.dumps(index, indent=1))  # written last: its presence means "complete"
    return index


def _encode(pipe, batch, d, alphas_bar, generator, device) -> dict:
    captions = [s.caption for s, _, _ in batch]
    embeds, _, pooled, _ = pipe.encode_prompt(captions, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False)
    rows = [micro_conditioning(micro[:2], micro[2:], (d.resolution, d.resolution)) for _, _, micro in batch]
    cond = {"encoder_hidden_states": embeds, "text_embeds": pooled, "time_ids": torch.tensor(rows, dtype=torch.float32, device=device)}
    if batch[0][1] is not None:
        pixels = torch.stack([p for _, p, _ in batch]).to(device, pipe.vae.dtype)
        latents = pipe.vae.encode(pixels).latent_dist.sample(generator) * pipe.vae.config.scaling_factor
    else:
        size = d.resolution // pipe.vae_scale_factor
        noise = torch.randn((len(batch), pipe.unet.config.in_channels, size, size), generator=generator, device=device)
        latents = sample_latents(pipe.unet, noise, d.generate_steps, cond, alphas_bar, "epsilon", d.generate_guidance)
    return {"latents": latents.float(), **{key: value.float() for key, value in cond.items()}, "captions": captions}


class LatentCache:
    """Random access to precomputed shards without loading them whole (a 1024px dataset is tens of GB)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        index_path = self.folder / INDEX
        if not index_path.is_file():
            raise DataError(f"{self.folder}: no {INDEX}; run `python -m distill precompute --config ...` first")
        self.index = json.loads(index_path.read_text())
        self.rows = [(s["file"], r) for s in self.index["shards"] for r in range(s["count"])]

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, indices) -> dict[str, torch.Tensor]:
        by_shard: dict[str, list[tuple[int, int]]] = {}
        for position, i in enumerate(indices):
            shard, row = self.rows[int(i)]
            by_shard.setdefault(shard, []).append((position, row))
        parts = {k: [None] * len(indices) for k in KEYS}
        for shard, wanted in by_shard.items():
            with safe_open(self.folder / shard, framework="pt") as f:
                for key in KEYS:
                    tensor = f.get_slice(key)
                    for position, row in wanted:
                        parts[key][position] = tensor[row : row + 1]
        return {k: torch.cat(v) for k, v in parts.items()}
