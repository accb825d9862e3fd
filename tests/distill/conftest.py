"""The distill tests' one shared expensive run: the 2-step stage on two DDP processes, launched once."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the test modules' helpers sit beside this file
from two_processes import launch, two_step_plan  # noqa: E402


@pytest.fixture(scope="session")
def ddp_run(tmp_path_factory) -> tuple[Path, str]:
    """(run folder, the launch's stdout) of two_processes' plan under distill/configs/accelerate_ddp.yaml."""
    folder = tmp_path_factory.mktemp("ddp")
    result = launch(folder, two_step_plan(folder), "accelerate_ddp.yaml", ["-m", "distill"])
    return folder / "run", result.stdout
