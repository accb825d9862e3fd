"""The studio's command line: `lightning-studio`, `python -m realtime` and `python app.py` all start it here. It serves
the Gradio UI at /, the per-keystroke stream at /ws, /healthz and /metrics from one uvicorn server (one port, as
Hugging Face Spaces require)."""

import argparse
import logging
import os
import shlex
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_args(argv=None) -> argparse.Namespace:
    """Flags come from the command line, after any in STUDIO_ARGS (hosts such as Spaces run plain `python app.py`)."""
    argv = shlex.split(os.environ.get("STUDIO_ARGS", "")) + list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="lightning-studio", description=__doc__)
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"), help="address to listen on (0.0.0.0: every interface)")
    p.add_argument(
        "--allowed-hosts",
        nargs="+",
        default=[],
        metavar="NAME",
        help="host names browsers may reach the studio by, besides localhost, IP addresses and --host (e.g. a LAN name or a "
        "public deployment's domain); any other Host is refused with 403 (DNS rebinding protection, docs/deploy.md)",
    )
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    p.add_argument(
        "--model",
        default=None,
        help="shapes | tiny | random-sdxl | lightning | lightning-lora | a local folder (default: lightning on CUDA, else the embedded shapes model)",
    )
    p.add_argument("--variants", type=int, nargs="+", default=None, help="step counts to load, e.g. 1 2 4 8")
    p.add_argument(
        "--backend",
        default="eager",
        choices=("eager", "compile", "tensorrt"),
        help="eager; compile (torch.compile, CUDA graphs on CUDA; artifacts cached on disk); tensorrt (extra)",
    )
    p.add_argument("--device", default=None, help="cuda | cpu (default: cuda when available)")
    p.add_argument(
        "--devices",
        default=None,
        help="one engine and worker per device, all fed by one scheduler: a comma list (cuda:0,cuda:1 or cpu,cpu) or 'all' (every CUDA GPU)",
    )
    p.add_argument(
        "--sizes",
        nargs="+",
        default=None,
        help="the sizes served, WIDTHxHEIGHT (e.g. 1024x1024 1152x896 896x1152), N for NxN, or 'sdxl' for all of SDXL's aspect buckets; "
        "all are warmed at start and any other size is refused (default: the model's native square; shapes: 128x128 256x256)",
    )
    p.add_argument("--base", default=None, help="SDXL base (hub id or folder) for lightning / lightning-lora")
    p.add_argument("--dtype", default=None, choices=("float16", "bfloat16", "float32"), help="default: float16 on CUDA, float32 on the CPU")
    p.add_argument(
        "--decode-dtype",
        default=None,
        choices=("float16", "bfloat16", "float32"),
        help="the decoders' precision (default: the model's); bfloat16 decodes ~1.5x faster on CPUs with native bf16",
    )
    p.add_argument(
        "--weights",
        choices=("resident", "swap"),
        default=None,
        help="where variants' own UNet weights wait: resident (a device copy each) or swap (pinned host memory, copied into the one UNet in place); "
        "default: the memory plan's choice on CUDA (printed at start), resident on the CPU",
    )
    p.add_argument("--max-clients", type=_positive, default=64)
    p.add_argument("--max-batch", type=_positive, default=4, help="most same-variant, same-size requests per engine call")
    p.add_argument("--preview-vae", choices=("tiny", "full"), default=None, help="decoder for the live stream (Compare steps always uses the full VAE)")
    p.add_argument(
        "--gradio-events",
        action="store_true",
        default=bool(os.environ.get("SPACES_ZERO_GPU")),
        help="drive the image with Gradio events instead of the WebSocket (default on ZeroGPU Spaces, where a GPU is only attached inside Gradio events)",
    )
    p.add_argument("--idle-timeout", type=float, default=300.0, help="seconds of silence before a client is closed")
    return p.parse_args(argv)


def device_list(devices: str | None, device: str | None, cuda_count: int) -> list[str | None]:
    """--devices -> one device per worker: 'all' is every CUDA GPU (the CPU when there is none); without --devices,
    the one --device (None: cuda when available)."""
    if devices is None:
        return [device]
    if devices == "all":
        return [f"cuda:{i}" for i in range(cuda_count)] or ["cpu"]
    return [d.strip() for d in devices.split(",") if d.strip()]


def backend_for_host(backend: str, zero_gpu: bool) -> tuple[str, str | None]:
    """(backend to run, notice for the page). ZeroGPU attaches a GPU to a short-lived process per @spaces.GPU call,
    so just-in-time compiled graphs and CUDA graphs would be rebuilt on every call: compilation is off there."""
    if zero_gpu and backend != "eager":
        return "eager", f"--backend {backend} is off on ZeroGPU (compiled graphs do not outlive its per-call GPU processes); the UNet runs eager."
    return backend, None


def check_model(args) -> None:
    """--model and --variants, from the model's name or manifest alone (no torch): a mistake is answered at once."""
    from pipelines.variants import resolve

    if args.model is not None:
        steps = tuple(args.variants or ())
        resolve(args.model, args.base, steps).restricted_to(steps)  # a plain diffusers folder serves the steps asked for


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from pipelines import StudioError

    zero_gpu = bool(os.environ.get("SPACES_ZERO_GPU"))
    backend, host_notice = backend_for_host(args.backend, zero_gpu)
    try:
        check_model(args)  # before torch is imported: a wrong name or step count is answered at once
        if args.gradio_events and zero_gpu:
            import spaces  # noqa: F401  ZeroGPU must patch CUDA before torch is imported
        import torch

        from pipelines import load_engine
        from pipelines.sizes import parse as parse_sizes

        sizes = parse_sizes(args.sizes) if args.sizes else None
        devices = device_list(args.devices, args.device, torch.cuda.device_count() if args.devices == "all" else 0)
        engines = [
            load_engine(
                model=args.model,
                device=device,
                steps=args.variants,
                backend=backend,
                preview_vae=args.preview_vae,
                dtype=args.dtype,
                base=args.base,
                decode_dtype=args.decode_dtype,
                weights=args.weights,
                sizes=sizes,
                max_batch=args.max_batch,
            )
            for device in devices
        ]
    except StudioError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import uvicorn

    from realtime.hosts import WILDCARD_ADDRESSES
    from realtime.server import create_app
    from realtime.studio import Studio, StudioConfig

    cpu_workers = sum(e.device.type == "cpu" for e in engines)
    config = StudioConfig(
        max_clients=args.max_clients,
        max_batch=args.max_batch,
        preview_vae=args.preview_vae,
        idle_timeout_s=args.idle_timeout,
        gradio_events=args.gradio_events,
        warm=not zero_gpu,
        cpu_threads=max(1, (os.cpu_count() or 1) // cpu_workers) if cpu_workers > 1 else None,
        notice=host_notice,
        bound_host=args.host,
        allowed_hosts=tuple(args.allowed_hosts),
    )
    studio = Studio(engines, config)
    for engine in engines:
        if engine.plan is not None:
            print(f"{engine.device}: {engine.plan.summary()}", flush=True)
    print(studio.notice, flush=True)
    if args.host in WILDCARD_ADDRESSES and not args.allowed_hosts and not os.environ.get("SPACE_HOST"):  # Spaces: its host is allowed
        print(f"listening on every interface: other machines open http://<this machine's IP>:{args.port}; for a host name, add --allowed-hosts NAME")
    studio.start()  # warms up on the worker thread; /healthz answers 503 until it is done
    app = create_app(studio)
    try:
        uvicorn.run(app, host=args.host, port=args.port, ws="websockets-sansio", ws_max_size=64 * 1024, ws_per_message_deflate=False, log_level="info")
    finally:
        studio.stop()
    return 0
