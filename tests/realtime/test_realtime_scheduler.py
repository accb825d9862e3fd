"""The scheduler's promises, for any interleaving of clients typing, the worker dispatching and frames going out:
every client's last request is rendered and answered last, nobody starves, batches never mix variants or sizes."""

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from realtime.scheduler import Job, OutOfOrder, Scheduler

CLIENTS = 4
KEYS = [(1, 64, 64), (2, 64, 64), (1, 128, 64)]  # two variants, two sizes

op = st.one_of(
    st.tuples(st.just("submit"), st.integers(0, CLIENTS - 1), st.integers(0, len(KEYS) - 1)),
    st.tuples(st.just("dispatch")),
    st.tuples(st.just("answer"), st.integers(0, 2**16)),
    st.tuples(st.just("reconnect"), st.integers(0, CLIENTS - 1)),
    # One client typing while the worker turns around: the pattern that starves others under a naive scheduler.
    st.tuples(st.just("keystroke_and_render"), st.integers(0, CLIENTS - 1), st.integers(0, len(KEYS) - 1)),
)


class Harness:
    """Drives a Scheduler the way the worker and the connections do, and checks every step against the promises."""

    def __init__(self, max_batch: int):
        self.s = Scheduler(max_batch)
        self.max_batch = max_batch
        self.session = {c: 0 for c in range(CLIENTS)}  # a reconnect is a new client identity
        self.seq = {}
        self.last_submitted, self.delivered = {}, {}
        self.rendering: list[Job] = []
        self.waited = {}  # client -> batches dispatched while it was eligible and not served
        self.eligible_since = {}
        for c in range(CLIENTS):
            self._connect(c)

    def ident(self, c):
        return (c, self.session[c])

    def _connect(self, c):
        self.s.connect(self.ident(c))
        self.delivered[self.ident(c)] = []

    def submit(self, c, key_index):
        ident = self.ident(c)
        seq = self.seq.get(ident, 0) + 1
        self.seq[ident] = seq
        self.s.submit(Job(ident, seq, KEYS[key_index], payload=seq))
        self.last_submitted[ident] = seq

    def dispatch(self):
        pending_before = {j.client: j for j in self._pending()}
        in_flight_before = {j.client for j in self.rendering}
        batch = self.s.next_batch()
        if not batch:
            assert not [c for c in pending_before if c not in in_flight_before], "work waiting but nothing dispatched"
            return
        assert len(batch) <= self.max_batch
        assert len({j.key for j in batch}) == 1, f"batch mixes variants or sizes: {batch}"
        assert len({j.client for j in batch}) == len(batch)
        for job in batch:
            assert job.client not in in_flight_before, "two requests of one client in flight"
            assert pending_before[job.client] == job, "dispatched something other than the client's newest request"
        served = {j.client for j in batch}
        for client in pending_before:
            if client in in_flight_before or client in served:
                self.waited.pop(client, None)
                continue
            self.waited[client] = self.waited.get(client, 0) + 1
            # Each batch moves at least one client from ahead of this one to behind it.
            assert self.waited[client] <= CLIENTS - 1, f"client {client} starved for {self.waited[client]} batches"
        self.rendering.extend(batch)

    def _pending(self):
        return [st.pending for st in self.s._clients.values() if st.pending is not None]

    def answer(self, index):
        if not self.rendering:
            return
        job = self.rendering.pop(index % len(self.rendering))
        if self.s.can_deliver(job.client, job.seq):
            self.delivered[job.client].append(job.seq)
        self.s.finish(job.client, job.seq)

    def keystroke_and_render(self, c, key_index):
        self.submit(c, key_index)
        self.dispatch()
        while self.rendering:
            self.answer(0)

    def reconnect(self, c):
        self.s.disconnect(self.ident(c))
        self.waited.pop(self.ident(c), None)
        self.session[c] += 1
        self._connect(c)

    def drain(self):
        while self.rendering or self.s.has_work():
            while self.rendering:
                self.answer(0)
            self.dispatch()


@settings(max_examples=300, deadline=None)
@given(ops=st.lists(op, max_size=120), max_batch=st.integers(1, 4))
# Client 1 waits on another variant while client 0 types non-stop: random search rarely builds this long a run.
@example(ops=[("submit", 1, 1)] + [("keystroke_and_render", 0, 0)] * (CLIENTS + 1), max_batch=1)
def test_any_interleaving_keeps_the_promises(ops, max_batch):
    h = Harness(max_batch)
    for name, *args in ops:
        getattr(h, name)(*args)
    h.drain()
    for c in range(CLIENTS):
        ident = h.ident(c)
        delivered = h.delivered[ident]
        assert delivered == sorted(set(delivered)), f"frames out of order for {ident}: {delivered}"
        if ident in h.last_submitted:
            assert delivered and delivered[-1] == h.last_submitted[ident], "the last request was not answered last"
        else:
            assert delivered == []
    assert h.s.pending == 0 and h.s.in_flight == 0


def test_a_newer_request_replaces_the_pending_one():
    s = Scheduler(max_batch=4)
    s.connect("a")
    s.submit(Job("a", 1, (1, 64, 64)))
    replaced = s.submit(Job("a", 2, (1, 64, 64)))
    assert replaced.seq == 1 and s.superseded == 1
    assert [j.seq for j in s.next_batch()] == [2]


def test_a_replayed_or_reordered_seq_is_refused():
    s = Scheduler()
    s.connect("a")
    s.submit(Job("a", 5, (1, 64, 64)))
    with pytest.raises(OutOfOrder):
        s.submit(Job("a", 5, (1, 64, 64)))
    with pytest.raises(OutOfOrder):
        s.submit(Job("a", 3, (1, 64, 64)))


def test_next_request_waits_until_the_frame_in_flight_is_answered():
    s = Scheduler(max_batch=4)
    s.connect("a")
    s.submit(Job("a", 1, (1, 64, 64)))
    assert [j.seq for j in s.next_batch()] == [1]
    s.submit(Job("a", 2, (1, 64, 64)))
    assert s.next_batch() == []
    s.finish("a", 1)
    assert [j.seq for j in s.next_batch()] == [2]


def test_results_for_a_client_that_left_are_not_delivered():
    s = Scheduler()
    s.connect("a")
    s.submit(Job("a", 1, (1, 64, 64)))
    s.next_batch()
    s.disconnect("a")
    assert not s.can_deliver("a", 1)
    s.finish("a", 1)  # a late answer for a gone client is harmless
    assert s.clients == 0


def test_same_key_requests_share_a_batch_and_others_wait_their_turn():
    s = Scheduler(max_batch=2)
    for c, key in [("a", (1, 64, 64)), ("b", (2, 64, 64)), ("c", (1, 64, 64)), ("d", (1, 64, 64))]:
        s.connect(c)
        s.submit(Job(c, 1, key))
    assert [j.client for j in s.next_batch()] == ["a", "c"]
    assert [j.client for j in s.next_batch()] == ["b"]
    assert [j.client for j in s.next_batch()] == ["d"]


def test_max_batch_below_one_is_refused():
    with pytest.raises(ValueError):
        Scheduler(max_batch=0)
