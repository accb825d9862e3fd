"""The load test against a real server (fake engine, so it is quick): it types, counts and reports honestly."""

import json

from realtime_fakes import FakeEngine, serve, wait_until

from realtime import loadtest
from realtime.server import create_app
from realtime.studio import Studio, StudioConfig


def test_loadtest_reports_latency_throughput_and_no_lost_final_updates(tmp_path, capsys):
    studio = Studio(FakeEngine(), StudioConfig(max_batch=4)).start()
    wait_until(lambda: studio.worker.ready, "warm-up")
    out = tmp_path / "load.json"
    try:
        with serve(create_app(studio, ui=False)) as address:
            code = loadtest.main(["--url", f"ws://{address}/ws", "--clients", "3", "--seconds", "1", "--rate", "8", "--json", str(out)])
    finally:
        studio.stop()
    result = json.loads(out.read_text())
    assert code == 0
    assert result["clients"] == 3 and result["keystrokes"] >= 3 and 1 <= result["frames"] <= result["keystrokes"]
    assert result["lost_final_updates"] == 0 and result["stale_dropped"] == 0 and result["errors"] == {}
    assert result["key_to_frame_ms"]["p50"] > 0 and result["key_to_frame_ms"]["p99"] >= result["key_to_frame_ms"]["p50"]
    assert result["server_rss_mb_after"] > 0
    assert "lost final updates | 0" in capsys.readouterr().out


def test_a_full_server_counts_as_lost_updates_not_as_success(tmp_path):
    studio = Studio(FakeEngine(), StudioConfig(max_clients=1)).start()
    out = tmp_path / "load.json"
    try:
        with serve(create_app(studio, ui=False)) as address:
            code = loadtest.main(["--url", f"ws://{address}/ws", "--clients", "2", "--seconds", "0.5", "--json", str(out)])
    finally:
        studio.stop()
    result = json.loads(out.read_text())
    assert code == 1 and result["lost_final_updates"] == 1 and result["errors"] == {"server_full": 1}
