"""Per-request metric definitions, written once (docs/metrics.md) and used by run, report and tests.

All inputs are the raw samples of a `RequestRecord`: token events ``(t_ns, n_tokens)`` relative to
the moment the request bytes were sent, and the end-of-stream time. None means "not defined for
this request" (failed, too few tokens, or a decode window the client's clock cannot time:
`decode_unmeasurable` says which).

Both HTTP layers stamp a *read* (the bytes one ``data_received`` / one httpx chunk handed over),
not an event: events that came in the same read share one ``t_ns``. A read is therefore the unit
of timing here (`token_reads`); the time between events of one read is not known.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..records import RequestRecord

# When a decode rate can be measured (docs/metrics.md, "When the decode rate is not measurable").
# The bound the rate must meet, worst case, from timing alone: what the report calls a noisy decode
# rate between repeats of one prompt (findings.HIGH_CV["decode_tps"]). Stated here, not imported:
# findings imports this module.
DECODE_TIMING_TOLERANCE = 0.10
# How late a client arrival stamp can be, p99: docs/performance.md measures the raw client at
# 0.22 ms (concurrency 1) and 0.23 ms (32) on a quiet box; rounded up.
STAMP_LAG_P99_MS = 0.25
# A window the stamp lag moves by more than the tolerance: 0.25 ms / 0.10 = 2.5 ms.
MIN_DECODE_WINDOW_MS = STAMP_LAG_P99_MS / DECODE_TIMING_TOLERANCE
# The first read's stamp lies before the next token event was delivered (else that event would
# have been in the read), so the window can be short by up to that event's tokens' decode steps:
# the rate is at most N / (N - n_next) too high. N >= n_next * (1 + 1/tolerance) keeps that within
# the tolerance: 11 tokens after the first read when the next event carries one.
TOKENS_PER_NEXT_EVENT = 1 + 1 / DECODE_TIMING_TOLERANCE

# Why a request has no decode rate, ITL or TPOT (`decode_unmeasurable`); stable phrases, counted
# by the report's DECODE_UNMEASURABLE warning and shown by the live display.
FAILED = "request failed"
FEW_TOKENS = "fewer than 2 tokens"
ONE_EVENT = "all tokens in one event"
ONE_READ = "all tokens in one read"
FEW_AFTER_FIRST = "too few tokens after the first read"
SHORT_WINDOW = f"decode window under {MIN_DECODE_WINDOW_MS:g} ms"
OUT_OF_ORDER = "token events out of time order"  # not from abtest's client: a hand-edited or corrupt file


def ttft_ms(r: RequestRecord) -> float | None:
    """Time to first token: request sent -> arrival of the first event carrying a token."""
    return r.events[0].t_ns / 1e6 if r.events else None


def e2e_ms(r: RequestRecord) -> float | None:
    """End to end: request sent -> end of the stream (what a user waits for; after the last token:
    the final event, and on chat the finish and usage chunks and [DONE])."""
    return r.e2e_ms


def last_token_ms(r: RequestRecord) -> float | None:
    """Request sent -> arrival of the last event carrying a token (vLLM bench's ``latency``)."""
    return r.events[-1].t_ns / 1e6 if r.events else None


def token_reads(r: RequestRecord) -> list[tuple[int, int]]:
    """The token events merged per read: ``[(t_ns, tokens), ...]``, one entry per distinct arrival
    stamp, in order. Events of one read share the stamp and carry no timing between them."""
    out: list[tuple[int, int]] = []
    for e in r.events:
        if out and out[-1][0] == e.t_ns:
            out[-1] = (e.t_ns, out[-1][1] + e.n_tokens)
        else:
            out.append((e.t_ns, e.n_tokens))
    return out


def decode_window_ms(r: RequestRecord) -> float | None:
    """First token read -> last token read (the span the decode rate divides by); None with fewer
    than two reads."""
    reads = token_reads(r)
    if len(reads) < 2:
        return None
    return (reads[-1][0] - reads[0][0]) / 1e6


def decode_unmeasurable(r: RequestRecord) -> str | None:
    """Why this request has no decode rate (nor ITL, nor TPOT), or None when it has one.

    In order: the request failed; fewer than 2 tokens; every token in one event, or in one read;
    event times that go backwards (a corrupt file); too few tokens after the first read for the window's start to be known within the tolerance
    (N tokens after the first read, the next event carrying n: needs N >= n * TOKENS_PER_NEXT_EVENT);
    a window shorter than MIN_DECODE_WINDOW_MS, which the client's stamp lag alone could move by
    more than the tolerance (tokens delivered in a burst: the rate would be the client's read
    speed, not the server's).
    """
    if not r.ok:
        return FAILED
    if r.completion_tokens < 2:
        return FEW_TOKENS
    if len(r.events) == 1:
        return ONE_EVENT
    reads = token_reads(r)
    if len(reads) == 1:
        return ONE_READ
    if any(b[0] < a[0] for a, b in zip(reads, reads[1:], strict=False)):
        return OUT_OF_ORDER
    after = r.completion_tokens - reads[0][1]
    in_first_read = next(i for i, e in enumerate(r.events) if e.t_ns != reads[0][0])
    if after < r.events[in_first_read].n_tokens * TOKENS_PER_NEXT_EVENT - 1e-9:
        return FEW_AFTER_FIRST
    if (reads[-1][0] - reads[0][0]) / 1e6 < MIN_DECODE_WINDOW_MS:
        return SHORT_WINDOW
    return None


def decode_tps(r: RequestRecord) -> float | None:
    """Decode rate: tokens after the first read / (last token read - first token read).

    The first read's tokens are left out of the numerator because they arrived at the window's
    start: they include the first token (the prompt's last batch, not a decode step) and whatever
    came with it (several tokens in one event when llama-server holds back incomplete UTF-8, or
    several events when the client read late); every token counted arrived inside the window.
    The client-side twin of llama-server's ``timings.predicted_per_second`` (n_gen - 1 steps over
    t_gen_last - t_prompt_last) and of llama-bench's tg rate. None when `decode_unmeasurable`.
    """
    if decode_unmeasurable(r) is not None:
        return None
    reads = token_reads(r)
    window_ms = (reads[-1][0] - reads[0][0]) / 1e6
    return (r.completion_tokens - reads[0][1]) / (window_ms / 1000.0)


def tpot_ms(r: RequestRecord) -> float | None:
    """Time per output token as vLLM's bench defines it: (last token arrival - TTFT) / (tokens - 1).

    vLLM's ``latency`` ends at the last chunk that carries ``choices`` (the last token), not at the
    end of the stream, so this uses `last_token_ms`, not `e2e_ms`. The divisor counts every token
    after the first, including any that came in the first read, so TPOT is 1 / decode_tps only when
    the first read carried one token. None when `decode_unmeasurable`.
    """
    last, first = last_token_ms(r), ttft_ms(r)
    if decode_unmeasurable(r) is not None or last is None or first is None:
        return None
    return (last - first) / (r.completion_tokens - 1)


def itl_ms(r: RequestRecord) -> list[float]:
    """Inter-token latency per token: each gap between token reads divided by the tokens that read
    carried (a read with 3 tokens after 30 ms gives three 10 ms values; events of one read are one
    read, not zero-ms gaps). Empty when `decode_unmeasurable`."""
    if decode_unmeasurable(r) is not None:
        return []
    reads = token_reads(r)
    out: list[float] = []
    for (t_prev, _), (t_cur, n_cur) in zip(reads, reads[1:], strict=False):
        out.extend([(t_cur - t_prev) / 1e6 / n_cur] * n_cur)
    return out


def inter_chunk_ms(r: RequestRecord) -> list[float]:
    """Raw gaps between consecutive SSE data events, token-carrying or not (AIPerf's ICL)."""
    t = r.chunk_times_ns
    return [(b - a) / 1e6 for a, b in zip(t, t[1:], strict=False)]


def server_decode_tps(r: RequestRecord) -> float | None:
    """llama-server's own predicted_per_second, stored beside ours, never used in its place."""
    v = r.timings.get("predicted_per_second") if r.timings else None
    return float(v) if v else None


def send_lag_ms(r: RequestRecord) -> float | None:
    """Open loop: the schedule's due time -> the request's bytes sent (the client's own delay:
    timer lateness, a connection opened on demand). None in a closed loop (nothing was due)."""
    if r.t_scheduled_ns is None:
        return None
    return (r.t_send_ns - r.t_scheduled_ns) / 1e6


def ttft_from_schedule_ms(r: RequestRecord) -> float | None:
    """Open loop: due time -> first token (what AIPerf and guidellm report for a rate run, and
    what a user arriving at that moment waits): `send_lag_ms` + `ttft_ms`."""
    lag, t = send_lag_ms(r), ttft_ms(r)
    return None if lag is None or t is None else lag + t


def e2e_from_schedule_ms(r: RequestRecord) -> float | None:
    """Open loop: due time -> end of the stream."""
    lag = send_lag_ms(r)
    return None if lag is None or r.e2e_ms is None else lag + r.e2e_ms


@dataclass(frozen=True)
class MetricDef:
    """How a metric is shown: its label and unit, and which way is better (every comparison of two
    arms uses the one session-level test, `stratified.session_ratio`)."""

    key: str
    label: str
    unit: str
    higher_is_better: bool


# Per-request metrics, in the order the report's tables show them.
METRICS: tuple[MetricDef, ...] = (
    MetricDef("ttft_ms", "TTFT", "ms", False),
    MetricDef("itl_ms", "ITL", "ms", False),
    MetricDef("decode_tps", "decode", "tok/s", True),
    MetricDef("e2e_ms", "end-to-end", "ms", False),
    MetricDef("tpot_ms", "TPOT", "ms", False),
)
# Per-arm: the server process's VRAM peak over the run (the nightly gate watches it).
VRAM_PEAK = MetricDef("vram_peak_mib", "VRAM peak", "MiB", False)
METRIC_BY_KEY = {m.key: m for m in (*METRICS, VRAM_PEAK)}
