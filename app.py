"""Lightning studio: `python app.py` serves the Gradio UI at /, the per-keystroke stream at /ws, /healthz and
/metrics from one uvicorn server (one port, as Hugging Face Spaces require). The code lives in realtime.cli, so the
installed package starts the same studio as `lightning-studio` or `python -m realtime`."""

import sys

from realtime.cli import main

if __name__ == "__main__":
    sys.exit(main())
