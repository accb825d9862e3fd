"""Test doubles and a live-server helper for the realtime tests."""

import socket
import threading
import time
from contextlib import contextmanager

import numpy as np
import uvicorn

from pipelines import GenerationRequest, GenerationResult, NonFiniteOutput
from pipelines.requests import ServingLimits

FAIL_PROMPT = "<fail>"  # a prompt the wrapped engines refuse, to exercise one request failing inside a batch


class FakeEngine:
    """The engine contract without a model: flat images whose colour encodes the seed. `gate` holds warm-up."""

    model_name, device, backend, notice, description, examples = "fake", "cpu", "eager", None, None, ()
    steps, live_steps, reference_steps, guidance, default_vae = (1, 2), 1, None, {}, "full"
    sizes = ((64, 64), (128, 64))
    labels, adherence, adherence_measure = {1: "live"}, {}, None

    def __init__(self, gate: threading.Event | None = None):
        self.gate = gate
        self.calls: list[list[GenerationRequest]] = []
        self.limits = ServingLimits(self.steps, self.sizes)

    def validate(self, request):
        self.limits.check(request)

    def count_tokens(self, prompt):
        return min(len(prompt.split()) + 2, 77), max(0, len(prompt.split()) + 2 - 77)

    def warmup(self, vaes=None):
        if self.gate is not None:
            self.gate.wait()
        return 0.01

    def generate(self, requests, vae=None):
        self.calls.append(list(requests))
        if any(r.prompt == FAIL_PROMPT for r in requests):
            raise NonFiniteOutput("the model produced NaN/Inf (test failure on purpose)")
        return [
            GenerationResult(
                r, np.full((r.height, r.width, 3), r.seed % 256, np.uint8), {"text": 0.1, "denoise": 1.0, "decode": 0.5, "total": 1.6}, 0, len(requests)
            )
            for r in requests
        ]

    def memory(self):
        return {"parameters_total": 0}


class FailingPrompt:
    """Wraps a real engine so that FAIL_PROMPT raises as an engine error would; everything else passes through."""

    def __init__(self, engine):
        self._engine = engine

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def generate(self, requests, vae=None):
        if any(r.prompt == FAIL_PROMPT for r in requests):
            raise NonFiniteOutput("the model produced NaN/Inf for this prompt (test failure on purpose)")
        return self._engine.generate(requests, vae=vae)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(app, port: int | None = None):
    """Run `app` on a real uvicorn server in a thread; yields 'host:port'."""
    port = port or free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, ws="websockets-sansio", ws_max_size=64 * 1024, ws_per_message_deflate=False, log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def wait_until(predicate, what: str, limit_s: float = 60.0, interval: float = 0.05):
    """Poll for a condition that some other thread makes true; the limit only stops a hang, it asserts no speed."""
    deadline = time.monotonic() + limit_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(interval)
