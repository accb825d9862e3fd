"""The page in real headless Chromium (Debian's, driven by Playwright): typing streams frames over /ws, the last
frame carries the last seq, Randomize re-renders, Snapshot saves a PNG with its metadata, Compare steps fills. Each
test sets the page state it needs (`show`), so any one of them runs alone or in any order."""

import pytest
from PIL import Image
from playwright.sync_api import sync_playwright

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
WAIT_MS = 120_000  # only stops a hang; nothing asserts speed
PROMPT = "a lighthouse on a cliff"


def dataset(page) -> dict:
    return page.evaluate("() => ({...document.getElementById('studio-root').dataset})")


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:  # one Playwright per module: the sync API cannot nest
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def page(browser, tiny_studio):
    address, _ = tiny_studio
    context = browser.new_context(viewport={"width": 1360, "height": 980}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    page.goto(f"http://{address}/")
    page.wait_for_selector("#studio-root[data-state='ready']")
    yield page
    context.close()


def compare(page, variants: int):
    """Click Compare steps, wait until every variant's image has loaded; -> the latency table's rows."""
    page.click("#compare")
    page.wait_for_function(
        "n => { const imgs = [...document.querySelectorAll('#compare-gallery img')];"
        " return imgs.length >= n && imgs.every(i => i.complete && i.naturalWidth > 0); }",
        arg=variants,
    )
    return page.locator("#compare-latency table tbody tr")


def wait_for_last_frame(page) -> dict:
    """Wait until the frame on screen is the answer to the last request the page sent."""
    page.wait_for_function("() => { const d = document.getElementById('studio-root').dataset; return d.sentSeq && d.seq === d.sentSeq; }")
    return dataset(page)


def test_typing_key_by_key_streams_frames_and_the_last_frame_carries_the_last_seq(page):
    page.locator("#prompt textarea").press_sequentially(PROMPT, delay=15)
    state = wait_for_last_frame(page)
    assert int(state["sentSeq"]) >= len(PROMPT)  # one request per key
    assert 1 <= int(state["frames"]) <= int(state["sentSeq"])
    assert page.locator("#live-canvas").get_attribute("data-seq") == state["sentSeq"]
    assert "step" in page.locator("#studio-hud").inner_text() and "fps" in page.locator("#studio-hud").inner_text()
    drawn = page.evaluate(
        "() => { const c = document.getElementById('live-canvas');"
        " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        " let s = 0; for (let i = 0; i < d.length; i += 4) s += d[i] + d[i + 1] + d[i + 2]; return s; }"
    )
    assert drawn > 0  # the frame was really painted, not just counted


def test_randomize_seed_and_steps_rerender_through_the_socket(page):
    before = int(show(page, PROMPT, steps=1)["sentSeq"])
    seed_before = page.locator("#seed input").input_value()
    page.click("#randomize")
    page.wait_for_function(f"() => document.querySelector('#seed input').value !== '{seed_before}'")
    page.locator("#steps label", has_text="2").click()
    state = wait_for_last_frame(page)
    assert int(state["sentSeq"]) >= before + 2
    assert "2 steps" in page.locator("#studio-hud").inner_text()


def show(page, prompt: str, steps: int) -> dict:
    """Put the page in a known state whatever ran before: this prompt in the box, this many steps, its frame drawn."""
    box = page.locator("#prompt textarea")
    if box.input_value() != prompt:
        box.fill("")
        box.press_sequentially(prompt, delay=5)
    page.locator("#steps label", has_text=str(steps)).click()
    return wait_for_last_frame(page)


def test_the_size_control_offers_only_the_declared_sizes_and_the_stream_follows_it(page, tiny_studio):
    _, studio = tiny_studio
    assert [t.strip() for t in page.locator("#size label").all_inner_texts()] == ["256x256", "64x64", "96x64"]
    show(page, PROMPT, steps=1)
    page.locator("#size label", has_text="96x64").click()
    wait_for_last_frame(page)
    canvas = page.locator("#live-canvas")
    assert (canvas.get_attribute("width"), canvas.get_attribute("height")) == ("96", "64")
    page.locator("#size label", has_text="256x256").click()  # back to the size the other tests expect
    wait_for_last_frame(page)
    assert canvas.get_attribute("width") == "256"


def test_snapshot_saves_a_png_with_prompt_seed_steps_and_model(page, tmp_path):
    show(page, PROMPT, steps=2)
    with page.expect_download() as download:
        page.click("#snapshot")
    path = tmp_path / "snapshot.png"
    download.value.save_as(path)
    image = Image.open(path)
    image.load()
    assert image.format == "PNG" and image.size == (256, 256)
    assert image.text["prompt"] == PROMPT and image.text["model"] == "tiny" and image.text["steps"] == "2"
    assert image.text["seed"] == page.locator("#seed input").input_value()


def test_compare_steps_fills_the_panel_with_every_loaded_variant(page, tiny_studio, tmp_path):
    _, studio = tiny_studio
    show(page, PROMPT, steps=2)
    rows = compare(page, len(studio.engine.steps))
    # no reference variant in the tiny model: most steps first
    assert [rows.nth(i).locator("td").first.inner_text() for i in range(rows.count())] == [str(s) for s in sorted(studio.engine.steps, reverse=True)]
    latency = page.locator("#compare-latency")
    assert "ms" in latency.inner_text() and "cached" in latency.inner_text()  # the stream encoded this prompt already
    labels = [rows.nth(i).locator("td").nth(1).inner_text() for i in range(rows.count())]
    assert labels == [studio.engine.labels.get(s, "") for s in sorted(studio.engine.steps, reverse=True)] and "live" in labels
    seed = page.locator("#seed input").input_value()
    prompt = page.locator("#prompt textarea").input_value()
    assert f"Compared: “{prompt}” · seed {seed} · 256×256 px" in latency.inner_text()  # what it compared
    assert "stale" not in (latency.get_attribute("class") or "")
    page.screenshot(path=str(tmp_path / "studio.png"), full_page=True)
    assert Image.open(tmp_path / "studio.png").size[0] >= 1000
    page.locator("#prompt textarea").press("End")
    page.locator("#prompt textarea").press_sequentially("s", delay=15)  # the inputs change: the comparison is stale
    page.wait_for_function("() => document.getElementById('compare-latency').classList.contains('stale')")
    assert dataset(page)["compareStale"] == "true"


def test_a_fresh_page_draws_the_placeholder_prompt_without_typing(browser, tiny_studio):
    address, studio = tiny_studio
    page = browser.new_page(viewport={"width": 1360, "height": 980})
    page.set_default_timeout(WAIT_MS)
    page.goto(f"http://{address}/")
    page.wait_for_selector("#studio-root[data-state='ready']")
    state = wait_for_last_frame(page)  # nothing typed
    box = page.locator("#prompt textarea")
    assert state["seq"] == "1" and box.input_value() == "" and box.get_attribute("placeholder")
    assert page.evaluate("() => window.studio.state.prompt") == box.get_attribute("placeholder")  # what was drawn
    hud = page.locator("#studio-hud").inner_text()
    assert hud.startswith("#1 ·") and f"{studio.engine.live_steps} step" in hud and "fps" not in hud  # one frame is no rate
    page.click("#randomize")  # the same prompt again: its embeddings are cached, and the HUD says so instead of "text 0"
    page.wait_for_function("() => document.getElementById('studio-root').dataset.seq === '2'")
    hud = page.locator("#studio-hud").inner_text()
    assert "text cached" in hud and "encode 0 " not in hud and "encode 0.0 " not in hud.replace("·", " ")
    page.close()


@pytest.fixture(scope="module")
def gradio_events_address():
    """A second studio in --gradio-events mode (its own tiny engine, so the two workers never share a model)."""
    from realtime_fakes import serve, wait_until

    from pipelines import load_engine
    from realtime.server import create_app
    from realtime.studio import Studio, StudioConfig

    studio = Studio(load_engine(model="tiny", device="cpu", steps=(1, 2), sizes=((64, 64),)), StudioConfig(gradio_events=True)).start()
    wait_until(lambda: studio.worker.ready, "warm-up", limit_s=300)
    with serve(create_app(studio)) as address:
        yield address
    studio.stop()


def test_gradio_events_mode_renders_the_final_text(browser, gradio_events_address):
    page = browser.new_page(viewport={"width": 1360, "height": 980})
    page.set_default_timeout(WAIT_MS)
    page.goto(f"http://{gradio_events_address}/")
    page.locator("#prompt textarea").press_sequentially("a red fox in snow", delay=15)
    # trigger_mode="always_last": however many keystrokes were skipped, the last text is rendered.
    page.wait_for_function("() => (document.querySelector('#gradio-hud') || {}).innerText?.includes('rendered: a red fox in snow')")
    page.wait_for_selector("#live-gradio img")
    assert page.locator("#studio-root").count() == 0  # no WebSocket client in this mode
    page.close()


def test_an_idle_page_is_closed_then_reconnects_when_the_user_types_again(browser):
    from realtime_fakes import FakeEngine, serve

    from realtime.server import create_app
    from realtime.studio import Studio, StudioConfig

    studio = Studio(FakeEngine(), StudioConfig(idle_timeout_s=1.0)).start()
    try:
        with serve(create_app(studio)) as address:
            page = browser.new_page()
            page.set_default_timeout(WAIT_MS)
            page.goto(f"http://{address}/")
            page.locator("#prompt textarea").press_sequentially("ab")
            first = wait_for_last_frame(page)
            page.wait_for_selector("#studio-root[data-state='disconnected']")  # the server closed it for idling
            assert "idle_timeout" in page.locator("#studio-message").inner_text()
            page.locator("#prompt textarea").press_sequentially("c")
            page.wait_for_function("n => Number(document.getElementById('studio-root').dataset.sentSeq) > n", arg=int(first["seq"]))
            again = wait_for_last_frame(page)
            assert int(again["seq"]) > int(first["seq"]) and again["state"] == "ready"
            page.close()
    finally:
        studio.stop()
