"""One streamed request -> token events with arrival times -> a `RequestRecord`.

Why the care (each is a trap seen in peers):
- TTFT starts when the request bytes have actually been sent (httpcore's ``trace`` extension
  reports ``http11.send_request_body.complete``), not when the client began building the request:
  the client's own work before that is recorded apart as ``client_overhead_ms``.
- llama-server sends the HTTP 200 headers when prompt processing *starts*, so time-to-headers is
  kept (``headers_ms``) but is not TTFT.
- Tokens are counted from the events themselves: the deltas of ``tokens_predicted`` (/completion)
  or of the cumulative ``timings.predicted_n`` (chat, with ``timings_per_token``), never one per
  chunk — llama-server holds back tokens ending in incomplete UTF-8 and then sends several at
  once, sends empty-content events on partial stop-string matches, and the chat endpoint's
  role-only first chunk carries no token.
- SSE comment lines (``:`` pings after 30 s of silence) are not events.
- The arrival time of an event is when the bytes holding it came off the socket
  (``perf_counter_ns`` right after the read), shared by every event in that read.

A failed request (HTTP error, timeout, stall, malformed event, no ``[DONE]``) is returned as a
record with ``error`` set and whatever was received kept; it never raises.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import httpx

try:  # optional: ~3x faster than json.loads on an SSE event, same dicts (docs/performance.md)
    import orjson

    _loads: Any = orjson.loads
except ImportError:  # pragma: no cover - depends on the environment
    _loads = json.loads

from ..records import RequestRecord, TokenEvent

COMPLETION_PATH = "/completion"
CHAT_PATH = "/v1/chat/completions"


@dataclass(frozen=True)
class StreamRequest:
    """What to send and how to label it."""

    arm: str
    bucket: str
    prompt_id: str
    prompt: str
    run_index: int
    seq: int
    warmup: bool
    endpoint: str = "completion"  # "completion" | "chat"
    concurrency: int = 1
    max_tokens: int = 128
    temperature: float = 0.0
    seed: int = 42
    extra: dict[str, Any] = field(default_factory=dict)  # merged into the JSON body last


@dataclass(frozen=True)
class StreamLimits:
    stall_timeout_s: float = 60.0  # no byte for this long mid-stream -> failed ("stalled")
    request_timeout_s: float = 600.0  # whole request
    connect_timeout_s: float = 10.0


def request_body(req: StreamRequest) -> tuple[str, dict[str, Any]]:
    """The path and JSON body for one request; every knob that could differ between arms pinned."""
    common: dict[str, Any] = {
        "stream": True,
        "temperature": req.temperature,
        "seed": req.seed,
        "ignore_eos": True,  # every arm generates exactly max_tokens
        "cache_prompt": False,  # otherwise repetitions hit the KV cache (timings.cache_n > 0)
    }
    if req.endpoint == "chat":
        body = {
            **common,
            "messages": [{"role": "user", "content": req.prompt}],
            "max_tokens": req.max_tokens,
            "timings_per_token": True,  # cumulative predicted_n on every chunk: our token count
            "stream_options": {"include_usage": True},
        }
        path = CHAT_PATH
    else:
        body = {**common, "prompt": req.prompt, "n_predict": req.max_tokens, "return_tokens": True}
        path = COMPLETION_PATH
    body.update(req.extra)
    return path, body


class _Tracker:
    """Collects the timeline of one request as bytes arrive."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.t_begin_ns = time.perf_counter_ns()
        self.t_send_ns: int | None = None
        self.t_headers_ns: int | None = None
        self.chunk_times: list[int] = []  # absolute
        self.events: list[tuple[int, int]] = []  # absolute t_ns, n_tokens
        self.token_ids: list[int] = []
        self.text_parts: list[str] = []
        self.predicted = 0  # cumulative tokens seen so far (server's own counter)
        self.timings: dict[str, Any] = {}
        self.usage: dict[str, Any] = {}
        self.prompt_tokens: int | None = None
        self.done = False
        self.server_error: str | None = None

    async def trace(self, event_name: str, info: dict[str, Any]) -> None:
        if event_name == "http11.send_request_body.complete":
            self.t_send_ns = time.perf_counter_ns()
        elif event_name == "http11.receive_response_headers.complete":
            self.t_headers_ns = time.perf_counter_ns()

    def on_data(self, payload: bytes, t_ns: int) -> None:
        if payload.strip() == b"[DONE]":
            self.done = True
            return
        obj = _loads(payload)
        if not isinstance(obj, dict):
            raise ValueError("event is not a JSON object")
        if "error" in obj:
            err = obj["error"]
            self.server_error = err.get("message", str(err)) if isinstance(err, dict) else str(err)
            return
        self.chunk_times.append(t_ns)
        if self.endpoint == "chat":
            self._on_chat(obj, t_ns)
        else:
            self._on_completion(obj, t_ns)

    def _advance(self, cumulative: int | None, t_ns: int) -> int:
        if cumulative is None or cumulative <= self.predicted:
            return 0
        delta = cumulative - self.predicted
        self.predicted = cumulative
        self.events.append((t_ns, delta))
        return delta

    def _on_completion(self, obj: dict[str, Any], t_ns: int) -> None:
        delta = self._advance(obj.get("tokens_predicted"), t_ns)
        if delta:
            self.token_ids.extend(obj.get("tokens") or [])
        content = obj.get("content")
        if content:
            self.text_parts.append(content)
        if isinstance(obj.get("timings"), dict):
            self.timings = obj["timings"]
        if obj.get("tokens_evaluated") is not None:
            self.prompt_tokens = obj["tokens_evaluated"]
        if obj.get("stop") is True:
            # /completion ends with a stop event and then closes; it sends no [DONE].
            self.done = True

    def _on_chat(self, obj: dict[str, Any], t_ns: int) -> None:
        timings = obj.get("timings")
        if isinstance(timings, dict):
            self.timings = timings
            self._advance(timings.get("predicted_n"), t_ns)
        if isinstance(obj.get("usage"), dict):
            self.usage = obj["usage"]
            self.prompt_tokens = self.usage.get("prompt_tokens", self.prompt_tokens)
        for choice in obj.get("choices") or []:
            delta = choice.get("delta") or {}
            for key in ("content", "reasoning_content"):
                if delta.get(key):
                    self.text_parts.append(delta[key])


def _feed_sse(buffer: bytearray, tracker: _Tracker, t_ns: int) -> None:
    """Consume complete lines from `buffer`; keep a trailing partial line for the next read."""
    while True:
        nl = buffer.find(b"\n")
        if nl < 0:
            return
        line = bytes(buffer[:nl]).rstrip(b"\r")
        del buffer[: nl + 1]
        if not line or line.startswith(b":"):
            continue  # event separator or SSE comment (ping)
        if line.startswith(b"data:"):
            tracker.on_data(line[5:].lstrip(), t_ns)
        elif line.startswith(b"error:"):
            tracker.server_error = line[6:].strip().decode("utf-8", "replace")
        # other SSE fields (event:, id:, retry:) carry nothing we use


def _end_of_stream(buffer: bytearray, tracker: _Tracker) -> str | None:
    """Parse a last line the server sent without a newline; the request's error, if the stream
    ended badly (an error event, or no end event: [DONE] on chat, stop on /completion)."""
    if buffer.strip():
        buffer.extend(b"\n")
        _feed_sse(buffer, tracker, time.perf_counter_ns())
    if tracker.server_error:
        return f"server error in stream: {tracker.server_error}"
    if not tracker.done:
        return "stream closed before the end event ([DONE] or stop) — server died or cut the stream"
    return None


async def stream_request(
    client: httpx.AsyncClient, base_url: str, req: StreamRequest, limits: StreamLimits = StreamLimits()
) -> RequestRecord:
    """Send one streamed request and time every token-carrying event; never raises on failure."""
    path, body = request_body(req)
    tracker = _Tracker(req.endpoint)
    status = 0
    error: str | None = None
    sent_at = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
    timeout = httpx.Timeout(
        connect=limits.connect_timeout_s, read=limits.stall_timeout_s, write=limits.stall_timeout_s, pool=None
    )
    async def exchange() -> None:
        nonlocal status, error
        async with client.stream(
            "POST", base_url + path, json=body, timeout=timeout, extensions={"trace": tracker.trace}
        ) as response:
            status = response.status_code
            if status != 200:
                raw = await response.aread()
                error = f"HTTP {status}: {raw[:300].decode('utf-8', 'replace').strip()}"
                return
            buffer = bytearray()
            async for chunk in response.aiter_raw():
                t_ns = time.perf_counter_ns()
                buffer.extend(chunk)
                _feed_sse(buffer, tracker, t_ns)
            error = _end_of_stream(buffer, tracker)

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
                tracker = _Tracker(req.endpoint)
    except asyncio.TimeoutError:
        error = f"request timed out after {limits.request_timeout_s:g} s (--request-timeout)"
    except httpx.ReadTimeout:
        error = f"stream stalled: no data for {limits.stall_timeout_s:g} s (--stall-timeout)"
    except httpx.ConnectError as exc:
        error = f"cannot connect to {base_url} ({exc or 'refused'}) — is the server still running? see its log"
    except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
        error = (
            f"connection closed after {tracker.predicted} tokens ({type(exc).__name__}: {exc or 'reset by peer'}) "
            "— the server died or cut the stream; see its log"
        )
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc or 'connection failed'}"
    except (ValueError, UnicodeDecodeError) as exc:
        error = f"malformed event: {exc}"
    t_end_ns = time.perf_counter_ns()
    return _record(req, tracker, status, error, t_end_ns, sent_at)


def _record(req: StreamRequest, tr: _Tracker, status: int, error: str | None, t_end_ns: int, sent_at: str) -> RequestRecord:
    t_send = tr.t_send_ns if tr.t_send_ns is not None else tr.t_begin_ns
    events = [TokenEvent(t - t_send, n) for t, n in tr.events]
    completion_tokens = sum(e.n_tokens for e in events)
    ttft_ms = events[0].t_ns / 1e6 if events else None
    e2e_ms = (t_end_ns - t_send) / 1e6 if error is None else None
    predicted_n = tr.timings.get("predicted_n") if tr.timings else None
    if predicted_n is None and tr.usage:
        predicted_n = tr.usage.get("completion_tokens")
    token_ids = tr.token_ids if (req.endpoint == "completion" and len(tr.token_ids) == completion_tokens) else None
    return RequestRecord(
        arm=req.arm,
        bucket=req.bucket,
        prompt_id=req.prompt_id,
        run_index=req.run_index,
        seq=req.seq,
        warmup=req.warmup,
        endpoint=req.endpoint,
        concurrency=req.concurrency,
        t_send_ns=t_send,
        client_overhead_ms=(t_send - tr.t_begin_ns) / 1e6,
        status=status,
        error=error,
        ttft_ms=ttft_ms,
        e2e_ms=e2e_ms,
        prompt_tokens=tr.timings.get("prompt_n", tr.prompt_tokens) if tr.timings else tr.prompt_tokens,
        completion_tokens=completion_tokens,
        server_predicted_n=predicted_n,
        events=events,
        chunk_times_ns=[t - t_send for t in tr.chunk_times],
        token_ids=token_ids,
        text="".join(tr.text_parts),
        timings=tr.timings,
        cache_n=tr.timings.get("cache_n") if tr.timings else None,
        headers_ms=(tr.t_headers_ns - t_send) / 1e6 if tr.t_headers_ns is not None else None,
        sent_at=sent_at,
    )


async def fetch_token_ids(client: httpx.AsyncClient, base_url: str, req: StreamRequest, timeout_s: float = 600.0) -> list[int] | None:
    """One extra non-streamed /completion with return_tokens, for when streamed ids were incomplete."""
    path, body = request_body(req)
    if path != COMPLETION_PATH:
        return None
    body = {**body, "stream": False, "return_tokens": True}
    try:
        resp = await client.post(base_url + path, json=body, timeout=timeout_s)
        resp.raise_for_status()
        tokens = resp.json().get("tokens")
        return [int(t) for t in tokens] if isinstance(tokens, list) else None
    except (httpx.HTTPError, ValueError):
        return None
