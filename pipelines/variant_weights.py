"""Step-count variants of one architecture served by ONE UNet module, their weights swapped in place.

Switching variant copies that variant's weights into the module's own parameter storage (`param.copy_`), so the
storage addresses that a compiled graph or a captured CUDA graph reads stay the same: no recompile, no new
CUDA-graph memory pool, one compiled UNet for every variant.

Every weight set has a home, chosen by the memory plan (pipelines.memory_plan): "resident" keeps a copy on the
device (a device-to-device copy per switch), "swap" keeps it in host memory, pinned on CUDA so the host-to-device
copy runs at PCIe speed (~0.1-0.2 s for the 5.1 GB SDXL UNet). The live set (the one the stream types with) sits
in the module itself at rest; its home is in host memory, from where it is restored after a Compare.
"""

import time

import torch

from .errors import InvalidModel

PLACEMENTS = ("resident", "swap")
BASE_SET = "base"


def weight_set(variant) -> str:
    """Which weights a variant runs on: its own full UNet (named by its file or folder), or the base UNet's (the bare
    base and LoRA variants, whose adapters sit on top of the base weights)."""
    return variant.unet_file or variant.unet_dir or BASE_SET


class VariantWeights:
    """The weight sets of one UNet module and which one it holds now. Parameters are captured when this is built,
    before any LoRA wraps a layer: peft keeps the original Parameter objects inside its wrappers."""

    def __init__(self, unet: torch.nn.Module, loaded: dict[str, dict[str, torch.Tensor]], steps_to_set: dict[int, str], live: str):
        self.steps_to_set, self.live = steps_to_set, live
        named = dict(unet.named_parameters())
        self.params = list(named.values())
        for name, state in loaded.items():
            missing, unexpected = named.keys() - state.keys(), state.keys() - named.keys()
            wrong = [key for key in named.keys() & state.keys() if state[key].shape != named[key].shape]
            if missing or unexpected or wrong:
                raise InvalidModel(
                    f"variant weights {name} are not a UNet for this base ({len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} "
                    "mis-shaped tensors): the variants of one model share one UNet module, so they must share its config"
                )
        self._loaded = {name: [state[key] for key in named] for name, state in loaded.items()}
        self.homes: dict[str, list[torch.Tensor]] = {}
        self.placement: dict[str, str] = {}
        self.current: str | None = None
        self.swaps, self.swap_ms_total, self.last_swap_ms = 0, 0.0, None

    def arrange(self, placement: dict[str, str]) -> None:
        """Give every set its home in the layout of the module's parameters (call after the backend has laid the module
        out, e.g. channels_last, so a switch is a plain same-stride copy), then load the live set into the module."""
        device = self.params[0].device
        while self._loaded:  # one set at a time, each loaded copy freed once its home holds it
            name, tensors = self._loaded.popitem()
            where = "swap" if name == self.live else placement.get(name, "resident")
            if where not in PLACEMENTS:
                raise InvalidModel(f"weights placement must be one of {PLACEMENTS}, got {where!r}")
            self.placement[name] = where
            self.homes[name] = [_home_like(p, source, where, device) for p, source in zip(self.params, tensors)]
        self.current = None
        self.use_set(self.live)
        self.swaps, self.swap_ms_total, self.last_swap_ms = 0, 0.0, None  # the initial load is not a swap

    def use(self, steps: int) -> float:
        """Make the module hold `steps`' weights; -> milliseconds spent copying (0.0 when they are already there)."""
        return self.use_set(self.steps_to_set[steps])

    def use_set(self, name: str) -> float:
        if name == self.current:
            return 0.0
        start = time.perf_counter()
        with torch.no_grad():
            for param, home in zip(self.params, self.homes[name]):
                param.copy_(home, non_blocking=True)
        if self.params[0].device.type == "cuda":
            torch.cuda.synchronize(self.params[0].device)
        self.current = name
        ms = (time.perf_counter() - start) * 1000
        self.swaps, self.swap_ms_total, self.last_swap_ms = self.swaps + 1, self.swap_ms_total + ms, ms
        return ms

    def report(self) -> dict:
        """Where each variant's home copy waits ("homes": resident on the device or swap in host memory; the live one's is
        in host memory, its weights being in the module), which set the module holds, the bytes, and the swaps so far."""
        home_bytes = {name: sum(t.numel() * t.element_size() for t in tensors) for name, tensors in self.homes.items()}
        return {
            "current": self.current,
            "live": self.live,
            "homes": {str(steps): self.placement[name] for steps, name in sorted(self.steps_to_set.items())},
            "device_copies_bytes": sum(b for name, b in home_bytes.items() if self.placement[name] == "resident"),
            "host_copies_bytes": sum(b for name, b in home_bytes.items() if self.placement[name] == "swap"),
            "pinned": any(t.is_pinned() for tensors in self.homes.values() for t in tensors[:1]),
            "swaps": self.swaps,
            "swap_ms_total": round(self.swap_ms_total, 2),
            "last_swap_ms": None if self.last_swap_ms is None else round(self.last_swap_ms, 2),
        }


def _home_like(param: torch.Tensor, source: torch.Tensor, where: str, device: torch.device) -> torch.Tensor:
    """A copy of `source` with the parameter's dtype and strides: on the device ("resident") or in host memory
    ("swap", page-locked when the device is a GPU, which is what lets a host-to-device copy run asynchronously)."""
    if where == "resident":
        home = torch.empty_like(param)
    else:
        home = torch.empty_strided(param.size(), param.stride(), dtype=param.dtype, device="cpu", pin_memory=device.type == "cuda")
    return home.copy_(source)
