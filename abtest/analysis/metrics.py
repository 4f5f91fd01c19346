"""Per-request metric definitions, written once (docs/metrics.md) and used by run, report and tests.

All inputs are the raw samples of a `RequestRecord`: token events ``(t_ns, n_tokens)`` relative to
the moment the request bytes were sent, and the end-of-stream time. None means "not defined for
this request" (failed, or too few tokens).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..records import RequestRecord


def ttft_ms(r: RequestRecord) -> float | None:
    """Time to first token: request sent -> arrival of the first event carrying a token."""
    return r.events[0].t_ns / 1e6 if r.events else None


def e2e_ms(r: RequestRecord) -> float | None:
    """End to end: request sent -> end of the stream."""
    return r.e2e_ms


def decode_window_ms(r: RequestRecord) -> float | None:
    """First token's arrival -> last token's arrival (the span of the n-1 decode steps)."""
    if len(r.events) < 2:
        return None
    return (r.events[-1].t_ns - r.events[0].t_ns) / 1e6


def decode_tps(r: RequestRecord) -> float | None:
    """Decode rate: tokens after the first / (last token arrival - first token arrival).

    The first token comes from the prompt's last batch, so it is not a decode step; this is the
    client-side twin of llama-server's ``timings.predicted_per_second`` (n_gen - 1 steps over
    t_gen_last - t_prompt_last) and of llama-bench's tg rate.
    """
    window = decode_window_ms(r)
    n = r.completion_tokens
    if not r.ok or window is None or window <= 0 or n < 2:
        return None
    tokens_after_first = n - r.events[0].n_tokens
    return tokens_after_first / (window / 1000.0)


def tpot_ms(r: RequestRecord) -> float | None:
    """Time per output token as vLLM defines it: (E2E - TTFT) / (tokens - 1)."""
    t = ttft_ms(r)
    if not r.ok or t is None or r.e2e_ms is None or r.completion_tokens < 2:
        return None
    return (r.e2e_ms - t) / (r.completion_tokens - 1)


def itl_ms(r: RequestRecord) -> list[float]:
    """Inter-token latency per token: each gap between token-carrying events divided by the tokens
    that event carried (an event with 3 tokens after 30 ms gives three 10 ms values)."""
    out: list[float] = []
    for prev, cur in zip(r.events, r.events[1:], strict=False):
        gap = (cur.t_ns - prev.t_ns) / 1e6
        out.extend([gap / cur.n_tokens] * cur.n_tokens)
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
    """How a metric is shown and judged: its label and unit, which way is better, the test used."""

    key: str
    label: str
    unit: str
    higher_is_better: bool
    test: str  # "welch" or "mann-whitney" for per-request metrics; "" for per-arm ones


# Per-request metrics, in the order the report's tables show them.
METRICS: tuple[MetricDef, ...] = (
    MetricDef("ttft_ms", "TTFT", "ms", False, "mann-whitney"),
    MetricDef("itl_ms", "ITL", "ms", False, "mann-whitney"),
    MetricDef("decode_tps", "decode", "tok/s", True, "welch"),
    MetricDef("e2e_ms", "end-to-end", "ms", False, "mann-whitney"),
    MetricDef("tpot_ms", "TPOT", "ms", False, "mann-whitney"),
)
# Per-arm: the server process's VRAM peak over the run (the nightly gate watches it).
VRAM_PEAK = MetricDef("vram_peak_mib", "VRAM peak", "MiB", False, "")
METRIC_BY_KEY = {m.key: m for m in (*METRICS, VRAM_PEAK)}
