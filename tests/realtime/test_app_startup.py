"""`python app.py` as a person starts it, in its own process: the model it falls back to and why are printed, logged
and shown on the page (real headless Chromium), the page draws, and Ctrl-C shuts it down cleanly."""

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright
from realtime_fakes import free_port, wait_until
from test_realtime_browser import CHROMIUM, FLAGS, WAIT_MS, wait_for_last_frame

ROOT = Path(__file__).resolve().parents[2]
# As on a CUDA machine that cannot reach the hub: the default is SDXL-Lightning, whose weights are not there.
AS_ON_CUDA_OFFLINE = """
import runpy, sys
from pipelines import startup
startup.default_model = lambda device: ("lightning", None)
sys.argv = ["app.py", *sys.argv[1:]]
runpy.run_path("app.py", run_name="__main__")
"""
STARTS = {
    "cpu": ([sys.executable, "app.py"], "No CUDA GPU found, so the embedded shapes model runs on the CPU"),
    "cuda-offline": ([sys.executable, "-c", AS_ON_CUDA_OFFLINE], "SDXL-Lightning could not be loaded"),
}


def healthz(port: int) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            return json.load(response)
    except OSError:
        return None


@pytest.mark.parametrize("start", STARTS)
def test_app_main_starts_says_which_model_runs_and_why_on_the_page_and_stops_on_ctrl_c(tmp_path, start):
    command, notice = STARTS[start]
    port = free_port()
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("STUDIO_ARGS", None)
    log = tmp_path / "app.log"
    with open(log, "w") as out:
        # --max-batch 1: one typist here, and warming batches 2..4 of every variant and size would be most of the wait.
        app = subprocess.Popen([*command, "--port", str(port), "--device", "cpu", "--max-batch", "1"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:

        def warm() -> bool:
            assert app.poll() is None, f"app.py exited with {app.returncode}:\n{log.read_text()}"
            health = healthz(port)
            return bool(health and health["warm"])

        wait_until(warm, "app.py to warm up", limit_s=300, interval=0.5)
        health = healthz(port)
        assert health["model"] == "shapes" and notice in health["notice"]
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            page = browser.new_page()
            page.set_default_timeout(WAIT_MS)
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("#studio-root[data-state='ready']")
            assert notice in page.locator("#notice").inner_text()
            page.locator("#prompt textarea").press_sequentially("a red circle", delay=15)
            assert int(wait_for_last_frame(page)["frames"]) >= 1
            browser.close()
    finally:
        app.send_signal(signal.SIGINT)
        try:
            code = app.wait(60)
        except subprocess.TimeoutExpired:
            app.kill()
            raise
    output = log.read_text()
    assert code == 0, output
    assert notice in output  # printed at start-up, not only shown on the page
    if start == "cuda-offline":
        assert "default model lightning unavailable" in output  # and logged as a warning
    assert "Traceback" not in output


def test_a_wrong_model_or_step_count_is_answered_in_one_line_before_torch_loads(tmp_path):
    script = (
        "import sys; from realtime.cli import main\n"
        "for argv in (['--model', 'nosuch'], ['--model', 'shapes', '--variants', '2', '3']):\n"
        "    assert main(argv) == 2\n"
        "print('torch' in sys.modules, 'uvicorn' in sys.modules)"
    )
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    env.pop("STUDIO_ARGS", None)
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False"]
    assert done.stderr.splitlines() == [
        "error: unknown model 'nosuch': use shapes, tiny, random-sdxl, lightning, lightning-lora, or a local folder path",
        "error: model 'shapes' offers 32 (reference), 8, 4, 2 (live), 1 steps, not 3",
    ]
