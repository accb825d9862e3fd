"""The shapes world's autoencoders and latent cache: AutoencoderKL first (SDXL's 8x, 4 channels; its scaling factor
is 1 / std of the latents, as SDXL set 0.13025), then an AutoencoderTiny taught to reproduce it (the preview
decoder), then every training scene encoded once so the UNet trains on cached latents."""

import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate.logging import get_logger
from diffusers import AutoencoderKL
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from . import judge as judge_lib
from . import models
from .config import PretrainConfig
from .data import images, training_crops, training_scene
from .loop import Part, make_accelerator
from .parts import final_dir, finish, is_done, lr_at, set_lr, train_part
from .world import scene_from_seed

log = get_logger(__name__)  # accelerate's: logs on the main process only, as accelerator.print did

HELD_OUT_SEED = 20_000_003  # evaluation scenes: a seed range training never draws from


def weighted_l1(x_hat: torch.Tensor, x: torch.Tensor, mask: torch.Tensor, object_weight: float) -> torch.Tensor:
    """mean(w |x_hat - x|) with w = 1 + (object_weight - 1) * mask: objects are a few % of the pixels but all of the meaning."""
    return ((1 + (object_weight - 1) * mask) * (x_hat - x).abs()).mean()


def edge_l1(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """L1 between horizontal and vertical finite differences: penalises blurred edges that plain L1 tolerates."""
    dx = lambda t: t[..., :, 1:] - t[..., :, :-1]
    dy = lambda t: t[..., 1:, :] - t[..., :-1, :]
    return (dx(x_hat) - dx(x)).abs().mean() + (dy(x_hat) - dy(x)).abs().mean()


def psnr(x_hat: torch.Tensor, x: torch.Tensor) -> float:
    """10 log10(4 / MSE) for images in [-1, 1] (peak-to-peak 2)."""
    return float(10 * torch.log10(4 / F.mse_loss(x_hat.clamp(-1, 1), x)))


def held_out_scenes(n: int):
    """Evaluation scenes, held-out colour x shape pairs included."""
    rng = random.Random(HELD_OUT_SEED)
    return [scene_from_seed(rng.getrandbits(62), held_out=True) for _ in range(n)]


def train_vae(c: PretrainConfig, resume: bool, stop_after: int | None = None) -> dict:
    folder, v = Path(c.train.output_dir) / "vae", c.vae
    accelerator = make_accelerator(folder)
    vae = models.vae(c)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=v.lr, weight_decay=0.0)

    def step(i: int, generator: torch.Generator) -> dict:
        set_lr(optimizer, lr := lr_at(i, v.steps, v.lr, 100))
        x, mask = training_crops(c.world.seed, c.world.train_scenes, c.world.resolution, v.batch_size, v.crop, generator, with_mask=True)
        posterior = vae.encode(x).latent_dist
        x_hat = vae.decode(posterior.sample(generator)).sample
        l1, edges, kl = weighted_l1(x_hat, x, mask, v.object_weight), edge_l1(x_hat, x), posterior.kl().mean()
        loss = l1 + v.edge_weight * edges + v.kl_weight * kl
        accelerator.backward(loss)
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return {"loss": loss.item(), "l1_weighted": l1.item(), "edge_l1": edges.item(), "kl": kl.item(), "lr": lr}

    began = time.perf_counter()
    train_part(c, Part("vae", {"vae": vae}, optimizer, step, v.steps), accelerator, resume, stop_after)
    vae.eval()
    with torch.no_grad():
        fit = images([training_scene(c.world.seed, k) for k in range(512)], c.world.resolution)
        latents = torch.cat([vae.encode(b).latent_dist.sample() for b in fit.split(64)])
        scaling_factor = float(1 / latents.std())
    vae.register_to_config(scaling_factor=scaling_factor)
    report = {
        "scaling_factor": scaling_factor,
        "latent_std": float(latents.std()),
        **reconstruction_report(c, vae.decode, vae),
        "train_seconds_this_run": round(time.perf_counter() - began, 1),
    }
    log.info(
        f"vae: scaling factor {scaling_factor:.4f}, held-out PSNR {report['psnr']:.2f} dB, "
        f"judge on reconstructions {report['judge_all_attributes']:.1%} (on the renders {report['judge_all_attributes_real']:.1%})"
    )
    return finish(c, "vae", lambda tmp: vae.save_pretrained(tmp / "vae"), report)


@torch.no_grad()
def reconstruction_report(c: PretrainConfig, decode, vae: AutoencoderKL, n: int = 256) -> dict:
    """Held-out PSNR of encode -> decode (mode) and the judge's all-attributes accuracy on reconstructions vs renders."""
    scenes = held_out_scenes(n)
    x = images(scenes, c.world.resolution)
    x_hat = torch.cat([decode(vae.encode(b).latent_dist.mode()).sample for b in x.split(64)])
    report = {"psnr": psnr(x_hat, x), "held_out_images": n}
    judge_path = final_dir(c, "judge") / "judge.safetensors"
    if judge_path.is_file():
        judge = judge_lib.load(judge_path)
        target = judge_lib.labels(scenes)
        report["judge_all_attributes"] = judge_lib.all_correct(judge, x_hat.clamp(-1, 1), target)
        report["judge_all_attributes_real"] = judge_lib.all_correct(judge, x, target)
    return report


def load_vae(c: PretrainConfig) -> AutoencoderKL:
    """The autoencoder as it stands: with the refined decoder once that part has finished (same encoder)."""
    part = "decoder" if is_done(c, "decoder") else "vae"
    return AutoencoderKL.from_pretrained(final_dir(c, part) / "vae", use_safetensors=True).eval()


def train_decoder(c: PretrainConfig, resume: bool, stop_after: int | None = None) -> dict:
    """The decoder (and post_quant_conv) trained on, the encoder frozen: cached latents and a UNet trained on them
    stay valid while the pictures improve. Same losses as the autoencoder, without the KL term (the encoder is fixed)."""
    folder, d = Path(c.train.output_dir) / "decoder", c.decoder
    accelerator = make_accelerator(folder)
    vae = AutoencoderKL.from_pretrained(final_dir(c, "vae") / "vae", use_safetensors=True)
    vae.requires_grad_(False)
    trained = [vae.decoder, vae.post_quant_conv]
    params = [p for m in trained for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=d.lr, weight_decay=0.0)

    def step(i: int, generator: torch.Generator) -> dict:
        set_lr(optimizer, lr := lr_at(i, d.steps, d.lr, 50))
        x, mask = training_crops(c.world.seed, c.world.train_scenes, c.world.resolution, d.batch_size, c.vae.crop, generator, with_mask=True)
        with torch.no_grad():
            z = vae.encode(x).latent_dist.sample(generator)
        x_hat = vae.decode(z).sample
        l1, edges = weighted_l1(x_hat, x, mask, d.object_weight), edge_l1(x_hat, x)
        loss = l1 + d.edge_weight * edges
        accelerator.backward(loss)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return {"loss": loss.item(), "l1_weighted": l1.item(), "edge_l1": edges.item(), "lr": lr}

    began = time.perf_counter()
    train_part(c, Part("decoder", {"vae": vae}, optimizer, step, d.steps), accelerator, resume, stop_after)
    vae.eval()
    report = reconstruction_report(c, vae.decode, vae) | {"train_seconds_this_run": round(time.perf_counter() - began, 1)}
    log.info(f"decoder: held-out PSNR {report['psnr']:.2f} dB, judge on reconstructions {report.get('judge_all_attributes', float('nan')):.1%}")
    return finish(c, "decoder", lambda tmp: vae.save_pretrained(tmp / "vae"), report)


def train_vae_tiny(c: PretrainConfig, resume: bool, stop_after: int | None = None) -> dict:
    """AutoencoderTiny works in the UNet's latent space (scaled latents): its encoder learns vae latents x scaling
    factor, its decoder the big decoder's output from them, as TAESD-XL does for SDXL."""
    folder, v = Path(c.train.output_dir) / "vae_tiny", c.vae_tiny
    accelerator = make_accelerator(folder)
    vae, tiny = load_vae(c), models.vae_tiny(c)
    vae.requires_grad_(False)
    sf = vae.config.scaling_factor
    optimizer = torch.optim.AdamW(tiny.parameters(), lr=v.lr, weight_decay=0.0)

    def step(i: int, generator: torch.Generator) -> dict:
        set_lr(optimizer, lr := lr_at(i, v.steps, v.lr, 50))
        x = training_crops(c.world.seed, c.world.train_scenes, c.world.resolution, v.batch_size, c.vae.crop, generator)
        with torch.no_grad():
            z = vae.encode(x).latent_dist.mode()
            target = vae.decode(z).sample
        encoder_loss = F.mse_loss(tiny.encode(x).latents, z * sf)
        decoder_loss = F.l1_loss(tiny.decode(z * sf).sample, target)
        loss = encoder_loss + decoder_loss
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return {"loss": loss.item(), "encoder_mse": encoder_loss.item(), "decoder_l1": decoder_loss.item(), "lr": lr}

    began = time.perf_counter()
    train_part(c, Part("vae_tiny", {"vae_tiny": tiny}, optimizer, step, v.steps), accelerator, resume, stop_after)
    tiny.eval()
    report = reconstruction_report(c, lambda z: tiny.decode(z * sf), vae)
    report["train_seconds_this_run"] = round(time.perf_counter() - began, 1)
    log.info(f"vae_tiny: held-out PSNR (big encoder, tiny decoder) {report['psnr']:.2f} dB")
    return finish(c, "vae_tiny", lambda tmp: tiny.save_pretrained(tmp / "vae_tiny"), report)


@torch.no_grad()
def cache_latents(c: PretrainConfig, resume: bool, stop_after: int | None = None, batch_size: int = 64) -> dict:
    """Every training scene's scaled latent (posterior mean x scaling factor), fp16, one file. Scenes are a pure
    function of their index, so the cache holds no labels; captions are drawn per step by the UNet trainer."""
    vae = load_vae(c)  # the encoder is the autoencoder part's whichever decoder is current
    began, n = time.perf_counter(), c.world.train_scenes
    latents = np.zeros((n, 4, c.world.resolution // 8, c.world.resolution // 8), np.float16)
    for start in tqdm(range(0, n, batch_size), desc="latents", mininterval=2.0):
        x = images([training_scene(c.world.seed, k) for k in range(start, min(n, start + batch_size))], c.world.resolution)
        latents[start : start + len(x)] = (vae.encode(x).latent_dist.mode() * vae.config.scaling_factor).numpy()
    report = {"count": n, "mean": float(latents.mean()), "std": float(latents.astype(np.float32).std()), "seconds": round(time.perf_counter() - began, 1)}
    return finish(c, "latents", lambda tmp: save_file({"latents": torch.from_numpy(latents)}, str(tmp / "latents.safetensors")), report)


def load_latents(c: PretrainConfig) -> torch.Tensor:
    return load_file(str(final_dir(c, "latents") / "latents.safetensors"))["latents"]
