"""The real server (uvicorn, the tiny model on the CPU) driven by real `websockets` clients."""

import io
import json
import logging
import threading
import time
from contextlib import ExitStack, contextmanager

import httpx
import numpy as np
import pytest
from PIL import Image
from realtime_fakes import FAIL_PROMPT, wait_until
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from pipelines import GenerationRequest
from realtime import protocol
from realtime.frames import encode_jpeg
from realtime.protocol import unpack_frame

RECV_LIMIT_S = 60  # only stops a hung test; nothing asserts speed


def generate(seq, prompt="a red fox", **fields):
    return json.dumps({"type": "generate", "seq": seq, "prompt": prompt, "seed": 1, "steps": 1, "width": 64, "height": 64} | fields)


@contextmanager
def open_client(address, **kwargs):
    with connect(f"ws://{address}/ws", open_timeout=RECV_LIMIT_S, **kwargs) as ws:
        hello = json.loads(ws.recv(RECV_LIMIT_S))
        assert hello["type"] == "status" and hello["state"] in ("ready", "busy")
        yield ws


def next_message(ws):
    data = ws.recv(RECV_LIMIT_S)
    return ("frame", *unpack_frame(data)) if isinstance(data, bytes) else ("text", json.loads(data), None)


def frames_until(ws, seq):
    """Read until the frame for `seq` arrives; -> (frame headers, text messages), in arrival order."""
    frames, texts = [], []
    while True:
        kind, body, payload = next_message(ws)
        if kind == "text":
            texts.append(body)
            continue
        frames.append((body, payload))
        if body["seq"] >= seq:
            return frames, texts


def next_text(ws):
    while True:
        kind, body, _ = next_message(ws)
        if kind == "text":
            return body


def test_healthz_reports_the_warm_model(tiny_studio):
    address, _ = tiny_studio
    response = httpx.get(f"http://{address}/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == "tiny" and body["variants"] == [1, 2, 4]
    assert body["device"] == "cpu" and body["backend"] == "eager"
    assert body["warm"] is True and body["warmup_seconds"] >= 0
    assert body["sizes"] == [[256, 256], [64, 64], [96, 64]] and body["protocol_version"] == protocol.VERSION


def test_a_size_that_is_not_declared_is_refused_naming_the_offered_sizes(tiny_studio):
    address, _ = tiny_studio
    with open_client(address) as ws:
        ws.send(generate(1, width=128, height=128))
        error = next_text(ws)
    assert (error["code"], error["seq"]) == ("out_of_range", 1)
    assert "128x128 is not served" in error["message"] and "256x256, 64x64, 96x64" in error["message"]


def test_typing_streams_frames_in_order_and_the_last_request_is_answered_last(tiny_studio):
    address, _ = tiny_studio
    text = "a lighthouse at dawn"
    with open_client(address) as ws:
        for seq in range(1, len(text) + 1):
            ws.send(generate(seq, text[:seq], steps=2, width=96, height=64))
        frames, texts = frames_until(ws, len(text))
    seqs = [h["seq"] for h, _ in frames]
    assert texts == []
    assert seqs == sorted(set(seqs)) and seqs[-1] == len(text)
    header, jpeg = frames[-1]
    assert (header["width"], header["height"], header["steps"]) == (96, 64, 2)
    assert set(header["timings_ms"]) >= {"text", "denoise", "decode", "total", "encode"} and header["queue_ms"] >= 0
    image = Image.open(io.BytesIO(jpeg))
    assert image.format == "JPEG" and image.size == (96, 64)


def decoded(jpeg: bytes):
    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"), dtype=np.float32)


def direct_render(studio, prompt, seed, steps, width, height):
    """The same request rendered by the studio's own worker (the engine the stream uses, same decoder), through the
    frames' JPEG encoder: what the stream would send for it."""
    (result,) = studio.worker.run([GenerationRequest(prompt, seed, steps, width, height)], vae=studio.config.preview_vae)
    return decoded(encode_jpeg(result.image))


def test_every_client_gets_its_own_last_frame_while_others_type(tiny_studio):
    """Four clients type at once (two variants and sizes, so batches mix clients); each one's final frame is its own
    final request's picture: its direct render, JPEG-encoded the same way, up to batching's float noise, and far from every other client's."""
    address, studio = tiny_studio
    outcomes, finals = {}, {}

    def client(index):
        shape = dict(steps=1 + index % 2, width=64 + 32 * (index % 2), height=64, seed=index)
        finals[index] = (f"client {index} key 8", shape)
        with open_client(address) as ws:
            for seq in range(1, 9):
                ws.send(generate(seq, f"client {index} key {seq}", **shape))
            frames, _ = frames_until(ws, 8)
            outcomes[index] = ([h["seq"] for h, _ in frames], decoded(frames[-1][1]))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == [0, 1, 2, 3]
    renders = {i: direct_render(studio, prompt, **shape) for i, (prompt, shape) in finals.items()}
    for index, (seqs, last) in outcomes.items():
        assert seqs == sorted(set(seqs)) and seqs[-1] == 8
        own = np.abs(last - renders[index]).mean()
        others = [np.abs(last - renders[j]).mean() for j in renders if j != index and renders[j].shape == last.shape]
        assert own < 1.0 and others and min(others) > 4 * own, (index, own, others)


def test_a_burst_renders_fewer_frames_than_keystrokes_and_the_last_picture_is_the_last_prompts(tiny_studio):
    """Latest wins: keystrokes that arrive while a frame renders replace each other, so a burst of 30 yields a few
    frames, and the final one shows the final prompt (not an earlier one relabelled)."""
    address, studio = tiny_studio
    shape = dict(steps=1, width=64, height=64, seed=7)
    with open_client(address) as ws:
        for seq in range(1, 31):
            ws.send(generate(seq, f"burst {seq}", **shape))
        frames, _ = frames_until(ws, 30)
    assert len(frames) < 30 and frames[-1][0]["seq"] == 30
    last = decoded(frames[-1][1])
    final, first = direct_render(studio, "burst 30", **shape), direct_render(studio, "burst 1", **shape)
    own, earlier = np.abs(last - final).mean(), np.abs(last - first).mean()
    assert own < 1.0 and earlier > 4 * own, (own, earlier)


@pytest.mark.parametrize(
    "message, code",
    [
        ("not json", "bad_json"),
        (b"\x89PNG", "binary_not_supported"),
        (json.dumps({"type": "subscribe"}), "unknown_type"),
        (json.dumps({"type": "hello", "version": 9}), "unsupported_version"),
        (generate(1, extra_field=1), "unknown_field"),
        (generate(1, seed="seven"), "bad_type"),
        (generate(1, steps=8), "out_of_range"),  # 8 steps is not loaded in this server
        (generate(1, width=72), "out_of_range"),  # a multiple of 8, but not a declared size
        (generate(1, width=70), "out_of_range"),
        (generate(1, height=100000), "out_of_range"),
        (generate(1, seed=-1), "out_of_range"),
        ("x" * 5000, "too_large"),
    ],
)
def test_bad_input_gets_an_error_and_the_connection_survives(tiny_studio, message, code):
    address, _ = tiny_studio
    with open_client(address) as ws:
        ws.send(message)
        error = next_text(ws)
        assert error["type"] == "error" and error["code"] == code and error["message"]
        ws.send(generate(2))
        frames, _ = frames_until(ws, 2)
        assert frames[-1][0]["seq"] == 2


def test_a_replayed_seq_is_refused(tiny_studio):
    address, _ = tiny_studio
    with open_client(address) as ws:
        ws.send(generate(5))
        ws.send(generate(3))
        messages = [next_message(ws) for _ in range(2)]
        errors = [body for kind, body, _ in messages if kind == "text"]
        assert [(e["code"], e["seq"]) for e in errors] == [("stale_seq", 3)]
        assert [body["seq"] for kind, body, _ in messages if kind == "frame"] == [5]


def test_an_engine_failure_on_one_request_is_reported_to_that_client_only(tiny_studio):
    address, _ = tiny_studio
    with open_client(address) as bad, open_client(address) as good:
        bad.send(generate(1, FAIL_PROMPT))
        good.send(generate(1, "fine"))
        error = next_text(bad)
        assert (error["code"], error["seq"]) == ("generation_failed", 1) and "NaN" in error["message"]
        frames, _ = frames_until(good, 1)
        assert frames[-1][0]["seq"] == 1
        bad.send(generate(2, "fine now"))
        assert frames_until(bad, 2)[0][-1][0]["seq"] == 2


def test_a_text_frame_that_is_not_utf8_is_closed_with_1007_and_logged_in_one_line(tiny_studio, log_records):
    address, _ = tiny_studio
    records = log_records("uvicorn.error")
    with open_client(address) as ws:
        ws.send(b"\xff\xfe not UTF-8", text=True)
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(RECV_LIMIT_S)
    wait_until(lambda: records, "the server to log the bad frame")
    assert closed.value.rcvd.code == 1007
    (record,) = records
    assert record.getMessage() == "a client sent a WebSocket text frame that is not valid UTF-8; closed it with 1007"
    assert record.exc_info is None and record.levelno == logging.WARNING


def test_prompt_tokens_beyond_the_window_are_reported(tiny_studio):
    address, _ = tiny_studio
    with open_client(address) as ws:
        ws.send(generate(1, "word " * 100))
        frames, _ = frames_until(ws, 1)
    assert frames[-1][0]["dropped_tokens"] > 0


def test_a_full_server_says_so_then_closes(tiny_studio):
    address, studio = tiny_studio
    wait_until(lambda: studio.connected == 0, "earlier tests' connections to close")
    with ExitStack() as stack:
        for _ in range(studio.config.max_clients):
            stack.enter_context(open_client(address))
        with connect(f"ws://{address}/ws", open_timeout=RECV_LIMIT_S) as extra:
            status = json.loads(extra.recv(RECV_LIMIT_S))
            assert status["type"] == "status" and status["state"] == "server_full" and "full" in status["message"]
            with pytest.raises(ConnectionClosed) as closed:
                extra.recv(RECV_LIMIT_S)
            assert closed.value.rcvd.code == 1013


def test_flooding_is_rate_limited_and_the_connection_survives(tiny_studio):
    address, studio = tiny_studio
    flood = int(studio.config.burst) * 3
    with open_client(address) as ws:
        for seq in range(1, flood + 1):
            ws.send(generate(seq))
        limited = next_text(ws)
        assert limited["code"] == "rate_limited" and limited["retry_ms"] > 0 and "resend" in limited["message"]
        assert studio.config.burst < limited["seq"] <= flood  # names the message it refused
        time.sleep(limited["retry_ms"] / 1000 + 0.1)  # the bucket refills; a well-behaved client resends now
        ws.send(generate(flood + 1))
        frames, texts = frames_until(ws, flood + 1)
    assert frames[-1][0]["seq"] == flood + 1
    assert {t["code"] for t in texts} <= {"rate_limited"}


def test_oversized_frames_close_the_connection_but_not_the_server(tiny_studio):
    address, _ = tiny_studio
    with open_client(address) as ws:
        ws.send("x" * 200_000)  # beyond the transport limit (64 KiB)
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                ws.recv(RECV_LIMIT_S)
        assert closed.value.rcvd.code == 1009
    assert httpx.get(f"http://{address}/healthz").status_code == 200


def test_a_client_vanishing_mid_generation_harms_nobody(tiny_studio):
    address, studio = tiny_studio
    for seq in range(1, 4):
        with open_client(address) as ws:
            ws.send(generate(seq, "gone", steps=4, width=256, height=256))
    wait_until(lambda: studio.worker.queue_depth()["in_flight"] == 0 and studio.connected == 0, "the server to forget them")
    with open_client(address) as ws:
        ws.send(generate(1))
        assert frames_until(ws, 1)[0][-1][0]["seq"] == 1


def test_metrics_report_throughput_latency_queue_and_memory(tiny_studio):
    address, _ = tiny_studio
    with open_client(address) as ws:
        ws.send(generate(1, "metrics"))
        frames_until(ws, 1)
        body = httpx.get(f"http://{address}/metrics").json()
        assert body["connected_clients"] >= 1
    assert body["counters"]["frames"] >= 1 and body["fps"] > 0
    for stage in ("queue", "denoise", "decode", "encode", "total", "server_total"):
        assert body["latency_ms"][stage]["p50"] >= 0 and body["latency_ms"][stage]["p99"] >= body["latency_ms"][stage]["p50"]
    assert set(body["queue"]) >= {"pending", "in_flight", "clients"}
    assert body["process_rss_mb"] > 0 and body["engine_memory"]["parameters_total"] > 0
