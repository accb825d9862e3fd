"""Bounded fuzz and soak of the /ws protocol: many clients send random valid and invalid messages, and every answer
is checked against what docs/protocol.md promises.

    python -m realtime.fuzz --url ws://127.0.0.1:7860/ws --messages 10000 --clients 8 --seed 1 --json fuzz.json

Each client draws messages from every class the protocol knows (valid generates and hellos; bad JSON, wrong types,
unknown fields, out-of-range values, lone surrogates, oversize and binary messages, replayed seqs) plus random byte
mutations of valid messages, paced under the server's rate limit. What each message must get back is decided by
the protocol's parser applied to the bytes sent, together with the client's own record of the seqs the server
accepted (a hand-built message's intended code is checked against it too). Checked, per client:

- every message is answered: a refused one by its error (with its `seq` when it had one), a hello by a status, a
  valid generate by its frame, a `generation_failed` error, or nothing only when a later generate superseded it;
- the final generate of every client is answered; frames arrive in increasing `seq`; nothing arrives unasked;
- no connection is closed by the server; /healthz stays 200, and every client is gone from /metrics afterwards;
- the server's resident memory levels off: over the second half of the run it grows less than --rss-tolerance-mb.

The exit code is 0 only if every check holds.
"""

import argparse
import asyncio
import json
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

import websockets

from pipelines.requests import ServingLimits

from .fuzz_messages import draw_message, expected_answer, generate_body
from .protocol import unpack_frame
from .reports import http_json, publish

EXAMPLES_KEPT = 20  # failures listed in the report; the counts cover all of them


# --- one client ------------------------------------------------------------------------------------------------------
@dataclass
class ClientReport:
    sent: Counter = field(default_factory=Counter)  # class -> messages
    answers: Counter = field(default_factory=Counter)  # "frame" or error code -> count
    failures: list = field(default_factory=list)  # (check, detail)
    superseded: int = 0


async def run_client(index: int, args, limits: ServingLimits, count: int) -> ClientReport:
    report = ClientReport()
    rng = random.Random(f"{args.seed}:{index}")
    unsequenced_expected: list[str] = []  # in send order: "status" or an error code
    unsequenced_received: list[str] = []
    errors_expected: Counter = Counter()  # (seq, code)
    errors_received: Counter = Counter()
    accepted: list[int] = []  # seqs of valid generates, in order
    frames: list[int] = []
    try:
        async with websockets.connect(args.url, max_size=2**24, open_timeout=30, compression=None, close_timeout=5) as ws:
            json.loads(await ws.recv())  # the greeting

            async def receive():
                async for message in ws:
                    if isinstance(message, bytes):
                        header, _ = unpack_frame(message)
                        if frames and header["seq"] <= frames[-1]:
                            report.failures.append(("frames_out_of_order", f"client {index}: frame {header['seq']} after {frames[-1]}"))
                        frames.append(header["seq"])
                        report.answers["frame"] += 1
                    else:
                        body = json.loads(message)
                        label = body.get("code") or body.get("type")
                        report.answers[label] += 1
                        if body.get("type") == "error" and "seq" in body:
                            errors_received[(body["seq"], body["code"])] += 1
                        else:
                            unsequenced_received.append(label)
                report.failures.append(("connection_closed", f"client {index}: the server closed the connection"))

            def final_answered() -> bool:
                return frames[-1:] == accepted[-1:] or errors_received[(accepted[-1], "generation_failed")] > 0

            receiver = asyncio.create_task(receive())
            seq = 0
            for i in range(count + 1):
                seq += 1
                # The server reads a client's messages in order, so by the time it reads this one its highest accepted
                # seq is accepted[-1] (no message is lost to the rate limit at this pace): anything up to it is stale.
                stale = rng.randint(0, accepted[-1]) if accepted else None
                if i == count:  # every client ends on a valid generate, whose answer must arrive
                    name, payload, intended = "generate", json.dumps(generate_body(rng, limits, seq)), None
                else:
                    name, payload, intended = draw_message(rng, limits, seq, stale)
                expected = expected_answer(payload, limits, accepted[-1] if accepted else -1)
                if intended is not None and expected.code != intended:
                    report.failures.append(("fuzzer_disagrees_with_parser", f"{name}: built for {intended}, parser says {expected.code}"))
                if expected.kind == "frame":
                    accepted.append(expected.seq)
                    seq = max(seq, expected.seq)  # a mutation may have raised the seq
                elif expected.seq is not None:
                    errors_expected[(expected.seq, expected.code)] += 1
                else:
                    unsequenced_expected.append(expected.code or "status")
                report.sent[name] += 1
                await ws.send(payload)
                await asyncio.sleep(rng.expovariate(args.rate))
            deadline = time.monotonic() + args.drain
            while not (final_answered() and len(unsequenced_received) >= len(unsequenced_expected)) and time.monotonic() < deadline and not receiver.done():
                await asyncio.sleep(0.05)
            if not final_answered():
                report.failures.append(("final_generate_unanswered", f"client {index}: no answer to seq {accepted[-1]} within {args.drain:g} s"))
            await asyncio.sleep(args.grace)  # anything unasked would arrive now
            if receiver.done():
                receiver.result()  # re-raise what broke the receiver (a malformed frame, a dropped connection)
            receiver.cancel()
    except websockets.ConnectionClosed as e:
        report.failures.append(("connection_closed", f"client {index}: the server closed the connection ({e})"))
        return report
    except (OSError, websockets.WebSocketException, asyncio.TimeoutError) as e:
        report.failures.append(("connection_failed", f"client {index}: {type(e).__name__}: {e}"))
        return report
    check_answers(index, report, unsequenced_expected, unsequenced_received, errors_expected, errors_received, accepted, frames)
    return report


def check_answers(index, report, unsequenced_expected, unsequenced_received, errors_expected, errors_received, accepted, frames) -> None:
    """Compare what came back with what was owed (see the module docstring for the rules)."""
    fail = lambda check, detail: report.failures.append((check, f"client {index}: {detail}"))
    if unsequenced_received != unsequenced_expected:
        at = next(
            (i for i, (a, b) in enumerate(zip(unsequenced_expected, unsequenced_received)) if a != b), min(len(unsequenced_expected), len(unsequenced_received))
        )
        fail("unsequenced_answers", f"{len(unsequenced_received)} received for {len(unsequenced_expected)} owed; first difference at #{at}")
    accepted_set = set(accepted)
    failed_generates = Counter({k: n for k, n in errors_received.items() if k[1] == "generation_failed" and k[0] in accepted_set})
    for key, n in (errors_expected - (errors_received - failed_generates)).items():
        fail("missing_error", f"{n} × {key[1]} for seq {key[0]}")
    for key, n in ((errors_received - failed_generates) - errors_expected).items():
        fail("unexpected_error", f"{n} × {key[1]} for seq {key[0]}")
    for seq in sorted(set(frames) - accepted_set):
        fail("unexpected_frame", f"frame {seq} answers no accepted generate")
    answered = set(frames) | {seq for seq, _ in failed_generates}
    report.superseded = sum(1 for seq in accepted[:-1] if seq not in answered)


# --- the server ------------------------------------------------------------------------------------------------------
async def sample_rss(ws_url: str, every_s: float, samples: list, stop: asyncio.Event) -> None:
    while not stop.is_set():
        code, body = await asyncio.to_thread(http_json, ws_url, "/metrics")
        if body:
            samples.append((time.monotonic(), body["process_rss_mb"]))
        try:
            await asyncio.wait_for(stop.wait(), every_s)
        except asyncio.TimeoutError:
            pass


def rss_growth_second_half(samples: list) -> float | None:
    """RSS(end) − RSS(at the run's midpoint), MiB: memory that still grows late in a soak is a leak."""
    if len(samples) < 2:
        return None
    start, end = samples[0][0], samples[-1][0]
    middle = min(samples, key=lambda s: abs(s[0] - (start + end) / 2))
    return round(samples[-1][1] - middle[1], 1)


async def fuzz(args) -> dict:
    code, health = http_json(args.url, "/healthz")
    if code != 200:
        raise SystemExit(f"{args.url}: /healthz answered {code or 'nothing'}; start the server (and let it warm up) first")
    limits = ServingLimits.from_json(health)  # the engine's limits, as the server reports them
    per_client = [args.messages // args.clients + (i < args.messages % args.clients) for i in range(args.clients)]
    samples: list = []
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_rss(args.url, args.rss_every, samples, stop))
    started = time.monotonic()
    reports = await asyncio.gather(*(run_client(i, args, limits, n) for i, n in enumerate(per_client)))
    elapsed = time.monotonic() - started
    stop.set()
    await sampler
    health_after, _ = http_json(args.url, "/healthz")
    clients_left = None
    for _ in range(50):  # a closed socket leaves the server's count on its next loop turn
        _, metrics = http_json(args.url, "/metrics")
        clients_left = metrics and metrics["connected_clients"]
        if clients_left == 0:
            break
        await asyncio.sleep(0.1)
    growth = rss_growth_second_half(samples)
    failures = [f for r in reports for f in r.failures]
    if health_after != 200:
        failures.append(("unhealthy", f"/healthz answered {health_after or 'nothing'} after the run"))
    if clients_left != 0:
        failures.append(("clients_left", f"/metrics still counts {clients_left} connected clients after every client closed"))
    if growth is not None and growth > args.rss_tolerance_mb:
        failures.append(("rss_grows", f"server RSS grew {growth} MiB over the second half (tolerance {args.rss_tolerance_mb:g})"))
    return {
        "url": args.url,
        "seed": args.seed,
        "clients": args.clients,
        "messages": sum(sum(r.sent.values()) for r in reports),
        "elapsed_s": round(elapsed, 1),
        "sent": dict(sum((r.sent for r in reports), Counter()).most_common()),
        "answers": dict(sum((r.answers for r in reports), Counter()).most_common()),
        "superseded": sum(r.superseded for r in reports),
        "server_rss_mb": [round(mb, 1) for _, mb in samples],
        "rss_growth_second_half_mb": growth,
        "failure_counts": dict(Counter(check for check, _ in failures)),
        "failures": [detail for _, detail in failures[:EXAMPLES_KEPT]],
        "ok": not failures,
    }


def markdown(result: dict) -> str:
    rows = [
        ("clients / messages / seconds", f"{result['clients']} / {result['messages']} / {result['elapsed_s']}"),
        ("messages sent by class", json.dumps(result["sent"])),
        ("answers (frames, statuses, errors by code)", json.dumps(result["answers"])),
        ("generates superseded (by design)", result["superseded"]),
        ("server RSS first → last (MiB)", f"{(result['server_rss_mb'] or [None])[0]} → {(result['server_rss_mb'] or [None])[-1]}"),
        ("RSS growth over the second half (MiB)", result["rss_growth_second_half_mb"]),
        ("failed checks", json.dumps(result["failure_counts"]) if result["failure_counts"] else "none"),
    ]
    table = "| check | value |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows)
    return table + "".join(f"\n- {detail}" for detail in result["failures"])


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="ws://127.0.0.1:7860/ws")
    p.add_argument("--messages", type=int, default=1000, help="in all, shared between the clients")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seed", type=int, default=0, help="the same seed sends the same messages")
    p.add_argument("--rate", type=float, default=20, help="mean messages/s per client; keep it under the server's limit (30)")
    p.add_argument("--drain", type=float, default=60, help="seconds each client waits for its final answer")
    p.add_argument("--grace", type=float, default=0.3, help="seconds each client listens for unasked messages at the end")
    p.add_argument("--rss-every", type=float, default=1.0, help="seconds between samples of the server's RSS")
    p.add_argument("--rss-tolerance-mb", type=float, default=32, help="largest RSS growth over the second half that counts as levelled off")
    p.add_argument("--json", default=None, help="write the full result here")
    args = p.parse_args(argv)
    if args.messages < 1 or args.clients < 1 or args.rate <= 0:
        p.error("--messages and --clients must be at least 1 and --rate positive")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    result = asyncio.run(fuzz(args))
    publish(result, markdown(result), args.json)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
