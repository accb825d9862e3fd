"""Validation pictures: fixed prompts and seeds, the student at its step count beside its teacher, from pure noise
with trailing timesteps (what the app runs), saved as PNG rows (teacher | student) and logged to tensorboard."""

from pathlib import Path

import torch
from diffusers import StableDiffusionXLPipeline
from PIL import Image

from pipelines.conditioning import time_ids
from pipelines.denoiser import Denoiser
from pipelines.sampling import sample_from_noise, trailing_schedule

from .config import Config


@torch.no_grad()
def encode_prompts(components: dict, prompts, resolution: int, device) -> dict:
    """SDXL conditioning for prompts through the stock pipeline's encode_prompt (both encoders, pooled, time_ids)."""
    pipe = StableDiffusionXLPipeline(**{k: components[k] for k in ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet", "scheduler")})
    pipe.text_encoder.to(device), pipe.text_encoder_2.to(device)
    embeds, _, pooled, _ = pipe.encode_prompt(list(prompts), device=device, num_images_per_prompt=1, do_classifier_free_guidance=False)
    return {"encoder_hidden_states": embeds, "text_embeds": pooled, "time_ids": time_ids(resolution, resolution, len(prompts), device)}


def validation_inputs(config: Config, components: dict, device):
    """Fixed (prompt, seed) pairs: conditioning and the pure-noise start latents, built once per run."""
    prompts = [p for p in config.train.validation_prompts for _ in config.train.validation_seeds]
    if not prompts:
        return None
    cond = encode_prompts(components, prompts, config.data.resolution, device)
    size = config.data.resolution // 8
    noise = torch.stack(
        [
            torch.randn((components["unet"].config.in_channels, size, size), generator=torch.Generator().manual_seed(s))
            for _ in config.train.validation_prompts
            for s in config.train.validation_seeds
        ]
    ).to(device)
    return cond, noise


@torch.no_grad()
def sample_latents(unet, noise, steps: int, cond: dict, alphas_bar, prediction_type: str, guidance_scale: float = 1.0):
    """Clean latents from unit noise in `steps` trailing steps: the studio's sampler and denoiser, so these pictures
    are the ones the app will draw from the same weights, seeds and prompts."""
    timesteps, sigmas = trailing_schedule(steps, alphas_bar)
    return sample_from_noise(Denoiser(unet, prediction_type, cond, guidance_scale), noise.float(), timesteps.to(noise.device), sigmas)


@torch.no_grad()
def decode(vae, latents) -> torch.Tensor:
    images = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()


def save_validation(path: Path, teacher_images, student_images, writer, tag: str, step: int):
    """One row per (prompt, seed): teacher | student."""
    rows = torch.cat([torch.cat([a, b], dim=2) for a, b in zip(teacher_images, student_images)], dim=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rows.permute(1, 2, 0).numpy()).save(path)
    if writer is not None:
        writer.add_image(tag, rows, step)
