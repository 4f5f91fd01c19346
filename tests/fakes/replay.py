"""A loopback HTTP server that answers every request with crafted bytes (framing tests, stdlib only).

It runs in the test's own event loop (``async with replay(reply) as srv``), reads one HTTP/1.1
request at a time (head and ``Content-Length`` body), and answers with ``Reply.parts`` written one
after the other (``gap_s`` apart, so that each arrives in a read of its own), then ends the
connection as ``Reply.then`` says: ``"close"`` (FIN), ``"reset"`` (RST), ``"hold"`` (send nothing
more and keep the socket open until the client hangs up) or ``"keep"`` (wait for the next request).

``srv.last_write_ns`` is ``time.perf_counter_ns()`` right after the last part was handed to the
kernel (the clock abtest's client stamps with); ``srv.requests`` holds every request's raw bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

__all__ = ["Reply", "ReplayServer", "chunked", "replay", "sse"]


@dataclass(frozen=True)
class Reply:
    parts: tuple[bytes, ...]
    gap_s: float = 0.0
    then: str = "close"  # "close" | "reset" | "hold" | "keep"


def sse(*payloads: bytes | str) -> list[bytes]:
    """``data: {payload}\\n\\n`` for each payload."""
    return [b"data: " + (p.encode() if isinstance(p, str) else p) + b"\n\n" for p in payloads]


def chunked(events: list[bytes], head: bytes | None = None) -> tuple[bytes, ...]:
    """A chunked 200 text/event-stream response, one chunk per event, as llama-server sends it."""
    head = head or (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
                    b"Keep-Alive: timeout=5, max=100\r\n\r\n")
    return (head, *(f"{len(e):x}\r\n".encode() + e + b"\r\n" for e in events), b"0\r\n\r\n")


class ReplayServer:
    def __init__(self, reply: Reply | Callable[[int], Reply]) -> None:
        self._reply = reply if callable(reply) else (lambda _i, r=reply: r)
        self.requests: list[bytes] = []
        self.last_write_ns = 0
        self.port = 0
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> ReplayServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(BaseException):
                await t

    async def _read_request(self, reader: asyncio.StreamReader) -> bytes | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            return None
        length = 0
        for line in head.split(b"\r\n"):
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                length = int(v.strip() or 0)
        try:
            return head + await reader.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        sock = writer.get_extra_info("socket")
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                request = await self._read_request(reader)
                if request is None:
                    return
                index = len(self.requests)
                self.requests.append(request)
                reply = self._reply(index)
                for i, part in enumerate(reply.parts):
                    if i and reply.gap_s:
                        await asyncio.sleep(reply.gap_s)
                    writer.write(part)
                    self.last_write_ns = time.perf_counter_ns()
                    await writer.drain()
                if reply.then == "keep":
                    continue
                if reply.then == "hold":
                    with contextlib.suppress(ConnectionError):
                        await reader.read()  # until the client hangs up
                elif reply.then == "reset":
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    writer.transport.abort()
                    return
                break
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._tasks.discard(task)
            with contextlib.suppress(Exception):
                writer.close()


@contextlib.asynccontextmanager
async def replay(reply: Reply | Callable[[int], Reply]) -> AsyncIterator[ReplayServer]:
    srv = await ReplayServer(reply).start()
    try:
        yield srv
    finally:
        await srv.stop()
