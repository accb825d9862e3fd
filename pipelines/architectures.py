"""Build SDXL-shaped components in code: the exact SDXL architecture (random weights, for benchmarks) and a tiny
SDXL-shaped model (for tests and the offline embedded default). Nothing here touches the network."""

import json

import torch
from diffusers import AutoencoderKL, AutoencoderTiny, EulerDiscreteScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

import assets

from .conditioning import TOKEN_WINDOW

ASSETS = assets.ROOT
SDXL_CONFIGS = ASSETS / "configs" / "sdxl"
CLIP_VOCAB_SIZE = 49408

# Tiny SDXL: the same block types, micro-conditioning and two-encoder text path as SDXL, at toy widths.
# Four VAE blocks keep SDXL's 8x latent downscale so image sizes mean the same thing as in the real model.
TINY_UNET = dict(
    block_out_channels=(32, 64),
    layers_per_block=2,
    sample_size=32,
    in_channels=4,
    out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=(2, 4),
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=8,
    transformer_layers_per_block=(1, 2),
    projection_class_embeddings_input_dim=6 * 8 + 32,
    cross_attention_dim=64,
    norm_num_groups=8,
)
TINY_VAE = dict(
    block_out_channels=(16, 16, 32, 32),
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    layers_per_block=1,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    norm_num_groups=8,
    sample_size=128,
    scaling_factor=0.13025,
    force_upcast=False,
)
TINY_VAE_TINY = dict(
    encoder_block_out_channels=(8, 8, 8, 8),
    decoder_block_out_channels=(8, 8, 8, 8),
    num_encoder_blocks=(1, 1, 1, 1),
    num_decoder_blocks=(1, 1, 1, 1),
)
TINY_TEXT = dict(
    hidden_size=32,
    intermediate_size=37,
    num_attention_heads=4,
    num_hidden_layers=2,
    projection_dim=32,
    vocab_size=CLIP_VOCAB_SIZE,
    max_position_embeddings=TOKEN_WINDOW,
    hidden_act="gelu",
    bos_token_id=0,
    eos_token_id=2,
    pad_token_id=1,
)


def load_tokenizers() -> tuple[CLIPTokenizer, CLIPTokenizer]:
    """SDXL's two CLIP tokenizers, kept in assets/ (built by pipelines.tokenizer_assets)."""
    return CLIPTokenizer.from_pretrained(ASSETS / "tokenizer"), CLIPTokenizer.from_pretrained(ASSETS / "tokenizer_2")


def base_scheduler() -> EulerDiscreteScheduler:
    """SDXL base 1.0's scheduler config; variants derive their own settings from it."""
    return EulerDiscreteScheduler.from_config(read_config("scheduler"))


def read_config(name: str) -> dict:
    return json.loads((SDXL_CONFIGS / f"{name}.json").read_text())


def _seeded(seed: int, offset: int, build):
    """Build a module under its own RNG so each component's init depends only on (seed, component)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed * 1000 + offset)
        return build()


def tiny_components(seed: int = 0) -> dict:
    """SDXL-shaped components with tiny configs: unet, vae, vae_tiny, text encoders, tokenizers, scheduler."""
    tokenizer, tokenizer_2 = load_tokenizers()
    return dict(
        unet=_seeded(seed, 0, lambda: UNet2DConditionModel(**TINY_UNET)),
        vae=_seeded(seed, 1, lambda: AutoencoderKL(**TINY_VAE)),
        vae_tiny=_seeded(seed, 2, lambda: AutoencoderTiny(**TINY_VAE_TINY)),
        text_encoder=_seeded(seed, 3, lambda: CLIPTextModel(CLIPTextConfig(**TINY_TEXT))),
        text_encoder_2=_seeded(seed, 4, lambda: CLIPTextModelWithProjection(CLIPTextConfig(**TINY_TEXT))),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        scheduler=base_scheduler(),
    )


def sdxl_unet(seed: int = 0) -> UNet2DConditionModel:
    """The SDXL base UNet architecture (2.567 B parameters) with random weights."""
    return _seeded(seed, 0, lambda: UNet2DConditionModel.from_config(read_config("unet")))


def random_sdxl_components(seed: int = 0) -> dict:
    """The exact SDXL architecture with random weights: real cost, meaningless pictures (benchmarks only)."""
    tokenizer, tokenizer_2 = load_tokenizers()

    def text_config(name):
        config = read_config(name)
        config.pop("architectures")
        return CLIPTextConfig(**config)

    return dict(
        unet=sdxl_unet(seed),
        vae=_seeded(seed, 1, lambda: AutoencoderKL.from_config(read_config("vae"))),
        vae_tiny=_seeded(seed, 2, lambda: AutoencoderTiny.from_config(read_config("vae_tiny"))),
        text_encoder=_seeded(seed, 3, lambda: CLIPTextModel(text_config("text_encoder"))),
        text_encoder_2=_seeded(seed, 4, lambda: CLIPTextModelWithProjection(text_config("text_encoder_2"))),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        scheduler=base_scheduler(),
    )
