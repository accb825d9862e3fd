"""The GPU worker with a fake engine: batching, isolating a failing request, blocking jobs, and the not-yet-warm
server (healthz 503, requests held until warm) and idle timeout over a real socket."""

import json
import threading

import httpx
from realtime_fakes import FAIL_PROMPT, FakeEngine, serve, wait_until
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from pipelines import GenerationRequest
from realtime.protocol import unpack_frame
from realtime.scheduler import Job
from realtime.server import create_app
from realtime.studio import Studio, StudioConfig
from realtime.worker import Worker


class Answers:
    def __init__(self, worker):
        self.worker, self.got, self.lock = worker, {}, threading.Lock()

    def __call__(self, job, result, error, batch_size):
        with self.lock:
            self.got[job.client] = (job.seq, result, error, batch_size)
        self.worker.finish(job.client, job.seq)


def job(client, seq, prompt="p", steps=1, size=64):
    return Job(client, seq, (steps, size, size), GenerationRequest(prompt, seq, steps, size, size))


def test_same_key_requests_run_as_one_batch_and_a_failing_one_only_fails_itself():
    gate = threading.Event()
    engine = FakeEngine(gate)
    worker = Worker(engine, max_batch=4, warm=True)
    answers = Answers(worker)
    for client in "abc":
        worker.connect(client, answers)
    worker.submit(job("a", 1))
    worker.submit(job("b", 1, FAIL_PROMPT))
    worker.submit(job("c", 1, steps=2))  # another variant: its own batch
    worker.start()
    gate.set()  # everything was queued while warming, so the first batch holds a and b together
    wait_until(lambda: len(answers.got) == 3, "three answers")
    worker.stop()
    assert [len(call) for call in engine.calls[:1]] == [2]
    assert answers.got["a"][1].request.prompt == "p" and answers.got["a"][2] is None
    assert answers.got["a"][3] == 1  # re-rendered alone after the batch failed: its frame says so
    assert answers.got["b"][1] is None and "NaN" in answers.got["b"][2]
    assert answers.got["c"][1].request.steps == 2 and answers.got["c"][3] == 1


def test_two_engines_share_the_stream_and_each_clients_answers_stay_in_order():
    """One worker thread per device, one scheduler: both engines render, each holding a batch at the same time (the
    first to arrive waits for the other), and every client gets its requests answered in seq order, its last one last."""
    both_busy = threading.Barrier(2, timeout=10)

    class Paired(FakeEngine):
        def generate(self, requests, vae=None):
            if not self.calls:  # each engine's first batch meets the other's
                both_busy.wait()
            return super().generate(requests, vae)

    engines = [Paired(), Paired()]
    worker = Worker(engines, max_batch=1)
    order, lock = {}, threading.Lock()

    def answer(job, result, error, batch_size):
        with lock:
            order.setdefault(job.client, []).append(job.seq)
        worker.finish(job.client, job.seq)

    for client in "abcd":
        worker.connect(client, answer)
        worker.submit(job(client, 1))
    worker.start()
    for seq in range(2, 41):  # typing: newer requests replace pending ones while both engines render
        for client in "abcd":
            worker.submit(job(client, seq))
    wait_until(lambda: all(order.get(c, [0])[-1] == 40 for c in "abcd"), "every final answer")
    worker.stop()
    assert all(order[c] == sorted(set(order[c])) and order[c][-1] == 40 for c in "abcd")
    assert all(engine.calls for engine in engines)


def test_blocking_jobs_run_on_the_worker_between_stream_batches():
    engine = FakeEngine()
    worker = Worker(engine, max_batch=1)
    worker.start()
    results = worker.run([GenerationRequest("x", 3, 1, 64, 64), GenerationRequest("x", 3, 2, 64, 64)], vae="full")
    worker.stop()
    assert [r.request.steps for r in results] == [1, 2] and int(results[0].image[0, 0, 0]) == 3


def test_not_warm_means_503_and_requests_wait_then_idle_clients_are_closed():
    gate = threading.Event()
    studio = Studio(FakeEngine(gate), StudioConfig(idle_timeout_s=1.5, max_batch=2)).start()
    try:
        with serve(create_app(studio, ui=False)) as address:
            cold = httpx.get(f"http://{address}/healthz")
            assert cold.status_code == 503 and cold.json()["warm"] is False
            with connect(f"ws://{address}/ws") as ws:
                status = json.loads(ws.recv(30))
                assert status["state"] == "busy" and "warming" in status["message"]
                ws.send(json.dumps({"type": "generate", "seq": 1, "prompt": "early", "seed": 9, "steps": 1, "width": 64, "height": 64}))
                gate.set()
                header, _ = unpack_frame(ws.recv(30))
                assert header["seq"] == 1
                assert httpx.get(f"http://{address}/healthz").status_code == 200
                # Then silence: the server says why and closes.
                idle = json.loads(ws.recv(30))
                assert idle["type"] == "error" and idle["code"] == "idle_timeout"
                try:
                    ws.recv(30)
                    raise AssertionError("the idle connection stayed open")
                except ConnectionClosed as closed:
                    assert closed.rcvd.code == 1000
            wait_until(lambda: studio.connected == 0, "the idle client to be forgotten")
    finally:
        studio.stop()
