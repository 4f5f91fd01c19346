"""SLO parsing, the per-request test of goodput and a level's percentile test."""

from __future__ import annotations

import math

import pytest
from factories import streamed

from abtest.analysis.slo import Objective, level_meets, meets_each, parse_slo
from abtest.errors import ConfigError


def test_parse_the_issue_example() -> None:
    assert parse_slo("ttft_p95<=500ms,tpot_p95<=60ms,e2e_p99<=10s") == (
        Objective("ttft", 95, 500.0), Objective("tpot", 95, 60.0), Objective("e2e", 99, 10_000.0))
    assert str(parse_slo("e2e_p99<=10s")[0]) == "E2E p99 ≤ 10 s"


@pytest.mark.parametrize("text", ["ttft<=500ms", "ttft_p95<500ms", "itl_p95<=5ms", "ttft_p95<=500", "ttft_p0<=1ms",
                                  "ttft_p95<=1ms,ttft_p99<=2ms", ""])
def test_bad_slo_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match="--slo"):
        parse_slo(text)


def test_goodput_counts_a_request_only_when_it_meets_every_limit() -> None:
    slo = parse_slo("ttft_p95<=50ms,e2e_p99<=200ms")
    fast = streamed(16, ttft_ms=20, itl_ms=5)  # e2e ≈ 20 + 75 + 1.1
    late = streamed(16, ttft_ms=80, itl_ms=5)
    slow_tail = streamed(16, ttft_ms=20, itl_ms=20)  # e2e ≈ 321
    assert meets_each(fast, slo) and not meets_each(late, slo) and not meets_each(slow_tail, slo)


def test_a_level_is_judged_at_its_percentile_and_failures_count_as_misses() -> None:
    slo = parse_slo("ttft_p50<=50ms")
    good = [streamed(16, ttft_ms=20, itl_ms=5)] * 3
    bad = [streamed(16, ttft_ms=80, itl_ms=5)] * 2
    assert level_meets(good + bad, slo) is True  # the median is a good one
    assert level_meets(good[:1] + bad, slo) is False
    assert level_meets([], slo) is None


def test_a_percentile_among_failed_requests_is_infinite_not_nan() -> None:
    import math

    from abtest.analysis.slo import observed

    (o,) = parse_slo("ttft_p95<=50ms")
    ok = [streamed(16, ttft_ms=20 + i, itl_ms=5) for i in range(18)]
    failed = [streamed(16, ttft_ms=20, itl_ms=5, error="boom")] * 2
    assert observed(ok + failed, o) == math.inf  # numpy's percentile gives nan here (inf - inf)
    assert observed(ok, o) == pytest.approx(20 + 17 * 0.95 + 0.0, abs=0.02)
    (med,) = parse_slo("ttft_p50<=50ms")
    assert observed(ok[:2] + failed[:1], med) == pytest.approx(21.0, abs=0.02)  # lands on the finite value


def test_a_request_without_a_tpot_is_not_judged_by_a_tpot_objective() -> None:
    """vLLM's goodput regards the TPOT of a 1-token output as 0 (it meets any TPOT limit) and
    leaves it out of its TPOT percentiles; abtest does the same for every successful request
    `metrics.tpot_ms` has no value for. A TTFT or E2E objective still judges it; a failed request
    still misses."""
    from abtest.analysis import metrics
    from abtest.analysis.slo import observed

    slo = parse_slo("ttft_p95<=50ms,tpot_p95<=20ms")
    one_token = streamed(1, ttft_ms=20, itl_ms=5)
    burst = streamed(8, ttft_ms=20, itl_ms=0.1)  # the decode window is too short to time
    assert metrics.tpot_ms(one_token) is None and metrics.tpot_ms(burst) is None
    assert meets_each(one_token, slo) and meets_each(burst, slo)
    assert not meets_each(streamed(1, ttft_ms=80, itl_ms=5), slo)  # TTFT still judges it
    assert not meets_each(streamed(1, ttft_ms=20, itl_ms=5, error="boom"), slo)
    (tpot,) = parse_slo("tpot_p50<=20ms")
    timed = [streamed(16, ttft_ms=20, itl_ms=10 + i) for i in range(3)]  # TPOT 10, 11, 12 ms
    # the percentile is over the requests that have a TPOT (the Load levels table's TPOT p50)
    assert observed(timed + [one_token] * 5, tpot) == pytest.approx(11.0, abs=0.01)
    assert level_meets(timed + [one_token] * 5, parse_slo("tpot_p50<=20ms")) is True
    assert observed([one_token] * 3, tpot) == 0.0  # nothing to judge: met, as vLLM's TPOT of 0
    failed = streamed(16, ttft_ms=20, itl_ms=5, error="boom")
    assert observed([one_token, failed], tpot) == math.inf  # the failed one is the only value


@pytest.mark.parametrize("n, fails", [(12, True), (20, True), (21, False), (40, False)])
def test_a_failed_request_fails_a_level_where_a_request_far_over_the_limit_would(n: int, fails: bool) -> None:
    """A failed request is a miss placed above every served one: at p95 it decides the level when
    it reaches the percentile (n ≤ 20 with linear interpolation), as a request at 100× the limit
    does, and not otherwise (docs/report.md, "A failed request")."""
    from abtest.analysis.slo import observed

    (o,) = parse_slo("ttft_p95<=100ms")
    served = [streamed(16, ttft_ms=50, itl_ms=5) for _ in range(n - 1)]
    slow = streamed(16, ttft_ms=10_000, itl_ms=5)
    failed = streamed(16, ttft_ms=50, itl_ms=5, error="stream stalled")
    assert level_meets(served + [failed], [o]) is (not fails)
    assert level_meets(served + [slow], [o]) is (not fails)
    if n == 12:
        assert observed(served + [slow], o) == pytest.approx(50 + 0.45 * 9950)  # ≈ 45× the limit
