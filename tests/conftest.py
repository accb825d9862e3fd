"""Shared fixtures. Every test runs offline: the hub is never contacted."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_engine():
    """One tiny-model engine (CPU, fp32, eager) shared by the tests that only read from it."""
    from pipelines import load_engine

    return load_engine("tiny", device="cpu")
