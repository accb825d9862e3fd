"""Admission rules for the WebSocket: which Origins may connect, and how fast one client may send."""

import os
from urllib.parse import urlsplit

LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "[::1]"}


def _hostname(value: str) -> str:
    """'https://Example.com:7860' or 'example.com:7860' -> 'example.com'."""
    if "//" not in value:
        value = "//" + value
    return (urlsplit(value).hostname or "").lower()


def origin_allowed(origin: str | None, host_header: str | None, space_host: str | None = None) -> bool:
    """Browsers always send Origin on a WebSocket handshake; a page from another site must not drive this GPU.

    Allowed: no Origin (not a browser: scripts, the load test), the same host the request was sent to, localhost,
    and the Space's own host(s) from SPACE_HOST (comma-separated on Hugging Face).
    """
    if origin is None:
        return True
    if origin == "null":  # sandboxed iframes and file:// pages
        return False
    host = _hostname(origin)
    if not host:
        return False
    if host in LOCAL_HOSTS or (host_header and host == _hostname(host_header)):
        return True
    space_host = os.environ.get("SPACE_HOST", "") if space_host is None else space_host
    return host in {_hostname(h.strip()) for h in space_host.split(",") if h.strip()}


class TokenBucket:
    """`rate` messages per second on average, bursts up to `burst`. Time is passed in, so tests need no clock."""

    def __init__(self, rate: float, burst: float, now: float = 0.0):
        self.rate, self.burst = rate, burst
        self.tokens, self.stamp = burst, now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False

    def wait_s(self) -> float:
        """Seconds until the next message would be accepted."""
        return max(0.0, (1 - self.tokens) / self.rate)
