"""The HTTP layer the timed requests go through: the raw asyncio client (default) or httpx."""

from __future__ import annotations

import asyncio
from typing import Any

from ..records import RequestRecord
from . import rawclient
from .protocol import StreamLimits, StreamRequest


class HttpTransport:
    """The HTTP layer the timed requests go through: "raw" (abtest.measure.rawclient, bare asyncio) or
    "httpx" (abtest.measure.stream). Both use abtest.measure.protocol for request bodies, SSE parsing,
    token counting and records;
    raw is the default because it stamps arrivals with less client delay under load
    (docs/performance.md: TTFT error p99 at concurrency 32, 1.95 ms raw vs 17.6 ms httpx)."""

    def __init__(self, kind: str) -> None:
        if kind not in ("raw", "httpx"):
            raise ValueError(f"unknown HTTP client {kind!r}")
        self.kind = kind

    def client(self, n_connections: int | None) -> Any:
        """A connection pool of at most `n_connections` (None: no cap, for an open loop)."""
        if self.kind == "raw":
            return rawclient.RawClient(max_connections=n_connections)
        import httpx  # only for --http-client httpx: the default run never imports it (start-up CPU)

        pool = httpx.Limits(max_connections=n_connections, max_keepalive_connections=n_connections)
        return httpx.AsyncClient(limits=pool, timeout=None)

    async def stream(self, client: Any, base_url: str, req: StreamRequest, limits: StreamLimits) -> RequestRecord:
        if self.kind == "raw":
            return await rawclient.stream_request(client, base_url, req, limits)
        from .stream import stream_request as httpx_stream_request

        return await httpx_stream_request(client, base_url, req, limits)

    async def open_connections(self, client: Any, base_url: str, n: int) -> None:
        """Open n keep-alive connections before timing, so TTFT never includes connection setup."""
        if n <= 1:
            return
        if self.kind == "raw":
            await client.open_connections(base_url + "/health", n)
        else:
            await asyncio.gather(*(client.get(base_url + "/health") for _ in range(n)), return_exceptions=True)
