"""FLOP counts (torch's FlopCounterMode) and the device's measured dense-matmul peak, for the benchmark."""

import time

import torch
from torch.utils.flop_counter import FlopCounterMode


@torch.inference_mode()
def count_flops(fn, *args, **kwargs) -> int:
    """FLOPs of one call, as torch's FlopCounterMode counts them (matmuls and convolutions, 2 per MAC)."""
    with FlopCounterMode(display=False) as counter:
        fn(*args, **kwargs)
    return counter.get_total_flops()


@torch.inference_mode()
def measured_peak_tflops(device: torch.device, dtype: torch.dtype, n: int | None = None, repeats: int = 10) -> float:
    """Dense matmul throughput actually reached here: 2 n^3 FLOPs per n x n matmul, median of `repeats`."""
    n = n or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    times = []
    for i in range(repeats + 2):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= 2:  # the first calls pick kernels
            times.append(time.perf_counter() - start)
    times.sort()
    return 2 * n**3 / times[len(times) // 2] / 1e12
