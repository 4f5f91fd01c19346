"""The bits of HTTP the integration tests that start llama-server themselves share: a free port
and /health's status while the model loads."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_status(url: str) -> int | None:
    """The HTTP status of GET url (503 while llama-server loads), None when nothing listens yet."""
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None
