"""The ASGI app: /ws, /healthz and /metrics on FastAPI, with the Gradio UI mounted at / last.

Order matters: gr.mount_gradio_app mounts a catch-all at "/", so our routes must be registered before it. SSR is
off because Gradio's Node SSR proxy does not forward WebSocket upgrades.
"""

from fastapi import FastAPI, WebSocket
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

import assets

from . import connection
from .hosts import HostGuard

WEB_ASSETS = assets.ROOT / "web"


def create_app(studio, ui: bool = True) -> FastAPI:
    app = FastAPI(title="Lightning studio", docs_url=None, redoc_url=None)

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
