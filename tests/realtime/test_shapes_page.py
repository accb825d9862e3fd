"""The page a newcomer sees: `python app.py` on a CPU serves the embedded shapes model. In real headless Chromium:
the notice says what the model is, an example prompt is one click, the frame is drawn upscaled crisp, and Compare
steps puts the base model's 32-step CFG reference first. UPDATE_SCREENSHOT=1 refreshes docs/studio.png from it."""

import os
from pathlib import Path

import pytest
from PIL import Image
from playwright.sync_api import sync_playwright
from realtime_fakes import serve, wait_until
from test_realtime_browser import CHROMIUM, FLAGS, WAIT_MS, compare, dataset, wait_for_last_frame

DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "studio.png"


@pytest.fixture(scope="module")
def shapes_page():
    from pipelines import load_engine
    from realtime.server import create_app
    from realtime.studio import Studio, StudioConfig

    # The default model, as `python app.py` picks it on a machine without CUDA. One request per engine call: nothing here
    # batches, and warming batches 2..4 of every variant and size would take most of this file's time.
    engine = load_engine(device="cpu", max_batch=1)
    studio = Studio(engine, StudioConfig(max_clients=4, max_batch=1)).start()
    wait_until(lambda: studio.worker.ready, "warm-up", limit_s=300)
    with serve(create_app(studio)) as address, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1360, "height": 1000})
        page.set_default_timeout(WAIT_MS)
        page.goto(f"http://{address}/")
        page.wait_for_selector("#studio-root[data-state='ready']")
        yield page, studio
        browser.close()
    studio.stop()


def test_the_default_page_serves_the_shapes_model_and_says_what_it_is(shapes_page):
    page, studio = shapes_page
    assert studio.engine.model_name == "shapes"
    assert "a small model trained on a world of coloured shapes" in page.locator("#notice").inner_text()


def test_an_example_prompt_is_one_click_and_its_frame_is_drawn_upscaled(shapes_page):
    page, studio = shapes_page
    example = studio.engine.examples[0]
    page.locator("#examples button", has_text=example).click()
    assert page.locator("#prompt textarea").input_value() == example
    state = wait_for_last_frame(page)
    assert int(state["frames"]) >= 1
    canvas = page.locator("#live-canvas")
    assert canvas.get_attribute("width") == "128" and "upscaled" in canvas.get_attribute("class")
    assert canvas.bounding_box()["width"] >= 384  # shown at a comfortable size, not at 128 px
    assert f"{studio.engine.live_steps} step" in page.locator("#studio-hud").inner_text()


def test_compare_puts_the_reference_first_then_fewer_steps(shapes_page, tmp_path):
    page, studio = shapes_page
    swaps_before = studio.engine.model.weights.swaps
    rows = compare(page, len(studio.engine.steps))
    order = [int(rows.nth(i).locator("td").first.inner_text()) for i in range(rows.count())]
    assert order[0] == studio.engine.reference_steps == 32 and order[1:] == sorted(order[1:], reverse=True)
    assert "CFG 5" in page.locator("#compare-gallery").inner_text()
    cells = {order[i]: [c.inner_text() for c in rows.nth(i).locator("td").all()] for i in range(rows.count())}
    # steps | variant | adherence (measured, from the manifest) | text | swap | denoise | decode | total
    measured = {n: f"{studio.engine.adherence[n]:.0%}" for n in (32, 2, 1)}  # 86 %, 64 %, 43 % for the shipped model
    assert cells[32][1:3] == ["reference", measured[32]] and cells[2][1:3] == ["live", measured[2]] and cells[1][1:3] == ["", measured[1]]
    assert [page.locator("#steps label", has_text=t).count() for t in ("32 · reference", "2 · live")] == [1, 1]
    # the students' weights were copied into the one UNet for their rows, and the live variant's back after them
    assert "swap" in page.locator("#compare-latency table thead").inner_text()
    weights = studio.engine.model.weights
    # live 2 -> base (32, 8) -> 4 -> 2 -> 1 -> back to 2
    assert weights.current == weights.steps_to_set[studio.engine.live_steps] and weights.swaps - swaps_before == 5
    shot = DOCS_SCREENSHOT if os.environ.get("UPDATE_SCREENSHOT") else tmp_path / "studio.png"
    page.screenshot(path=str(shot), full_page=True)
    assert Image.open(shot).size[0] >= 1000
    assert dataset(page)["state"] == "ready"
