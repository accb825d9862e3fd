"""Parsing every kind of bad client message into a clear error code, the binary frame format, and admission rules."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from realtime import protocol
from realtime.limits import TokenBucket
from realtime.protocol import Generate, Hello, ProtocolError, pack_frame, parse, unpack_frame

GOOD = {"type": "generate", "seq": 3, "prompt": "a cat", "seed": 7, "steps": 2, "width": 256, "height": 128}


def with_(**changes):
    msg = dict(GOOD, **changes)
    return json.dumps({k: v for k, v in msg.items() if v is not ...})


def test_valid_messages_parse():
    assert parse(json.dumps({"type": "hello", "version": 1})) == Hello(1)
    assert parse(json.dumps(GOOD)) == Generate(3, "a cat", 7, 2, 256, 128)


@pytest.mark.parametrize(
    "message, code",
    [
        (b"\x00\x01", "binary_not_supported"),
        ("{not json", "bad_json"),
        ("[1, 2]", "bad_message"),
        ('"hello"', "bad_message"),
        (json.dumps({"type": "dance"}), "unknown_type"),
        (json.dumps({"version": 1}), "unknown_type"),
        (json.dumps({"type": "hello", "version": 2}), "unsupported_version"),
        (json.dumps({"type": "hello", "version": 1, "extra": 1}), "unknown_field"),
        (with_(colour="red"), "unknown_field"),
        (with_(seq=...), "missing_field"),
        (with_(seed=...), "missing_field"),
        (with_(prompt=...), "missing_field"),
        (with_(seq="3"), "bad_type"),
        (with_(seq=True), "bad_type"),
        (with_(seq=-1), "out_of_range"),
        (with_(prompt=5), "bad_type"),
        (with_(prompt=None), "bad_type"),
        (with_(prompt="x" * (protocol.MAX_PROMPT_CHARS + 1)), "out_of_range"),
        (with_(prompt="a red \ud800 circle"), "invalid_text"),
        (with_(prompt="\udfff"), "invalid_text"),
        (with_(seed=1.5), "bad_type"),
        (with_(steps="2"), "bad_type"),
        (with_(height=[128]), "bad_type"),
        ("{" * 5000, "too_large"),
        ("[" * 3000 + "]" * 3000, "too_large"),
    ],
)
def test_bad_messages_get_a_code_and_a_message(message, code):
    with pytest.raises(ProtocolError) as raised:
        parse(message)
    assert raised.value.code == code
    assert len(raised.value.message) > 10


def test_a_long_prompt_within_the_byte_limit_is_refused_by_length():
    with pytest.raises(ProtocolError) as raised:
        parse(with_(prompt="é" * (protocol.MAX_PROMPT_CHARS + 1)))
    assert raised.value.code in ("out_of_range", "too_large")


def test_deeply_nested_json_is_refused_without_crashing():
    with pytest.raises(ProtocolError) as raised:
        parse("[" * 1500 + "]" * 1500)
    assert raised.value.code in ("bad_json", "bad_message")


def test_errors_about_a_generate_carry_its_seq_so_the_client_can_match_them():
    with pytest.raises(ProtocolError) as raised:
        parse(with_(steps="3", seq=41))
    assert raised.value.seq == 41
    body = json.loads(protocol.error(raised.value.code, raised.value.message, raised.value.seq))
    assert body == {"type": "error", "code": "bad_type", "message": raised.value.message, "seq": 41}


def test_the_protocol_checks_form_only_and_leaves_the_models_limits_to_the_engine():
    """Values only a model can judge (loaded steps, declared sizes, seeds) pass the parser; the engine's limits,
    what the connection asks next, refuse them naming what is offered."""
    from pipelines import GenerationRequest, InvalidRequest
    from pipelines.requests import ServingLimits

    limits = ServingLimits(steps=(1, 2), sizes=((256, 128), (64, 64)))
    for changes, refusal in [
        (dict(steps=3), "steps=3 is not loaded; this model offers 1, 2 steps"),
        (dict(seed=-1), "seed must be an integer in"),
        (dict(seed=2**53), "seed must be an integer in"),
        (dict(width=250), "size 250x128 is not served; this server offers 256x128, 64x64"),
        (dict(height=4096), "size 256x4096 is not served"),
    ]:
        message = parse(with_(**changes))
        with pytest.raises(InvalidRequest, match=refusal):
            limits.check(GenerationRequest(message.prompt, message.seed, message.steps, message.width, message.height))
    limits.check(GenerationRequest("a cat", 7, 2, 256, 128))  # GOOD is served
    assert ServingLimits.from_json(limits.as_json()) == limits


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@given(st.dictionaries(st.sampled_from(sorted(protocol.GENERATE_FIELDS | {"version", "x"})), json_values, max_size=8) | json_values)
def test_any_json_either_parses_or_is_refused_with_a_protocol_error(value):
    try:
        message = parse(json.dumps(value))
    except ProtocolError as e:
        assert e.code and e.message
    else:
        assert isinstance(message, (Hello, Generate))


@given(st.text(max_size=300) | st.binary(max_size=64))
def test_any_text_either_parses_or_is_refused_with_a_protocol_error(text):
    try:
        message = parse(text)
    except ProtocolError as e:
        assert e.code and e.message
    else:
        assert isinstance(message, (Hello, Generate))


@given(header=st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=20), max_size=6), payload=st.binary(max_size=300))
def test_frames_round_trip(header, payload):
    frame = pack_frame(header, payload)
    length = int.from_bytes(frame[:4], "big")
    assert json.loads(frame[4 : 4 + length].decode("utf-8")) == header
    assert unpack_frame(frame) == (header, payload)


def test_truncated_frames_are_reported():
    with pytest.raises(ValueError):
        unpack_frame(b"\x00\x00")
    with pytest.raises(ValueError):
        unpack_frame(b"\x00\x00\x00\x50{}")


def test_token_bucket_allows_bursts_then_the_rate():
    bucket = TokenBucket(rate=10, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.wait_s() == pytest.approx(0.1)
    assert bucket.take(0.1) and not bucket.take(0.1)
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]  # never more than the burst


@pytest.mark.parametrize(
    "field, value",
    [("seed", int("9" * 3900)), ("steps", int("7" * 3900)), ("seed", "x" * 3000), ("type", "y" * 3000), ("z" * 3000, 1)],
    ids=["huge seed", "huge steps", "long string seed", "long type", "long field name"],
)
def test_an_echoed_bad_value_is_cut_short(field, value):
    """Refused by the protocol (form) or by the engine's limits (a huge seed or step count is well-formed)."""
    from pipelines import GenerationRequest, InvalidRequest
    from pipelines.requests import ServingLimits

    message = {"type": "generate", "seq": 1, "prompt": "a fox", "seed": 0, "steps": 1, "width": 64, "height": 64} | {field: value}
    with pytest.raises((ProtocolError, InvalidRequest)) as refused:
        m = parse(json.dumps(message))
        ServingLimits((1,), ((64, 64),)).check(GenerationRequest(m.prompt, m.seed, m.steps, m.width, m.height))
    assert "…" in str(refused.value) and len(str(refused.value)) < 200
