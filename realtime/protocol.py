"""The /ws wire format (docs/protocol.md): parse client JSON, build server messages and binary frames.

Pure functions only, so every bad input can be tested without a server. Parsing checks the form of a message
(types, fields, the ranges the protocol itself fixes: seq, prompt length, message size); whether the model can
render it (loaded step counts, declared sizes, seeds) is the engine's to say (pipelines.ServingLimits), asked once
per request by the connection.
"""

import json
import struct
from dataclasses import dataclass

from pipelines.errors import capped

VERSION = 1
MAX_MESSAGE_BYTES = 4096  # a generate message with a long prompt is well under 1 KiB
MAX_PROMPT_CHARS = 2000  # far beyond TOKEN_WINDOW tokens; tokens past the encoder's window are reported per frame
MAX_SEQ = 2**53 - 1  # JavaScript's largest exact integer: the browser client counts seq in a Number

GENERATE_FIELDS = {"type", "seq", "prompt", "seed", "steps", "width", "height"}
HELLO_FIELDS = {"type", "version"}


class ProtocolError(ValueError):
    """A message the server refuses; `code` is machine-readable, the message says what to change."""

    def __init__(self, code: str, message: str, seq: int | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.seq = seq


@dataclass(frozen=True)
class Hello:
    version: int


@dataclass(frozen=True)
class Generate:
    seq: int
    prompt: str
    seed: int
    steps: int
    width: int
    height: int


def seq_of(text: str | bytes) -> int | None:
    """The `seq` of a message without validating the rest (for errors about a message that is not parsed, such as
    one refused by the rate limit), or None."""
    try:
        msg = json.loads(text) if isinstance(text, str) and len(text) <= MAX_MESSAGE_BYTES else None
    except (ValueError, RecursionError):
        return None
    return msg.get("seq") if isinstance(msg, dict) and _is_int(msg.get("seq")) else None


def parse(text: str | bytes) -> Hello | Generate:
    """One client message -> Hello | Generate, or ProtocolError naming the problem."""
    if isinstance(text, (bytes, bytearray)):
        raise ProtocolError("binary_not_supported", "send JSON text messages; binary messages are only sent by the server")
    if len(text.encode("utf-8", "surrogatepass")) > MAX_MESSAGE_BYTES:
        raise ProtocolError("too_large", f"messages are limited to {MAX_MESSAGE_BYTES} bytes")
    try:
        msg = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise ProtocolError("bad_json", f"message is not valid JSON: {e}") from None
    if not isinstance(msg, dict):
        raise ProtocolError("bad_message", 'a message must be a JSON object with a "type" field')
    kind = msg.get("type")
    if kind == "hello":
        _no_unknown(msg, HELLO_FIELDS, None)
        version = _int(msg, "version", None)
        if version != VERSION:
            raise ProtocolError("unsupported_version", f"protocol version {version} is not supported; this server speaks {VERSION}")
        return Hello(version)
    if kind == "generate":
        seq = msg.get("seq") if _is_int(msg.get("seq")) else None  # echoed in errors so a client can match them
        _no_unknown(msg, GENERATE_FIELDS, seq)
        seq = _int(msg, "seq", seq, 0, MAX_SEQ)
        if "prompt" not in msg:
            raise ProtocolError("missing_field", '"prompt" is required', seq)
        prompt = msg["prompt"]
        if not isinstance(prompt, str):
            raise ProtocolError("bad_type", '"prompt" must be a string', seq)
        if len(prompt) > MAX_PROMPT_CHARS:
            raise ProtocolError("out_of_range", f'"prompt" is {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}', seq)
        try:  # JSON's \ud800 escapes can carry lone surrogates, which are not text and break the tokenizer
            prompt.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ProtocolError("invalid_text", f'"prompt" is not valid Unicode text (a lone surrogate at character {e.start})', seq) from None
        seed, steps, width, height = (_int(msg, name, seq) for name in ("seed", "steps", "width", "height"))
        return Generate(seq, prompt, seed, steps, width, height)
    raise ProtocolError("unknown_type", f'unknown message type {capped(repr(kind))}; expected "hello" or "generate"')


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true must not pass as 1


def _int(msg: dict, name: str, seq, low: int | None = None, high: int | None = None) -> int:
    if name not in msg:
        raise ProtocolError("missing_field", f'"{name}" is required', seq)
    value = msg[name]
    if not _is_int(value):
        raise ProtocolError("bad_type", f'"{name}" must be an integer, got {capped(json.dumps(value))}', seq)
    if (low is not None and value < low) or (high is not None and value > high):
        raise ProtocolError("out_of_range", f'"{name}" must be between {low} and {high}, got {capped(value)}', seq)
    return value


def _no_unknown(msg: dict, known: set, seq) -> None:
    unknown = sorted(set(msg) - known)
    if unknown:
        raise ProtocolError("unknown_field", f"unknown field(s) {capped(unknown)}; allowed: {sorted(known)}", seq)


# --- server -> client ------------------------------------------------------------------------------------------
def error(code: str, message: str, seq: int | None = None, **extra) -> str:
    body = {"type": "error", "code": code, "message": message, **extra}
    if seq is not None:
        body["seq"] = seq
    return json.dumps(body)


def status(state: str, **fields) -> str:
    return json.dumps({"type": "status", "state": state, **fields})


def pack_frame(header: dict, jpeg: bytes) -> bytes:
    """Binary frame: 4-byte big-endian header length L, L bytes of UTF-8 JSON header, then the JPEG bytes."""
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    return struct.pack(">I", len(head)) + head + jpeg


def unpack_frame(data: bytes) -> tuple[dict, bytes]:
    """Inverse of pack_frame (used by the load test and the tests)."""
    if len(data) < 4:
        raise ValueError("frame shorter than its 4-byte length prefix")
    (length,) = struct.unpack(">I", data[:4])
    if 4 + length > len(data):
        raise ValueError(f"frame header claims {length} bytes, only {len(data) - 4} present")
    return json.loads(data[4 : 4 + length].decode("utf-8")), data[4 + length :]
