"""The student's LoRA: rank 64 on every conv and linear layer except conv_in, conv_out and the shared time/add
embeddings (as in LCM-LoRA); the teacher is the same UNet with the adapter disabled."""

from contextlib import contextmanager

import torch
from diffusers import UNet2DConditionModel
from peft import LoraConfig, get_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer

# Suffix-matched by peft. None of them names conv_in, conv_out, time_embedding.* or add_embedding.*.
LORA_TARGET_MODULES = [
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "proj_in",
    "proj_out",
    "ff.net.0.proj",
    "ff.net.2",
    "conv1",
    "conv2",
    "conv_shortcut",
    "downsamplers.0.conv",
    "upsamplers.0.conv",
    "time_emb_proj",
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


def low_rank_factors(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) with B @ A the best rank-r approximation of delta in Frobenius norm (truncated SVD, Eckart-Young):
    delta ~ U_r S_r V_r^T, A = S_r^1/2 V_r^T, B = U_r S_r^1/2. A conv weight (out, in, k, k) is factored as the
    (out, in*k*k) matrix: A becomes a (r, in, k, k) conv and B a 1x1 conv, peft's layout for conv LoRA."""
    matrix = delta.float().reshape(delta.shape[0], -1)
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    r = min(rank, s.numel())
    root = s[:r].sqrt()
    a, b = root[:, None] * vh[:r], u[:, :r] * root[None]
    if delta.dim() == 4:
        return a.reshape(r, *delta.shape[1:]), b[:, :, None, None]
    return a, b


def extract_lora(student: UNet2DConditionModel, base: UNet2DConditionModel, rank: int = 64) -> tuple[UNet2DConditionModel, dict]:
    """A LoRA on `base` (a peft-wrapped copy of it, lora_alpha = rank) whose every target layer adds the rank-r
    approximation of student - base there; -> (that UNet, {"relative_error": ||delta - BA|| / ||delta|| over all
    target layers, "untargeted_change": ||student - base|| / ||base|| over the weights a LoRA cannot reach (norms,
    conv_in/out, time embeddings)}). Its diffusers state dict is `lora_state_dict_diffusers(unet)`."""
    import copy

    wrapped = copy.deepcopy(base).float()
    add_lora(wrapped, rank=rank)
    student_weights = student.float().state_dict()
    residual, total = 0.0, 0.0
    targeted = set()
    with torch.no_grad():
        for name, layer in lora_layers(wrapped):
            weight = layer.get_base_layer().weight
            delta = student_weights[f"{name}.weight"] - weight
            a, b = low_rank_factors(delta, rank)
            r = a.shape[0]
            layer.lora_A[ADAPTER].weight.zero_()[:r].copy_(a)
            layer.lora_B[ADAPTER].weight.zero_()[:, :r].copy_(b)
            residual += float((delta - (b.reshape(b.shape[0], -1) @ a.reshape(r, -1)).reshape(delta.shape)).pow(2).sum())
            total += float(delta.pow(2).sum())
            targeted.update({f"{name}.weight", f"{name}.bias"})
        base_weights = base.float().state_dict()
        rest = [k for k in base_weights if k not in targeted]
        untargeted = sum(float((student_weights[k] - base_weights[k]).pow(2).sum()) for k in rest)
        untargeted_norm = sum(float(base_weights[k].pow(2).sum()) for k in rest)
    # Biases of target layers also move in full training and a LoRA has none: counted as untargeted change.
    bias_change = sum(float((student_weights[k] - base_weights[k]).pow(2).sum()) for k in targeted if k.endswith(".bias") and k in base_weights)
    return wrapped, {
        "relative_error": (residual / total) ** 0.5 if total else 0.0,
        "untargeted_change": ((untargeted + bias_change) / untargeted_norm) ** 0.5 if untargeted_norm else 0.0,
    }
