"""The package outside the checkout: the wheel that `pip install .` builds (a Space installs the repository that
way) carries the tokenizers, configs, page files and the embedded shapes model. Installed into an empty folder and
run from another directory, it draws with the shapes model and serves the page with its script; installed into a
fresh virtualenv, its console script serves the studio and `python -m distill` finds its packaged plans."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

from realtime.protocol import unpack_frame

ROOT = Path(__file__).resolve().parents[1]
PIP = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
LIMIT_S = 300  # only stops a hung test; nothing asserts speed

SCRIPT = """
import json, sys
from fastapi.testclient import TestClient
import assets, pipelines
from pipelines import GenerationRequest, load_engine
from realtime.server import create_app
from realtime.studio import Studio, StudioConfig

engine = load_engine("shapes", device="cpu", steps=[8])
(result,) = engine.generate([GenerationRequest("a red circle on the left", seed=0, steps=8, width=128, height=128)])
client = TestClient(create_app(Studio(engine, StudioConfig(warm=False))), base_url="http://localhost")  # a Host the studio serves
page, script = client.get("/"), client.get("/studio-assets/studio.js")
print(json.dumps({"assets": str(assets.ROOT), "pipelines": pipelines.__file__, "image": list(result.image.shape),
                  "page": page.status_code, "root": "studio-root" in page.text, "script": script.status_code,
                  "script_is_ours": "window.studio" in script.text}))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel `pip wheel .` builds, once for this module's tests."""
    tmp = tmp_path_factory.mktemp("wheel")
    source, wheels = tmp / "source", tmp / "wheels"
    # A clean copy: an in-tree build would reuse whatever an earlier build left in build/.
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", "build", "runs", "*.egg-info", "__pycache__", ".whl"))
    subprocess.run(PIP + ["wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)], check=True, capture_output=True)
    (built,) = wheels.glob("*.whl")
    return built


def test_the_installed_wheel_draws_with_the_shapes_model_and_serves_the_page(tmp_path, wheel):
    site = tmp_path / "site"
    subprocess.run(PIP + ["install", "--no-deps", "--target", str(site), str(wheel)], check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["assets"].startswith(str(site)) and found["pipelines"].startswith(str(site))  # not the checkout's
    assert found["image"] == [128, 128, 3]
    assert found["page"] == 200 and found["root"] and found["script"] == 200 and found["script_is_ours"]


def test_a_fresh_virtualenv_runs_the_studio_from_its_console_script_and_finds_distills_plans(tmp_path, wheel):
    """Only the wheel is installed in the venv; torch, diffusers and the rest come from this machine's site-packages."""
    venv, elsewhere = tmp_path / "venv", tmp_path / "elsewhere"
    elsewhere.mkdir()
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True, capture_output=True)
    python = venv / "bin" / "python"
    # pip from the system site (the venv sees it); --ignore-installed: a copy of the package outside the venv must not count
    install = [str(python), "-m", "pip", "-q", "--disable-pip-version-check", "install", "--no-deps", "--ignore-installed", str(wheel)]
    subprocess.run(install, check=True, capture_output=True, cwd=elsewhere)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "STUDIO_ARGS")} | {"OMP_NUM_THREADS": "1"}

    plan = subprocess.run([str(python), "-m", "distill", "plan", "--config", "tiny"], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=LIMIT_S)
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert "config distill/configs/tiny.toml" in plan.stdout and "stage 0 32step" in plan.stdout

    port = free_port()
    log = elsewhere / "studio.log"
    with open(log, "w") as out:
        # --max-batch 1: one request here, and warming batches 2..4 of every variant would be most of the start.
        command = [str(venv / "bin" / "lightning-studio"), "--model", "tiny", "--port", str(port), "--max-batch", "1"]
        studio = subprocess.Popen(command, cwd=elsewhere, env=env, stdout=out, stderr=out)
    try:
        health = wait_for_health(f"http://127.0.0.1:{port}/healthz", studio, log)
        assert health["model"] == "tiny" and health["warm"]
        with connect(f"ws://127.0.0.1:{port}/ws", origin=f"http://127.0.0.1:{port}", open_timeout=LIMIT_S) as ws:
            assert json.loads(ws.recv(LIMIT_S))["type"] == "status"
            width, height = health["sizes"][0]  # a size the studio declares (any other is refused)
            ws.send(
                json.dumps({"type": "generate", "seq": 1, "prompt": "a red fox", "seed": 0, "steps": health["live_steps"], "width": width, "height": height})
            )
            while isinstance(data := ws.recv(LIMIT_S), str):
                assert json.loads(data)["type"] != "error", data  # an error reply would otherwise leave the loop waiting
        header, jpeg = unpack_frame(data)
        assert header["seq"] == 1 and jpeg[:2] == b"\xff\xd8"
    finally:
        studio.terminate()
        studio.wait(LIMIT_S)
    where = subprocess.run(
        [str(python), "-c", "import distill.config, realtime; print(distill.config.CONFIG_FOLDER, realtime.__file__)"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
    )
    paths = where.stdout.split()
    assert len(paths) == 2 and all(path.startswith(str(venv)) for path in paths)  # what ran was the wheel in the venv


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_health(url: str, process: subprocess.Popen, log: Path) -> dict:
    deadline = time.monotonic() + LIMIT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the studio exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            response = httpx.get(url, timeout=5)
            if response.status_code == 200:
                return response.json()
        except httpx.TransportError:
            pass  # not listening yet
        time.sleep(0.2)
    raise AssertionError(f"no healthy studio at {url}:\n{log.read_text()[-3000:]}")
