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
