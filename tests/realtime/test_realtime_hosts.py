"""DNS rebinding and foreign pages: the Host and Origin rules (realtime.hosts), and the real server applying them to
the page and to /ws before the WebSocket handshake completes."""

import json
import socket

import httpx
import pytest
from realtime_fakes import FakeEngine, serve
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from realtime.hosts import HostPolicy
from realtime.protocol import unpack_frame
from realtime.server import create_app
from realtime.studio import Studio, StudioConfig

LIMIT_S = 60  # only stops a hung test


@pytest.mark.parametrize(
    "host, allowed",
    [
        ("127.0.0.1:7860", True),
        ("localhost:7860", True),
        ("LOCALHOST", True),
        ("[::1]:7860", True),
        ("studio.localhost:7860", True),
        ("192.168.1.20:7860", True),  # an IP address: typed by the user, nothing to rebind
        ("box.lan:7860", True),  # the bound name
        ("studio.example.org", True),  # --allowed-hosts
        ("user-studio.hf.space", True),  # SPACE_HOST
        ("evil.example:7899", False),
        ("localhost.evil.example", False),
        ("127.0.0.1.evil.example", False),
        ("", False),
        (None, False),
        ("[::1", False),
    ],
)
def test_host_allowlist(host, allowed):
    policy = HostPolicy.for_server("box.lan", ["studio.example.org"], space_host="user-studio.hf.space")
    assert policy.host_allowed(host) is allowed


@pytest.mark.parametrize(
    "origin, host, allowed",
    [
        (None, "127.0.0.1:7860", True),  # not a browser
        ("http://127.0.0.1:7860", "127.0.0.1:7860", True),  # the page this server served
        ("http://localhost:7860", "localhost:7860", True),
        ("http://[::1]:7860", "[::1]:7860", True),
        ("http://192.168.1.20:7860", "192.168.1.20:7860", True),  # a LAN user of --host 0.0.0.0
        ("http://localhost:3000", "localhost:7860", False),  # another application on this machine
        ("http://localhost:3000", "10.0.0.2:7860", False),
        ("http://evil.example:7899", "evil.example:7899", False),  # DNS rebinding: the Host is not a name of this server
        ("https://evil.example", "studio.example.org", False),
        ("https://studio.example.org", "studio.example.org", True),  # a configured public host
        ("https://studio.example.org", "10.1.2.3:7860", True),  # ... behind a proxy that sends its own Host
        ("https://studio.example.org.evil.example", "studio.example.org", False),
        ("https://user-studio.hf.space", "10.1.2.3:7860", True),  # the Space's own host
        ("https://other.hf.space", "10.1.2.3:7860", False),
        ("null", "127.0.0.1:7860", False),  # sandboxed iframes, file:// pages
        ("not a url", "127.0.0.1:7860", False),
        ("http://127.0.0.1:99999", "127.0.0.1:7860", False),
    ],
)
def test_origin_rule(origin, host, allowed):
    policy = HostPolicy.for_server("127.0.0.1", ["studio.example.org"], space_host="user-studio.hf.space")
    assert policy.origin_allowed(origin, host) is allowed


def test_a_wildcard_bind_adds_no_name():
    assert HostPolicy.for_server("0.0.0.0", space_host="").names == {"localhost", "127.0.0.1", "::1"}


def open_socket(address: str) -> socket.socket:
    host, port = address.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=LIMIT_S)


def first_frame(ws) -> dict:
    assert json.loads(ws.recv(LIMIT_S))["type"] == "status"
    ws.send(json.dumps({"type": "generate", "seq": 1, "prompt": "a fox", "seed": 1, "steps": 1, "width": 64, "height": 64}))
    while isinstance(data := ws.recv(LIMIT_S), str):
        pass
    return unpack_frame(data)[0]


def test_a_rebinding_page_is_refused_on_the_page_and_on_the_socket(tiny_studio):
    """The browser's view of DNS rebinding: the URL names evil.example, the TCP connection reaches this server."""
    address, _ = tiny_studio
    page = httpx.get(f"http://{address}/", headers={"Host": "evil.example:7899"})
    assert page.status_code == 403 and "--allowed-hosts" in page.text
    with pytest.raises(InvalidStatus) as refused:
        connect("ws://evil.example:7899/ws", sock=open_socket(address), origin="http://evil.example:7899", open_timeout=LIMIT_S)
    assert refused.value.response.status_code == 403


def test_the_local_page_is_served_and_its_socket_accepted(tiny_studio):
    address, _ = tiny_studio
    port = address.rsplit(":", 1)[1]
    assert httpx.get(f"http://localhost:{port}/healthz").status_code == 200
    with connect(f"ws://localhost:{port}/ws", sock=open_socket(address), origin=f"http://localhost:{port}", open_timeout=LIMIT_S) as ws:
        assert first_frame(ws)["seq"] == 1


def test_a_foreign_origin_is_refused_before_the_handshake(tiny_studio):
    address, _ = tiny_studio
    for origin in ("https://evil.example", f"http://localhost:{int(address.rsplit(':', 1)[1]) + 1}"):
        with pytest.raises(InvalidStatus) as refused:
            connect(f"ws://{address}/ws", origin=origin, open_timeout=LIMIT_S)
        assert refused.value.response.status_code == 403


def test_a_configured_public_host_is_served_and_others_still_refused():
    studio = Studio(FakeEngine(), StudioConfig(bound_host="0.0.0.0", allowed_hosts=("studio.example.org",))).start()
    try:
        with serve(create_app(studio, ui=False)) as address:
            assert httpx.get(f"http://{address}/healthz", headers={"Host": "studio.example.org"}).status_code == 200
            with connect("ws://studio.example.org/ws", sock=open_socket(address), origin="https://studio.example.org") as ws:
                assert first_frame(ws)["seq"] == 1
            assert httpx.get(f"http://{address}/healthz", headers={"Host": "other.example.org"}).status_code == 403
    finally:
        studio.stop()
