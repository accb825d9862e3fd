"""Inference core: SDXL-Lightning variants, loading, the warm generation engine, benchmark and CLI.

The names below load on first use (PEP 562 module __getattr__): `python -m pipelines` and `python -m distill` check
their arguments, and answer --help or a mistake, before torch and diffusers are imported (seconds on a CPU)."""

import importlib
import os

# transformers warns at import time that torchvision is absent; nothing here needs it, and the line would greet every
# CLI run. Set before the first transformers import; a user's own TRANSFORMERS_VERBOSITY still wins.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from .errors import InvalidModel, InvalidRequest, NonFiniteOutput, StudioError, WeightsUnavailable  # noqa: E402  (light: no torch)

_LAZY = {
    "Engine": ".engine",
    "GenerationRequest": ".requests",
    "GenerationResult": ".requests",
    "default_model": ".startup",
    "load_engine": ".startup",
}

__all__ = ["InvalidModel", "InvalidRequest", "NonFiniteOutput", "StudioError", "WeightsUnavailable", *_LAZY]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value
