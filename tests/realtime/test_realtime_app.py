"""The studio's command line (realtime.cli, behind app.py and the console script): flags, the STUDIO_ARGS variable
hosts use instead, and a clear error for a bad model."""

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


def test_on_zerogpu_renders_run_inside_the_spaces_gpu_function_not_on_the_worker(monkeypatch):
    """On a ZeroGPU Space the GPU exists only inside a @spaces.GPU function: the --gradio-events renderer must call the
    engine through it (a stand-in `spaces` module records the calls) and never hand the work to the GPU worker."""
    import sys
    import types

    from realtime_fakes import FakeEngine

    from realtime.studio import Studio, StudioConfig
    from realtime.ui import _gradio_renderer, placeholder_prompt

    gpu_calls = []

    def gpu(function):
        def wrapped(*args, **kwargs):
            gpu_calls.append(args)
            return function(*args, **kwargs)

        return wrapped

    monkeypatch.setitem(sys.modules, "spaces", types.SimpleNamespace(GPU=gpu))
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    studio = Studio(FakeEngine(), StudioConfig(gradio_events=True, warm=False))
    studio.worker = types.SimpleNamespace(run=lambda *args, **kwargs: pytest.fail("the render went to the GPU worker"))
    image, hud = _gradio_renderer(studio)("a red fox", 3, 1, 64)
    assert len(gpu_calls) == 1 and image.shape == (64, 64, 3) and int(image[0, 0, 0]) == 3  # FakeEngine paints the seed
    assert "rendered: a red fox" in hud and studio.engine.calls[0][0].prompt == "a red fox"
    _, hud = _gradio_renderer(studio)("", 3, 1, 64)  # an empty box draws its placeholder, as the WebSocket page does
    assert studio.engine.calls[1][0].prompt == placeholder_prompt(studio.engine) and hud.endswith(f"rendered: {placeholder_prompt(studio.engine)}")


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
    assert app.main(["--model", "shapes", "--device", "cpu", "--variants", "1", "2", "4", "--weights", weights]) == 0
    assert engines[0].memory()["weights"]["homes"] == {"1": weights, "2": "swap", "4": weights}
