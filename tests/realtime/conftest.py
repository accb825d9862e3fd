"""One real studio per session: the embedded tiny model on the CPU behind a real uvicorn server on a free port,
shared by the WebSocket and browser tests so the model loads and warms once."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the test modules' helpers (realtime_fakes) sit beside this file
from realtime_fakes import FailingPrompt, serve, wait_until  # noqa: E402


@pytest.fixture(scope="session")
def tiny_studio():
    from pipelines import load_engine
    from realtime.server import create_app
    from realtime.studio import Studio, StudioConfig

    # The studio batches up to 4 requests; the eager engine runs any batch and warms batch 1 only (warming 2..4 at
    # every variant and size is what keeps a long-running server's memory flat, which no test here measures).
    engine = FailingPrompt(load_engine(model="tiny", device="cpu", steps=(1, 2, 4), sizes=((256, 256), (64, 64), (96, 64)), max_batch=1))
    config = StudioConfig(max_clients=6, max_batch=4, rate=10, burst=30)
    studio = Studio(engine, config).start()
    wait_until(lambda: studio.worker.ready, "the tiny model to warm up", limit_s=300)
    with serve(create_app(studio, ui=True)) as address:
        yield address, studio
    studio.stop()
