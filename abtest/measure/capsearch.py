"""The capacity search (`abtest run --rate auto --slo ...`): which load to probe next, a pure function
of the probes so far.

Ramp: from the start load, multiply by `factor` (2) while every probe meets the SLO and the arm
has not saturated. Saturation is throughput flat while latency climbs: between two consecutive
ramp probes, the completed req/s grew by less than `SAT_GAIN` (10 %) of the load's own relative
growth (a doubling of the load that adds < 10 % req/s) while TTFT p95 rose by `SAT_LATENCY` (50 %)
or more — more load only queues. Once a probe fails, bisect between the highest load that met the
SLO below it and the lowest that failed, until the bracket is within `rel_tol` of the lower end
(rate) or 1 apart (concurrency). The search ends early at `max_load`, after `max_probes`, or when
the next probe (estimated to take as long as the last one) would pass the time bound per arm
session (`time_s`); `Decision.reason` says which. The runner probes what this returns and records
every probe as a load level; the report's capacity interpolates within the final bracket.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

CONCURRENCY = "concurrency"
RATE = "rate"
SAT_GAIN = 0.10
SAT_LATENCY = 1.5
# below this fraction of the start load a rate search that fails everywhere gives up
MIN_RATE_FRACTION = 1 / 64

# Decision.reason
BRACKETED = "bracketed"  # the bracket is within the tolerance
SATURATED = "saturated"  # throughput flat while latency climbs, the SLO still met
AT_MAX = "max-load"  # met at --search-max
FAILS_LOWEST = "fails-at-lowest"  # concurrency 1 (or 1/64 of the start rate) fails
OUT_OF_TIME = "time"  # the next probe would pass --search-time-s
MAX_PROBES = "max-probes"


@dataclass(frozen=True)
class SearchSpec:
    kind: str  # CONCURRENCY | RATE
    start: float = 1.0
    max_load: float | None = None
    factor: float = 2.0
    rel_tol: float = 0.02
    time_s: float = 300.0
    max_probes: int = 24


@dataclass(frozen=True)
class ProbeResult:
    """What one probe gave: whether its requests meet every objective, its completed req/s and its
    TTFT p95 (saturation's latency), and how long it took (warm-up included)."""

    load: float
    meets: bool
    req_per_s: float | None
    ttft_p95_ms: float | None
    duration_s: float


@dataclass(frozen=True)
class Decision:
    load: float | None  # the next load to probe; None: the search is over
    phase: str  # "ramp" | "bisect" | "done"
    reason: str  # why it is over ("" while it goes on)
    low: float | None  # highest load met (below `high`)
    high: float | None  # lowest load failed


def saturated(prev: ProbeResult, cur: ProbeResult) -> bool:
    """Throughput flat while latency climbs, from `prev` to the higher load `cur`."""
    if cur.load <= prev.load or not prev.req_per_s or cur.req_per_s is None:
        return False
    if not prev.ttft_p95_ms or cur.ttft_p95_ms is None:
        return False
    load_gain = cur.load / prev.load - 1
    return (cur.req_per_s / prev.req_per_s - 1 < SAT_GAIN * load_gain
            and cur.ttft_p95_ms >= SAT_LATENCY * prev.ttft_p95_ms)


def bracket(probes: Sequence[ProbeResult]) -> tuple[float | None, float | None]:
    """(highest load met below the lowest failed, lowest load failed)."""
    failed = [p.load for p in probes if not p.meets]
    high = min(failed) if failed else None
    met = [p.load for p in probes if p.meets and (high is None or p.load < high)]
    return (max(met) if met else None), high


def _tidy(spec: SearchSpec, x: float) -> float:
    if spec.kind == CONCURRENCY:
        return float(max(1, round(x)))
    return float(f"{x:.4g}")


def next_probe(spec: SearchSpec, probes: Sequence[ProbeResult], elapsed_s: float = 0.0) -> Decision:
    """The next load to probe given every probe so far (in the order run) and the time spent."""
    low, high = bracket(probes)
    if not probes:
        return Decision(_tidy(spec, spec.start), "ramp", "", None, None)

    def done(reason: str) -> Decision:
        return Decision(None, "done", reason, low, high)

    if len(probes) >= spec.max_probes:
        return done(MAX_PROBES)
    if elapsed_s + probes[-1].duration_s > spec.time_s:
        return done(OUT_OF_TIME)
    tried = {p.load for p in probes}
    if high is None:  # every probe met it: ramp up, unless saturated or at the ceiling
        ramp = sorted(probes, key=lambda p: p.load)
        if len(ramp) >= 2 and saturated(ramp[-2], ramp[-1]):
            return done(SATURATED)
        assert low is not None
        if spec.max_load is not None and low >= spec.max_load:
            return done(AT_MAX)
        nxt = _tidy(spec, low * spec.factor)
        if spec.kind == CONCURRENCY:
            nxt = max(nxt, low + 1)
        if spec.max_load is not None:
            nxt = min(nxt, _tidy(spec, spec.max_load))
        return Decision(nxt, "ramp", "", low, high) if nxt not in tried else done(AT_MAX)
    if low is None:  # even the lowest probe failed: go down
        floor = 1.0 if spec.kind == CONCURRENCY else spec.start * MIN_RATE_FRACTION
        if high <= floor:
            return done(FAILS_LOWEST)
        nxt = _tidy(spec, max(high / spec.factor, floor))
        if spec.kind == CONCURRENCY:
            nxt = min(nxt, high - 1)
        return Decision(nxt, "ramp", "", low, high) if nxt not in tried else done(FAILS_LOWEST)
    if spec.kind == CONCURRENCY:
        if high - low <= 1:
            return done(BRACKETED)
        nxt = float(math.floor((low + high) / 2))
    else:
        if (high - low) / low <= spec.rel_tol:
            return done(BRACKETED)
        nxt = _tidy(spec, (low + high) / 2)
    if nxt in tried or not low < nxt < high:
        return done(BRACKETED)
    return Decision(nxt, "bisect", "", low, high)
