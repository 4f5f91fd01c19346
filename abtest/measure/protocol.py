"""The wire protocol of one streamed request, shared by both transports: the request body, SSE
parsing, token counting and the record.

A transport (`abtest.measure.rawclient`, `abtest.measure.stream`) only moves bytes: it builds the
body with `request_body` / `encode_body`, marks "sent" and "headers" on a `Tracker`, hands it every
body read with the read's arrival stamp (`Tracker.feed`), asks `Tracker.end` how the stream ended,
and turns the tracker into a `RequestRecord` with `assemble`. Everything that defines a measurement
is here, once.

Why the care (each is a trap seen in peers):
- Tokens are counted from the server's own cumulative counter on each event: ``tokens_predicted``
  (/completion) or ``timings.predicted_n`` (chat, with ``timings_per_token``), never one per chunk
  -- llama-server holds back tokens ending in incomplete UTF-8 and then sends several at once,
  sends empty-content events on partial stop-string matches, and the chat endpoint's role-only
  first chunk carries no token.
- A server that sends text without a counter on the event (any OpenAI-compatible server that is
  not llama-server, or llama-server without ``timings_per_token``) is counted one token per
  content chunk, and that count is only trusted when the server's total (``usage`` or its last
  counter) confirms it; otherwise the record fails with the reason (docs/metrics.md, "Token
  counting"). TTFT is the first content chunk either way, never the first counted one.
- SSE comment lines (``:`` pings after 30 s of silence) are not events.
- Every field read from the server is type-checked: a wrong JSON type anywhere in an event is a
  `MalformedEvent` (a failed record naming the field), never a TypeError out of the run.
- The arrival time of an event is the stamp of the read that completed its line, shared by every
  event in that read.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

try:  # optional: ~3x faster than json.loads on an SSE event, same dicts (docs/performance.md)
    import orjson

    loads: Any = orjson.loads
except ImportError:  # pragma: no cover - depends on the environment
    loads = json.loads

from ..records import RequestRecord, TokenEvent

__all__ = [
    "CHAT_PATH", "COMPLETION_PATH", "MAX_LINE_BYTES", "MalformedEvent", "StreamLimits", "StreamRequest", "Tracker",
    "assemble", "cannot_connect", "connection_cut", "encode_body", "http_status_error", "implausible",
    "request_body", "stalled", "timed_out",
]

COMPLETION_PATH = "/completion"
CHAT_PATH = "/v1/chat/completions"
MAX_LINE_BYTES = 16 << 20  # an SSE line longer than this is malformed (no server event comes near)


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
    block: int = 0  # the arm's server session (RequestRecord.block)
    t_scheduled_ns: int | None = None  # open loop: perf_counter_ns at which it is due
    load: dict[str, Any] = field(default_factory=dict)  # the load applied (RequestRecord.load)


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


def request_id(req: StreamRequest) -> str:
    """The `X-Request-Id` header of a request: `abtest-<arm>-b<block>-s<seq>`, unique in a run, so
    a server's log (llama-server's, the scripted server's) can be matched with the evidence.
    Arm names are letters, digits, '_', '.' and '-' (config), so the value is a plain token."""
    return f"abtest-{req.arm}-b{req.block}-s{req.seq}"


def encode_body(body: dict[str, Any]) -> bytes:
    """The request's bytes: both transports send exactly these."""
    return json.dumps(body, separators=(",", ":")).encode()


class MalformedEvent(ValueError):
    """An event the protocol cannot read (bad JSON, a field of the wrong type, an endless line)."""


# -- typed reads -----------------------------------------------------------------------------------


def _what(v: object) -> str:
    return f"{json.dumps(v)[:40]} ({type(v).__name__})" if isinstance(v, (str, int, float)) else type(v).__name__


def _bad(key: str, v: object, expected: str) -> MalformedEvent:
    return MalformedEvent(f'"{key}" is {_what(v)}, expected {expected}')


def _int(obj: dict[str, Any], key: str) -> int | None:
    v = obj.get(key)
    if v is None:
        return None
    if type(v) is not int or v < 0:  # bool is an int subclass: refused too
        raise _bad(key, v, "a non-negative integer")
    return v


def _num(obj: dict[str, Any], key: str) -> float | None:
    v = obj.get(key)
    if v is None:
        return None
    if type(v) not in (int, float) or not math.isfinite(v):
        raise _bad(key, v, "a number")
    return float(v)


def _str(obj: dict[str, Any], key: str) -> str | None:
    v = obj.get(key)
    if v is None or type(v) is str:
        return v
    raise _bad(key, v, "a string")


def _dict(obj: dict[str, Any], key: str) -> dict[str, Any] | None:
    v = obj.get(key)
    if v is None or type(v) is dict:
        return v
    raise _bad(key, v, "an object")


_TIMING_INTS = ("prompt_n", "predicted_n", "cache_n")
_TIMING_NUMS = ("prompt_ms", "predicted_ms", "predicted_per_second", "prompt_per_second",
                "prompt_per_token_ms", "predicted_per_token_ms")


def _timings(obj: dict[str, Any]) -> dict[str, Any] | None:
    t = _dict(obj, "timings")
    if t is not None:
        for k in _TIMING_INTS:
            _int(t, k)
        for k in _TIMING_NUMS:
            _num(t, k)
    return t


# -- the tracker -----------------------------------------------------------------------------------


class Tracker:
    """The timeline of one request as its bytes arrive: send and header marks, every event's
    arrival, the tokens each carried, the text and the server's own counters."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.t_begin_ns = time.perf_counter_ns()
        self.t_send_ns: int | None = None
        self.t_headers_ns: int | None = None
        self.chunk_times: list[int] = []  # absolute arrival of every data event
        self.counted: list[tuple[int, int]] = []  # (absolute t_ns, tokens) from the server's counter
        self.content_times: list[int] = []  # absolute arrival of every event that carried text
        self.uncounted = 0  # events that carried text but no counter
        self.counter = 0  # the server's cumulative token count so far
        self.usage_completion: int | None = None
        self.token_ids: list[int] = []
        self.text_parts: list[str] = []
        self.timings: dict[str, Any] = {}
        self.prompt_tokens: int | None = None
        self.done = False
        self.server_error: str | None = None
        self._buf = bytearray()

    @property
    def n_tokens(self) -> int:
        """Tokens counted so far (for error messages)."""
        return self.counter if not self.uncounted else len(self.content_times)

    # -- bytes -----------------------------------------------------------------------------------
    def feed(self, data: bytes, t_ns: int) -> None:
        """Body bytes of one read, stamped ``t_ns``; keeps a trailing partial line for the next."""
        buf = self._buf
        if buf:
            buf += data
            if b"\n" not in data:  # still no complete line: wait (and never re-scan a long line)
                if len(buf) > MAX_LINE_BYTES:
                    raise MalformedEvent(f"an SSE line longer than {MAX_LINE_BYTES >> 20} MiB")
                return
            data = bytes(buf)
            buf.clear()
        lines = data.split(b"\n")
        tail = lines.pop()  # the partial last line: b"" when the read ended at a newline
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line or line[0] == 0x3A:  # b":": event separator or SSE comment (ping)
                continue
            if line.startswith(b"data:"):
                self._on_data(line[5:], t_ns)
            elif line.startswith(b"error:"):
                self.server_error = line[6:].strip().decode("utf-8", "replace")
            # other SSE fields (event:, id:, retry:) carry nothing we use
        if tail:
            buf += tail
            if len(buf) > MAX_LINE_BYTES:
                raise MalformedEvent(f"an SSE line longer than {MAX_LINE_BYTES >> 20} MiB")

    def end(self) -> str | None:
        """The stream is over: parse a last line sent without a newline; the request's error, if
        the stream ended badly (an error event, or no end event: [DONE] on chat, stop on /completion)."""
        if self._buf.strip():
            self.feed(b"\n", time.perf_counter_ns())
        if self.server_error:
            return f"server error in stream: {self.server_error}"
        if not self.done:
            return "stream closed before the end event ([DONE] or stop) — server died or cut the stream"
        return None

    # -- events ----------------------------------------------------------------------------------
    def _on_data(self, payload: bytes, t_ns: int) -> None:
        if payload.endswith(b"[DONE]") and payload.strip() == b"[DONE]":
            self.done = True
            return
        try:
            obj = loads(payload)
            if type(obj) is not dict:
                raise MalformedEvent(f"event is {type(obj).__name__}, not a JSON object")
            if "error" in obj:
                err = obj["error"]
                msg = err.get("message") if isinstance(err, dict) else err
                self.server_error = msg if isinstance(msg, str) else json.dumps(err)[:300]
                return
            self.chunk_times.append(t_ns)
            if self.endpoint == "chat":
                self._on_chat(obj, t_ns)
            else:
                self._on_completion(obj, t_ns)
        except MalformedEvent:
            raise
        except (ValueError, TypeError, RecursionError) as exc:  # bad JSON, bad UTF-8, nesting too deep
            raise MalformedEvent(f"{type(exc).__name__}: {exc}") from None

    def _advance(self, cumulative: int, t_ns: int) -> int:
        if cumulative <= self.counter:
            return 0
        delta = cumulative - self.counter
        self.counter = cumulative
        self.counted.append((t_ns, delta))
        return delta

    def _text(self, text: str | None, t_ns: int, counted: bool) -> None:
        if text:
            self.text_parts.append(text)
            self.content_times.append(t_ns)
            if not counted:
                self.uncounted += 1

    def _on_completion(self, obj: dict[str, Any], t_ns: int) -> None:
        # The hot path (one call per event): the type checks are inline, the helpers only name the field.
        get = obj.get
        predicted = get("tokens_predicted")
        if predicted is not None and (type(predicted) is not int or predicted < 0):
            raise _bad("tokens_predicted", predicted, "a non-negative integer")
        tokens = get("tokens")
        if tokens is not None and (type(tokens) is not list or not all(type(t) is int for t in tokens)):
            raise _bad("tokens", tokens, "a list of integers")
        content = get("content")
        if content is not None and type(content) is not str:
            raise _bad("content", content, "a string")
        stop = get("stop")
        if stop is not None and type(stop) is not bool:
            raise _bad("stop", stop, "true or false")
        if predicted is not None and predicted > self.counter:
            self.counted.append((t_ns, predicted - self.counter))
            self.counter = predicted
            if tokens:
                self.token_ids.extend(tokens)
        if content:
            self.text_parts.append(content)
            self.content_times.append(t_ns)
            if predicted is None:
                self.uncounted += 1
        if "timings" in obj:
            timings = _timings(obj)
            if timings is not None:
                self.timings = timings
        if "tokens_evaluated" in obj:
            evaluated = _int(obj, "tokens_evaluated")
            if evaluated is not None:
                self.prompt_tokens = evaluated
        if stop:
            # /completion ends with a stop event and then closes; it sends no [DONE].
            self.done = True

    def _on_chat(self, obj: dict[str, Any], t_ns: int) -> None:
        timings = _timings(obj)
        usage = _dict(obj, "usage")
        usage_completion = usage_prompt = None
        if usage is not None:
            usage_completion = _int(usage, "completion_tokens")
            usage_prompt = _int(usage, "prompt_tokens")
        choices = obj.get("choices")
        if choices is None:
            choices = []
        if type(choices) is not list or any(type(c) is not dict for c in choices):
            raise _bad("choices", choices, "a list of objects")
        texts: list[str] = []
        for choice in choices:
            delta = _dict(choice, "delta") or {}
            for key in ("content", "reasoning_content"):
                text = _str(delta, key)
                if text:
                    texts.append(text)
        # The server's cumulative counter on this chunk: timings (llama-server, timings_per_token), or
        # usage on a chunk that carries text (servers that stream usage on every chunk).
        counter = timings.get("predicted_n") if timings is not None else None
        if counter is None and texts:
            counter = usage_completion
        if counter is not None:
            self._advance(counter, t_ns)
        self._text("".join(texts), t_ns, counter is not None)
        if timings is not None:
            self.timings = timings
        if usage_completion is not None:
            self.usage_completion = usage_completion
        if usage_prompt is not None:
            self.prompt_tokens = usage_prompt


# -- the record ------------------------------------------------------------------------------------


def _token_events(tr: Tracker) -> tuple[list[tuple[int, int]], str | None]:
    """(events, why the count cannot be trusted, or None). Counted events when every event that
    carried text carried the server's counter; else one token per text event, checked against the
    server's total."""
    if not tr.uncounted:
        return tr.counted, None
    events = [(t, 1) for t in tr.content_times]
    total = tr.usage_completion if tr.usage_completion is not None else (tr.counter or None)
    if total is None:
        return events, (f"token count unknown: {tr.uncounted} event(s) carried text but no token count, and the "
                        "stream had no usage — the server sends neither timings_per_token nor usage; "
                        "TTFT and decode rate cannot be measured from it")
    if total != len(events):
        return events, (f"token count per event unknown: {len(events)} text event(s), but the server counted "
                        f"{total} tokens and sent no per-event count (timings_per_token) — decode times "
                        "cannot be attributed")
    return events, None


def assemble(req: StreamRequest, tr: Tracker, status: int, error: str | None, t_end_ns: int,
             sent_at: str) -> RequestRecord:
    """The record of one request, from what its tracker saw; ``error`` as the transport found it."""
    t_send = tr.t_send_ns if tr.t_send_ns is not None else tr.t_begin_ns
    raw_events, count_error = _token_events(tr)
    if error is None and status == 200:
        error = count_error
    events = [TokenEvent(t - t_send, n) for t, n in raw_events]
    completion_tokens = sum(e.n_tokens for e in events)
    timings = tr.timings
    predicted_n = timings.get("predicted_n") if timings else None
    if predicted_n is None:
        predicted_n = tr.usage_completion
    prompt_n = timings.get("prompt_n") if timings else None
    token_ids = tr.token_ids if (req.endpoint == "completion" and len(tr.token_ids) == completion_tokens) else None
    rec = RequestRecord(
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
        ttft_ms=events[0].t_ns / 1e6 if events else None,
        e2e_ms=(t_end_ns - t_send) / 1e6 if error is None else None,
        prompt_tokens=prompt_n if prompt_n is not None else tr.prompt_tokens,
        completion_tokens=completion_tokens,
        server_predicted_n=predicted_n,
        events=events,
        chunk_times_ns=[t - t_send for t in tr.chunk_times],
        token_ids=token_ids,
        text="".join(tr.text_parts),
        timings=timings,
        cache_n=timings.get("cache_n") if timings else None,
        headers_ms=(tr.t_headers_ns - t_send) / 1e6 if tr.t_headers_ns is not None else None,
        sent_at=sent_at,
        block=req.block,
        t_scheduled_ns=req.t_scheduled_ns,
        load=req.load,
    )
    suspect = implausible(rec) if rec.ok else []
    return dataclasses.replace(rec, suspect=suspect) if suspect else rec


def implausible(rec: RequestRecord) -> list[str]:
    """What a record claims that cannot be true, each as a sentence (empty: nothing).

    - a client TTFT below the server's own prompt time (``timings.prompt_ms``): the server cannot
      have finished the prompt before it received the request, so the send mark was taken late;
    - every token arriving in one read: the client was not reading while the tokens were produced,
      so TTFT and the decode times are the client's delay, not the server's.
    """
    out = []
    prompt_ms = rec.timings.get("prompt_ms") if rec.timings else None
    if (rec.ttft_ms is not None and isinstance(prompt_ms, (int, float)) and not isinstance(prompt_ms, bool)
            and rec.ttft_ms < prompt_ms):
        out.append(f"TTFT {rec.ttft_ms:.3f} ms is below the server's own prompt time {prompt_ms:.3f} ms "
                   "(the send mark was taken late)")
    if rec.completion_tokens > 1 and rec.events and rec.events[0].t_ns == rec.events[-1].t_ns:
        out.append(f"all {rec.completion_tokens} tokens arrived in one read (the client was stalled: "
                   "TTFT and decode times are its delay)")
    return out


# -- errors as data: the words both transports use ---------------------------------------------------


def http_status_error(status: int, body: bytes) -> str:
    return f"HTTP {status}: {body[:300].decode('utf-8', 'replace').strip()}"


def stalled(limits: StreamLimits) -> str:
    return f"stream stalled: no data for {limits.stall_timeout_s:g} s (--stall-timeout)"


def timed_out(limits: StreamLimits) -> str:
    return f"request timed out after {limits.request_timeout_s:g} s (--request-timeout)"


def cannot_connect(base_url: str, detail: str) -> str:
    return f"cannot connect to {base_url} ({detail or 'refused'}) — is the server still running? see its log"


def connection_cut(tr: Tracker, detail: str) -> str:
    return (f"connection closed after {tr.n_tokens} tokens ({detail or 'reset by peer'}) "
            "— the server died or cut the stream; see its log")
