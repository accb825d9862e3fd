"""One WebSocket client, from handshake to goodbye: admission, the receive loop, and sending its frames.

Everything here runs on the event loop and only does quick work: parsing, validation, mailbox updates. Model work
happens on the GPU worker, JPEG encoding on the encoder pool. A client gets at most one frame in flight (the
scheduler holds its next request until this frame is sent), so a slow reader holds up only itself.
"""

import asyncio
import itertools
import logging
import time
from typing import TYPE_CHECKING

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from pipelines import GenerationRequest, InvalidRequest

from . import protocol
from .frames import build_frame
from .limits import TokenBucket
from .scheduler import Job, OutOfOrder

if TYPE_CHECKING:
    from .studio import Studio

log = logging.getLogger(__name__)
_ids = itertools.count(1)
# How long a client that stopped reading gets for the 1008 close frame to go out: it does only if its socket drains.
CLOSE_WAIT_S = 2.0


async def serve(ws: WebSocket, studio: "Studio") -> None:
    """The /ws endpoint: refuse foreign origins before the handshake completes, then admit or turn away. (A foreign
    Host never gets here: realtime.hosts.HostGuard refuses it first.)"""
    if not studio.hosts.origin_allowed(ws.headers.get("origin"), ws.headers.get("host")):
        studio.metrics.count("rejected_connections")
        await ws.close(code=1008)  # before accept(): the handshake is refused, no frame is ever sent
        return
    await ws.accept()
    if studio.connected >= studio.config.max_clients:
        studio.metrics.count("rejected_connections")
        await ws.send_text(protocol.status("server_full", message=f"the server is full ({studio.config.max_clients} clients); try again later"))
        await ws.close(code=1013)  # 1013: try again later
        return
    studio.connected += 1
    studio.metrics.count("connections")
    try:
        await Connection(ws, studio).run()
    finally:
        studio.connected -= 1


class Connection:
    def __init__(self, ws: WebSocket, studio: "Studio"):
        self.ws, self.studio, self.config = ws, studio, studio.config
        self.id = next(_ids)
        self.loop = asyncio.get_running_loop()
        self.bucket = TokenBucket(self.config.rate, self.config.burst, time.monotonic())
        self._send_lock = asyncio.Lock()  # the receive loop and frame deliveries both send
        self._tasks: set[asyncio.Task] = set()
        self._runner: asyncio.Task | None = None  # the task running the receive loop (the ASGI handler's)
        self.closed = self.dropped = False

    async def run(self) -> None:
        worker = self.studio.worker
        worker.connect(self.id, self._answer_from_worker)
        self._runner = asyncio.current_task()
        try:
            await self._send_text(self.studio.status_message())
            while True:
                try:
                    message = await asyncio.wait_for(self.ws.receive(), self.config.idle_timeout_s)
                except asyncio.TimeoutError:
                    await self._send_text(protocol.error("idle_timeout", f"no message for {self.config.idle_timeout_s:g} s; reconnect to continue"))
                    await self.ws.close(code=1000)
                    return
                if message["type"] == "websocket.disconnect":
                    return
                await self._handle(message.get("text") if message.get("text") is not None else message.get("bytes"))
        except (WebSocketDisconnect, RuntimeError, ConnectionError):
            return  # the client vanished; its in-flight result will find it gone
        except asyncio.CancelledError:
            if not self.dropped:
                raise
            self._runner.uncancel()  # a delivery ended this connection (_drop_slow_reader): a normal end, not a shutdown
        finally:
            self.closed = True
            worker.disconnect(self.id)
            for task in list(self._tasks):
                task.cancel()

    async def _handle(self, data) -> None:
        if not self.bucket.take(time.monotonic()):
            retry_ms = round(self.bucket.wait_s() * 1000)
            await self._send_text(
                protocol.error(
                    "rate_limited",
                    f"more than {self.config.rate:g} messages/s; this one was ignored, resend after {retry_ms} ms",
                    protocol.seq_of(data),
                    retry_ms=retry_ms,
                )
            )
            return
        try:
            message = protocol.parse(data)
            if isinstance(message, protocol.Hello):
                await self._send_text(self.studio.status_message())
                return
            request = GenerationRequest(message.prompt, message.seed, message.steps, message.width, message.height)
            try:  # the model's limits (variants, declared sizes, seeds): the engine's, asked once, here
                self.studio.engine.validate(request)
            except InvalidRequest as e:
                raise protocol.ProtocolError("out_of_range", str(e), message.seq) from None
            job = Job(self.id, message.seq, (message.steps, message.width, message.height), request, time.perf_counter())
            try:
                self.studio.worker.submit(job)
            except OutOfOrder as e:
                raise protocol.ProtocolError("stale_seq", str(e), message.seq) from None
        except protocol.ProtocolError as e:
            self.studio.metrics.count("errors")
            await self._send_text(protocol.error(e.code, e.message, e.seq))

    # --- results: called on the worker thread, finished on the event loop -------------------------------------------
    def _answer_from_worker(self, job: Job, result, error: str | None, batch_size: int) -> None:
        try:
            self.loop.call_soon_threadsafe(self._start_delivery, job, result, error, batch_size)
        except RuntimeError:  # the event loop is closed (shutdown): nobody to deliver to
            self.studio.worker.finish(job.client, job.seq)

    def _start_delivery(self, job, result, error, batch_size) -> None:
        task = self.loop.create_task(self._deliver(job, result, error, batch_size))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, job: Job, result, error: str | None, batch_size: int) -> None:
        worker, metrics = self.studio.worker, self.studio.metrics
        try:
            if self.closed or not worker.can_deliver(job.client, job.seq):
                metrics.count("stale_dropped")
                return
            if error is not None:
                metrics.count("errors")
                await self._send_text(protocol.error("generation_failed", error, job.seq))
                return
            dispatched_ms = (time.perf_counter() - job.submitted_at) * 1000 - result.timings_ms.get("total", 0.0)
            fields = dict(
                seq=job.seq,
                steps=job.key[0],
                width=job.key[1],
                height=job.key[2],
                timings_ms=result.timings_ms,
                queue_ms=max(0.0, dispatched_ms),
                dropped_tokens=result.dropped_tokens,
                batch_size=batch_size,
            )
            frame, encode_ms = await self.loop.run_in_executor(self.studio.encoder_pool, build_frame, result.image, fields)
            if self.closed:
                metrics.count("stale_dropped")
                return
            await asyncio.wait_for(self._send_bytes(frame), self.config.send_timeout_s)
            metrics.frame_sent()
            for stage, ms in result.timings_ms.items():
                metrics.observe(stage, ms)
            metrics.observe("encode", encode_ms)
            metrics.observe("server_total", (time.perf_counter() - job.submitted_at) * 1000)
        except asyncio.TimeoutError:  # a client that stops reading must not hold a frame forever
            await self._drop_slow_reader()
        except (WebSocketDisconnect, RuntimeError, ConnectionError):
            pass
        finally:
            worker.finish(job.client, job.seq)

    # --- sending -------------------------------------------------------------------------------------------------------
    async def _send_text(self, text: str) -> None:
        async with self._send_lock:
            if self.ws.application_state == WebSocketState.CONNECTED:
                await self.ws.send_text(text)

    async def _send_bytes(self, data: bytes) -> None:
        async with self._send_lock:
            if self.ws.application_state == WebSocketState.CONNECTED:
                await self.ws.send_bytes(data)

    async def _drop_slow_reader(self) -> None:
        """The client has not read a frame for send_timeout_s. Send the 1008 close, waiting at most CLOSE_WAIT_S (it
        goes out only if the client's socket drains), then end the connection's receive loop wherever it waits
        (reading, or sending an error into the same full socket): nothing keeps waiting on that socket."""
        log.info("client %s stopped reading; closing", self.id)
        self.studio.metrics.count("slow_readers_dropped")
        self.closed = self.dropped = True
        try:
            await asyncio.wait_for(self.ws.close(code=1008), CLOSE_WAIT_S)
        except (asyncio.TimeoutError, WebSocketDisconnect, RuntimeError, OSError):
            pass  # the close frame could not be sent: the socket is still full, or already gone
        if self._runner is not None:
            self._runner.cancel()
