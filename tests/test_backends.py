"""Backends: the compiled path must give the eager output, and compiled artifacts must outlive the process."""

import numpy as np
import pytest
import torch

from pipelines import GenerationRequest, backends, load_engine
from pipelines.errors import BackendUnavailable


def test_compiled_engine_captures_whole_graphs_and_matches_eager(tiny_engine):
    # fullgraph=True makes any graph break an error; aot_eager checks capture without minutes of CPU codegen.
    engine = load_engine("tiny", device="cpu", steps=[1, 2], backend="compile", compiler="aot_eager", compile_cache=False)
    for steps in (1, 2):
        request = GenerationRequest("a cat", seed=2, steps=steps, width=64, height=64)
        compiled = engine.generate([request], vae="tiny", output_type="float")[0].image
        eager = tiny_engine.generate([request], vae="tiny", output_type="float")[0].image
        np.testing.assert_allclose(compiled, eager, atol=1e-5)
    assert isinstance(engine.run_unet[1], torch._dynamo.eval_frame.OptimizedModule)


def test_the_engine_convolves_channels_last_and_the_benchmarks_stock_recipe_in_the_default_layout():
    """The engine's only CPU-side layout change (NHWC, oneDNN's fast path); the benchmark's stock column must not get it."""
    from pipelines.bench import stock_pipeline

    engine = load_engine("tiny", device="cpu", steps=[1])
    # 3x3 kernels: a 1x1 kernel's two layouts are the same strides.
    convs = lambda module: [m.weight for m in module.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1)]
    for module in (engine.model.unets[1], engine.pipe.vae):
        assert all(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous() for w in convs(module))
    pipe = stock_pipeline(engine, 1)
    assert convs(pipe.unet) and convs(pipe.vae) and all(w.is_contiguous() for w in convs(pipe.unet) + convs(pipe.vae))


def test_inductor_artifacts_are_saved_and_loaded(tmp_path):
    torch._dynamo.reset()
    model = backends.prepare(torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.GELU()), "compile", torch.device("cpu"))
    x = torch.randn(2, 8)
    torch.testing.assert_close(model(x), model._orig_mod(x))
    path = backends.cache_file("test-model|compile|cpu", cache_dir=tmp_path)
    assert backends.save_compiled_artifacts(path) and path.stat().st_size > 0
    assert backends.load_compiled_artifacts(path)
    assert not backends.load_compiled_artifacts(tmp_path / "absent.bin")


def test_unknown_and_unavailable_backends_are_refused():
    with pytest.raises(BackendUnavailable, match="unknown backend 'fast'"):
        backends.prepare(torch.nn.Linear(2, 2), "fast", torch.device("cpu"))
    with pytest.raises(BackendUnavailable, match="needs a CUDA GPU"):
        backends.prepare(torch.nn.Linear(2, 2), "tensorrt", torch.device("cpu"))


def test_tensorrt_without_torch_tensorrt_says_how_to_install_it(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch_tensorrt", None)  # as on a machine without the extra: the import fails
    with pytest.raises(BackendUnavailable, match=r"needs torch-tensorrt: pip install 'lightning-studio\[tensorrt\]'"):
        backends.prepare(torch.nn.Linear(2, 2), "tensorrt", torch.device("cuda"))


COMPILE_ONCE = """
import sys, torch
from torch._dynamo.utils import counters
from pipelines import backends
path, load = backends.Path(sys.argv[1]), sys.argv[2] == "load"
if load:
    backends.load_compiled_artifacts(path)
torch.manual_seed(0)
model = backends.prepare(torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.GELU()), "compile", torch.device("cpu"))
model(torch.randn(2, 8))
if not load:
    backends.save_compiled_artifacts(path)
print(counters["inductor"]["fxgraph_cache_hit"], counters["inductor"]["fxgraph_cache_miss"])
"""


def test_a_saved_compile_cache_makes_a_fresh_process_skip_compilation(tmp_path):
    """Two fresh processes, each with its own empty inductor cache directory: the first, with no artifacts, compiles
    (FX graph cache misses) and saves them; the second loads them and compiles nothing (hits, no misses). Counted by
    torch's own counters, not by what load_compiled_artifacts returns."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    artifacts = tmp_path / "model.bin"

    def run(mode: str, name: str) -> tuple[int, int]:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / name), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        done = subprocess.run([sys.executable, "-c", COMPILE_ONCE, str(artifacts), mode], env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        hit, miss = map(int, done.stdout.split()[-2:])
        return hit, miss

    assert run("save", "first")[1] >= 1 and artifacts.stat().st_size > 0
    hit, miss = run("load", "second")
    assert hit >= 1 and miss == 0, (hit, miss)
