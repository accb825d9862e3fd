"""What one running studio holds: the engine, its GPU worker, the encoder pool, limits and metrics.

Built once by realtime.cli (or a test) and shared by the /ws handler, /healthz, /metrics and the Gradio UI.
"""

import json
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .engine_contract import StudioEngine
from .hosts import HostPolicy
from .metrics import Metrics
from .protocol import Limits
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
    warm_size: int | None = None  # square side to warm; None: the engine's default size
    warm_batch_sizes: tuple = (1,)  # compiled backends: every batch size the stream will use (1..max_batch)
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
    def __init__(self, engine: StudioEngine, config: StudioConfig = StudioConfig()):
        self.engine, self.config = engine, config
        self.metrics = Metrics()
        self.limits = Limits(tuple(engine.steps), *engine.size_limits)
        size = config.warm_size or engine.default_size
        # Warm the stream's decoder and the full VAE (Compare steps uses it), at the size the UI starts with.
        vaes = tuple(dict.fromkeys([config.preview_vae or engine.default_vae, "full"]))
        self.worker = Worker(
            engine,
            config.max_batch,
            config.preview_vae,
            self.metrics,
            warm_sizes=((size, size),) if config.warm else (),
            warm_batch_sizes=config.warm_batch_sizes,
            warm_vaes=vaes,
        )
        self.encoder_pool = ThreadPoolExecutor(config.encoder_threads, thread_name_prefix="jpeg")
        self.connected = 0  # only touched on the event loop
        self.notice = describe_model(engine)
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
            "variants": list(self.engine.steps),
            "live_steps": self.engine.live_steps,
            "device": str(self.engine.device),
            "backend": self.engine.backend,
            "size_limits": list(self.engine.size_limits),
            "default_size": self.engine.default_size,
            "notice": self.notice,
            "max_batch": self.config.max_batch,
            "protocol_version": 1,
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
