"""What a caller asks of the engine, what it gets back, and what a loaded engine can serve."""

from dataclasses import dataclass, field

import numpy as np

from . import sizes as sizes_
from .conditioning import MAX_SEED
from .errors import InvalidRequest, capped


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    seed: int = 0
    steps: int = 1
    width: int = 1024
    height: int = 1024

    @property
    def batch_key(self) -> tuple[int, int, int]:
        """Requests with equal keys run as one batch: same variant (steps) and the same size."""
        return (self.steps, self.width, self.height)


@dataclass
class GenerationResult:
    request: GenerationRequest
    image: np.ndarray  # uint8 (H, W, 3), or float32 in [0, 1] when asked for output_type="float"
    timings_ms: dict[str, float] = field(default_factory=dict)  # text, denoise, decode, total (shared by the batch)
    dropped_tokens: int = 0  # prompt tokens beyond the text encoders' 77-token window, cut off
    batch_size: int = 1


@dataclass(frozen=True)
class ServingLimits:
    """What a loaded engine serves: its step-count variants, its declared (warmed) sizes and the seed range. The one
    place a request's values are checked against the model (Engine.validate); clients that mirror a server's rules,
    such as the fuzz tool, rebuild it from /healthz."""

    steps: tuple[int, ...]
    sizes: tuple[sizes_.Size, ...]
    max_seed: int = MAX_SEED

    def check(self, request: GenerationRequest) -> None:
        """Raise InvalidRequest naming what this engine offers instead."""
        if request.steps not in self.steps:
            raise InvalidRequest(f"steps={capped(repr(request.steps))} is not loaded; this model offers {', '.join(map(str, self.steps))} steps")
        if not 0 <= request.seed <= self.max_seed:
            raise InvalidRequest(f"seed must be an integer in [0, {self.max_seed}], got {capped(request.seed)}")
        if (request.width, request.height) not in self.sizes:
            offered = ", ".join(map(sizes_.label, self.sizes))
            raise InvalidRequest(f"size {capped(request.width, 16)}x{capped(request.height, 16)} is not served; this server offers {offered} (width x height)")

    def as_json(self) -> dict:
        return {"variants": list(self.steps), "sizes": [list(s) for s in self.sizes], "max_seed": self.max_seed}

    @classmethod
    def from_json(cls, body: dict) -> "ServingLimits":
        return cls(tuple(body["variants"]), tuple(tuple(s) for s in body["sizes"]), body["max_seed"])
