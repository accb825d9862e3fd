"""A client that never reads: the server ends its connection once a frame send has been blocked for send_timeout_s,
nothing on the server waits on that socket afterwards, no task dies with an unretrieved exception, and the other
clients are served throughout."""

import asyncio
import gc
import json
import logging
import threading

import numpy as np
from realtime_fakes import FakeEngine, serve, wait_until
from websockets.asyncio.client import connect as async_connect
from websockets.sync.client import connect

from pipelines import GenerationResult
from realtime.protocol import unpack_frame
from realtime.server import create_app
from realtime.studio import Studio, StudioConfig


class NoisyEngine(FakeEngine):
    """Random pixels: JPEG cannot shrink them, so a few frames fill the socket buffers of a client that does not read."""

    sizes = ((1024, 1024),)

    def generate(self, requests, vae=None):
        rng = np.random.default_rng(len(self.calls))
        self.calls.append(list(requests))
        return [GenerationResult(r, rng.integers(0, 256, (r.height, r.width, 3), np.uint8), {"total": 1.0}, 0, len(requests)) for r in requests]


def request(seq: int, prompt: str = "noise") -> str:
    return json.dumps({"type": "generate", "seq": seq, "prompt": prompt, "seed": 1, "steps": 1, "width": 1024, "height": 1024})


async def never_reading_client(address: str, sent: int, done: threading.Event) -> None:
    """Sends `sent` requests, one per frame it would have received, and never reads: its library stops reading the
    socket once one message is queued (max_queue=1), so the server's sends block. Keeps the socket open until done,
    then closes without waiting long for a closing handshake that its unread queue holds up."""
    async with async_connect(f"ws://{address}/ws", max_queue=1, max_size=None, close_timeout=0.5) as ws:
        for seq in range(1, sent + 1):
            if done.is_set():
                break
            await ws.send(request(seq))
            await asyncio.sleep(0.05)
        while not done.is_set():
            await asyncio.sleep(0.1)


def test_a_client_that_never_reads_is_dropped_and_leaves_no_task_behind():
    unretrieved = []
    handler = logging.Handler()
    handler.emit = lambda record: unretrieved.append(record.getMessage()) if record.levelno >= logging.ERROR else None
    logging.getLogger("asyncio").addHandler(handler)
    studio = Studio(NoisyEngine(), StudioConfig(max_clients=4, rate=100, burst=200, send_timeout_s=0.5, warm=False)).start()
    try:
        with serve(create_app(studio, ui=False)) as address:
            done = threading.Event()
            client = threading.Thread(target=lambda: asyncio.run(never_reading_client(address, 100, done)), daemon=True)
            client.start()
            wait_until(lambda: studio.metrics.counters["slow_readers_dropped"] == 1, "the server to drop the client that does not read")
            wait_until(lambda: studio.connected == 0, "the dropped connection's handler to end")
            with connect(f"ws://{address}/ws", max_size=None) as ws:  # the server still serves a reading client
                assert json.loads(ws.recv(30))["type"] == "status"
                ws.send(request(1, "still served"))
                header, _ = unpack_frame(ws.recv(30))
                assert header["seq"] == 1
            done.set()
            client.join(30)
        gc.collect()  # an unretrieved task exception is logged when the task is collected
        assert not [m for m in unretrieved if "never retrieved" in m or "exception" in m.lower()], unretrieved
    finally:
        logging.getLogger("asyncio").removeHandler(handler)
        studio.stop()
