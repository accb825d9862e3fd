"""Which Host and Origin headers the server answers: its defence against DNS rebinding and against other sites' pages.

A page on a rebinding domain (evil.example resolving to 127.0.0.1) is, to the browser, same-origin with a studio on
the user's own machine: its requests carry `Host: evil.example` and a matching Origin. Refusing every Host that is
not a known name of this server ends that, for the page (HTTP) and for /ws alike. Known names: localhost (and
*.localhost), 127.0.0.1, [::1], the address the server is bound to, names given with --allowed-hosts, and on Hugging
Face Spaces the Space's own host (SPACE_HOST). Any IP address is accepted too, as Vite's dev server does: a browser
sends an IP literal as Host only when its user typed that address, so the page then comes from this server (no DNS
name, nothing to rebind); this is what lets a LAN user of `--host 0.0.0.0` open http://<machine's IP>:<port>.
"""

import ipaddress
import logging
import os
from dataclasses import dataclass
from urllib.parse import urlsplit

from pipelines.errors import capped

log = logging.getLogger(__name__)
LOCAL_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_ADDRESSES = frozenset({"", "0.0.0.0", "::"})  # "every interface": not a name a browser uses
DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}


def split_host(value: str | None) -> tuple[str, int | None]:
    """A Host header -> (lower-case name without IPv6 brackets, port or None); ('', None) when unreadable.
    'Example.com:7860' -> ('example.com', 7860); '[::1]:80' -> ('::1', 80)."""
    try:
        url = urlsplit("//" + (value or "").strip())
        return (url.hostname or "").lower(), url.port
    except ValueError:  # a port that is not a number, an unclosed bracket
        return "", None


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


@dataclass(frozen=True)
class HostPolicy:
    names: frozenset[str]  # host names this server answers to (IP addresses and *.localhost always)
    public: frozenset[str]  # names of a proxied public deployment, whose pages may open /ws whatever Host the proxy sends

    @classmethod
    def for_server(cls, bound: str | None = None, allowed=(), space_host: str | None = None) -> "HostPolicy":
        """The policy for a server bound to `bound` with --allowed-hosts `allowed`; SPACE_HOST (comma-separated) from
        the environment unless given."""
        space_host = os.environ.get("SPACE_HOST", "") if space_host is None else space_host
        public = {split_host(h)[0] for h in [*allowed, *space_host.split(",")] if h.strip()} - {""}
        bound_name = split_host(bound)[0] if bound not in WILDCARD_ADDRESSES else ""
        return cls(frozenset(LOCAL_NAMES | public | ({bound_name} - {""})), frozenset(public))

    def host_allowed(self, host_header: str | None) -> bool:
        name, _ = split_host(host_header)
        return bool(name) and (name in self.names or name.endswith(".localhost") or _is_ip(name))

    def origin_allowed(self, origin: str | None, host_header: str | None) -> bool:
        """Browsers always send Origin on a WebSocket handshake; a page from another site must not drive this GPU.

        Allowed: no Origin (not a browser: scripts, the load test); the page this server served (Origin names the
        allowed Host the request came to, same port where the Host names one: another port on localhost is another
        application); and a configured public name (a proxy in front of the server may send its own Host)."""
        if origin is None:
            return True
        try:
            url = urlsplit(origin)
            name, port = (url.hostname or "").lower(), url.port or DEFAULT_PORTS.get(url.scheme)
        except ValueError:
            return False
        if not name:  # "null" (sandboxed iframes, file:// pages) and anything that is not a URL
            return False
        host_name, host_port = split_host(host_header)
        if name == host_name and host_port in (None, port):
            return self.host_allowed(host_header)
        return name in self.public

    def refusal(self, host_header: str | None) -> str:
        """The one line a refused client (and the log) reads: what was refused and how to allow it."""
        return (
            f"Host {capped(host_header)!r} is not a name of this server (DNS rebinding protection). "
            "Serving it on purpose, e.g. a LAN or public host name? Start the studio with --allowed-hosts NAME (docs/deploy.md)."
        )


class HostGuard:
    """ASGI middleware: refuse a request whose Host is not allowed with 403, the page and /ws alike (a WebSocket is
    refused before the handshake completes, which the client sees as HTTP 403)."""

    def __init__(self, app, policy: HostPolicy):
        self.app, self.policy = app, policy

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket"):
            host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), None)
            if not self.policy.host_allowed(host):
                message = self.policy.refusal(host)
                log.warning("refused %s %s: %s", scope["type"], capped(scope.get("path", "")), message)
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                body = message.encode()
                headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
                await send({"type": "http.response.start", "status": 403, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)
