"""The stream client on bare asyncio: same `stream_request` contract as `abtest.measure.stream`, less CPU.

Why it exists (numbers in docs/performance.md, from ``benchmarks/client_accuracy.py``): httpx
spends most of the client's CPU per SSE event in its layers (anyio stream, httpcore's h11 state
machine, httpx's byte decoders), and on a 2-core box that CPU becomes queueing delay under
concurrency: token arrivals are stamped late. Everything that defines a measurement -- the request
body, SSE parsing, token counting and the record -- is `abtest.measure.protocol`, shared with
`abtest.measure.stream`; this module is only the transport:

- one `asyncio.Protocol` per connection: bytes are timestamped in ``data_received``, with no
  StreamReader, anyio or h11 between the socket and the clock;
- the request written by hand in one ``write`` (a request line, a few headers, the JSON body);
- the response framed by llhttp (`httptools`, the parser of uvloop and uvicorn): strict
  HTTP/1.1 -- a chunk size, a Content-Length or a line ending that is not exactly right is a
  protocol error at once, a 204/304 ends at its headers, response headers are capped at
  ``MAX_HEAD_BYTES``; a body delimited by the connection's close is complete only on a clean close
  (FIN), never on a reset;
- "sent" is taken right before ``transport.write`` hands the request to the kernel, with nothing
  awaited in between (after the write, a busy core can run the server first: a TTFT below the
  server's own prompt time);
- a stall is no byte for ``stall_timeout_s`` since the last one, checked against the last byte's
  time (never a window re-armed in full, which would let a stall run to twice its setting);
- keep-alive connections pooled per host, at most ``max_connections`` at once;
  `RawClient.open_connections` opens them before timing, as the runner does with httpx.

Switching: ``async with RawClient(max_connections=n) as client: await stream_request(client, url,
req, limits)`` where the runner had ``httpx.AsyncClient`` and ``abtest.measure.stream.stream_request``.
A failed request is a record with ``error`` set, as in `abtest.measure.stream`; it never raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

import httptools

from ..records import RequestRecord
from .protocol import (
    MalformedEvent,
    StreamLimits,
    StreamRequest,
    Tracker,
    assemble,
    cannot_connect,
    connection_cut,
    encode_body,
    http_status_error,
    request_body,
    request_id,
    stalled,
    timed_out,
)

__all__ = ["MAX_HEAD_BYTES", "RawClient", "RawHTTPError", "stream_request"]

_DEFAULT_LIMITS = StreamLimits()
MAX_HEAD_BYTES = 64 << 10  # response status line + headers (llama-server sends ~250 bytes)
Sink = Callable[[bytes, int], None]


class RawHTTPError(Exception):
    """A connection failed or the peer broke HTTP/1.1; ``kind``: connect, closed, protocol, stalled."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class _Conn(asyncio.Protocol):
    """One HTTP/1.1 connection; frames one response at a time (llhttp) and hands body bytes to a sink."""

    def __init__(self, key: tuple[str, str, int]) -> None:
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.close_exc: BaseException | None = None
        self.status = 0
        self.headers: dict[str, str] = {}
        self.keep_alive = True
        self.got_bytes = False
        self.last_rx_ns = 0
        self.t_headers_ns: int | None = None
        self.sink: Sink | None = None
        self.done: asyncio.Future[None] | None = None
        self._drained: asyncio.Future[None] | None = None
        self._parser: httptools.HttpResponseParser | None = None
        self._head: dict[str, str] = {}  # headers of the head being parsed
        self._head_bytes = 0  # bytes received while the final head is incomplete
        self._in_head = False
        self._until_close = False  # the body ends when the connection closes
        self._complete = False
        self._t_ns = 0

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
        if self._parser is not None and not self._complete:
            if self._until_close and exc is None:
                self._end(None)  # a clean close (FIN) ends a body delimited by close
            elif self._until_close:
                self._end(RawHTTPError("closed", f"reset by peer before the end of a body delimited by close: {exc}"))
            else:
                self._end(RawHTTPError("closed", str(exc) if exc else "connection closed mid-response"))
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def resume_writing(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def data_received(self, data: bytes) -> None:
        t_ns = time.perf_counter_ns()  # the arrival stamp of every event in these bytes
        self.last_rx_ns = t_ns
        parser = self._parser
        if parser is None or self._complete:
            # bytes outside a response: the connection's state is unknown, never reuse it
            self.keep_alive = False
            if self.transport is not None:
                self.transport.close()
            return
        self.got_bytes = True
        self._t_ns = t_ns
        try:
            parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:  # the sink raised: a malformed event
            self._fail(exc.__context__ or exc)
            return
        except Exception as exc:  # llhttp refused the bytes (HttpParserError and its kinds)
            self._fail(RawHTTPError("protocol", str(exc) or type(exc).__name__))
            return
        if self._in_head and not self._complete:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._fail(RawHTTPError("protocol", f"response headers larger than {MAX_HEAD_BYTES >> 10} KiB"))

    # -- llhttp callbacks ---------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self._complete:  # a second response after ours: the connection is not in a known state
            self.keep_alive = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        assert self._parser is not None
        status = self._parser.get_status_code()
        if status < 200:  # 1xx: an interim response, another head follows
            self._head = {}
            return
        self._in_head = False
        self.status = status
        self.headers = self._head
        self.t_headers_ns = self._t_ns
        self.keep_alive = self._parser.should_keep_alive()
        framed = "content-length" in self._head or "chunked" in self._head.get("transfer-encoding", "").lower()
        self._until_close = not framed and status not in (204, 304)
        if self._until_close:
            self.keep_alive = False

    def on_body(self, body: bytes) -> None:
        if self.sink is not None:
            self.sink(body, self._t_ns)

    def on_message_complete(self) -> None:
        if self._in_head or self._complete:
            return  # the end of a 1xx, or of a response after ours
        self._complete = True
        self._end(None)

    # -- requests ---------------------------------------------------------------------------------
    def begin(self, sink: Sink) -> asyncio.Future[None]:
        self._parser = httptools.HttpResponseParser(self)
        self._head = {}
        self._head_bytes = 0
        self._in_head = True
        self._until_close = False
        self._complete = False
        self.status = 0
        self.headers = {}
        self.keep_alive = True
        self.got_bytes = False
        self.t_headers_ns = None
        self.sink = sink
        self.done = asyncio.get_running_loop().create_future()
        return self.done

    async def write(self, data: bytes) -> int:
        """Write the request; the perf_counter_ns taken right before the bytes were handed to the kernel
        (nothing awaited in between: a mark taken after the write can follow the server's own start)."""
        assert self.transport is not None
        t_ns = time.perf_counter_ns()
        self.transport.write(data)
        while self.transport.get_write_buffer_size() and not self.closed:  # rare: a big body
            self._drained = asyncio.get_running_loop().create_future()
            await self._drained
        return t_ns

    def _fail(self, exc: BaseException) -> None:
        self._complete = True
        self.keep_alive = False
        self._end(exc)

    def _end(self, exc: BaseException | None) -> None:
        self._complete = True
        fut = self.done
        if fut is not None and not fut.done():
            if exc is None:
                fut.set_result(None)
            else:
                fut.set_exception(exc)


class RawClient:
    """A keep-alive HTTP/1.1 connection pool for streamed requests (``http`` and ``https``)."""

    def __init__(self, max_connections: int | None = 100, connect_timeout_s: float = 10.0) -> None:
        """`max_connections` None: no cap (an open loop: a request never waits for a connection)."""
        self.max_connections = max_connections
        self.connect_timeout_s = connect_timeout_s
        self._idle: dict[tuple[str, str, int], deque[_Conn]] = {}
        self._slots: asyncio.Semaphore | contextlib.nullcontext[None] = (
            asyncio.Semaphore(max_connections) if max_connections is not None else contextlib.nullcontext())
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
        async with self._slots:
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

    @staticmethod
    async def _wait(conn: _Conn, done: asyncio.Future[None], timeout_s: float | None,
                    stall_timeout_s: float | None) -> None:
        """Wait for the response to end; a stall (no byte for stall_timeout_s) raises ``stalled``.

        One timer per wait instead of one per received chunk: each wait lasts until the stall
        deadline counted from the last byte's time (or the request's deadline, if sooner), so a
        stall is reported stall_timeout_s after the last byte, not up to twice that.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        conn.last_rx_ns = time.perf_counter_ns()
        while True:
            wait: float | None = None
            if stall_timeout_s is not None:
                wait = stall_timeout_s - (time.perf_counter_ns() - conn.last_rx_ns) / 1e9
                if wait <= 0:
                    if done.done():
                        done.result()
                        return
                    raise RawHTTPError("stalled", f"no data for {stall_timeout_s:g} s")
            if deadline is not None:
                left = deadline - loop.time()
                if left <= 0:
                    if done.done():
                        done.result()
                        return
                    raise asyncio.TimeoutError
                wait = left if wait is None else min(wait, left)
            try:
                await asyncio.wait_for(asyncio.shield(done), wait)
                return
            except asyncio.TimeoutError:
                if done.done():
                    done.result()
                    return

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

    The contract of `abtest.measure.stream.stream_request` (same record, same errors as data), on `RawClient`.
    """
    path, body = request_body(req)
    payload = encode_body(body)
    tracker = Tracker(req.endpoint)
    status = 0
    error: str | None = None
    sent_at = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
    headers = f"{_HEADERS}X-Request-Id: {request_id(req)}\r\n"
    for attempt in (1, 2):
        err_body: list[bytes] = []
        conns: list[_Conn] = []
        tr = tracker

        def sink(part: bytes, t_ns: int, err_body: list[bytes] = err_body, conns: list[_Conn] = conns,
                 tr: Tracker = tr) -> None:
            if conns[0].status != 200:
                err_body.append(part)  # an error answer's body: kept for the message, not parsed
            else:
                tr.feed(part, t_ns)

        def on_sent(t_ns: int, tr: Tracker = tr) -> None:
            tr.t_send_ns = t_ns

        try:
            conn = await client.request(
                "POST", base_url + path, payload, sink, headers=headers, timeout_s=limits.request_timeout_s,
                stall_timeout_s=limits.stall_timeout_s, connect_timeout_s=limits.connect_timeout_s,
                on_sent=on_sent, on_conn=conns.append)
            status = conn.status
            tracker.t_headers_ns = conn.t_headers_ns
            error = http_status_error(status, b"".join(err_body)) if status != 200 else tracker.end()
            break
        except RawHTTPError as exc:
            got = bool(conns and conns[0].got_bytes) or bool(tracker.chunk_times)
            if exc.kind in ("closed", "connect") and attempt == 1 and not got:
                # A pooled keep-alive connection can be closed under us before the server read a
                # byte of the request (llama-server closes after a streamed response): retry once,
                # only when nothing at all came back, with a fresh timeline -- as abtest.measure.stream does.
                tracker = Tracker(req.endpoint)
                continue
            if exc.kind == "connect":
                error = cannot_connect(base_url, str(exc))
            elif exc.kind == "stalled":
                error = stalled(limits)
            elif exc.kind == "closed":
                error = connection_cut(tracker, str(exc))
            else:
                error = f"HTTP protocol error: {exc}"
        except asyncio.TimeoutError:
            error = timed_out(limits)
        except MalformedEvent as exc:
            error = f"malformed event: {exc}"
        except Exception as exc:  # never raises: anything else is a failed record that names it
            error = f"client error ({type(exc).__name__}: {exc}) — please report it"
        status = conns[0].status if conns else 0
        if conns:
            tracker.t_headers_ns = conns[0].t_headers_ns
        break
    return assemble(req, tracker, status, error, time.perf_counter_ns(), sent_at)


_HEADERS = "Content-Type: application/json\r\nAccept-Encoding: identity\r\n"
