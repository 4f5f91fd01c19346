"""The stream client on bare asyncio: same `stream_request` contract as `abtest.measure.stream`, less CPU.

Why it exists (numbers in docs/performance.md, from ``benchmarks/client_accuracy.py``): httpx
spends most of the client's CPU per SSE event in its layers (anyio stream, httpcore's h11 state
machine, httpx's byte decoders), and on a 2-core box that CPU becomes queueing delay under
concurrency: token arrivals are stamped late. This module keeps everything that defines a
measurement from `abtest.measure.stream` -- the request body (`request_body`), the token counting and SSE
parsing (`_Tracker`, `_feed_sse`) and the record (`_record`) -- and replaces only the transport:

- one `asyncio.Protocol` per connection: bytes are timestamped in ``data_received``, with no
  StreamReader, anyio or h11 between the socket and the clock;
- HTTP/1.1 written by hand: a request line, four headers, the JSON body in one ``write``; the
  response's status line, headers and chunked (or Content-Length, or until-close) body parsed here;
- "sent" is right after ``transport.write`` handed every request byte to the kernel (the write
  buffer is empty then; otherwise at the transport's drain), the same mark as httpcore's
  ``http11.send_request_body.complete`` that `abtest.measure.stream` uses;
- keep-alive connections pooled per host, at most ``max_connections`` at once;
  `RawClient.open_connections` opens them before timing, as the runner does with httpx;
- the event JSON parsed with orjson when it is importable (same result as ``json.loads``).

Switching: ``async with RawClient(max_connections=n) as client: await stream_request(client, url,
req, limits)`` where the runner had ``httpx.AsyncClient`` and ``abtest.stream.stream_request``. A
failed request is a record with ``error`` set, as in `abtest.measure.stream`; it never raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import time
from collections import deque
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

from ..records import RequestRecord
from .stream import StreamLimits, StreamRequest, _end_of_stream, _feed_sse, _record, _Tracker, request_body

__all__ = ["RawClient", "RawHTTPError", "stream_request"]

_DEFAULT_LIMITS = StreamLimits()


class RawHTTPError(Exception):
    """A connection failed or the peer broke HTTP/1.1; ``kind``: connect, closed, protocol, stalled."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


_HEAD, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILER, _LENGTH, _UNTIL_CLOSE, _DONE = range(8)


class _Conn(asyncio.Protocol):
    """One HTTP/1.1 connection; parses one response at a time and hands body bytes to a sink."""

    def __init__(self, key: tuple[str, str, int]) -> None:
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.close_exc: BaseException | None = None
        self._buf = bytearray()
        self._state = _DONE
        self._remaining = 0
        self.status = 0
        self.headers: dict[str, str] = {}
        self.keep_alive = True
        self.got_bytes = False
        self.last_rx_ns = 0
        self.t_headers_ns: int | None = None
        self.sink: Any = None  # callable(bytes, t_ns) for body bytes
        self.done: asyncio.Future[None] | None = None
        self._drained: asyncio.Future[None] | None = None

    # -- asyncio.Protocol ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.close_exc = exc
        if self._state == _UNTIL_CLOSE:
            self._state = _DONE
            self._finish(None)
        elif self._state != _DONE:
            self._finish(RawHTTPError("closed", str(exc) if exc else "connection closed mid-response"))
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def resume_writing(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def data_received(self, data: bytes) -> None:
        t_ns = time.perf_counter_ns()  # the arrival stamp of every event in these bytes
        self.last_rx_ns = t_ns
        if self._state == _DONE:
            return  # bytes outside a response (none expected): ignore
        self.got_bytes = True
        buf = self._buf
        buf += data
        try:
            self._parse(t_ns)
        except Exception as exc:  # the sink raised (malformed event) or HTTP is broken
            self._state = _DONE
            self.keep_alive = False
            self._finish(exc)

    # -- requests ---------------------------------------------------------------------------------
    def begin(self, sink: Any) -> asyncio.Future[None]:
        self._buf.clear()
        self._state = _HEAD
        self.status = 0
        self.headers = {}
        self.keep_alive = True
        self.got_bytes = False
        self.t_headers_ns = None
        self.sink = sink
        self.done = asyncio.get_running_loop().create_future()
        return self.done

    async def write(self, data: bytes) -> int:
        """Write the request; the perf_counter_ns when every byte was handed to the kernel."""
        assert self.transport is not None
        self.transport.write(data)
        t_ns = time.perf_counter_ns()
        while self.transport.get_write_buffer_size() and not self.closed:  # rare: a big body
            self._drained = asyncio.get_running_loop().create_future()
            await self._drained
            t_ns = time.perf_counter_ns()
        return t_ns

    def _finish(self, exc: BaseException | None) -> None:
        fut = self.done
        if fut is not None and not fut.done():
            if exc is None:
                fut.set_result(None)
            else:
                fut.set_exception(exc)

    def _parse(self, t_ns: int) -> None:
        buf = self._buf
        while True:
            state = self._state
            if state == _CHUNK_DATA:
                n = min(self._remaining, len(buf))
                if n == 0:
                    return
                part = bytes(buf[:n])
                del buf[:n]
                self._remaining -= n
                self.sink(part, t_ns)
                if self._remaining == 0:
                    self._state = _CHUNK_CRLF
            elif state == _CHUNK_SIZE:
                nl = buf.find(b"\r\n")
                if nl < 0:
                    return
                size = int(bytes(buf[:nl]).split(b";", 1)[0], 16)
                del buf[: nl + 2]
                if size == 0:
                    self._state = _TRAILER
                else:
                    self._remaining = size
                    self._state = _CHUNK_DATA
            elif state == _CHUNK_CRLF:
                if len(buf) < 2:
                    return
                if buf[:2] != b"\r\n":
                    raise RawHTTPError("protocol", "chunk not followed by CRLF")
                del buf[:2]
                self._state = _CHUNK_SIZE
            elif state == _HEAD:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                self._head(bytes(buf[:end]), t_ns)
                del buf[: end + 4]
            elif state == _LENGTH:
                n = min(self._remaining, len(buf))
                if n:
                    part = bytes(buf[:n])
                    del buf[:n]
                    self._remaining -= n
                    self.sink(part, t_ns)
                if self._remaining == 0:
                    self._state = _DONE
                    self._finish(None)
                return
            elif state == _UNTIL_CLOSE:
                if buf:
                    self.sink(bytes(buf), t_ns)
                    buf.clear()
                return
            elif state == _TRAILER:
                end = buf.find(b"\r\n")
                if end < 0:
                    return
                line = bytes(buf[:end])
                del buf[: end + 2]
                if not line:  # end of trailers: the response is complete
                    self._state = _DONE
                    self._finish(None)
                    return
            else:  # _DONE
                return

    def _head(self, head: bytes, t_ns: int) -> None:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
            raise RawHTTPError("protocol", f"bad status line {lines[0][:80]!r}")
        status = int(parts[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        if 100 <= status < 200:  # 1xx: another head follows
            return
        self.status = status
        self.headers = headers
        self.t_headers_ns = t_ns
        conn = headers.get("connection", "").lower()
        self.keep_alive = "close" not in conn and parts[0] != "HTTP/1.0"
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self._state = _CHUNK_SIZE
        elif "content-length" in headers:
            self._remaining = int(headers["content-length"])
            self._state = _LENGTH
        else:
            self.keep_alive = False
            self._state = _UNTIL_CLOSE


class RawClient:
    """A keep-alive HTTP/1.1 connection pool for streamed requests (``http`` and ``https``)."""

    def __init__(self, max_connections: int = 100, connect_timeout_s: float = 10.0) -> None:
        self.max_connections = max_connections
        self.connect_timeout_s = connect_timeout_s
        self._idle: dict[tuple[str, str, int], deque[_Conn]] = {}
        self._slots = asyncio.Semaphore(max_connections)
        self._all: set[_Conn] = set()

    async def __aenter__(self) -> RawClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        for c in list(self._all):
            if c.transport is not None:
                c.transport.close()
        self._all.clear()
        self._idle.clear()

    @staticmethod
    def _key(url: str) -> tuple[tuple[str, str, int], str]:
        u = urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"unsupported URL {url!r}: expected http://host:port/...")
        port = u.port or (443 if u.scheme == "https" else 80)
        path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        return (u.scheme, u.hostname, port), path

    async def _connect(self, key: tuple[str, str, int], timeout_s: float) -> _Conn:
        scheme, host, port = key
        loop = asyncio.get_running_loop()
        ctx = ssl.create_default_context() if scheme == "https" else None
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: _Conn(key), host, port, ssl=ctx), timeout_s)
        except asyncio.TimeoutError as exc:
            raise RawHTTPError("connect", f"connect timed out after {timeout_s:g} s") from exc
        except OSError as exc:
            raise RawHTTPError("connect", exc.strerror or str(exc)) from exc
        self._all.add(conn)
        return conn

    def _take_idle(self, key: tuple[str, str, int]) -> _Conn | None:
        q = self._idle.get(key)
        while q:
            c = q.pop()  # most recently used first: least likely to have timed out
            if not c.closed:
                return c
            self._all.discard(c)
        return None

    def _release(self, conn: _Conn, reusable: bool) -> None:
        if reusable and not conn.closed:
            self._idle.setdefault(conn.key, deque()).append(conn)
        else:
            self._all.discard(conn)
            if conn.transport is not None and not conn.closed:
                conn.transport.close()

    async def request(self, method: str, url: str, body: bytes | None, sink: Any, headers: str = "",
                      timeout_s: float | None = None, stall_timeout_s: float | None = None,
                      connect_timeout_s: float | None = None, on_sent: Any = None,
                      on_conn: Any = None) -> _Conn:
        """One exchange; body bytes go to ``sink(bytes, t_ns)``; ``on_sent(t_ns)`` when the request
        bytes were handed to the kernel; ``on_conn(conn)`` once a connection is taken. Returns the
        connection (its ``status`` and ``headers``)."""
        key, path = self._key(url)
        await self._slots.acquire()
        try:
            conn = self._take_idle(key) or await self._connect(key, connect_timeout_s or self.connect_timeout_s)
            if on_conn is not None:
                on_conn(conn)
            host = key[1] if key[2] in (80, 443) else f"{key[1]}:{key[2]}"
            payload = body or b""
            head = (f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nAccept: */*\r\n{headers}"
                    f"Content-Length: {len(payload)}\r\n\r\n").encode("latin-1")
            done = conn.begin(sink)
            if conn.closed:
                raise RawHTTPError("closed", "connection closed before the request was written")
            t_sent = await conn.write(head + payload)
            if on_sent is not None:
                on_sent(t_sent)
            try:
                await self._wait(conn, done, timeout_s, stall_timeout_s)
            except BaseException:
                if not done.done():
                    done.cancel()  # abandoned: a later connection_lost must not leave an unread error
                self._release(conn, False)
                raise
            self._release(conn, conn.keep_alive)
            return conn
        finally:
            self._slots.release()

    @staticmethod
    async def _wait(conn: _Conn, done: asyncio.Future[None], timeout_s: float | None,
                    stall_timeout_s: float | None) -> None:
        """Wait for the response to end; a stall (no byte for stall_timeout_s) raises ``stalled``.

        One timer per stall window instead of one per received chunk: the window is re-armed from
        the last byte's time only when it expires.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        conn.last_rx_ns = time.perf_counter_ns()
        while True:
            wait = stall_timeout_s
            if deadline is not None:
                left = deadline - loop.time()
                if left <= 0:
                    raise asyncio.TimeoutError
                wait = left if wait is None else min(wait, left)
            try:
                await asyncio.wait_for(asyncio.shield(done), wait)
                return
            except asyncio.TimeoutError:
                if done.done():
                    done.result()
                    return
                if stall_timeout_s is not None:
                    idle_s = (time.perf_counter_ns() - conn.last_rx_ns) / 1e9
                    if idle_s >= stall_timeout_s:
                        raise RawHTTPError("stalled", f"no data for {stall_timeout_s:g} s") from None

    async def get(self, url: str, timeout_s: float | None = 30.0) -> tuple[int, bytes]:
        """A plain GET (health checks, warm-up); the status and the whole body."""
        parts: list[bytes] = []
        conn = await self.request("GET", url, None, lambda b, _t: parts.append(b), timeout_s=timeout_s)
        return conn.status, b"".join(parts)

    async def open_connections(self, url: str, n: int) -> None:
        """Open up to n keep-alive connections (GET url on each at once) so timing never includes setup."""
        with contextlib.suppress(Exception):
            await asyncio.gather(*(self.get(url) for _ in range(n)), return_exceptions=True)


async def stream_request(client: RawClient, base_url: str, req: StreamRequest,
                         limits: StreamLimits = _DEFAULT_LIMITS) -> RequestRecord:
    """Send one streamed request and time every token-carrying event; never raises on failure.

    The contract of `abtest.stream.stream_request` (same record, same errors as data), on `RawClient`.
    """
    path, body = request_body(req)
    payload = json.dumps(body, separators=(",", ":")).encode()
    tracker = _Tracker(req.endpoint)
    status = 0
    error: str | None = None
    sent_at = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
    for attempt in (1, 2):
        buffer = bytearray()
        err_body: list[bytes] = []
        conns: list[_Conn] = []
        tr = tracker

        def sink(part: bytes, t_ns: int, buffer: bytearray = buffer, err_body: list[bytes] = err_body,
                 conns: list[_Conn] = conns, tr: _Tracker = tr) -> None:
            if conns[0].status != 200:
                err_body.append(part)  # an error answer's body: kept for the message, not parsed
                return
            buffer.extend(part)
            _feed_sse(buffer, tr, t_ns)

        def on_sent(t_ns: int, tr: _Tracker = tr) -> None:
            tr.t_send_ns = t_ns

        try:
            conn = await client.request(
                "POST", base_url + path, payload, sink, headers=_HEADERS, timeout_s=limits.request_timeout_s,
                stall_timeout_s=limits.stall_timeout_s, connect_timeout_s=limits.connect_timeout_s,
                on_sent=on_sent, on_conn=conns.append)
            status = conn.status
            tracker.t_headers_ns = conn.t_headers_ns
            if status != 200:
                raw = b"".join(err_body)
                error = f"HTTP {status}: {raw[:300].decode('utf-8', 'replace').strip()}"
            else:
                error = _end_of_stream(buffer, tracker)
            break
        except RawHTTPError as exc:
            got = bool(conns and conns[0].got_bytes) or bool(tracker.chunk_times)
            if exc.kind in ("closed", "connect") and attempt == 1 and not got:
                # A pooled keep-alive connection can be closed under us before the server read a
                # byte of the request (llama-server closes after a streamed response): retry once,
                # only when nothing at all came back, with a fresh timeline -- as abtest.measure.stream does.
                tracker = _Tracker(req.endpoint)
                continue
            status = conns[0].status if conns else 0
            if exc.kind == "connect":
                error = f"cannot connect to {base_url} ({exc}) — is the server still running? see its log"
            elif exc.kind == "stalled":
                error = f"stream stalled: no data for {limits.stall_timeout_s:g} s (--stall-timeout)"
            elif exc.kind == "closed":
                error = (f"connection closed after {tracker.predicted} tokens ({exc}) "
                         "— the server died or cut the stream; see its log")
            else:
                error = f"HTTP protocol error: {exc}"
            break
        except asyncio.TimeoutError:
            status = conns[0].status if conns else 0
            error = f"request timed out after {limits.request_timeout_s:g} s (--request-timeout)"
            break
        except (ValueError, UnicodeDecodeError) as exc:
            status = conns[0].status if conns else 0
            error = f"malformed event: {exc}"
            break
    return _record(req, tracker, status, error, time.perf_counter_ns(), sent_at)


_HEADERS = "Content-Type: application/json\r\nAccept-Encoding: identity\r\n"
