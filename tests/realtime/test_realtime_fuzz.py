"""The fuzz/soak tool against a real server (fake engine): a sound server passes it, and one that loses answers fails it."""

import json

import pytest
from realtime_fakes import FakeEngine, serve, wait_until

from realtime import fuzz
from realtime.connection import Connection
from realtime.server import create_app
from realtime.studio import Studio, StudioConfig


def run_fuzz(tmp_path, *extra):
    studio = Studio(FakeEngine(), StudioConfig(max_batch=4)).start()
    wait_until(lambda: studio.worker.ready, "warm-up")
    out = tmp_path / "fuzz.json"
    try:
        with serve(create_app(studio, ui=False)) as address:
            code = fuzz.main(["--url", f"ws://{address}/ws", "--clients", "4", "--rate", "25", "--seed", "3", "--rss-every", "0.5", "--json", str(out), *extra])
    finally:
        studio.stop()
    return code, json.loads(out.read_text())


def test_a_sound_server_answers_every_fuzzed_message_as_the_protocol_says(tmp_path, capsys):
    code, result = run_fuzz(tmp_path, "--messages", "400")
    assert result["failures"] == [] and result["ok"] and code == 0
    assert result["messages"] == 400 + 4  # each client ends on one more, valid, generate
    built = {"generate", "hello", "not_json", "unknown_field", "missing_field", "bad_type", "lone_surrogate", "too_large", "binary", "replayed_seq", "mutated"}
    assert built <= set(result["sent"])
    codes = {
        "frame",
        "status",
        "bad_json",
        "unknown_field",
        "missing_field",
        "bad_type",
        "out_of_range",
        "invalid_text",
        "too_large",
        "binary_not_supported",
        "stale_seq",
    }
    assert codes <= set(result["answers"])
    assert len(result["server_rss_mb"]) >= 2 and result["rss_growth_second_half_mb"] is not None
    assert "failed checks | none" in capsys.readouterr().out


@pytest.mark.parametrize("code, check", [("unknown_field", "missing_error"), ("bad_json", "unsequenced_answers")])
def test_a_server_that_loses_one_kind_of_answer_fails_the_fuzz(tmp_path, monkeypatch, code, check):
    send_text = Connection._send_text

    async def lossy(self, text):
        if f'"code": "{code}"' not in text:
            await send_text(self, text)

    monkeypatch.setattr(Connection, "_send_text", lossy)
    exit_code, result = run_fuzz(tmp_path, "--messages", "200", "--drain", "3")
    assert exit_code == 1 and not result["ok"]
    assert set(result["failure_counts"]) == {check}


def test_rss_growth_is_measured_from_the_middle_of_the_run():
    assert fuzz.rss_growth_second_half([(0.0, 100.0), (5.0, 180.0), (10.0, 181.0)]) == 1.0  # warm-up growth is not a leak
    assert fuzz.rss_growth_second_half([(0.0, 100.0), (5.0, 110.0), (10.0, 150.0)]) == 40.0
    assert fuzz.rss_growth_second_half([(0.0, 100.0)]) is None
