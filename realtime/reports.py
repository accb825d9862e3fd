"""What the load test and the fuzz share as clients of a running studio: its HTTP endpoints, and how a result is
reported (a markdown table on stdout, the full result as JSON)."""

import json
import urllib.error
import urllib.request


def http_json(ws_url: str, path: str) -> tuple[int, dict | None]:
    """GET an HTTP endpoint next to /ws: (status, body), or (0, None) if the server cannot be reached."""
    url = ws_url.replace("wss://", "https://").replace("ws://", "http://").rsplit("/ws", 1)[0] + path
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as e:
        return e.code, None
    except (OSError, ValueError):
        return 0, None


def publish(result: dict, table: str, json_path: str | None) -> None:
    print(table)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(result, f, indent=2)
