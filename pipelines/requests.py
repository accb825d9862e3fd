"""What a caller asks of the engine and what it gets back."""

from dataclasses import dataclass, field

import numpy as np


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
