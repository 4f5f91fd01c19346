"""The sweep's time-to-advice logic: the session rule for finalists (pure), its false-positive
rate on A/A data, the search without the all-on-CPU end first, the × reference, the CLI defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_sweep import FakeBench, L, linear_vram

from abtest.analysis import stratified
from abtest.analysis.sweep import reference_setting
from abtest.cli.sweep import _buckets
from abtest.config import ArmSpec
from abtest.measure.finalists import Comparison, SessionResult, next_session
from abtest.measure.search import search
from abtest.measure.sweep import FAR_FRACTION, FAR_MIN_MIB, SweepRunner

FIT_VS_PICK = Comparison(default="fit", challenger="ncmoe7")
PICK_VS_LMNONE = Comparison(default="ncmoe7", challenger="ncmoe7-lmnone")
FINALISTS = ["ncmoe7", "ncmoe8", "fit"]


# ----------------------------------------------------------------------------- the rule (pure)


def test_sequential_continues_only_the_comparison_whose_challenger_leads() -> None:
    step = next_session(FINALISTS, [FIT_VS_PICK], {"ncmoe7": [85.0], "ncmoe8": [80.0], "fit": [84.0]}, 1, 2)
    assert step.session == 2 and step.arms == ("ncmoe7", "fit") and not step.stopped
    assert step.idle == ("ncmoe8",)  # the runner-up: the advice does not rest on its comparison


def test_sequential_stops_for_futility_when_the_challenger_does_not_lead() -> None:
    step = next_session(FINALISTS, [FIT_VS_PICK], {"ncmoe7": [84.0], "ncmoe8": [80.0], "fit": [84.0]}, 1, 2)
    assert step.arms == ()
    assert "futility" in step.stopped["ncmoe7 vs fit"] and "keeps fit" in step.stopped["ncmoe7 vs fit"]


def test_sequential_without_a_comparison_runs_nothing_more() -> None:
    # fit disqualified (over budget) or skipped: the advice is the pick on its measured VRAM alone
    step = next_session(["ncmoe7", "ncmoe8"], [], {"ncmoe7": [85.0], "ncmoe8": [80.0]}, 1, 2)
    assert step.arms == () and step.idle == ("ncmoe7", "ncmoe8")


def test_two_comparisons_share_the_pick() -> None:
    fin = ["ncmoe7", "fit", "ncmoe7-lmnone"]
    rates = {"ncmoe7": [85.0], "fit": [80.0], "ncmoe7-lmnone": [70.0]}
    step = next_session(fin, [FIT_VS_PICK, PICK_VS_LMNONE], rates, 1, 2)
    assert step.arms == ("ncmoe7", "fit") and list(step.stopped) == ["ncmoe7-lmnone vs ncmoe7"]
    rates["ncmoe7-lmnone"] = [90.0]
    assert next_session(fin, [FIT_VS_PICK, PICK_VS_LMNONE], rates, 1, 2).arms == tuple(fin)


def test_fixed_runs_every_finalist_and_no_rule_runs_past_the_last_session() -> None:
    rates = {"ncmoe7": [80.0], "ncmoe8": [85.0], "fit": [90.0]}
    assert next_session(FINALISTS, [FIT_VS_PICK], rates, 1, 3, "fixed").arms == tuple(FINALISTS)
    for rule in ("fixed", "sequential"):
        assert next_session(FINALISTS, [FIT_VS_PICK], {"ncmoe7": [90.0, 91.0], "fit": [80.0, 80.0]}, 2, 2,
                            rule).arms == ()
    with pytest.raises(ValueError):
        next_session(FINALISTS, [], rates, 1, 2, "optional-stopping")


def test_a_side_without_a_rate_is_not_continued() -> None:
    step = next_session(FINALISTS, [FIT_VS_PICK], {"ncmoe7": [85.0], "fit": []}, 1, 2)
    assert step.arms == () and "no decode rate" in step.stopped["ncmoe7 vs fit"]


def _claims(effect: float, drift_sd: float, n_sim: int = 1500) -> tuple[float, float, float]:
    """Pick (challenger) vs fit over simulated sessions of 8 requests each (2 % request noise,
    `drift_sd` per-session drift, the pick `effect` faster): how often the fixed 2-session design
    claims "the pick is faster" (interval over sessions above 0), how often the sequential rule
    does (a claim needs the second session, run only when session 1 favoured the pick), and how
    often the rule ran the second session."""
    rng = np.random.default_rng(7)
    fixed = seq = cont = 0
    for _ in range(n_sim):
        means = [85.0 * (1 + effect), 85.0, 85.0 * (1 + effect), 85.0]  # pick s1, fit s1, pick s2, fit s2
        vals = [m * (1 + d) * (1 + rng.normal(0.0, 0.02, size=8)) for m, d in zip(means, rng.normal(0, drift_sd, 4), strict=True)]
        first = next_session(["pick", "fit"], [Comparison("fit", "pick")],
                             {"pick": [float(vals[0].mean())], "fit": [float(vals[1].mean())]}, 1, 2)
        r = stratified.session_ratio(np.r_[vals[1], vals[3]], [0] * 8 + [1] * 8,
                                     np.r_[vals[0], vals[2]], [0] * 8 + [1] * 8)
        lo, _ = r.interval(0.95)
        claim = bool(np.isfinite(lo) and lo > 0)
        went_on = first.arms == ("pick", "fit")
        fixed += claim
        seq += claim and went_on
        cont += went_on
    return fixed / n_sim, seq / n_sim, cont / n_sim


@pytest.mark.parametrize("drift_sd", [0.0, 0.03, 0.1])
def test_the_futility_stop_keeps_the_false_positive_rate(drift_sd: float) -> None:
    """A/A: the claim is made only where the fixed design makes it too (at most its 2.5 %
    one-sided), while about half the second sessions are saved."""
    fixed, seq, cont = _claims(0.0, drift_sd)
    assert seq <= fixed <= 0.05
    assert 0.4 <= cont <= 0.6


def test_the_futility_stop_costs_no_power_where_there_is_some() -> None:
    """A true +10 % with little drift: the fixed design detects it ~95 % of the time; the rule
    almost always runs the second session and detects it as often (within 2 points)."""
    fixed, seq, cont = _claims(0.10, 0.01)
    assert fixed >= 0.9 and fixed - seq <= 0.02 and cont >= 0.98


# ----------------------------------------------------------------------------- the search


def far(n: int, budget: float, bias: float = 0.0) -> bool:
    return linear_vram(n) + bias > budget + max(FAR_FRACTION * budget, FAR_MIN_MIB)


@pytest.mark.parametrize("budget_gib", [9.0, 6.0, 11.0, 2.5, 8.3])
@pytest.mark.parametrize("bias", [0.0, 300.0, -300.0, 2000.0, -2000.0])
def test_without_the_top_first_the_search_still_finds_the_boundary(budget_gib: float, bias: float) -> None:
    budget = budget_gib * 1024
    bench = FakeBench()
    res = search(L, budget, bench, predict_mib=lambda n: linear_vram(n) + bias, top_first=False)
    boundary = min(n for n in range(L + 1) if linear_vram(n) <= budget)
    assert res.best == res.boundary == boundary and res.over_neighbour == boundary - 1
    assert L not in bench.launched  # something smaller fits: the all-on-CPU end is never needed
    if bias == 0.0:
        assert bench.launched == [0, boundary, boundary - 1]


def test_an_accurate_prediction_launches_only_the_boundary() -> None:
    """With the sweep's far-over-budget rule (FakeBench skips what it rules out), one launch."""
    budget = 9 * 1024
    bench = FakeBench(skip=frozenset(n for n in range(L + 1) if far(n, budget)))
    res = search(L, budget, bench, predict_mib=linear_vram, top_first=False)
    assert bench.launched == [7] and res.best == 7 and res.over_neighbour == 6


def test_nothing_smaller_fits_so_the_all_on_cpu_end_is_measured() -> None:
    bench = FakeBench()
    res = search(L, 1024, bench, predict_mib=linear_vram, top_first=False)
    assert bench.launched[-1] == L and res.best is None
    budget = linear_vram(L) + 1.0  # only N = L fits
    bench = FakeBench()
    res = search(L, budget, bench, predict_mib=linear_vram, top_first=False)
    assert res.best == L and bench.launched.count(L) == 1


def test_without_a_prediction_or_a_budget_the_top_comes_first_as_before() -> None:
    bench = FakeBench()
    search(L, 9 * 1024, bench, predict_mib=None, top_first=False)
    assert bench.launched[:2] == [L, 0]
    bench = FakeBench()
    search(L, None, bench, predict_mib=linear_vram, top_first=False)
    assert bench.launched == [L, 0]


def test_the_reference_is_the_all_on_cpu_end_or_none_in_auto() -> None:
    assert reference_setting([7, 24], 24, "auto") == 24
    assert reference_setting([6, 7], 24, "auto") is None
    assert reference_setting([0, 8, 16], 24, "list") == 16
    assert reference_setting([], 24, "list") is None


# ----------------------------------------------------------------------------- run_finalists


class _Quiet:
    def note(self, text: str) -> None:
        self.last = text


def _sweeper(rule: str, sessions: int, trail: list[dict[str, Any]]) -> SweepRunner:
    sw = SweepRunner.__new__(SweepRunner)
    sw.trail, sw.session_rule, sw.finalist_sessions = trail, rule, sessions
    sw.session_log, sw.progress, sw._plan = [], _Quiet(), object()  # type: ignore[assignment]
    sw._write_sidecar = lambda sidecar, plan, entry_only=False: None  # type: ignore[method-assign]
    return sw


@pytest.mark.parametrize("rule,fit_tps,expect", [
    ("sequential", 80.0, ["ncmoe7", "fit"]),  # the pick leads: one more session of both, reverse order
    ("sequential", 90.0, []),  # fit leads: futility, no session
    ("fixed", 90.0, ["ncmoe8", "ncmoe7", "fit"]),
])
def test_run_finalists_is_the_one_loop(rule: str, fit_tps: float, expect: list[str], tmp_path: Path) -> None:
    first = [{"arm": "ncmoe7", "n_ctx": 4096, "status": "measured", "decode_tps": 85.0},
             {"arm": "ncmoe8", "n_ctx": 4096, "status": "measured", "decode_tps": 82.0},
             {"arm": "fit", "n_ctx": 4096, "status": "measured", "decode_tps": fit_tps}]
    sw = _sweeper(rule, 2, list(first))
    ran: list[str] = []

    def launch(spec: ArmSpec, n_ctx: int) -> tuple[Any, list[Any], float | None, float | None]:
        ran.append(spec.name)
        return None, [], 1000.0, 5000.0

    def outcome(end: Any, recs: list[Any]) -> tuple[bool, float | None, str | None]:
        return True, 84.0, None

    def record(spec: ArmSpec, s: SessionResult) -> dict[str, Any]:
        return {"arm": spec.name, "n_ctx": 4096, **s.trail_fields(), "role": "finalist"}

    specs = [ArmSpec(name=a, args=()) for a in ("ncmoe7", "ncmoe8", "fit")]
    order = sorted(expect, key=lambda a: -[s.name for s in specs].index(a))  # session 2 runs in reverse
    sw.run_finalists(specs, [Comparison("fit", "ncmoe7")], 4096, launch, outcome, tmp_path / "x.sweep.json", record)
    assert ran == order
    assert [t["arm"] for t in sw.trail[3:]] == order and all(t["block"] == 1 for t in sw.trail[3:])
    assert sw.session_log[0]["session"] == 2 and sw.session_log[0]["arms"] == [a for a in ("ncmoe7", "ncmoe8", "fit")
                                                                               if a in expect]


def test_the_sweeps_default_prompts() -> None:
    assert _buckets(None, None) == ("tok128",)
    assert _buckets(None, "mine.jsonl") == ()  # every bucket of the user's file
    assert _buckets("seed004,tok128", None) == ("seed004", "tok128")
