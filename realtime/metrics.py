"""Counters and latency percentiles for GET /metrics. Thread-safe: the worker, the encoder pool and the event
loop all record here. Windows are bounded so memory stays flat however long the server runs."""

import os
import threading
import time
from collections import deque

import numpy as np

WINDOW = 2048  # most recent samples per stage kept for percentiles
FPS_WINDOW_S = 10.0


class Metrics:
    def __init__(self):
        self._lock = threading.Lock()
        self._samples: dict[str, deque] = {}
        self._frame_times: deque = deque(maxlen=100_000)
        self.counters = {
            "frames": 0,
            "batches": 0,
            "batched_requests": 0,
            "stale_dropped": 0,
            "errors": 0,
            "rejected_connections": 0,
            "connections": 0,
            "slow_readers_dropped": 0,
        }

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counters[name] = self.counters.get(name, 0) + n

    def observe(self, stage: str, ms: float) -> None:
        with self._lock:
            self._samples.setdefault(stage, deque(maxlen=WINDOW)).append(ms)

    def frame_sent(self) -> None:
        with self._lock:
            self.counters["frames"] += 1
            self._frame_times.append(time.monotonic())

    def snapshot(self) -> dict:
        now = time.monotonic()
        with self._lock:
            recent = sum(1 for t in self._frame_times if now - t <= FPS_WINDOW_S)
            latency = {stage: _percentiles(list(values)) for stage, values in self._samples.items()}
            counters = dict(self.counters)
        batches = counters["batches"]
        return {
            "fps": round(recent / FPS_WINDOW_S, 3),
            "latency_ms": latency,
            "mean_batch_size": round(counters["batched_requests"] / batches, 3) if batches else None,
            "counters": counters,
            "process_rss_mb": round(rss_bytes() / 2**20, 1),
        }


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {}
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {"p50": round(float(p50), 2), "p95": round(float(p95), 2), "p99": round(float(p99), 2), "n": len(values)}


def rss_bytes() -> int:
    """Resident memory of this process (Linux /proc; 0 where unavailable)."""
    try:
        with open(f"/proc/{os.getpid()}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
