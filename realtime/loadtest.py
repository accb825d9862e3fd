"""Load test: N simulated people typing K keys/s into /ws for S seconds.

    python -m realtime.loadtest --url ws://127.0.0.1:7860/ws --clients 50 --seconds 30 --rate 5 --json out.json

Each client sends one `generate` per keystroke (the prompt grows word by word, the way a person types), draws
whatever frames come back, and after S seconds stops typing and waits for the frame of its final keystroke.

Reported:
- key_to_frame_ms: for every keystroke, the time until a frame showing it *or a newer one* arrived (what a user
  perceives; superseded keystrokes count, they are answered by the newer frame);
- frame_latency_ms: for every frame, the time since its own request was sent;
- fps (frames received per second, all clients), superseded (keystrokes never rendered because a newer one
  replaced them: by design), stale_dropped (frames older than one already drawn: must be 0),
- lost_final_updates: clients whose last keystroke never got its frame (must be 0), errors by code,
- the server's resident memory before and after, from GET /metrics.
"""

import argparse
import asyncio
import json
import os
import random
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import websockets

from .protocol import unpack_frame
from .reports import http_json, publish

WORDS = (
    "a quiet harbour at dawn with fishing boats mist over the water warm light soft focus painted in oils "
    "by an old master detailed rigging gulls circling above the lighthouse"
).split()


@dataclass
class ClientLog:
    sent_at: dict = field(default_factory=dict)  # seq -> send time
    frames: list = field(default_factory=list)  # (seq, arrival time)
    errors: dict = field(default_factory=dict)  # code -> count
    last_drawn: int = 0
    stale_dropped: int = 0
    final_seq: int = 0
    final_received: bool = False
    failed: str | None = None


def keystrokes(rng: random.Random):
    """Prompts as they look after each keystroke of someone typing random words from WORDS."""
    text = ""
    while True:
        word = rng.choice(WORDS)
        for ch in (" " if text else "") + word:
            text += ch
            if len(text) > 300:  # start a new prompt rather than grow past the encoder's window
                text = ch.strip()
            yield text


async def run_client(index: int, args, window: dict, start_gate: asyncio.Event) -> ClientLog:
    log = ClientLog()
    rng = random.Random(index)
    try:
        async with websockets.connect(args.url, max_size=2**24, open_timeout=args.drain, compression=None) as ws:
            status = json.loads(await ws.recv())
            if status.get("state") == "server_full":
                log.failed = "server_full"
                return log
            steps = args.steps or status.get("live_steps") or status["variants"][0]
            size = args.size or status["sizes"][0][0]  # a square declared size: the first (the native square) by default
            final = asyncio.get_running_loop().create_future()

            async def receive():
                async for message in ws:
                    now = time.perf_counter()
                    if isinstance(message, str):
                        body = json.loads(message)
                        if body.get("type") == "error":
                            log.errors[body["code"]] = log.errors.get(body["code"], 0) + 1
                        continue
                    header, _ = unpack_frame(message)
                    if header["seq"] <= log.last_drawn:
                        log.stale_dropped += 1
                        continue
                    log.last_drawn = header["seq"]
                    log.frames.append((header["seq"], now))
                    if log.final_seq and header["seq"] >= log.final_seq and not final.done():
                        final.set_result(True)

            receiver = asyncio.create_task(receive())
            await start_gate.wait()
            await asyncio.sleep(rng.random() / args.rate)  # people do not type in lockstep
            seq = 0
            for prompt in keystrokes(rng):
                if time.perf_counter() >= window["stop_at"]:
                    break
                seq += 1
                log.sent_at[seq] = time.perf_counter()
                await ws.send(json.dumps({"type": "generate", "seq": seq, "prompt": prompt, "seed": index, "steps": steps, "width": size, "height": size}))
                await asyncio.sleep(1 / args.rate)
            log.final_seq = seq
            if log.last_drawn >= seq:
                final.set_result(True)
            try:
                await asyncio.wait_for(final, args.drain)
            except asyncio.TimeoutError:
                pass
            log.final_received = final.done()
            receiver.cancel()
    except (OSError, websockets.WebSocketException, asyncio.TimeoutError) as e:
        log.failed = f"{type(e).__name__}: {e}"
    return log


def summarize(logs: list[ClientLog], started: float) -> dict:
    """`started`: when typing began; frames/s counts every frame up to the last one (the drain included)."""
    key_to_frame, frame_latency = [], []
    for log in logs:
        frames = sorted(log.frames)
        for seq, arrived in frames:
            frame_latency.append((arrived - log.sent_at[seq]) * 1000)
        # Walk keystrokes and frames together: each keystroke is answered by the first frame with seq >= it.
        answered, i = [], 0
        for seq in sorted(log.sent_at):
            while i < len(frames) and frames[i][0] < seq:
                i += 1
            if i < len(frames):
                answered.append((frames[i][1] - log.sent_at[seq]) * 1000)
        key_to_frame += answered
    errors: dict = {}
    for log in logs:
        for code, n in log.errors.items():
            errors[code] = errors.get(code, 0) + n
        if log.failed:
            errors[log.failed.split(":")[0]] = errors.get(log.failed.split(":")[0], 0) + 1
    sent = sum(len(log.sent_at) for log in logs)
    frames = sum(len(log.frames) for log in logs)
    last = max((t for log in logs for _, t in log.frames), default=started)
    return {
        "clients": len(logs),
        "keystrokes": sent,
        "frames": frames,
        "fps": round(frames / (last - started), 2) if last > started else None,
        "elapsed_s": round(last - started, 1),
        "key_to_frame_ms": _pct(key_to_frame),
        "frame_latency_ms": _pct(frame_latency),
        "superseded": sent - frames - sum(sum(log.errors.values()) for log in logs),
        "stale_dropped": sum(log.stale_dropped for log in logs),
        "lost_final_updates": sum(1 for log in logs if log.final_seq and not log.final_received) + sum(1 for log in logs if log.failed),
        "errors": errors,
    }


def _pct(values: list[float]) -> dict:
    if not values:
        return {"p50": None, "p95": None, "p99": None}
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {"p50": round(float(p50), 1), "p95": round(float(p95), 1), "p99": round(float(p99), 1)}


def server_metrics(ws_url: str) -> dict | None:
    return http_json(ws_url, "/metrics")[1]


def markdown(result: dict) -> str:
    k, f = result["key_to_frame_ms"], result["frame_latency_ms"]
    rows = [
        ("clients × keys/s × seconds", f"{result['clients']} × {result['rate']} × {result['seconds']}"),
        ("keystrokes sent / frames received", f"{result['keystrokes']} / {result['frames']}"),
        ("frames/s (all clients, until the last frame)", f"{result['fps']} over {result['elapsed_s']} s"),
        ("keystroke→frame p50 / p95 / p99 (ms)", f"{k['p50']} / {k['p95']} / {k['p99']}"),
        ("request→own frame p50 / p95 / p99 (ms)", f"{f['p50']} / {f['p95']} / {f['p99']}"),
        ("superseded keystrokes (never rendered, by design)", result["superseded"]),
        ("stale frames dropped by clients", result["stale_dropped"]),
        ("lost final updates", result["lost_final_updates"]),
        ("errors", json.dumps(result["errors"]) if result["errors"] else "0"),
        ("server RSS before → after (MiB)", f"{result.get('server_rss_mb_before')} → {result.get('server_rss_mb_after')}"),
        ("server mean batch size", result.get("server_mean_batch_size")),
        ("machine load average (1 min) at the end", result.get("load_average_1min")),
    ]
    return "| metric | value |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows)


async def main_async(args) -> dict:
    before = server_metrics(args.url)
    window = {}  # filled when typing starts: every client types in the same S-second window
    start_gate = asyncio.Event()
    tasks = [asyncio.create_task(run_client(i, args, window, start_gate)) for i in range(args.clients)]
    await asyncio.sleep(min(5.0, 0.05 * args.clients))  # let the connections open before anyone types
    started = time.perf_counter()
    window["stop_at"] = started + args.seconds
    start_gate.set()
    logs = await asyncio.gather(*tasks)
    after = server_metrics(args.url)
    result = summarize(logs, started)
    result |= {
        "url": args.url,
        "rate": args.rate,
        "seconds": args.seconds,
        "steps": args.steps,
        "size": args.size,
        "server_rss_mb_before": before and before.get("process_rss_mb"),
        "server_rss_mb_after": after and after.get("process_rss_mb"),
        "server_mean_batch_size": after and after.get("mean_batch_size"),
        "server_latency_ms": after and after.get("latency_ms"),
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    return result


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="ws://127.0.0.1:7860/ws")
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--rate", type=float, default=5, help="keystrokes per second per client")
    p.add_argument("--steps", type=int, default=None, help="default: the variant the server types with (live_steps)")
    p.add_argument("--size", type=int, default=None, help="square side, one the server declares; default: its first size")
    p.add_argument("--drain", type=float, default=120, help="seconds to wait for each client's final frame")
    p.add_argument("--json", default=None, help="write the full result here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    result = asyncio.run(main_async(args))
    publish(result, markdown(result), args.json)
    return 0 if result["lost_final_updates"] == 0 and result["stale_dropped"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
