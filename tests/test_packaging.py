"""The package outside the checkout: the wheel that `pip install .` builds (a Space installs the repository that
way) carries the tokenizers, configs, page files and the embedded shapes model. Installed into an empty folder and
run from another directory, it draws with the shapes model and serves the page with its script."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

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


def test_the_installed_wheel_draws_with_the_shapes_model_and_serves_the_page(tmp_path):
    source, wheels, site = tmp_path / "source", tmp_path / "wheels", tmp_path / "site"
    # A clean copy: an in-tree build would reuse whatever an earlier build left in build/.
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", "build", "runs", "*.egg-info", "__pycache__", ".whl"))
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)], check=True, capture_output=True)
    (wheel,) = wheels.glob("*.whl")
    subprocess.run(pip + ["install", "--no-deps", "--target", str(site), str(wheel)], check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["assets"].startswith(str(site)) and found["pipelines"].startswith(str(site))  # not the checkout's
    assert found["image"] == [128, 128, 3]
    assert found["page"] == 200 and found["root"] and found["script"] == 200 and found["script_is_ours"]
