"""The discriminator: a trainable copy of the teacher UNet's encoder (conv_in, time/add embeddings, down blocks,
mid block) with a fresh convolutional head. Conditional D(x_{t-ns}, x_t): is x_{t-ns} the teacher's n steps from
x_t or the student's one jump? Unconditional D'(x_{t-ns}): drops x_t (the "Janus" fine-tune)."""

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from distill.lora import without_lora

BACKBONE = ("conv_in", "time_proj", "time_embedding", "add_time_proj", "add_embedding", "down_blocks", "mid_block")


def group_count(channels: int, max_groups: int = 32) -> int:
    """GroupNorm groups: 32 as in the paper, fewer when the width is not a multiple of 32 (tiny models)."""
    return math.gcd(channels, max_groups)


MIN_NORMALIZED_SIZE = 8  # the head normalizes (as the paper's, on SDXL's 32x32 mid-block map) from 8x8 features up


def mid_block_size(unet_config, latent_size: int) -> int:
    """Side of the UNet's mid-block feature map for latent_size x latent_size inputs: latent_size / 2^(levels - 1)."""
    return latent_size // 2 ** (len(unet_config.block_out_channels) - 1)


class HeadBlock(nn.Module):
    """4x4 conv + GroupNorm + SiLU. Stride 2 while the map is at least 2 * min_size wide; at smaller maps the same
    kernel runs at stride 1 ("same" padding) so every parameter is always used (DDP) and 8x8 latents still work.

    normalize=False drops the GroupNorm: on a map of a few cells GroupNorm removes each group's mean and scale, which
    is most of what a 4x4 map says, and the head can no longer separate real from fake (measured on the shapes
    world: D's loss stayed at 2 ln 2, its accuracy at chance, for whole stages)."""

    def __init__(self, in_channels: int, out_channels: int, min_size: int = 4, normalize: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=4, stride=2, padding=1)
        self.norm = nn.GroupNorm(group_count(out_channels), out_channels) if normalize else nn.Identity()
        self.min_size = min_size

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if min(h.shape[-2:]) >= 2 * self.min_size:
            h = self.conv(h)
        else:  # an even kernel needs asymmetric padding to keep the size
            h = F.conv2d(F.pad(h, (1, 2, 1, 2)), self.conv.weight, self.conv.bias)
        return F.silu(self.norm(h))


class Discriminator(nn.Module):
    """logits (B,) for x_{t-ns} (and, when conditional, x_t); real = teacher, fake = student."""

    def __init__(
        self,
        backbone: dict[str, nn.Module],
        feature_channels: int,
        conditional: bool = True,
        head_channels: int | None = None,
        head_blocks: int = 3,
        normalize_head: bool = True,
    ):
        super().__init__()
        for name in BACKBONE:
            setattr(self, name, backbone[name])
        self.conditional = conditional
        head_channels = head_channels or feature_channels
        in_channels = feature_channels * (2 if conditional else 1)
        widths = [in_channels] + [head_channels] * head_blocks
        self.head = nn.Sequential(*[HeadBlock(c_in, c_out, normalize=normalize_head) for c_in, c_out in zip(widths, widths[1:])])
        self.to_logit = nn.Linear(head_channels, 1)

    @classmethod
    def from_unet(
        cls,
        teacher_unet,
        conditional: bool = True,
        trainable_backbone: bool = True,
        head_channels: int | None = None,
        head_blocks: int = 3,
        latent_size: int | None = None,
    ) -> "Discriminator":
        """Copy the teacher's encoder + mid block (pretrained init; LoRA wrappers, if any, dropped for the base
        weights) and build a freshly initialised head: a new call gives a new head, so build one per stage.
        latent_size: the training latents' side (default: the UNet's sample_size); it decides whether the head
        normalizes (see HeadBlock)."""
        config = teacher_unet.config
        extras = (teacher_unet.class_embedding, teacher_unet.time_embed_act, teacher_unet.encoder_hid_proj)
        if config.addition_embed_type != "text_time" or any(module is not None for module in extras):
            raise ValueError("the discriminator backbone supports SDXL-style UNets (addition_embed_type='text_time') only")
        backbone = {name: without_lora(copy.deepcopy(getattr(teacher_unet, name))) for name in BACKBONE}
        disc = cls(
            backbone,
            config.block_out_channels[-1],
            conditional,
            head_channels,
            head_blocks,
            normalize_head=mid_block_size(config, latent_size or config.sample_size) >= MIN_NORMALIZED_SIZE,
        )
        # fp32 like every trainable model here (autocast runs it in bf16); a bf16 teacher copies exactly.
        disc.to(device=teacher_unet.device, dtype=torch.float32)
        disc.requires_grad_(True)
        for name in BACKBONE:
            getattr(disc, name).requires_grad_(trainable_backbone)
        return disc

    def features(self, x: torch.Tensor, t, cond: dict) -> torch.Tensor:
        """The teacher's mid-block features of x at t: UNet2DConditionModel.forward up to the mid block (SDXL path).
        Clean inputs (t = -1) are embedded at t = 0, the UNet's least noisy level."""
        dtype = self.conv_in.weight.dtype
        timesteps = torch.as_tensor(t, device=x.device).reshape(-1).expand(x.shape[0]).clamp(min=0)
        emb = self.time_embedding(self.time_proj(timesteps).to(dtype))
        time_embeds = self.add_time_proj(cond["time_ids"].flatten()).reshape(x.shape[0], -1)
        emb = emb + self.add_embedding(torch.cat([cond["text_embeds"], time_embeds], dim=-1).to(dtype))
        context = cond["encoder_hidden_states"].to(dtype)
        h = self.conv_in(x.to(dtype))
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                h, _ = block(hidden_states=h, temb=emb, encoder_hidden_states=context)
            else:
                h, _ = block(hidden_states=h, temb=emb)
        return self.mid_block(h, emb, encoder_hidden_states=context)

    def forward(self, x_next: torch.Tensor, t_next, cond: dict, x_t: torch.Tensor | None = None, t=None) -> torch.Tensor:
        """Conditional: head(concat_channels(features(x_next), features(x_t))), both through the backbone in one
        batched call. Unconditional: head(features(x_next)); x_t and t are ignored, so one call site serves both."""
        batch = x_next.shape[0]
        if self.conditional:
            if x_t is None or t is None:
                raise ValueError("a conditional discriminator needs x_t and t")
            steps = [torch.as_tensor(s, device=x_next.device).reshape(-1).expand(batch) for s in (t_next, t)]
            both = self.features(torch.cat([x_next, x_t]), torch.cat(steps), {k: torch.cat([v, v]) for k, v in cond.items()})
            h = torch.cat(both.split(batch), dim=1)
        else:
            h = self.features(x_next, t_next, cond)
        h = self.head(h)
        return self.to_logit(h.mean(dim=(2, 3))).squeeze(1).float()


def renoise_timesteps(batch: int, weights=(1, 1, 1, 1), levels=(10, 250, 500, 750), generator=None) -> torch.Tensor:
    """t* per sample, drawn from levels with probability proportional to weights (paper: 1:1:1:1, later 5:1:1:1),
    for re-noising real and fake x0 before D in the 1/2-step stages.

    levels are the paper's 1-based values (as its T = 1000); the result is 0-based like every other timestep here,
    t* - 1, so 250 lands on the grid's 249."""
    if len(weights) != len(levels) or min(weights) < 0 or sum(weights) <= 0:
        raise ValueError(f"renoise weights {tuple(weights)} must be non-negative, not all zero, one per level {tuple(levels)}")
    index = torch.multinomial(torch.as_tensor(weights, dtype=torch.float), batch, replacement=True, generator=generator)
    return torch.as_tensor(levels)[index] - 1
