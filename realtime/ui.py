"""The Gradio page: controls, the live image (drawn by assets/web/studio.js from /ws frames), Snapshot, and the
Compare-steps panel.

The live image does not go through Gradio events: each Gradio output travels through the file cache and an HTTP
fetch, too slow per keystroke. The JS client owns the stream; Gradio only tells it when a control
changes (js-only events, no server round trip). With --gradio-events (hosts where a custom WebSocket cannot work,
e.g. ZeroGPU Spaces) the image is a plain gr.Image driven by prompt.input(trigger_mode="always_last") instead.

Where the engine is called from Gradio's handlers (Compare steps, --gradio-events) is decided once, by engine_runner:
through the GPU workers, or on ZeroGPU inside a spaces.GPU function, the only place a GPU exists there.
"""

import html
import json
import os
import time

import gradio as gr

import assets
from pipelines import GenerationRequest, StudioError
from pipelines.conditioning import MAX_SEED
from pipelines.sizes import label
from pipelines.sizes import parse as parse_sizes

WEB = assets.ROOT / "web"
_VERSION = str(int(max(p.stat().st_mtime for p in WEB.iterdir())))  # cache-busts the assets when they change
HEAD = f'<link rel="stylesheet" href="/studio-assets/studio.css?v={_VERSION}"><script src="/studio-assets/studio.js?v={_VERSION}" defer></script>'


def live_html(studio) -> str:
    width, height = studio.engine.sizes[0]
    config = studio.info() | {"ws_path": "ws", "size": label((width, height))}
    return (
        f'<div id="studio-root" data-config="{html.escape(json.dumps(config))}" data-seq="-1" data-state="connecting">'
        f'<div class="studio-stage"><canvas id="live-canvas" width="{width}" height="{height}" data-seq="-1"></canvas>'
        f'<div id="studio-hud">connecting…</div></div>'
        f'<div id="studio-message" role="status"></div></div>'
    )


def _steps_label(steps: int, guidance: float | None = None, label: str | None = None) -> str:
    return f"{steps} step" + ("" if steps == 1 else "s") + (f" · CFG {guidance:g}" if guidance else "") + (f" · {label}" if label else "")


def steps_choices(engine) -> list[tuple[str, int]]:
    """The Steps radio: each loaded variant with its manifest label ("2 · live", "1 · experimental")."""
    return [(f"{n} · {engine.labels[n]}" if n in engine.labels else str(n), n) for n in engine.steps]


def placeholder_prompt(engine) -> str:
    """What the empty prompt box shows, and so what the page draws until the user types: the model's first example."""
    return engine.examples[0] if engine.examples else "a lighthouse on a cliff at dawn, volumetric light"


def build_blocks(studio) -> gr.Blocks:
    engine = studio.engine
    sizes = [label(s) for s in engine.sizes]  # the declared sizes only: anything else would be refused
    placeholder = placeholder_prompt(engine)
    run = engine_runner(studio)
    with gr.Blocks(title="Lightning studio") as demo:
        gr.Markdown(f"## Lightning studio\n{studio.notice}", elem_id="notice")
        with gr.Row():
            with gr.Column(scale=3):
                prompt = gr.Textbox(
                    label="Prompt (renders as you type)",
                    elem_id="prompt",
                    lines=2,
                    placeholder=placeholder,
                )
                if engine.examples:
                    with gr.Row(elem_id="examples"):
                        gr.Markdown("Try:")
                        for example in engine.examples:
                            # Typed into the box as if by the user, so the live stream and Gradio both see it.
                            gr.Button(example, size="sm", scale=0, elem_classes="example").click(
                                None, js=f"() => window.studio && window.studio.setPrompt({json.dumps(example)})"
                            )
                if studio.config.gradio_events:
                    live = gr.Image(label="Live", elem_id="live-gradio", interactive=False, format="jpeg")
                    hud = gr.Markdown(elem_id="gradio-hud")
                else:
                    gr.HTML(live_html(studio), elem_id="live")
                    gr.Button("Snapshot (PNG)", elem_id="snapshot").click(None, js="() => window.studio && window.studio.snapshot()")
                with gr.Row(equal_height=False):
                    seed = gr.Number(label="Seed", value=0, precision=0, minimum=0, maximum=MAX_SEED, elem_id="seed")
                    randomize = gr.Button("Randomize seed", elem_id="randomize", scale=0)
                    steps = gr.Radio(steps_choices(engine), value=engine.live_steps, label="Steps (loaded variants)", elem_id="steps")
                    size = gr.Radio(sizes, value=sizes[0], label="Size (width × height, px)", elem_id="size")
            with gr.Column(scale=2):
                gr.Markdown("### Compare steps\nThe current prompt and seed at every loaded step count, with the full VAE.")
                compare = gr.Button("Compare steps", elem_id="compare", variant="primary")
                gallery = gr.Gallery(
                    label="Same prompt and seed; only the step count differs", elem_id="compare-gallery", columns=2, height="auto", format="jpeg"
                )
                latency = gr.Markdown(elem_id="compare-latency")

        randomize.click(None, None, seed, js=f"() => Math.floor(Math.random() * {MAX_SEED + 1})")
        # An empty box shows the placeholder, so the page draws and compares the placeholder (as studio.js streams it).
        compare.click(lambda p, s, z: compare_steps(studio, run, p or placeholder, s, z), [prompt, seed, size], [gallery, latency], concurrency_limit=1)
        if studio.config.gradio_events:
            render = gradio_renderer(studio, run)
            for event in (demo.load, prompt.input, seed.change, steps.change, size.change):
                event(render, [prompt, seed, steps, size], [live, hud], trigger_mode="always_last", show_progress="hidden")
        else:  # js-only: hand control changes to the WebSocket client, no server round trip
            seed.change(None, [seed], None, js="(v) => { window.studio && window.studio.update({seed: v}); }")
            steps.change(None, [steps], None, js="(v) => { window.studio && window.studio.update({steps: v}); }")
            size.change(None, [size], None, js="(v) => { window.studio && window.studio.update({size: v}); }")
    return demo


def engine_runner(studio):
    """-> run(requests, vae): how Gradio handlers reach an engine. Through the GPU workers (which take turns with the
    stream); on a ZeroGPU Space, where the GPU is attached only inside a @spaces.GPU function, inside one instead
    (the engine's lock keeps such calls from overlapping each other and the worker)."""
    if os.environ.get("SPACES_ZERO_GPU"):
        import spaces  # available on Spaces only

        return spaces.GPU(lambda requests, vae: studio.engine.generate(requests, vae=vae))
    return lambda requests, vae: studio.worker.run(requests, vae=vae)


def _requests(engine, prompt, seed, size: str, steps_list) -> list[GenerationRequest]:
    """The page's inputs as requests, each checked once by the engine (the same check /ws requests get)."""
    try:
        ((width, height),) = parse_sizes([str(size)])
        requests = [GenerationRequest(prompt or "", int(seed or 0), int(s), width, height) for s in steps_list]
        for request in requests:
            engine.validate(request)
    except (StudioError, ValueError) as e:  # InvalidRequest, InvalidModel (a malformed size), int() of junk
        raise gr.Error(str(e)) from None
    return requests


def compare_steps(studio, run, prompt, seed, size):
    """Render prompt+seed at every loaded step count through `run` (engine_runner); -> (gallery items, latency table).
    The model's reference variant (its slow best, e.g. the base model at 32 steps with CFG) comes first, then the
    others from most to fewest steps."""
    engine = studio.engine
    requests = _requests(engine, prompt, seed, size, sorted(engine.steps, key=lambda n: (n != engine.reference_steps, -n)))
    try:
        results = run(requests, "full")
    except StudioError as e:
        raise gr.Error(str(e)) from None
    items = [
        (r.image, f"{_steps_label(r.request.steps, engine.guidance.get(r.request.steps), engine.labels.get(r.request.steps))} · {r.timings_ms['total']:.0f} ms")
        for r in results
    ]
    width, height = requests[0].width, requests[0].height
    compared = f"Compared: “{html.escape(prompt or '')}” · seed {int(seed or 0)} · {width}×{height} px\n\n"
    return items, compared + latency_table(engine, results)


def latency_table(engine, results) -> str:
    """Compare's table: per variant its label, its measured adherence where the manifest has one, and the time of each
    stage that ran ("cached" for the text encoders when the prompt's embeddings were cached). A "swap" column (copying a
    variant's weights into the one UNet module) appears when any variant swapped; "–" where one did not."""
    measured = bool(engine.adherence)
    stages = ["text"] + (["swap"] if any("swap" in r.timings_ms for r in results) else []) + ["denoise", "decode", "total"]
    rows = [
        "| steps | variant | " + ("adherence | " if measured else "") + " | ".join(stages) + " |",
        "|---:|---|" + ("---:|" if measured else "") + "---:|" * len(stages),
    ]
    for r in results:
        n, t = r.request.steps, r.timings_ms
        cells = [str(n), engine.labels.get(n, "")]
        cells += [f"{engine.adherence[n]:.0%}" if n in engine.adherence else "–"] if measured else []
        cells += [f"{t[k]:.0f} ms" if k in t else ("cached" if k == "text" else "–") for k in stages]
        rows.append("| " + " | ".join(cells) + " |")
    if measured and engine.adherence_measure:
        rows.append(f"\nAdherence: {html.escape(engine.adherence_measure)}.")
    return "\n".join(rows)


def gradio_renderer(studio, run):
    """--gradio-events: one render per event through `run` (engine_runner); trigger_mode="always_last" guarantees the
    final text renders."""

    placeholder = placeholder_prompt(studio.engine)  # an empty box shows it, so it is what the page draws

    def render(prompt, seed, steps, size):
        start = time.perf_counter()
        try:
            (result,) = run(_requests(studio.engine, prompt or placeholder, seed, size, [steps]), studio.config.preview_vae)
        except StudioError as e:
            raise gr.Error(str(e)) from None
        stages = " · ".join(f"{k} {v:.0f} ms" for k, v in result.timings_ms.items())
        took = (time.perf_counter() - start) * 1000
        return result.image, f"{_steps_label(result.request.steps)} · {stages} · round trip {took:.0f} ms · rendered: {prompt or placeholder}"

    return render
