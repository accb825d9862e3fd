"""Execution backends for the hot modules (UNet, decoder): eager, torch.compile, torch-tensorrt.

Shapes are static per (batch, size), so compiled graphs never recompile mid-session and, on CUDA, replay as CUDA
graphs. Compiling the SDXL UNet costs ~100 s per shape on an H200, so compiled artifacts are kept on disk
(torch.compiler's portable cache) and loaded at the next start.
"""

import hashlib
import logging
import os
from pathlib import Path

import torch

from .errors import BackendUnavailable

BACKENDS = ("eager", "compile", "tensorrt")
log = logging.getLogger(__name__)
DEFAULT_CACHE = Path(os.environ.get("STUDIO_CACHE", Path.home() / ".cache" / "lightning-studio"))


def prepare(module: torch.nn.Module, backend: str, device: torch.device, compiler: str = "inductor"):
    """Return a callable with the module's forward signature, compiled for `backend`.

    `compiler` is torch.compile's backend for backend="compile"; tests on the CPU pass "aot_eager" to check
    full-graph capture without minutes of C++ code generation."""
    if backend not in BACKENDS:
        raise BackendUnavailable(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    # NHWC convolutions are oneDNN's and cuDNN's fast layout: on this project's 2-core CPU it took the shapes model's
    # 128 px decode from 30 to 27 ms and a 1-step keystroke->frame p50 from about 59 to about 49 ms (docs/benchmarks.md).
    module.to(memory_format=torch.channels_last)
    if backend == "eager":
        return module
    if backend == "compile":
        # CUDA graphs ("reduce-overhead") remove the per-kernel launch cost that dominates an eager 1-step UNet.
        mode = "reduce-overhead" if device.type == "cuda" and compiler == "inductor" else None
        return torch.compile(module, backend=compiler, mode=mode, fullgraph=True, dynamic=False)
    if device.type != "cuda":
        raise BackendUnavailable("backend 'tensorrt' needs a CUDA GPU; use --backend compile or eager on this machine")
    try:
        import torch_tensorrt  # noqa: F401  (registers the "tensorrt" torch.compile backend)
    except ImportError:
        raise BackendUnavailable("backend 'tensorrt' needs torch-tensorrt: pip install 'lightning-studio[tensorrt]' (matching your torch and CUDA)") from None
    dtype = next(module.parameters()).dtype
    return torch.compile(module, backend="tensorrt", dynamic=False, options={"enabled_precisions": {dtype}})


def allow_graphs(count: int) -> None:
    """Let torch.compile keep `count` graphs per code object: every declared (size, batch bucket) of every module
    sharing a forward is one graph, and past torch's recompile limit (8) a fullgraph compile fails instead."""
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, count)


def step_begin(backend: str, device: torch.device) -> None:
    """Mark a new iteration for CUDA-graph trees, so a replay may reuse the previous step's output buffers."""
    if backend == "compile" and device.type == "cuda":
        torch.compiler.cudagraph_mark_step_begin()


def cache_file(key: str, cache_dir: Path = DEFAULT_CACHE) -> Path:
    """Where the compiled artifacts for one (model, backend, device, dtype, torch) combination live."""
    digest = hashlib.sha256(f"{key}|torch={torch.__version__}".encode()).hexdigest()[:16]
    return cache_dir / "compiled" / f"{digest}.bin"


def load_compiled_artifacts(path: Path) -> bool:
    """Seed torch.compile's caches from a previous run; True when something was loaded."""
    if not path.is_file():
        log.info("no torch.compile cache at %s: this start compiles from scratch", path)
        return False
    loaded = torch.compiler.load_cache_artifacts(path.read_bytes()) is not None
    log.info("torch.compile cache %s: %s", path, "loaded" if loaded else "present but empty")
    return loaded


def save_compiled_artifacts(path: Path) -> bool:
    """Persist what torch.compile produced this run (atomic: temp file + rename)."""
    artifacts = torch.compiler.save_cache_artifacts()
    if artifacts is None:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(artifacts[0])
    tmp.replace(path)
    log.info("saved torch.compile's artifacts to %s", path)
    return True
