"""The stream client on httpx: one streamed request -> a `RequestRecord` (the protocol is `abtest.measure.protocol`).

The transport `abtest.measure.rawclient` replaces for timed requests by default (docs/performance.md);
kept for ``--http-client httpx``. What it adds to the protocol:
- "sent" is httpcore's ``http11.send_request_body.started`` trace event: taken just before the
  body's write, never after awaiting it (``.complete`` comes after anyio has yielded to the loop,
  so on a busy box it can be later than the server's own start: a TTFT below the server's prompt
  time). The client's work before that is recorded apart as ``client_overhead_ms``.
- llama-server sends the HTTP 200 headers when prompt processing *starts*, so time-to-headers is
  kept (``headers_ms``) but is not TTFT.
- The arrival time of a read is ``perf_counter_ns`` right after httpx hands it over.

A failed request (HTTP error, timeout, stall, malformed event, no end event) is returned as a
record with ``error`` set and whatever was received kept; it never raises.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone
from typing import Any

import httpx

from ..records import RequestRecord
from .protocol import (
    CHAT_PATH,
    COMPLETION_PATH,
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

__all__ = ["CHAT_PATH", "COMPLETION_PATH", "StreamLimits", "StreamRequest", "stream_request"]

_DEFAULT_LIMITS = StreamLimits()
_JSON_HEADERS = {"Content-Type": "application/json", "Accept-Encoding": "identity"}


def _tracing(tracker: Tracker) -> Any:
    async def trace(event_name: str, info: dict[str, Any]) -> None:
        if event_name == "http11.send_request_body.started":
            tracker.t_send_ns = time.perf_counter_ns()
        elif event_name == "http11.receive_response_headers.complete":
            tracker.t_headers_ns = time.perf_counter_ns()

    return trace


async def stream_request(
    client: httpx.AsyncClient, base_url: str, req: StreamRequest, limits: StreamLimits = _DEFAULT_LIMITS
) -> RequestRecord:
    """Send one streamed request and time every token-carrying event; never raises on failure."""
    path, body = request_body(req)
    payload = encode_body(body)
    tracker = Tracker(req.endpoint)
    status = 0
    error: str | None = None
    sent_at = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
    timeout = httpx.Timeout(
        connect=limits.connect_timeout_s, read=limits.stall_timeout_s, write=limits.stall_timeout_s, pool=None
    )

    async def exchange() -> None:
        nonlocal status, error
        async with client.stream(
            "POST", base_url + path, content=payload, headers={**_JSON_HEADERS, "X-Request-Id": request_id(req)},
            timeout=timeout,
            extensions={"trace": _tracing(tracker)},
        ) as response:
            status = response.status_code
            if status != 200:
                error = http_status_error(status, await response.aread())
                return
            async for chunk in response.aiter_raw():
                tracker.feed(chunk, time.perf_counter_ns())
            error = tracker.end()

    try:
        for attempt in (1, 2):
            try:
                await asyncio.wait_for(exchange(), limits.request_timeout_s)
                break
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.ConnectError):
                # llama-server closes the connection after a streamed response; a pooled connection
                # can be closed (or reset) under us before the server read a byte of the request. Retry once,
                # only when nothing at all came back (no status, no event), with a fresh timeline.
                if attempt == 2 or status != 0 or tracker.chunk_times:
                    raise
                tracker = Tracker(req.endpoint)
    except asyncio.TimeoutError:
        error = timed_out(limits)
    except httpx.ReadTimeout:
        error = stalled(limits)
    except httpx.ConnectError as exc:
        error = cannot_connect(base_url, str(exc))
    except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
        error = connection_cut(tracker, f"{type(exc).__name__}: {exc or 'reset by peer'}")
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc or 'connection failed'}"
    except MalformedEvent as exc:
        error = f"malformed event: {exc}"
    except Exception as exc:  # never raises: anything else is a failed record that names it
        error = f"client error ({type(exc).__name__}: {exc}) — please report it"
    return assemble(req, tracker, status, error, time.perf_counter_ns(), sent_at)
