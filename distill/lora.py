"""The student's LoRA: rank 64 on every conv and linear layer except conv_in, conv_out and the shared time/add
embeddings (as in LCM-LoRA); the teacher is the same UNet with the adapter disabled."""

from contextlib import contextmanager

import torch
from diffusers import UNet2DConditionModel
from peft import LoraConfig, get_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer

# Suffix-matched by peft. None of them names conv_in, conv_out, time_embedding.* or add_embedding.*.
LORA_TARGET_MODULES = [
    "to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
    "conv1", "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj",
]
ADAPTER = "student"


def add_lora(unet, rank: int = 64, adapter_name: str = ADAPTER, init_lora_weights: bool = True) -> None:
    """Freeze the UNet and attach a trainable LoRA (only the LoRA parameters require grad afterwards).

    lora_alpha = rank (scale 1) because diffusers assumes exactly that when it loads a LoRA saved without alphas,
    so the exported file reproduces the trained student. init_lora_weights=False gives random B (tests only)."""
    unet.requires_grad_(False)
    config = LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=init_lora_weights, target_modules=LORA_TARGET_MODULES)
    unet.add_adapter(config, adapter_name=adapter_name)


@contextmanager
def teacher_context(unet):
    """Run the base UNet (the teacher) with the student's adapters switched off, then switch them back on.

    One UNet in memory for both roles in LoRA phases. peft's enable step marks the active adapter trainable again."""
    unet.disable_adapters()
    try:
        yield unet
    finally:
        unet.enable_adapters()


def lora_layers(module) -> list[tuple[str, BaseTunerLayer]]:
    """(name, layer) for every peft-wrapped layer in a module."""
    return [(name, m) for name, m in module.named_modules() if isinstance(m, BaseTunerLayer)]


def without_lora(module):
    """Replace every peft wrapper inside module by its base layer (in place): the teacher's own weights."""
    for name, layer in lora_layers(module):
        parent_name, _, child = name.rpartition(".")
        setattr(module.get_submodule(parent_name) if parent_name else module, child, layer.get_base_layer())
    return module


def merge_lora(unet) -> UNet2DConditionModel:
    """W <- W + B A (scale 1), merged layer by layer in fp32 and cast back, then the wrappers removed.

    Upcasting one layer at a time keeps a bf16 SDXL merge exact without a full fp32 copy of the UNet. The returned
    (same) UNet is plain: no adapters, no peft_config; requires_grad is left as add_lora set it."""
    for _, layer in lora_layers(unet):
        dtype = layer.get_base_layer().weight.dtype
        layer.float()
        layer.merge()
        layer.to(dtype)
    unet.unload_lora()
    return unet


def lora_state_dict_diffusers(unet, adapter_name: str = ADAPTER) -> dict[str, torch.Tensor]:
    """The adapter's weights as diffusers loads them ("<module>.lora_A.weight" / "lora_B.weight"), without the
    "unet." prefix (the exporter adds it).

    Deliberately not passed through convert_state_dict_to_diffusers: that renames only the attention keys (to
    "lora.down"/"lora.up"), and diffusers 0.42's loader picks the key format from the first key alone, so the mixed
    file loads with every attention LoRA silently dropped. The peft keys load whole (tested)."""
    return get_peft_model_state_dict(unet, adapter_name=adapter_name)
