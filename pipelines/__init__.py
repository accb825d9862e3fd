"""Inference core: SDXL-Lightning variants, loading, the warm generation engine, benchmark and CLI."""

import os

# transformers warns at import time that torchvision is absent; nothing here needs it, and the line would greet every
# CLI run. Set before the first transformers import; a user's own TRANSFORMERS_VERBOSITY still wins.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from .engine import Engine
from .errors import InvalidModel, InvalidRequest, NonFiniteOutput, StudioError, WeightsUnavailable
from .requests import GenerationRequest, GenerationResult
from .startup import default_model, load_engine

__all__ = [
    "Engine",
    "GenerationRequest",
    "GenerationResult",
    "InvalidModel",
    "InvalidRequest",
    "NonFiniteOutput",
    "StudioError",
    "WeightsUnavailable",
    "default_model",
    "load_engine",
]
