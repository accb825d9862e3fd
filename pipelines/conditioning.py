"""SDXL's conditioning facts, in one place: the text encoders' token window, the micro-conditioning the UNet's
text_time embedding reads, and the seed range every entry point accepts."""

import torch

TOKEN_WINDOW = 77  # CLIP's positions, start and end tokens included: the rest of a prompt is cut off
# The largest integer a browser holds exactly (JavaScript numbers); torch seeds go far higher, but a seed typed or
# randomized on the page must mean the same image in Python.
MAX_SEED = 2**53 - 1


def micro_conditioning(original_size: tuple[int, int], crop_top_left: tuple[int, int], target_size: tuple[int, int]) -> list[int]:
    """SDXL's time_ids row: [orig_h, orig_w, crop_top, crop_left, target_h, target_w]."""
    return [*original_size, *crop_top_left, *target_size]


def time_ids(height: int, width: int, batch: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(batch, 6) time_ids for generation: an uncropped image of the size asked for (what diffusers' SDXL pipeline
    passes by default)."""
    row = micro_conditioning((height, width), (0, 0), (height, width))
    return torch.tensor([row] * batch, device=device, dtype=dtype)


def pooled_width(unet_config) -> int:
    """The pooled text embedding's width: the text_time embedding's input minus its six time_ids embeddings."""
    return unet_config.projection_class_embeddings_input_dim - 6 * unet_config.addition_time_embed_dim


def random_conditioning(unet_config, batch: int, size: int, device=None, dtype=torch.float32, tokens: int = TOKEN_WINDOW, generator=None) -> dict:
    """SDXL-shaped UNet conditioning with random text features, for cost measurements and tests (values do not change
    cost): encoder_hidden_states (batch, tokens, cross_attention_dim), text_embeds (batch, pooled), time_ids."""
    return {
        "encoder_hidden_states": torch.randn(batch, tokens, unet_config.cross_attention_dim, generator=generator).to(device, dtype),
        "text_embeds": torch.randn(batch, pooled_width(unet_config), generator=generator).to(device, dtype),
        "time_ids": time_ids(size, size, batch, device, dtype),
    }
