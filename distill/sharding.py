"""Whole tensors and training state across processes: the same code serves one process, DDP and FSDP2.

Under FSDP the student and the discriminator are sharded (DTensors) for the length of a phase. Gathering a shard is
a collective, so every process calls these functions; only the main process keeps what was gathered and writes it.
"""

import copy
from pathlib import Path

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict, set_optimizer_state_dict
from torch.distributed.tensor import DTensor

from . import checkpoint


def whole(tensor):
    """The whole tensor of an FSDP shard (an all-gather: every process must call it); a plain tensor as it is."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def meta_copy(module):
    """The module's structure with every parameter and buffer on the meta device (no memory), for `unshard`."""
    memo = {id(b): torch.empty_like(b, device="meta") for b in module.buffers()}
    memo |= {id(p): torch.nn.Parameter(torch.empty_like(p, device="meta"), p.requires_grad) for p in module.parameters()}
    return copy.deepcopy(module, memo)


def unshard(sharded, skeleton):
    """The whole module again, on every process: the sharded one's gathered state in `skeleton`'s structure."""
    skeleton.load_state_dict({k: whole(v).detach() for k, v in sharded.state_dict().items()}, assign=True)
    if any(t.is_meta for t in [*skeleton.parameters(), *skeleton.buffers()]):
        raise RuntimeError("a tensor outside the state dict (a non-persistent buffer) was left behind by unshard")
    return skeleton


def trainable_weights(module) -> dict:
    return {n: p.detach() for n, p in module.named_parameters() if p.requires_grad}


def load_trainable(module, weights: dict):
    expected = set(trainable_weights(module))
    if set(weights) != expected:
        raise checkpoint.CheckpointError(
            f"checkpoint weights do not match this phase's trainable parameters "
            f"({len(set(weights) - expected)} unexpected, {len(expected - set(weights))} missing)"
        )
    params = dict(module.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)


def gathered(accelerator, tensors: dict) -> dict:
    """Whole tensors (gathered one at a time on every process under FSDP), kept on the CPU by the main process only."""
    out = {}
    for name, value in tensors.items():
        value = whole(value.detach())
        if accelerator.is_main_process:
            out[name] = value.cpu()
    return out


# Under FSDP, optimizer states are saved whole, keyed by parameter name, and re-sharded on load.
FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def optimizer_state(fsdp, model, opt) -> dict:
    return get_optimizer_state_dict(model, opt.optimizer, options=FULL) if fsdp else opt.state_dict()


def load_optimizer(fsdp, model, opt, state: dict):
    if fsdp:
        set_optimizer_state_dict(model, opt.optimizer, state, options=StateDictOptions(full_state_dict=True))
    else:
        opt.load_state_dict(state)


def save_checkpoint(accelerator, config, fsdp, student, disc, g_opt, d_opt, progress):
    """Gathering shards is collective, so every process assembles the checkpoint; only the main one writes it."""
    accelerator.wait_for_everyone()
    weights = {"student": gathered(accelerator, trainable_weights(accelerator.unwrap_model(student)))}
    optimizers = {"g": optimizer_state(fsdp, student, g_opt)}
    if disc is not None:
        weights["discriminator"] = gathered(accelerator, accelerator.unwrap_model(disc).state_dict())
        optimizers["d"] = optimizer_state(fsdp, disc, d_opt)
    if accelerator.is_main_process:
        checkpoint.save(
            Path(config.train.output_dir) / "checkpoints",
            progress["global_step"],
            weights,
            optimizers,
            progress,
            config.to_dict(),
            config.train.keep_checkpoints,
        )
    accelerator.wait_for_everyone()
