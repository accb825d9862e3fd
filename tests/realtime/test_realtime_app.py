"""The studio's command line (realtime.cli, behind app.py and the console script): flags, the STUDIO_ARGS variable
hosts use instead, and a clear error for a bad model."""

import sys
import threading

import pytest

from realtime import cli as app


def test_flags_and_studio_args(monkeypatch):
    monkeypatch.setenv("STUDIO_ARGS", "--variants 1 2 --max-batch 8 --preview-vae tiny")
    monkeypatch.setenv("GRADIO_SERVER_PORT", "7999")
    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    args = app.parse_args(["--max-batch", "2", "--host", "0.0.0.0"])
    assert args.variants == [1, 2] and args.preview_vae == "tiny"
    assert args.max_batch == 2  # the command line wins over STUDIO_ARGS
    assert (args.host, args.port) == ("0.0.0.0", 7999)
    assert args.gradio_events is False


def test_zerogpu_defaults_to_gradio_events(monkeypatch):
    monkeypatch.delenv("STUDIO_ARGS", raising=False)
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    assert app.parse_args([]).gradio_events is True


def test_an_unknown_model_is_one_clear_line_not_a_traceback(monkeypatch, capsys):
    monkeypatch.delenv("STUDIO_ARGS", raising=False)
    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    assert app.main(["--model", "no-such-model", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'no-such-model'" in err and "Traceback" not in err


@pytest.mark.parametrize("flag", ["--max-batch", "--max-clients"])
def test_counts_below_one_are_refused_by_the_parser(monkeypatch, capsys, flag):
    monkeypatch.delenv("STUDIO_ARGS", raising=False)
    with pytest.raises(SystemExit):
        app.parse_args([flag, "0"])
    assert "must be at least 1" in capsys.readouterr().err


def test_the_engine_and_the_tests_fake_both_meet_the_studios_engine_contract():
    """realtime reads only what StudioEngine names; the real engine and the fake the other tests use both have it."""
    from realtime_fakes import FakeEngine

    from pipelines import load_engine
    from realtime.engine_contract import StudioEngine

    assert isinstance(load_engine("tiny", device="cpu", steps=[1]), StudioEngine)
    assert isinstance(FakeEngine(), StudioEngine)

    incomplete = type("Incomplete", (), {k: v for k, v in vars(FakeEngine).items() if k != "live_steps"})()
    assert not isinstance(incomplete, StudioEngine)  # the check does look at the attributes


class ZeroGPU:
    """A stand-in for the `spaces` package on a ZeroGPU Space: a GPU exists only while a @spaces.GPU function runs, so
    the engine it guards raises when called anywhere else (the worker thread, a plain Gradio handler)."""

    def __init__(self):
        self.active, self.calls = threading.local(), 0

    def GPU(self, function):
        def on_gpu(*args, **kwargs):
            self.calls += 1
            self.active.on = True
            try:
                return function(*args, **kwargs)
            finally:
                self.active.on = False

        return on_gpu

    def guard(self, engine):
        generate = engine.generate

        def generate_on_gpu(requests, vae=None):
            if not getattr(self.active, "on", False):
                raise RuntimeError("ZeroGPU: the engine was called outside a @spaces.GPU function, where there is no GPU")
            return generate(requests, vae=vae)

        engine.generate = generate_on_gpu
        return engine


@pytest.fixture
def zero_gpu_studio(monkeypatch):
    from realtime_fakes import FakeEngine

    from realtime.studio import Studio, StudioConfig

    spaces = ZeroGPU()
    monkeypatch.setitem(sys.modules, "spaces", spaces)
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    studio = Studio(spaces.guard(FakeEngine()), StudioConfig(gradio_events=True, warm=False)).start()
    yield studio, spaces
    studio.stop()


def test_on_zerogpu_live_typing_and_compare_call_the_engine_inside_the_spaces_gpu_function(zero_gpu_studio):
    from realtime.ui import compare_steps, engine_runner, gradio_renderer, placeholder_prompt

    studio, spaces = zero_gpu_studio
    run = engine_runner(studio)
    image, hud = gradio_renderer(studio, run)("a red fox", 3, 1, "64x64")
    assert image.shape == (64, 64, 3) and int(image[0, 0, 0]) == 3  # FakeEngine paints the seed
    assert "rendered: a red fox" in hud and studio.engine.calls[0][0].prompt == "a red fox"
    items, table = compare_steps(studio, run, "a red fox", 5, "128x64")
    assert [item[0].shape for item in items] == [(64, 128, 3)] * 2 and "128×64 px" in table
    assert spaces.calls == 2  # one GPU call per render, one for the whole comparison
    _, hud = gradio_renderer(studio, run)("", 3, 1, "64x64")  # an empty box draws its placeholder, as the WebSocket page does
    assert studio.engine.calls[-1][0].prompt == placeholder_prompt(studio.engine) and hud.endswith(f"rendered: {placeholder_prompt(studio.engine)}")


def test_the_zerogpu_stand_in_fails_an_engine_call_made_outside_the_gpu_function(zero_gpu_studio, monkeypatch):
    """What the studio did before: Compare went through the worker thread, outside any @spaces.GPU function."""
    from realtime.ui import compare_steps, engine_runner

    studio, _ = zero_gpu_studio
    monkeypatch.delenv("SPACES_ZERO_GPU")  # engine_runner then hands the work to the GPU worker
    with pytest.raises(RuntimeError, match="outside a @spaces.GPU function"):
        compare_steps(studio, engine_runner(studio), "a red fox", 5, "64x64")


def test_on_zerogpu_compiled_backends_are_switched_off_with_a_notice():
    assert app.backend_for_host("compile", zero_gpu=False) == ("compile", None)
    backend, notice = app.backend_for_host("compile", zero_gpu=True)
    assert backend == "eager" and "--backend compile is off on ZeroGPU" in notice
    assert app.backend_for_host("eager", zero_gpu=True) == ("eager", None)


def test_devices_name_one_worker_each():
    assert app.device_list(None, "cpu", 0) == ["cpu"]
    assert app.device_list("cuda:0, cuda:1", None, 0) == ["cuda:0", "cuda:1"]
    assert app.device_list("all", None, 3) == ["cuda:0", "cuda:1", "cuda:2"]
    assert app.device_list("all", None, 0) == ["cpu"]


@pytest.mark.parametrize("weights", ["resident", "swap"])
def test_the_studio_places_variant_weights_as_weights_says(monkeypatch, weights):
    """--weights reaches the engine the studio serves: the shapes students' copies wait where it says (the live 2-step
    set's in host memory, its weights being in the UNet)."""
    import uvicorn

    import pipelines

    monkeypatch.delenv("STUDIO_ARGS", raising=False)
    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    engines = []
    real_load = pipelines.load_engine
    monkeypatch.setattr(pipelines, "load_engine", lambda **kwargs: engines.append(real_load(**kwargs)) or engines[-1])
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: None)  # start, then return as if the server had stopped
    # --max-batch 1: main returns at once (uvicorn.run above) and stops the studio, which waits for the worker's warm-up;
    # warming batches 2..4 at every size is not what this test checks.
    assert app.main(["--model", "shapes", "--device", "cpu", "--variants", "1", "2", "4", "--weights", weights, "--max-batch", "1"]) == 0
    assert engines[0].memory()["weights"]["homes"] == {"1": weights, "2": "swap", "4": weights}
