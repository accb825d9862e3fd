"""What the studio needs from an engine, written once: pipelines.Engine provides it, and so do the tests' fakes.

Everything here is read by the server (the page's controls, /healthz, the limits a request is checked against) or called by the GPU worker
(generate, warmup); nothing else of the engine is touched by `realtime`."""

from typing import Protocol, runtime_checkable

from pipelines import GenerationRequest, GenerationResult
from pipelines.requests import ServingLimits


@runtime_checkable
class StudioEngine(Protocol):
    model_name: str
    description: str | None  # one line for the page
    notice: str | None  # why this model runs (a fallback, no CUDA), shown on the page
    device: object
    backend: str
    steps: tuple[int, ...]  # the loaded variants
    live_steps: int  # the variant the stream types with
    reference_steps: int | None  # the Compare panel's first, slow, best variant
    guidance: dict[int, float]  # CFG scale of guided variants, for labels
    labels: dict[int, str]  # "reference", "live", "experimental" per step count (pipelines.variants.ModelSpec.labels)
    adherence: dict[int, float]  # measured prompt adherence per step count, where the manifest has it
    adherence_measure: str | None  # what those numbers are and where they were measured
    sizes: tuple[tuple[int, int], ...]  # the declared (width, height) sizes, warmed at start; the page starts at the first
    limits: ServingLimits  # variants, declared sizes and seed range, as /healthz reports them
    default_vae: str  # the decoder the stream uses unless the studio says otherwise
    examples: tuple[str, ...]

    def validate(self, request: GenerationRequest) -> None:
        """Raise InvalidRequest for a request the engine cannot serve (asked once, before it is queued)."""

    def generate(self, requests: list[GenerationRequest], vae: str | None = None) -> list[GenerationResult]:
        """Render a batch (same steps and size), in order."""

    def warmup(self, vaes=None) -> float:
        """Run every shape the stream can ask for (declared sizes × batch buckets) once; -> seconds taken."""

    def memory(self) -> dict:
        """Parameter bytes per module (and allocator figures on a GPU), for /metrics."""
