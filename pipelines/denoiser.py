"""The SDXL UNet as a denoiser (k-diffusion's external.py): a latent in sigma space in, the model's estimate of the
clean latent out, with classifier-free guidance when the variant has it.

The studio's engine, distill's teacher solve, its student's jump and its validation pictures all call the UNet
through this one class, so the model distill trains and validates is, by construction, the model the studio serves.

Conditioning is a dict {"encoder_hidden_states": (B, L, D), "text_embeds": (B, P), "time_ids": (B, 6)}.
"""

import torch

from . import sampling

COND_KEYS = ("encoder_hidden_states", "text_embeds", "time_ids")


def unet_output(unet, model_input: torch.Tensor, t, cond: dict, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The UNet's raw output (float32) for its variance-preserving input at timestep t (an int, a 0-d tensor or (B,))."""
    dtype = dtype or unet.dtype
    if not torch.is_tensor(t):
        t = torch.tensor(t, device=model_input.device)
    out = unet(
        model_input.to(dtype),
        t,
        encoder_hidden_states=cond["encoder_hidden_states"].to(dtype),
        added_cond_kwargs={"text_embeds": cond["text_embeds"].to(dtype), "time_ids": cond["time_ids"].to(dtype)},
        return_dict=False,
    )[0]
    return out.float()


def zero_uncond(cond: dict) -> dict:
    """SDXL's unconditional input (force_zeros_for_empty_prompt): zero text embeddings, the same micro-conditioning."""
    return {**cond, "encoder_hidden_states": torch.zeros_like(cond["encoder_hidden_states"]), "text_embeds": torch.zeros_like(cond["text_embeds"])}


class Denoiser:
    """x0 = D(x, t, sigma) for x = x0 + sigma eps. The UNet sees x / sqrt(sigma^2 + 1); its output is read as eps
    ("epsilon") or as x0 itself ("sample"). With a guidance scale w other than 1, the unconditional half (zero text
    embeddings unless `uncond` is given) and the conditional half run as one doubled batch, and the output is
    out_u + w (out_c - out_u), as in StableDiffusionXLPipeline. `unet` may be any callable with the UNet's signature
    (a compiled module, a DDP/FSDP wrapper); `dtype` is what it computes in (default: unet.dtype)."""

    def __init__(self, unet, prediction_type: str, cond: dict, guidance_scale: float | None = None, uncond: dict | None = None, dtype=None):
        self.unet, self.prediction_type, self.dtype = unet, prediction_type, dtype
        self.guidance_scale = guidance_scale if guidance_scale not in (None, 1.0) else None
        if self.guidance_scale is not None:
            uncond = zero_uncond(cond) if uncond is None else uncond
            cond = {key: torch.cat([uncond[key], cond[key]]) for key in COND_KEYS}
        self.cond = cond

    def __call__(self, x: torch.Tensor, t, sigma) -> torch.Tensor:
        model_input = sampling.to_variance_preserving(x, sigma)
        if self.guidance_scale is not None:
            model_input = torch.cat([model_input, model_input])
            t = t.repeat(2) if torch.is_tensor(t) and t.ndim else t
        output = unet_output(self.unet, model_input, t, self.cond, self.dtype)
        if self.guidance_scale is not None:
            output = sampling.classifier_free_guidance(*output.chunk(2), self.guidance_scale)
        return sampling.predicted_x0(output, x, sigma, self.prediction_type)
