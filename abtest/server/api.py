"""The server's untimed HTTP exchanges (/health, /tokenize, /detokenize, a non-streamed /completion) on http.client.

The timed, streamed requests go through `abtest.measure.transport`; these need only a status and
a JSON body, one at a time, so the standard library's client does: `abtest run`'s start-up then
never imports httpx (~0.2 s of CPU with the rich and pygments its CLI module pulls in,
docs/performance.md). One keep-alive connection per `ApiClient`; a connection the server closed
while idle is reopened once, before anything of the request was answered.
"""

from __future__ import annotations

import http.client
import json
from typing import Any
from urllib.parse import urlsplit


class ApiError(Exception):
    """An exchange failed: no connection, a timeout, a connection cut, a status other than 2xx
    (`post_json`), or a body that is not JSON."""


class ApiClient:
    """HTTP/1.1 to one server (``http://host:port``); `timeout_s` bounds the connect and each read."""

    def __init__(self, base_url: str, timeout_s: float | None = 60.0) -> None:
        u = urlsplit(base_url)
        if u.scheme != "http" or not u.hostname:
            raise ValueError(f"unsupported URL {base_url!r}: expected http://host:port")
        self.prefix = u.path.rstrip("/")
        self._conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout_s)

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._conn.close()

    def _exchange(self, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        for attempt in (1, 2):
            reused = self._conn.sock is not None
            try:
                self._conn.request(method, self.prefix + path, body=body, headers=headers)
                resp = self._conn.getresponse()
                data = resp.read()
                if resp.will_close:
                    self._conn.close()
                return resp.status, data
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self._conn.close()
                if attempt == 1 and reused:
                    continue  # the server closed the idle keep-alive connection: one fresh try
                raise ApiError(f"{method} {path}: connection closed ({exc or type(exc).__name__})") from exc
            except TimeoutError as exc:
                self._conn.close()
                raise ApiError(f"{method} {path}: no answer within {self._conn.timeout:g} s") from exc
            except (OSError, http.client.HTTPException) as exc:
                self._conn.close()
                raise ApiError(f"{method} {path}: {exc or type(exc).__name__}") from exc
        raise AssertionError("unreachable")

    def status(self, path: str) -> int:
        """GET `path`: its HTTP status (any; the body is read and dropped); ApiError if no answer."""
        return self._exchange("GET", path, None)[0]

    def post_json(self, path: str, payload: Any) -> Any:
        """POST `payload` as JSON to `path`; the decoded JSON answer. ApiError on a failed exchange,
        a status other than 2xx (with the start of the body) or a body that is not JSON."""
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
        status, data = self._exchange("POST", path, body)
        if not 200 <= status < 300:
            raise ApiError(f"POST {path}: HTTP {status}: {data[:200].decode('utf-8', 'replace').strip()}")
        try:
            return json.loads(data)
        except ValueError as exc:
            raise ApiError(f"POST {path}: the answer is not JSON ({exc})") from exc
