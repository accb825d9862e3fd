"""Shared fixtures. Every test runs offline: the hub is never contacted."""

import logging
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# Inductor trusts the CPU's reported vector ISA instead of dry-compiling a probe program per ISA against ATen's vector
# headers, about 20 s on 2 cores in every process with a fresh cache directory (subprocesses inherit it).
os.environ.setdefault("TORCHINDUCTOR_VEC_ISA_OK", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# Tiny models are overhead-bound: a second OpenMP thread only adds contention on a 2-core machine.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_engine():
    """One tiny-model engine (CPU, fp32, eager) shared by the tests that only read from it. Eager runs any batch; only
    warm-up reads max_batch, and warming batch 1 is enough for the tests that warm this engine."""
    from pipelines import load_engine

    return load_engine("tiny", device="cpu", max_batch=1)


@pytest.fixture
def log_records():
    """capture(logger_name) -> the list of records that logger's handlers receive until the test ends."""
    attached = []

    def capture(name: str) -> list[logging.LogRecord]:
        records, handler = [], logging.Handler()
        handler.emit = records.append
        logging.getLogger(name).addHandler(handler)
        attached.append((name, handler))
        return records

    yield capture
    for name, handler in attached:
        logging.getLogger(name).removeHandler(handler)
