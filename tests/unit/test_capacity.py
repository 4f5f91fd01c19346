"""Capacity at an SLO: one session's estimate between the bracketing levels, the interval over
sessions, and the ratio of two arms' capacities over sessions."""

from __future__ import annotations

import math

import pytest
from factories import streamed

from abtest.analysis.capacity import (
    AT_LEAST,
    BRACKETED,
    NONE_MET,
    ArmCapacity,
    LevelJudged,
    SessionCapacity,
    arm_phrase,
    capacity_delta,
    capacity_from_levels,
    capacity_verdict,
    session_capacity,
    session_interval,
)
from abtest.analysis.loadpoint import CONCURRENCY, RATE
from abtest.analysis.slo import parse_slo

SLO = parse_slo("ttft_p95<=100ms")
TWO = parse_slo("ttft_p95<=100ms,tpot_p95<=20ms")


def lv(load: float, *ratios: float, rps: float | None = None) -> LevelJudged:
    return LevelJudged(load, tuple(ratios), rps if rps is not None else load)


def test_the_capacity_lies_where_the_interpolated_percentile_reaches_the_limit() -> None:
    # TTFT p95 at 50 % of the limit at load 2, 150 % at 4: linear in between reaches 100 % at 3
    cap = session_capacity([lv(1, 0.4, rps=1.0), lv(2, 0.5, rps=2.0), lv(4, 1.5, rps=3.0)], SLO)
    assert cap.status == BRACKETED and (cap.low, cap.high) == (2, 4)
    assert cap.load == pytest.approx(3.0) and cap.req_per_s == pytest.approx(2.5)
    assert cap.limited_by == "TTFT p95 ≤ 100 ms"


def test_the_objective_that_binds_first_sets_the_capacity() -> None:
    # TTFT reaches its limit at 3.5, TPOT at 3
    cap = session_capacity([lv(2, 0.5, 0.5), lv(4, 1.167, 1.5)], TWO)
    assert cap.load == pytest.approx(3.0) and cap.limited_by == "TPOT p95 ≤ 20 ms"


def test_a_failed_request_at_the_percentile_gives_the_last_level_met() -> None:
    cap = session_capacity([lv(2, 0.5), lv(4, math.inf)], SLO)
    assert cap.status == BRACKETED and cap.load == 2


def test_censored_sessions_say_so() -> None:
    every = session_capacity([lv(1, 0.1), lv(2, 0.2)], SLO)
    assert every.status == AT_LEAST and every.load == 2
    none = session_capacity([lv(1, 1.1), lv(2, 2.0)], SLO)
    assert none.status == NONE_MET and none.load is None and none.high == 1


def test_a_level_above_the_first_failure_that_meets_again_is_flagged_not_used() -> None:
    cap = session_capacity([lv(1, 0.5), lv(2, 1.5), lv(4, 0.9)], SLO)
    assert cap.load is not None and 1 < cap.load < 2 and cap.non_monotone


def test_capacity_from_requests_judges_each_level_at_its_percentile() -> None:
    fast = [streamed(16, ttft_ms=40, itl_ms=5, t_send_ns=i * 100_000_000) for i in range(20)]
    slow = [streamed(16, ttft_ms=160, itl_ms=5, t_send_ns=i * 100_000_000) for i in range(20)]
    cap = capacity_from_levels({1.0: fast, 2.0: slow}, SLO)
    # 40 ms = 0.4 of the limit at 1, 160 ms = 1.6 at 2: the limit at 1 + 0.6/1.2 = 1.5
    assert cap.status == BRACKETED and cap.load == pytest.approx(1.5)


def test_the_interval_over_sessions_holds_the_mean_and_needs_two_sessions() -> None:
    iv = session_interval([7.5, 8.0, 8.2])
    assert iv.k == 3 and iv.low < iv.mean < iv.high and iv.mean == pytest.approx(7.9)
    one = session_interval([7.5])
    assert one.mean == 7.5 and math.isnan(one.low)
    wider = session_interval([6.0, 8.0, 10.0])
    assert wider.high - wider.low > iv.high - iv.low


def _arm(group: str, kind: str, values: list[float], status: str = BRACKETED) -> ArmCapacity:
    sessions = tuple(SessionCapacity(v, v, status) for v in values)
    return ArmCapacity(group, kind, sessions, session_interval(values), session_interval(values), status,
                       "TTFT p95 ≤ 100 ms")


def test_the_ratio_of_two_arms_has_an_interval_from_their_sessions() -> None:
    base, other = _arm("baseline", RATE, [8.0, 7.6, 8.3]), _arm("cpu-moe", RATE, [1.1, 1.0, 1.2])
    d = capacity_delta(other, base)
    assert d.ratio == pytest.approx(1.1 / 7.9667, rel=1e-3)
    assert d.low < d.ratio < d.high < 1 and d.p_value < 0.001 and d.reason == ""
    same = capacity_delta(_arm("b", RATE, [8.1, 7.7, 8.2]), base)
    assert same.low < 1 < same.high


def test_one_session_a_side_gives_the_ratio_and_no_interval() -> None:
    d = capacity_delta(_arm("b", RATE, [2.0]), _arm("a", RATE, [4.0]))
    assert d.ratio == pytest.approx(0.5) and math.isnan(d.low) and "fewer than 2" in d.reason


def test_the_verdict_line_quotes_each_arm_with_its_interval() -> None:
    base, other = _arm("baseline", CONCURRENCY, [8.0, 7.6]), _arm("cpu-moe", CONCURRENCY, [1.1, 1.0])
    line = capacity_verdict([base, other], [capacity_delta(other, base)], SLO)
    assert line is not None and line.startswith("Within TTFT p95 ≤ 100 ms: baseline carries 7.80 req/s (")
    assert "at concurrency 7.80 (" in line and "cpu-moe carries 1.05 req/s (" in line
    assert "cpu-moe carries 0.135× baseline's (" in line and "2 vs 2 sessions" in line
    assert "one session: no interval" in arm_phrase(_arm("x", RATE, [3.0]))
    assert "at least" in arm_phrase(_arm("x", RATE, [3.0, 3.0], AT_LEAST))
    assert capacity_verdict([], [], SLO) is None


def test_a_concurrency_capacity_is_a_whole_concurrency() -> None:
    # the crossing interpolates to 12.7 between 12 (met) and 13 (failed): 12.7 concurrent requests
    # cannot be applied, 12 is the highest that meets it
    cap = session_capacity([lv(12, 0.08, rps=37.0), lv(13, 1.36, rps=38.0)], SLO, integer=True)
    assert cap.load == 12 and cap.req_per_s == pytest.approx(37.0)
    wide = session_capacity([lv(8, 0.5, rps=8.0), lv(16, 1.5, rps=12.0)], SLO, integer=True)
    assert wide.load == 12 and wide.req_per_s == pytest.approx(10.0)  # crossing at 12 exactly
    assert session_capacity([lv(8, 0.5), lv(16, 1.6)], SLO, integer=True).load == 11  # 8 + 0.5/1.1·8 = 11.6


@pytest.mark.parametrize("kind, values, status", [
    (CONCURRENCY, [4.0, 4.0], BRACKETED), (CONCURRENCY, [4.0, 5.0], BRACKETED), (RATE, [3.0], BRACKETED),
    (CONCURRENCY, [8.0, 8.0], AT_LEAST), (RATE, [2.0, 2.5], "mixed"), (CONCURRENCY, [1.0, 1.0], NONE_MET)])
def test_the_sweep_and_the_report_word_a_capacity_alike(kind: str, values: list[float], status: str) -> None:
    """One wording of an arm's capacity: the report's verdict (`arm_phrase`) and the sweep's advice
    (`analysis.sweep.capacity_text`) differ only in naming the arm and the objective."""
    from abtest.analysis.sweep import capacity_text

    c = _arm("x", kind, values, status)
    if status == NONE_MET:
        c = ArmCapacity("x", kind, tuple(SessionCapacity(None, None, NONE_MET, high=v) for v in values),
                        session_interval([]), session_interval([]), NONE_MET, "TTFT p95 ≤ 100 ms")
    assert arm_phrase(c) == "x " + capacity_text(c).replace("the SLO", "it")
    if values == [4.0, 4.0]:  # sessions agreeing on one level: the level, not a range "(4–4)"
        assert "at concurrency 4" in capacity_text(c) and "4–4" not in capacity_text(c)
