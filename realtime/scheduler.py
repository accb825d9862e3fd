"""Latest-wins, round-robin, micro-batching scheduling as a pure state machine (no threads, no clocks, no I/O).

Every client owns a one-slot mailbox: a newer request replaces the pending one, so a fast typist never builds a
queue of stale frames. A client has at most one request in flight (taken by the worker, not yet answered), which
keeps its frames in order: the next request of a client is dispatched only after the previous answer went out,
so the last request a client made is always the last one it is answered.

Fairness: clients sit in a service order; a dispatched client moves to the back. Any client with a pending
request is therefore served within (number of clients) batches, however hard the others type.

Micro-batching: a batch takes the first eligible client in service order, then every other eligible client whose
request has the same key (steps, width, height), up to `max_batch`. A batch never mixes keys.

The worker thread and the event loop call this under one lock; see realtime.worker.
"""

from dataclasses import dataclass
from typing import Any, Hashable


class OutOfOrder(ValueError):
    """A client sent a sequence number that is not above its previous one."""


@dataclass(frozen=True)
class Job:
    client: Hashable
    seq: int
    key: tuple  # requests batch together only when keys are equal: (steps, width, height)
    payload: Any = None
    submitted_at: float = 0.0


@dataclass
class _Client:
    pending: Job | None = None
    in_flight: Job | None = None
    last_seq: int = -1  # highest seq accepted, to refuse replays and reordering
    answered_seq: int = -1  # highest seq answered (frame sent or error), to drop anything older


class Scheduler:
    def __init__(self, max_batch: int = 1):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.max_batch = max_batch
        self._clients: dict[Hashable, _Client] = {}  # insertion order is the service order
        self.superseded = 0

    # --- clients ---------------------------------------------------------------------------------------------
    def connect(self, client: Hashable) -> None:
        if client in self._clients:
            raise KeyError(f"client {client!r} is already connected")
        self._clients[client] = _Client()

    def disconnect(self, client: Hashable) -> None:
        """Forget a client; a request of theirs still in flight will find `can_deliver` False."""
        self._clients.pop(client, None)

    def __contains__(self, client: Hashable) -> bool:
        return client in self._clients

    @property
    def clients(self) -> int:
        return len(self._clients)

    @property
    def pending(self) -> int:
        """Mailboxes holding a request (the queue depth: never more than one per client)."""
        return sum(c.pending is not None for c in self._clients.values())

    @property
    def in_flight(self) -> int:
        return sum(c.in_flight is not None for c in self._clients.values())

    def has_work(self) -> bool:
        return any(c.pending is not None and c.in_flight is None for c in self._clients.values())

    # --- requests ----------------------------------------------------------------------------------------------
    def submit(self, job: Job) -> Job | None:
        """Put `job` in its client's mailbox; return the request it replaced (superseded, never rendered), if any."""
        state = self._clients.get(job.client)
        if state is None:
            raise KeyError(f"client {job.client!r} is not connected")
        if job.seq <= state.last_seq:
            raise OutOfOrder(f"seq {job.seq} is not above the previous seq {state.last_seq}")
        state.last_seq = job.seq
        replaced, state.pending = state.pending, job
        if replaced is not None:
            self.superseded += 1
        return replaced

    def next_batch(self) -> list[Job]:
        """Take up to max_batch same-key requests, fairly; they are in flight until `finish`."""
        batch: list[Job] = []
        for client, state in self._clients.items():
            if len(batch) == self.max_batch:
                break
            job = state.pending
            if job is None or state.in_flight is not None:
                continue
            if batch and job.key != batch[0].key:
                continue
            batch.append(job)
        for job in batch:
            state = self._clients.pop(job.client)  # re-insert at the back of the service order
            state.pending, state.in_flight = None, job
            self._clients[job.client] = state
        return batch

    def can_deliver(self, client: Hashable, seq: int) -> bool:
        """A result goes out only to a connected client and only if nothing newer was already answered."""
        state = self._clients.get(client)
        return state is not None and seq > state.answered_seq

    def finish(self, client: Hashable, seq: int) -> None:
        """The in-flight request `seq` of `client` was answered (frame or error sent); free its slot."""
        state = self._clients.get(client)
        if state is None:
            return
        if state.in_flight is not None and state.in_flight.seq == seq:
            state.in_flight = None
        state.answered_seq = max(state.answered_seq, seq)
