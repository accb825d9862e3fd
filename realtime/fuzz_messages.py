"""The fuzz's messages: random valid and invalid /ws messages of every class docs/protocol.md names, and the answer
the server owes each one. Pure functions of a seeded random generator, so a seed replays the same messages.

The answer owed is the protocol's verdict on the message's form, then the engine's limits as the server reports
them (`ServingLimits` from /healthz: variants, declared sizes, seeds), the same two checks the server makes."""

import json
import random
from dataclasses import dataclass

from pipelines import GenerationRequest, InvalidRequest
from pipelines.requests import ServingLimits

from . import protocol
from .protocol import Hello, ProtocolError

PROMPTS = ("", "a red circle", "two blue squares on grey", "ünïcødé ✓ 漢字 😀", "\u200f\u05e9\u05dc\u05d5\u05dd", "a\u0301" * 40, " ".join(["word"] * 90))


def generate_body(rng: random.Random, limits: ServingLimits, seq: int) -> dict:
    """A valid generate: any declared size, any loaded step count."""
    width, height = rng.choice(limits.sizes)
    return {
        "type": "generate",
        "seq": seq,
        "prompt": rng.choice(PROMPTS),
        "seed": rng.randint(0, limits.max_seed),
        "steps": rng.choice(limits.steps),
        "width": width,
        "height": height,
    }


def undeclared_size(rng: random.Random, limits: ServingLimits) -> tuple[int, int]:
    """A size the server does not serve: a declared one with a side moved by a multiple of 8, or not a multiple of 8."""
    width, height = rng.choice(limits.sizes)
    while (width, height) in limits.sizes:
        width = max(8, width + rng.choice((-64, -8, 8, 64, 1)))
    return width, height


def with_field(body: dict, name: str, value) -> dict:
    return {**body, name: value}


def without_field(body: dict, name: str) -> dict:
    return {k: v for k, v in body.items() if k != name}


def mutate(rng: random.Random, text: str) -> str:
    """One random edit of a message: delete, insert or replace a character, or cut the message short."""
    i = rng.randrange(len(text))
    kind = rng.randrange(4)
    if kind == 0:
        return text[:i] + text[i + 1 :]
    if kind == 1:
        return text[:i] + rng.choice('{}[]":,0123456789-.e \\nulltrue') + text[i:]
    if kind == 2:
        return text[:i] + chr(rng.randrange(32, 0x3000)) + text[i + 1 :]
    return text[:i]


def mutated(rng: random.Random, text: str, seq: int) -> str:
    """A mutation of `text` whose seq, if it still has one, did not jump far ahead (which would end the run early by
    pushing every later seq past the protocol's limit)."""
    while True:
        candidate = mutate(rng, text)
        if (protocol.seq_of(candidate) or 0) <= seq + 1000:
            return candidate


def draw_message(rng: random.Random, limits: ServingLimits, seq: int, stale_seq: int | None) -> tuple[str, str | bytes, str | None]:
    """(class, payload, the error code the class is built to provoke; None for a valid message or a mutation)."""
    body = generate_body(rng, limits, seq)
    dumps = json.dumps
    wrong_types = [("seed", "1"), ("steps", True), ("width", 64.0), ("prompt", 5), ("height", None)]
    cases = [
        ("generate", lambda: dumps(body), None),
        ("generate", lambda: dumps(body), None),
        ("generate", lambda: dumps(body), None),
        ("hello", lambda: dumps({"type": "hello", "version": protocol.VERSION}), None),
        ("not_json", lambda: rng.choice(["{", "generate", '{"type": "generate",', "\x00", "[" * 2000]), "bad_json"),
        ("not_object", lambda: rng.choice(["[1, 2]", "42", '"generate"', "null"]), "bad_message"),
        ("unknown_type", lambda: dumps({"type": rng.choice(["render", "", None, 7])}), "unknown_type"),
        ("unknown_field", lambda: dumps(with_field(body, rng.choice(["negative_prompt", "cfg", "Seq"]), 1)), "unknown_field"),
        ("missing_field", lambda: dumps(without_field(body, rng.choice(["prompt", "seed", "steps", "width", "height"]))), "missing_field"),
        ("bad_type", lambda: dumps(with_field(body, *rng.choice(wrong_types))), "bad_type"),
        ("bad_seed", lambda: dumps(with_field(body, "seed", rng.choice([-1, limits.max_seed + 1]))), "out_of_range"),
        ("bad_steps", lambda: dumps(with_field(body, "steps", max(limits.steps) + rng.randint(1, 100))), "out_of_range"),
        ("bad_size", lambda: dumps(dict(body, **dict(zip(("width", "height"), undeclared_size(rng, limits))))), "out_of_range"),
        ("long_prompt", lambda: dumps(with_field(body, "prompt", "x" * (protocol.MAX_PROMPT_CHARS + 1))), "out_of_range"),
        ("lone_surrogate", lambda: dumps(with_field(body, "prompt", "a \ud800 b")), "invalid_text"),
        ("old_version", lambda: dumps({"type": "hello", "version": rng.choice([0, 2, 99])}), "unsupported_version"),
        ("too_large", lambda: dumps(with_field(body, "prompt", "y" * (protocol.MAX_MESSAGE_BYTES + 10))), "too_large"),
        ("binary", lambda: rng.randbytes(rng.randint(1, 64)), "binary_not_supported"),
        ("mutated", lambda: mutated(rng, dumps(body), seq), None),
    ]
    if stale_seq is not None:
        cases.append(("replayed_seq", lambda: dumps(with_field(body, "seq", stale_seq)), "stale_seq"))
    name, build, intended = rng.choice(cases)
    return name, build(), intended


@dataclass(frozen=True)
class Expected:
    """What one message must get back: `kind` is "frame" (a valid generate), "status" (a hello) or "error"."""

    kind: str
    code: str | None = None
    seq: int | None = None


def expected_answer(payload: str | bytes, limits: ServingLimits, last_accepted: int) -> Expected:
    """The server's verdict on a message (its form, then the engine's limits), given the highest seq the server
    accepted from this client so far."""
    try:
        message = protocol.parse(payload)
    except ProtocolError as e:
        return Expected("error", e.code, e.seq)
    if isinstance(message, Hello):
        return Expected("status")
    try:
        limits.check(GenerationRequest(message.prompt, message.seed, message.steps, message.width, message.height))
    except InvalidRequest:
        return Expected("error", "out_of_range", message.seq)
    if message.seq <= last_accepted:
        return Expected("error", "stale_seq", message.seq)
    return Expected("frame", seq=message.seq)
