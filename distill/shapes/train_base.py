"""The base UNet ("SDXL of the shapes world") with SDXL's recipe, flaws included: epsilon prediction, scaled_linear
betas 0.00085 -> 0.012 over 1000 steps (never pure noise at t = 999), uniform t, 10 % caption dropout to zeroed
embeddings (what `force_zeros_for_empty_prompt` feeds as the unconditional input), both text encoders trained
jointly from scratch, EMA weights; optionally offset noise (`[unet] noise_offset`, SDXL's reported fine-tuning
default). It trains on cached latents; captions are drawn afresh each step."""

import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate.logging import get_logger
from diffusers import DDPMScheduler, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from diffusers.training_utils import EMAModel
from PIL import Image
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from pipelines.architectures import base_scheduler, load_tokenizers
from pipelines.conditioning import TOKEN_WINDOW

from . import judge as judge_lib
from . import metrics, models
from .config import PretrainConfig
from .data import captions_for
from .evaluate import prompt_set
from .loop import Part, make_accelerator
from .parts import final_dir, finish, lr_at, set_lr, train_part
from .train_autoencoders import load_latents, load_vae

log = get_logger(__name__)  # accelerate's: logs on the main process only, as accelerator.print did


class PromptEncoder:
    """SDXL's conditioning from two CLIP encoders, exactly as StableDiffusionXLPipeline.encode_prompt builds it:
    both penultimate hidden states concatenated (B, 77, 2H), pooled = encoder 2's projected output (B, H).
    Token ids are cached per caption (the world's captions repeat)."""

    def __init__(self, text_encoder, text_encoder_2, tokenizers):
        self.encoders, self.tokenizers, self.ids = (text_encoder, text_encoder_2), tokenizers, {}

    def _ids(self, prompts: list[str], k: int) -> torch.Tensor:
        rows = []
        for p in prompts:
            if (p, k) not in self.ids:
                self.ids[p, k] = self.tokenizers[k](p, padding="max_length", max_length=TOKEN_WINDOW, truncation=True, return_tensors="pt").input_ids[0]
            rows.append(self.ids[p, k])
        return torch.stack(rows)

    def __call__(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        states = [enc(self._ids(prompts, k), output_hidden_states=True) for k, enc in enumerate(self.encoders)]
        return torch.cat([s.hidden_states[-2] for s in states], dim=-1), states[1][0]


def time_ids(resolution: int, batch: int) -> torch.Tensor:
    """SDXL micro-conditioning (orig_h, orig_w, crop_top, crop_left, target_h, target_w): uncropped, native size."""
    return torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]], dtype=torch.float32).repeat(batch, 1)


def offset_noise(noise: torch.Tensor, offset: float, generator: torch.Generator) -> torch.Tensor:
    """noise + offset * N(0, 1) drawn per (sample, channel) and broadcast over H, W: a random mean per latent channel.
    offset = 0 returns the noise itself and draws nothing (runs without it keep their exact random stream)."""
    if not offset:
        return noise
    return noise + offset * torch.randn((*noise.shape[:2], 1, 1), generator=generator)


def pipeline(c: PretrainConfig, unet, text_encoder, text_encoder_2, vae) -> StableDiffusionXLPipeline:
    """The stock SDXL pipeline around the shapes components, with the studio's trailing Euler scheduler."""
    tokenizer, tokenizer_2 = load_tokenizers()
    scheduler = EulerDiscreteScheduler.from_config(base_scheduler().config, timestep_spacing="trailing")
    return StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler
    )


def initial_weights(c: PretrainConfig):
    """(unet, (text_encoder, text_encoder_2)): fresh from the config, or, with `[unet] init_from`, that model
    folder's own in fp32 (a fine-tune keeps the architecture it continues)."""
    if not c.unet.init_from:
        return models.unet(c), models.text_encoders(c)
    folder = Path(c.unet.init_from)
    if not (folder / "unet" / "config.json").is_file():
        raise FileNotFoundError(f"unet.init_from: {folder} is not a model folder (no unet/config.json)")
    load = lambda cls, name: cls.from_pretrained(folder / name, dtype=torch.float32)
    return load(UNet2DConditionModel, "unet"), (load(CLIPTextModel, "text_encoder"), load(CLIPTextModelWithProjection, "text_encoder_2"))


def train_unet(c: PretrainConfig, resume: bool, stop_after: int | None = None) -> dict:
    folder, u, R = Path(c.train.output_dir) / "unet", c.unet, c.world.resolution
    accelerator = make_accelerator(folder)
    latents, vae = load_latents(c), load_vae(c)
    unet, (text_encoder, text_encoder_2) = initial_weights(c)
    encode = PromptEncoder(text_encoder, text_encoder_2, load_tokenizers())
    trained = {"unet": unet}
    if u.train_text_encoders:
        trained |= {"text_encoder": text_encoder, "text_encoder_2": text_encoder_2}
    else:
        text_encoder.requires_grad_(False), text_encoder_2.requires_grad_(False)
    params = [p for m in trained.values() for p in m.parameters()]
    optimizer = torch.optim.AdamW(params, lr=u.lr, weight_decay=1e-2)
    ema = EMAModel(params, decay=u.ema_decay, use_ema_warmup=True)
    noise_schedule = DDPMScheduler.from_config(base_scheduler().config)  # scaled_linear, 1000 steps, epsilon
    judge_path = final_dir(c, "judge") / "judge.safetensors"
    judge = judge_lib.load(judge_path) if judge_path.is_file() else None
    writer = accelerator.get_tracker("tensorboard", unwrap=True)

    def step(i: int, generator: torch.Generator) -> dict:
        set_lr(optimizer, lr := lr_at(i, u.steps, u.lr, u.warmup_steps))
        for m in trained.values():
            m.train()
        indices = torch.randint(len(latents), (u.batch_size,), generator=generator)
        x0 = latents[indices].float()
        noise = offset_noise(torch.randn(x0.shape, generator=generator), u.noise_offset, generator)
        t = torch.randint(0, noise_schedule.config.num_train_timesteps, (u.batch_size,), generator=generator)
        x_t = noise_schedule.add_noise(x0, noise, t)
        embeds, pooled = encode(captions_for(indices.tolist(), c.world.seed, random.Random(generator.initial_seed())))
        keep = (torch.rand(u.batch_size, generator=generator) >= u.caption_dropout).float()
        embeds, pooled = embeds * keep[:, None, None], pooled * keep[:, None]  # dropped captions: zeroed conditioning
        pred = unet(x_t, t, encoder_hidden_states=embeds, added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids(R, u.batch_size)}).sample
        loss = F.mse_loss(pred, noise)
        accelerator.backward(loss)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return {"loss": loss.item(), "grad_norm": float(grad_norm), "lr": lr}

    def samples(step_count: int) -> None:
        """A grid of fixed prompts from the EMA weights (25 Euler steps, CFG 5) and, with a judge, their adherence."""
        if step_count % u.sample_every and step_count != u.steps:
            return
        ema.store(params)
        ema.copy_to(params)
        try:
            grid, adherence = sample_grid(c, pipeline(c, unet, text_encoder, text_encoder_2, vae).to(torch.device("cpu")), judge)
        finally:
            ema.restore(params)
        (folder / "samples").mkdir(exist_ok=True)
        Image.fromarray(grid).save(folder / "samples" / f"step-{step_count:06d}.png")
        writer.add_image("unet/samples", grid, step_count, dataformats="HWC")
        if adherence is not None:
            writer.add_scalar("unet/sample_adherence", adherence, step_count)
            log.info(f"step {step_count}: judge adherence on the sample grid {adherence:.0%}")

    began = time.perf_counter()
    train_part(c, Part("unet", trained, optimizer, step, u.steps, ema=ema, on_checkpoint=samples), accelerator, resume, stop_after)
    ema.copy_to(params)
    for m in trained.values():
        m.eval()
    pipe = pipeline(c, unet, text_encoder, text_encoder_2, vae)
    write = lambda tmp: pipe.save_pretrained(tmp / "pipeline")
    return finish(c, "unet", write, {"train_seconds_this_run": round(time.perf_counter() - began, 1)})


@torch.no_grad()
def sample_grid(c: PretrainConfig, pipe: StableDiffusionXLPipeline, judge=None, per_group: int = 4):
    """(uint8 grid image, judge adherence or None) for `per_group` prompts of each evaluation group, seed 0."""
    prompts = [p for group in prompt_set(per_group).values() for p in group]
    out = pipe(
        [p.text for p in prompts],
        height=c.world.resolution,
        width=c.world.resolution,
        num_inference_steps=c.unet.sample_steps,
        guidance_scale=c.unet.guidance_scale,
        generator=[torch.Generator().manual_seed(0) for _ in prompts],
        output_type="np",
    ).images
    images = (out * 255).round().astype(np.uint8)
    cols = per_group
    rows = [np.concatenate(list(images[r * cols : (r + 1) * cols]), axis=1) for r in range(len(images) // cols)]
    adherence = None
    if judge is not None:
        adherence = metrics.adherence(judge_lib.predict(judge, judge_lib.to_tensor(images)), [p.spec for p in prompts])["all"]
    return np.concatenate(rows, axis=0), adherence
