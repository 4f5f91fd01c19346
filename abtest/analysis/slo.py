"""Service-level objectives: `--slo "ttft_p95<=500ms,tpot_p95<=60ms,e2e_p99<=10s"` parsed, a load
level judged against them, and goodput (requests that meet every objective, per second)."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..errors import ConfigError
from ..records import RequestRecord
from . import metrics

# metric name in an SLO -> its per-request definition (docs/metrics.md), all in ms
METRIC_OF: dict[str, Callable[[RequestRecord], float | None]] = {
    "ttft": metrics.ttft_ms,
    "tpot": metrics.tpot_ms,
    "e2e": metrics.e2e_ms,
}
_UNIT_MS = {"ms": 1.0, "s": 1000.0}
_TERM = re.compile(r"^\s*(ttft|tpot|e2e)_p(\d{1,2}(?:\.\d+)?)\s*<=\s*(\d+(?:\.\d+)?)\s*(ms|s)\s*$")


@dataclass(frozen=True)
class Objective:
    """`metric_pQ <= limit`: the Q-th percentile of the metric over a level's requests at most
    `limit_ms`; for goodput the same limit applies to each request (vLLM's goodput; `judged_value`)."""

    metric: str
    percentile: float
    limit_ms: float

    def __str__(self) -> str:
        limit = f"{self.limit_ms / 1000:g} s" if self.limit_ms >= 1000 else f"{self.limit_ms:g} ms"
        return f"{self.metric.upper()} p{self.percentile:g} ≤ {limit}"


def parse_slo(text: str) -> tuple[Objective, ...]:
    """"ttft_p95<=500ms,tpot_p95<=60ms" -> objectives; ConfigError naming the term that is wrong."""
    out = []
    for term in text.split(","):
        m = _TERM.match(term)
        if not m:
            raise ConfigError(f"--slo term {term.strip()!r} is not METRIC_pQ<=LIMIT with METRIC ttft, tpot or e2e "
                              "and LIMIT in ms or s, e.g. ttft_p95<=500ms,tpot_p95<=60ms,e2e_p99<=10s")
        q = float(m.group(2))
        if not 0 < q < 100:
            raise ConfigError(f"--slo term {term.strip()!r}: the percentile must be between 0 and 100")
        out.append(Objective(m.group(1), q, float(m.group(3)) * _UNIT_MS[m.group(4)]))
    if len({o.metric for o in out}) != len(out):
        raise ConfigError(f"--slo {text!r} names a metric twice")
    return tuple(out)


# Metrics an objective does not judge a successful request by when the request has no value: a
# TPOT needs a timed decode (`metrics.decode_unmeasurable`), and a 1-token output has none. vLLM's
# goodput regards such a request's TPOT as 0 (it meets any limit; `calculate_metrics` in
# vllm/benchmarks/serve.py: "if output_len <= 1, we regard tpot as 0 for goodput") and leaves it out
# of its TPOT percentiles. A successful request with no TTFT or E2E was not served: a miss.
NOT_JUDGED_WHEN_UNDEFINED = frozenset({"tpot"})


def judged_value(r: RequestRecord, o: Objective) -> float | None:
    """The request's value for the objective: ∞ for a miss whatever the limit (a failed request,
    or an undefined TTFT or E2E), None when the objective does not judge it (a successful
    request with no TPOT)."""
    if not r.ok:
        return float("inf")
    v = METRIC_OF[o.metric](r)
    if v is None:
        return None if o.metric in NOT_JUDGED_WHEN_UNDEFINED else float("inf")
    return v


def meets_each(r: RequestRecord, slo: Sequence[Objective]) -> bool:
    """Whether one request meets every objective's limit (goodput's per-request test); a failed
    request does not, an objective that does not judge it (`judged_value` None) does not fail it."""
    if not r.ok:
        return False
    for o in slo:
        v = judged_value(r, o)
        if v is not None and v > o.limit_ms:
            return False
    return True


def observed(requests: Sequence[RequestRecord], o: Objective) -> float:
    """The objective's percentile over a level's requests it judges (`judged_value`), failed ones
    as an infinite latency; nan without requests, 0.0 when it judges none of them (every one
    succeeded without a TPOT: nothing exceeded the limit)."""
    if not requests:
        return float("nan")
    values = [v for r in requests if (v := judged_value(r, o)) is not None]
    if not values:
        return 0.0
    import numpy as np  # here: `abtest run` imports this module (--slo), its start-up need not pay for numpy

    xs = np.sort(np.array(values, dtype=float))
    # numpy's linear percentile, by hand: its interpolation gives nan next to an infinite value
    h = (xs.size - 1) * o.percentile / 100.0
    i = int(np.floor(h))
    frac = h - i
    if frac == 0 or i + 1 >= xs.size:
        return float(xs[i])
    if not np.isfinite(xs[i + 1]):
        return float("inf")
    return float(xs[i] + frac * (xs[i + 1] - xs[i]))


def level_meets(requests: Sequence[RequestRecord], slo: Sequence[Objective]) -> bool | None:
    """Whether a level's requests meet every objective at its percentile (`observed`: failed
    requests count as misses, an infinite latency); None without requests."""
    if not requests:
        return None
    return all(observed(requests, o) <= o.limit_ms for o in slo)


@dataclass(frozen=True)
class Span:
    """One server session's requests at one level: what completed over the level's wall time."""

    done: int  # completed requests
    tokens: int  # their generated tokens
    good: int  # completed requests meeting every objective (goodput's count; 0 without objectives)
    span_s: float  # first send to last end; 0.0 when nothing completed

    @property
    def req_per_s(self) -> float | None:
        return self.done / self.span_s if self.span_s > 0 else None


def level_span(requests: Sequence[RequestRecord], slo: Sequence[Objective] = ()) -> Span:
    """Throughput and goodput of one session's requests at one level: completed requests,
    tokens and requests meeting every limit over first send → last end (vLLM's and AIPerf's
    goodput divide by the benchmark's duration the same way)."""
    good = [r for r in requests if r.ok]
    if not good:
        return Span(0, 0, 0, 0.0)
    t0 = min(r.t_send_ns for r in requests)
    t1 = max(r.t_send_ns + (r.e2e_ms or 0.0) * 1e6 for r in good)
    if t1 <= t0:
        return Span(0, 0, 0, 0.0)
    return Span(len(good), sum(r.completion_tokens for r in good),
                sum(1 for r in good if slo and meets_each(r, slo)), (t1 - t0) / 1e9)
