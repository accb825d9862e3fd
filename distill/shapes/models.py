"""The shapes world's "SDXL": every component is the stock diffusers / transformers class with SDXL's structure
(8x VAE with 4 latent channels, two CLIP text encoders whose penultimate states concatenate into the
cross-attention input, a pooled projection and micro-conditioning time_ids in the UNet), at small widths."""

from diffusers import AutoencoderKL, AutoencoderTiny, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from pipelines.architectures import CLIP_VOCAB_SIZE

from .config import PretrainConfig, TextConfig

TIME_IDS = 6  # (orig_h, orig_w, crop_top, crop_left, target_h, target_w)
# SDXL's block types; the first level has no attention, as in SDXL.
DOWN_BLOCKS = {2: ("DownBlock2D", "CrossAttnDownBlock2D"), 3: ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")}
UP_BLOCKS = {2: ("CrossAttnUpBlock2D", "UpBlock2D"), 3: ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")}


def vae(c: PretrainConfig, scaling_factor: float = 1.0) -> AutoencoderKL:
    v = c.vae
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=v.block_out_channels,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=v.layers_per_block,
        norm_num_groups=v.norm_num_groups,
        sample_size=c.world.resolution,
        scaling_factor=scaling_factor,
        force_upcast=False,
    )


def vae_tiny(c: PretrainConfig) -> AutoencoderTiny:
    v = c.vae_tiny
    return AutoencoderTiny(
        encoder_block_out_channels=v.encoder_block_out_channels,
        decoder_block_out_channels=v.decoder_block_out_channels,
        num_encoder_blocks=(1, 1, 1, 1),
        num_decoder_blocks=(1, 1, 1, 1),
        latent_channels=4,
    )


def text_config(t: TextConfig, projection: bool) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE,
        hidden_size=t.hidden_size,
        intermediate_size=t.intermediate_size,
        num_attention_heads=t.num_attention_heads,
        num_hidden_layers=t.num_hidden_layers,
        max_position_embeddings=77,
        projection_dim=t.hidden_size if projection else 512,
        hidden_act="gelu" if projection else "quick_gelu",
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407 if projection else 1,
    )


def text_encoders(c: PretrainConfig) -> tuple[CLIPTextModel, CLIPTextModelWithProjection]:
    """CLIP ViT-L's text model (quick_gelu) and OpenCLIP bigG's with projection (gelu), at the configured width."""
    return CLIPTextModel(text_config(c.text, False)), CLIPTextModelWithProjection(text_config(c.text, True))


def unet(c: PretrainConfig) -> UNet2DConditionModel:
    u, hidden = c.unet, c.text.hidden_size
    levels = len(u.block_out_channels)
    return UNet2DConditionModel(
        sample_size=c.world.resolution // 8,
        in_channels=4,
        out_channels=4,
        block_out_channels=u.block_out_channels,
        down_block_types=DOWN_BLOCKS[levels],
        up_block_types=UP_BLOCKS[levels],
        layers_per_block=u.layers_per_block,
        transformer_layers_per_block=u.transformer_layers_per_block,
        attention_head_dim=u.attention_head_dim,
        cross_attention_dim=2 * hidden,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=u.addition_time_embed_dim,
        projection_class_embeddings_input_dim=TIME_IDS * u.addition_time_embed_dim + hidden,
        norm_num_groups=u.norm_num_groups,
    )
