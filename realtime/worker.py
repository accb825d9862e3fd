"""The GPU workers: one thread per engine (one engine per device), the only threads that call the engines
(diffusers pipelines are not safe to call concurrently, and one stream of batches keeps a GPU busy without
contention). All of them take work from the one latest-wins scheduler, which dispatches a client's next request only
after its previous answer went out, so a client's frames stay in order on any number of devices.

Each thread warms its engine first, then loops: take a fair same-key batch from the scheduler, render it, hand each
result to its client's `answer` callback (which encodes and sends elsewhere) and move on. Blocking jobs from Gradio
handlers (the Compare-steps panel, --gradio-events) take turns with the stream so neither starves the other.
"""

import logging
import threading
import time
import traceback
from collections import deque
from concurrent.futures import Future
from typing import Callable, Hashable

from .engine_contract import StudioEngine
from .metrics import Metrics
from .scheduler import Job, Scheduler

log = logging.getLogger(__name__)

# answer(job, result, error_message, batch_size): called on the worker thread; must not block.
Answer = Callable[[Job, object, str | None, int], None]


class Worker:
    """`engines`: one engine, or one per device, each served by its own thread. `cpu_threads`: torch threads per
    worker thread (set on that thread), so several CPU workers do not oversubscribe the cores."""

    def __init__(
        self,
        engines: StudioEngine | list[StudioEngine],
        max_batch: int = 4,
        vae: str | None = None,
        metrics: Metrics | None = None,
        warm: bool = False,
        warm_vaes: tuple | None = None,
        cpu_threads: int | None = None,
    ):
        self.engines = list(engines) if isinstance(engines, (list, tuple)) else [engines]
        self.vae = vae
        self.metrics = metrics or Metrics()
        self.scheduler = Scheduler(max_batch)
        self.warm, self.warm_vaes, self.cpu_threads = warm, warm_vaes, cpu_threads
        self.warmup_seconds: float | None = None  # set once every engine is warm: the slowest one's seconds
        self.warmup_error: str | None = None
        self._warmed: list[float] = []
        self._cond = threading.Condition()
        self._answers: dict[Hashable, Answer] = {}
        self._jobs: deque = deque()
        self._stopping = False
        self._threads = [threading.Thread(target=self._run, args=(e,), name=f"gpu-worker-{i}", daemon=True) for i, e in enumerate(self.engines)]

    # --- event-loop side (all quick, under the lock) --------------------------------------------------------------
    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout)

    @property
    def ready(self) -> bool:
        return self.warmup_seconds is not None

    def connect(self, client: Hashable, answer: Answer) -> None:
        with self._cond:
            self.scheduler.connect(client)
            self._answers[client] = answer

    def disconnect(self, client: Hashable) -> None:
        with self._cond:
            self.scheduler.disconnect(client)
            self._answers.pop(client, None)

    def submit(self, job: Job) -> Job | None:
        """Mailbox a request; returns the request it superseded. Raises scheduler.OutOfOrder for a replayed seq."""
        with self._cond:
            replaced = self.scheduler.submit(job)
            self._cond.notify()
            return replaced

    def can_deliver(self, client: Hashable, seq: int) -> bool:
        with self._cond:
            return self.scheduler.can_deliver(client, seq)

    def finish(self, client: Hashable, seq: int) -> None:
        """The answer to `seq` went out (or could not): the client may have its next request dispatched."""
        with self._cond:
            self.scheduler.finish(client, seq)
            self._cond.notify()

    def queue_depth(self) -> dict:
        with self._cond:
            return {
                "pending": self.scheduler.pending,
                "in_flight": self.scheduler.in_flight,
                "jobs": len(self._jobs),
                "clients": self.scheduler.clients,
                "superseded": self.scheduler.superseded,
            }

    # --- blocking jobs (called from Gradio's handler threads, never from the event loop) ----------------------
    def run(self, requests: list, vae: str | None = None, timeout: float | None = None) -> list:
        future: Future = Future()
        with self._cond:
            if self._stopping:
                raise RuntimeError("the server is shutting down")
            self._jobs.append((list(requests), vae, future))
            self._cond.notify()
        return future.result(timeout)

    # --- the worker threads ---------------------------------------------------------------------------------------------
    def _run(self, engine: StudioEngine) -> None:
        if self.cpu_threads:
            import torch

            torch.set_num_threads(self.cpu_threads)  # OpenMP's thread count is per calling thread
        self._warm(engine)
        turn_for_jobs = False
        while True:
            with self._cond:
                while not self._stopping and not self._jobs and not self.scheduler.has_work():
                    self._cond.wait()
                if self._stopping:
                    break
                # Alternate between the stream and blocking jobs whenever both are waiting.
                take_job = bool(self._jobs) and (turn_for_jobs or not self.scheduler.has_work())
                job = self._jobs.popleft() if take_job else None
                batch = [] if take_job else self.scheduler.next_batch()
                answers = {j.client: self._answers.get(j.client) for j in batch}
                if self._jobs or self.scheduler.has_work():
                    self._cond.notify()  # more is waiting: wake another worker for it
            turn_for_jobs = not take_job
            if job is not None:
                self._run_job(engine, *job)
            elif batch:
                self._render(engine, batch, answers)
        with self._cond:  # nobody will run these now: fail them instead of leaving callers blocked
            for _, _, future in self._jobs:
                future.set_exception(RuntimeError("the server is shutting down"))
            self._jobs.clear()

    def _warm(self, engine: StudioEngine) -> None:
        try:
            seconds = float(engine.warmup(vaes=self.warm_vaes)) if self.warm else 0.0
        except Exception as e:  # the server still serves; healthz says what failed
            self.warmup_error = f"warm-up failed on {engine.device}: {e}"
            log.error("warm-up failed:\n%s", traceback.format_exc())
            seconds = float("nan")
        with self._cond:
            self._warmed.append(seconds)
            if len(self._warmed) == len(self.engines):
                self.warmup_seconds = float("nan") if self.warmup_error else max(self._warmed)

    def _run_job(self, engine: StudioEngine, requests: list, vae: str | None, future: Future) -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(engine.generate(requests, vae=vae))
        except Exception as e:
            future.set_exception(e)

    def _render(self, engine: StudioEngine, batch: list[Job], answers: dict) -> None:
        started = time.perf_counter()
        for job in batch:
            self.metrics.observe("queue", (started - job.submitted_at) * 1000)
        outcomes = self._generate(engine, [job.payload for job in batch])
        self.metrics.count("batches")
        self.metrics.count("batched_requests", len(batch))
        for job, (result, err) in zip(batch, outcomes):
            answer = answers.get(job.client)
            if answer is None:  # client left mid-generation: free nothing, it is gone
                self.metrics.count("stale_dropped")
                continue
            try:  # a request re-rendered alone after its batch failed reports its own batch size (1)
                answer(job, result, err, result.batch_size if result is not None else len(batch))
            except Exception:
                log.error("answer callback failed:\n%s", traceback.format_exc())
                self.finish(job.client, job.seq)

    def _generate(self, engine: StudioEngine, requests: list) -> list[tuple[object, str | None]]:
        """-> [(result, None) | (None, error message)] in order. A failing batch is retried one request at a
        time, so one bad request is reported to its own client and does not take its batch-mates down."""
        try:
            return [(r, None) for r in engine.generate(requests, vae=self.vae)]
        except Exception as e:
            if len(requests) == 1:
                return [(None, _describe(e))]
        return [self._generate(engine, [r])[0] for r in requests]


def _describe(error: Exception) -> str:
    from pipelines.errors import StudioError

    if isinstance(error, StudioError):  # messages written for users
        return str(error)
    log.error("engine failed:\n%s", "".join(traceback.format_exception(error)))
    return f"the engine failed on this request ({type(error).__name__}: {error})"
