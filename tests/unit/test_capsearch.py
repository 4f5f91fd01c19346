"""The capacity search's decisions, against a model of an arm whose capacity is known."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from abtest.measure.capsearch import (
    AT_MAX,
    BRACKETED,
    FAILS_LOWEST,
    OUT_OF_TIME,
    SATURATED,
    ProbeResult,
    SearchSpec,
    next_probe,
    saturated,
)


def _search(spec: SearchSpec, probe: Callable[[float], ProbeResult]) -> tuple[list[float], object]:
    probes: list[ProbeResult] = []
    elapsed = 0.0
    while True:
        d = next_probe(spec, probes, elapsed)
        if d.load is None:
            return [p.load for p in probes], d
        p = probe(d.load)
        probes.append(p)
        elapsed += p.duration_s
        assert len(probes) < 100


def _knee(truth: float, sat: float | None = None, duration_s: float = 1.0) -> Callable[[float], ProbeResult]:
    """Meets the SLO up to `truth`; throughput follows the load up to `sat`, latency climbs past it."""
    def probe(x: float) -> ProbeResult:
        rps = min(x, sat) if sat is not None else x
        ttft = 50.0 if sat is None or x <= sat else 50.0 * x / sat
        return ProbeResult(x, x <= truth, rps, ttft, duration_s)
    return probe


@pytest.mark.parametrize("truth", [0.7, 3.3, 27.3, 150.0])
def test_a_rate_search_brackets_the_truth_within_its_tolerance(truth: float) -> None:
    loads, d = _search(SearchSpec("rate", start=1.0, rel_tol=0.02), _knee(truth))
    assert d.reason == BRACKETED and d.low is not None and d.high is not None
    assert d.low <= truth < d.high and (d.high - d.low) / d.low <= 0.02
    assert len(loads) <= 16 and len(set(loads)) == len(loads)  # no probe twice


def test_a_concurrency_search_ends_on_neighbouring_integers() -> None:
    loads, d = _search(SearchSpec("concurrency", start=1), _knee(11))
    assert (d.low, d.high, d.reason) == (11, 12, BRACKETED)
    assert loads[:5] == [1, 2, 4, 8, 16] and all(x == int(x) for x in loads)


def test_saturation_ends_the_ramp_when_throughput_is_flat_and_latency_climbs() -> None:
    loads, d = _search(SearchSpec("concurrency", start=1), _knee(truth=1e9, sat=6))
    assert d.reason == SATURATED and loads == [1, 2, 4, 8, 16]  # 8 -> 16: +0 % req/s, TTFT ×2
    flat = ProbeResult(8, True, 6.0, 100.0, 1.0)
    assert saturated(ProbeResult(4, True, 4.0, 50.0, 1.0), ProbeResult(8, True, 4.2, 100.0, 1.0))
    assert not saturated(ProbeResult(4, True, 4.0, 50.0, 1.0), ProbeResult(8, True, 7.0, 100.0, 1.0))  # still gaining
    assert not saturated(ProbeResult(4, True, 6.0, 90.0, 1.0), flat)  # flat but latency not climbing


def test_the_ceiling_and_the_floor_end_the_search() -> None:
    loads, d = _search(SearchSpec("rate", start=1.0, max_load=10.0), _knee(1e9))
    assert d.reason == AT_MAX and loads == [1, 2, 4, 8, 10]
    loads, d = _search(SearchSpec("concurrency", start=4), _knee(0.5))
    assert d.reason == FAILS_LOWEST and loads == [4, 2, 1]


def test_a_rate_that_fails_at_the_start_is_searched_below_it() -> None:
    loads, d = _search(SearchSpec("rate", start=8.0), _knee(2.9))
    assert loads[:3] == [8, 4, 2] and d.reason == BRACKETED and d.low is not None and d.low <= 2.9 < (d.high or 0)


def test_the_time_bound_stops_before_a_probe_would_pass_it() -> None:
    loads, d = _search(SearchSpec("rate", start=1.0, time_s=25.0), _knee(27.3, duration_s=10.0))
    assert d.reason == OUT_OF_TIME and loads == [1, 2]  # a third 10 s probe would end at 30 s
