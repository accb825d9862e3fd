"""The ASGI app: /ws, /healthz and /metrics on FastAPI, with the Gradio UI mounted at / last.

Order matters: gr.mount_gradio_app mounts a catch-all at "/", so our routes must be registered before it. SSR is
off because Gradio's Node SSR proxy does not forward WebSocket upgrades.
"""

import logging

from fastapi import FastAPI, WebSocket
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

import assets

from . import connection
from .hosts import HostGuard

WEB_ASSETS = assets.ROOT / "web"
INVALID_UTF8 = "Invalid UTF-8 sequence received from client."  # what uvicorn logs, with a traceback, for such a frame


def invalid_utf8_in_one_line(record: logging.LogRecord) -> bool:
    """A client's text frame that is not UTF-8 is the client's mistake, answered with close code 1007 (uvicorn does
    that); the log gets one line for it instead of uvicorn's traceback of the decode error."""
    if record.getMessage() == INVALID_UTF8:
        record.msg, record.args = "a client sent a WebSocket text frame that is not valid UTF-8; closed it with 1007", ()
        record.exc_info = record.exc_text = None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
    return True


def create_app(studio, ui: bool = True) -> FastAPI:
    app = FastAPI(title="Lightning studio", docs_url=None, redoc_url=None)
    uvicorn_log = logging.getLogger("uvicorn.error")
    if invalid_utf8_in_one_line not in uvicorn_log.filters:
        uvicorn_log.addFilter(invalid_utf8_in_one_line)

    @app.websocket("/ws")
    async def ws_endpoint(ws: WebSocket):
        await connection.serve(ws, studio)

    @app.get("/healthz")
    def healthz():
        code, body = studio.health()
        return JSONResponse(body, status_code=code)

    @app.get("/metrics")
    def metrics():  # a sync route: FastAPI runs it on its threadpool, engine.memory() never blocks the loop
        snapshot = studio.metrics.snapshot()
        snapshot["queue"] = studio.worker.queue_depth()
        snapshot["connected_clients"] = studio.connected
        try:
            snapshot["engine_memory"] = studio.engine.memory()
        except Exception as e:  # metrics must not fail because a backend cannot report memory
            snapshot["engine_memory"] = {"error": str(e)}
        return snapshot

    app.mount("/studio-assets", StaticFiles(directory=WEB_ASSETS), name="studio-assets")

    if ui:
        import gradio as gr

        from .ui import HEAD, build_blocks

        app = gr.mount_gradio_app(app, build_blocks(studio), path="/", ssr_mode=False, head=HEAD)
    app.add_middleware(HostGuard, policy=studio.hosts)  # outermost: a foreign Host reaches no route, the page's nor /ws
    return app
