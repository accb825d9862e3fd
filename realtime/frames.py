"""Turn an engine result into the binary frame a client receives. Runs on the encoder pool, never on the GPU
worker (JPEG encoding of a 1024² frame costs milliseconds the GPU should spend rendering) nor on the event loop."""

import io
import time

import numpy as np
from PIL import Image

from .protocol import pack_frame

JPEG_QUALITY = 85


def encode_jpeg(image: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def frame_header(
    seq: int, steps: int, width: int, height: int, timings_ms: dict, queue_ms: float, encode_ms: float, dropped_tokens: int, batch_size: int
) -> dict:
    return {
        "seq": seq,
        "width": width,
        "height": height,
        "steps": steps,
        "timings_ms": {k: round(float(v), 2) for k, v in timings_ms.items()} | {"encode": round(encode_ms, 2)},
        "queue_ms": round(queue_ms, 2),
        "dropped_tokens": dropped_tokens,
        "batch_size": batch_size,
    }


def build_frame(image: np.ndarray, header_fields: dict) -> tuple[bytes, float]:
    """-> (frame bytes, encode ms). header_fields are frame_header's arguments except encode_ms."""
    start = time.perf_counter()
    jpeg = encode_jpeg(image)
    encode_ms = (time.perf_counter() - start) * 1000
    return pack_frame(frame_header(**header_fields, encode_ms=encode_ms), jpeg), encode_ms
