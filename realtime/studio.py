"""What one running studio holds: the engines (one per device), their GPU workers, the encoder pool and metrics.

Built once by realtime.cli (or a test) and shared by the /ws handler, /healthz, /metrics and the Gradio UI.
"""

import json
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from . import protocol
from .engine_contract import StudioEngine
from .hosts import HostPolicy
from .metrics import Metrics
from .worker import Worker


@dataclass(frozen=True)
class StudioConfig:
    max_clients: int = 64
    max_batch: int = 4
    preview_vae: str | None = None  # None: the engine's default decoder for the stream
    rate: float = 30.0  # messages per second per client; a fast typist sends ~10
    burst: float = 60.0
    idle_timeout_s: float = 300.0
    send_timeout_s: float = 20.0
    encoder_threads: int = 2
    gradio_events: bool = False
    warm: bool = True  # False on ZeroGPU, where the GPU exists only inside @spaces.GPU calls, not on the worker
    cpu_threads: int | None = None  # torch threads per CPU worker (several CPU workers share the cores)
    notice: str | None = None  # said on the page after the model's own notice (e.g. why compilation is off)
    bound_host: str | None = None  # the address the server listens on (a name of this server unless a wildcard)
    allowed_hosts: tuple = ()  # further names it answers to (--allowed-hosts: a LAN or public host name)


def describe_model(engine) -> str:
    """The UI's notice: which model runs, where, and why (the engine says why when it chose the model)."""
    if engine.notice:
        return engine.notice
    text = f"Model {engine.model_name} on {engine.device} ({engine.backend} backend), steps {', '.join(map(str, engine.steps))}."
    if engine.description:
        text += f" It is {engine.description}."
    if engine.model_name == "tiny":
        text += " The tiny model is untrained: its pictures are noise (it exists for tests and offline use)."
    return text


class Studio:
    """`engines`: one engine, or one per device (same model and flags), each with its own worker thread."""

    def __init__(self, engines: StudioEngine | list[StudioEngine], config: StudioConfig = StudioConfig()):
        self.engines = list(engines) if isinstance(engines, (list, tuple)) else [engines]
        self.engine, self.config = self.engines[0], config  # what the page and /healthz describe
        self.metrics = Metrics()
        # Warm the stream's decoder and the full VAE (Compare steps uses it), at every declared size.
        vaes = tuple(dict.fromkeys([config.preview_vae or self.engine.default_vae, "full"]))
        self.worker = Worker(self.engines, config.max_batch, config.preview_vae, self.metrics, config.warm, vaes, config.cpu_threads)
        self.encoder_pool = ThreadPoolExecutor(config.encoder_threads, thread_name_prefix="jpeg")
        self.connected = 0  # only touched on the event loop
        self.notice = " ".join(filter(None, [describe_model(self.engine), config.notice]))
        self.hosts = HostPolicy.for_server(config.bound_host, config.allowed_hosts)

    def start(self) -> "Studio":
        self.worker.start()
        return self

    def stop(self) -> None:
        self.worker.stop()
        self.encoder_pool.shutdown(wait=False, cancel_futures=True)

    def info(self) -> dict:
        return {
            "model": self.engine.model_name,
            "live_steps": self.engine.live_steps,
            "device": str(self.engine.device),
            "devices": [str(e.device) for e in self.engines],
            "backend": self.engine.backend,
            **self.engine.limits.as_json(),  # variants, sizes, max_seed: what a generate may ask for
            "notice": self.notice,
            "max_batch": self.config.max_batch,
            "protocol_version": protocol.VERSION,
        }

    def health(self) -> tuple[int, dict]:
        """(HTTP status, body): 200 only once the model is loaded and warm."""
        seconds = self.worker.warmup_seconds
        body = self.info() | {
            "warm": self.worker.ready and not self.worker.warmup_error,
            "warmup_seconds": None if seconds is None or math.isnan(seconds) else round(seconds, 3),
        }
        if self.worker.warmup_error:
            body["error"] = self.worker.warmup_error
        return (200 if body["warm"] else 503), body

    def status_message(self) -> str:
        state = "ready" if self.worker.ready else "busy"
        extra = {} if self.worker.ready else {"message": "warming up: requests wait until the model is warm"}
        return json.dumps({"type": "status", "state": state, **self.info(), **extra})
