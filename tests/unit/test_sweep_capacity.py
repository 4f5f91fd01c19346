"""`abtest sweep --objective capacity`: the score per setting, the pick, the ranking (none met last,
at-least flagged), the runner-up comparison over sessions and the advice, from crafted level
records; and the flags the objective needs."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from abtest.analysis.capacity import AT_LEAST, BRACKETED, NONE_MET
from abtest.analysis.slo import parse_slo
from abtest.analysis.sweep import (
    CENSORED,
    arm_capacity_of,
    build_sweep_report,
    capacity_ratio,
    capacity_score,
    pick_best,
    ranked,
)
from abtest.config import RunConfig
from abtest.errors import ConfigError, EvidenceError
from abtest.evidence import EvidenceWriter, read_evidence
from abtest.measure.sweep import check_objective, highest_level_met, make_plan
from abtest.models.desc import preset_model
from abtest.models.vram import ContextParams
from abtest.records import ArmEnd, ArmStart, RequestRecord, RunEnd, RunManifest, TokenEvent
from abtest.render.sweep import render_markdown

SLO = "ttft_p95<=500ms"
LEVELS = (1, 2, 4, 8)
PER_LEVEL = 8  # requests per level, each 1 s end to end, c in flight: c req/s


def level_requests(arm: str, ttft_of: Callable[[int], float], block: int = 0, fail_at: int | None = None
                   ) -> list[RequestRecord]:
    """One server session at every level of LEVELS: TTFT ttft_of(c) ms for each request at level
    c, sent in waves of c, each 1 s long (req/s = 8 / ⌈8/c⌉ s = c)."""
    out = []
    seq = 0
    t_level = 0
    for i, c in enumerate(LEVELS):
        ttft = ttft_of(c)
        e2e = 1000.0
        for k in range(PER_LEVEL):
            t0 = int(ttft * 1e6)
            events = [TokenEvent(t0 + j * 1_000_000, 1) for j in range(16)]
            failed = fail_at is not None and c >= fail_at
            out.append(RequestRecord(
                arm=arm, bucket="b", prompt_id=f"p{k}", run_index=k, seq=seq, warmup=False, endpoint="completion",
                concurrency=c, t_send_ns=t_level + (k // c) * int(e2e * 1e6), client_overhead_ms=0.0,
                status=500 if failed else 200, error="boom" if failed else None, ttft_ms=None if failed else ttft,
                e2e_ms=None if failed else e2e, prompt_tokens=16, completion_tokens=0 if failed else 16,
                server_predicted_n=16, events=[] if failed else events,
                chunk_times_ns=[] if failed else [e.t_ns for e in events], token_ids=None, text="", timings={},
                cache_n=0, block=block, load={"mode": "closed", "concurrency": c, "level": i, "levels": len(LEVELS)},
            ))
            seq += 1
        t_level += 10_000_000_000
    return out


def fabricate(path: Path, settings: dict[int, list[Callable[[int], float]]], slo: str | None = SLO,
              objective: str = "capacity") -> Path:
    """A CPU-box sweep (no budget, no NVML) of these settings: one TTFT model per server session."""
    lay = preset_model("gpt-oss-20b-like")
    plan = make_plan(lay, "/m/g.gguf", ContextParams(n_ctx=4096, n_parallel=8), sorted(settings), None, None,
                     backend="cpu")
    extra = {**plan.to_extra(), "objective": objective, "slo": slo, "concurrency_levels": list(LEVELS)}
    with EvidenceWriter(path, fsync=False) as w:
        w.write(RunManifest("r", "0", "t", ["abtest", "sweep"], {}, {"available": False, "reason": "no GPU"}, [],
                            {"extra": {"sweep": extra}}))
        for n, sessions in settings.items():
            for b, ttft_of in enumerate(sessions):
                arm = f"ncmoe{n}"
                w.write(ArmStart(arm, "/m", "s" * 64, "llama-server", {}, ["llama-server"], 1, 1, 1.0, "t", "x.log",
                                 block=b))
                for r in level_requests(arm, ttft_of, b):
                    w.write(r)
                w.write(ArmEnd(arm, "ok", None, 0, 1.0, PER_LEVEL * len(LEVELS), 0, {}, {}, "x.log", block=b))
        w.write(RunEnd("t", 1.0, 0, 0, []))
    return path


def scale(ms_per_c: float) -> Callable[[int], float]:
    return lambda c: ms_per_c * c


def test_capacity_ranks_settings_none_met_last_and_names_the_capacity(tmp_path: Path) -> None:
    # ncmoe2: TTFT 100·c (and 105·c) ms: meets 4, fails 8 -> concurrency 5 and 4 (whole levels);
    # ncmoe4: 200·c (210·c): meets 2, fails 4 -> 2; ncmoe6: 600 ms at every level: none met
    rep = build_sweep_report(read_evidence(fabricate(tmp_path / "s.jsonl", {
        2: [scale(100), scale(105)], 4: [scale(200), scale(210)], 6: [lambda c: 600.0]})))
    assert rep.objective == "capacity" and [str(o) for o in rep.slo] == ["TTFT p95 ≤ 500 ms"]
    r2, r4, r6 = (rep.row(n) for n in (2, 4, 6))
    assert r2 is not None and r4 is not None and r6 is not None
    assert r2.capacity is not None and r2.capacity.status == BRACKETED
    assert [s.load for s in r2.capacity.sessions] == [5.0, 4.0]
    assert [s.status for s in r4.capacity.sessions] == [BRACKETED, BRACKETED]  # type: ignore[union-attr]
    assert r6.capacity is not None and r6.capacity.status == NONE_MET and capacity_score(r6) == -math.inf
    # the score is the req/s carried (interpolated like the load), the mean over sessions
    assert capacity_score(r2) == pytest.approx((5.0 + 4.0) / 2)
    assert capacity_score(r4) == pytest.approx(2.0)
    assert [r.n for r in ranked(rep.rows, None, "capacity")] == [2, 4, 6]  # none met: last
    assert rep.best == 2 == pick_best(rep.rows, None, "capacity")
    assert re.fullmatch(r"with no VRAM budget \(no GPU seen\) within TTFT p95 ≤ 500 ms, use `--n-cpu-moe 2`: "
                        r"[0-9.]+ GiB predicted, carries 4\.50 req/s \([0-9.]+–[0-9.]+\) at concurrency "
                        r"4\.50 \([0-9.]+–[0-9.]+\)", rep.advice), rep.advice
    # the pick against its runner-up: capacity over sessions, with an interval (2 vs 2)
    (v,) = rep.versus
    assert (v.base, v.other, v.metric) == ("ncmoe4", "ncmoe2", "capacity")
    assert v.ratio.delta == pytest.approx(4.5 / 2.0 - 1, rel=1e-6)
    lo, hi = v.interval()
    assert math.isfinite(lo) and lo < v.ratio.delta < hi
    assert any("`--n-cpu-moe 6`: meets the SLO at none of the levels run: ranked last" in n for n in rep.notes)
    md = render_markdown(rep)
    assert "capacity req/s" in md and "none met" in md and "@c4.5" in md and "Δ capacity" in md


def test_an_at_least_capacity_is_flagged_as_a_lower_bound(tmp_path: Path) -> None:
    # ncmoe0 meets 500 ms at every level (50·c): at least 8 req/s at 8; ncmoe3 is bracketed
    rep = build_sweep_report(read_evidence(fabricate(tmp_path / "s.jsonl", {0: [scale(50)], 3: [scale(100)]})))
    r0 = rep.row(0)
    assert r0 is not None and r0.capacity is not None and r0.capacity.status == AT_LEAST
    assert rep.best == 0
    assert "carries at least 8.00 req/s at concurrency 8 (every level run met the SLO)" in rep.advice
    assert any("`--n-cpu-moe 0`: every level run met the SLO" in n and "lower bound" in n for n in rep.notes)
    # a censored capacity has no value to compare: no ratio, said so
    (v,) = rep.versus
    assert v.ratio.reason == CENSORED and math.isnan(v.ratio.delta)
    assert "≥ 8.00 @c8" in render_markdown(rep)


def test_no_setting_meeting_the_slo_is_no_pick(tmp_path: Path) -> None:
    rep = build_sweep_report(read_evidence(fabricate(tmp_path / "s.jsonl", {0: [lambda c: 900.0],
                                                                             6: [lambda c: 700.0]})))
    assert rep.best is None
    assert rep.advice.endswith("no setting meets the SLO, even at the lowest level run (concurrency 1): "
                               "relax the SLO or lower --concurrency"), rep.advice


def test_failed_requests_count_as_misses() -> None:
    slo = parse_slo(SLO)
    # fast, but every request at 4 and above fails: the capacity stops below 4
    cap = arm_capacity_of("a", level_requests("a", scale(10), fail_at=4), slo)
    assert cap is not None and cap.status == BRACKETED
    (s,) = cap.sessions
    assert s.low == 2 and s.high == 4 and s.load == 2
    assert capacity_ratio(cap, None).reason == CENSORED
    # the measure side's quick order of finalists judges levels the same way
    assert highest_level_met(level_requests("a", scale(10), fail_at=4), slo) == (2, pytest.approx(2.0))
    assert highest_level_met(level_requests("a", lambda c: 900.0), slo) == (None, None)


def test_a_capacity_sweep_without_its_slo_is_refused(tmp_path: Path) -> None:
    with pytest.raises(EvidenceError, match="without an SLO"):
        build_sweep_report(read_evidence(fabricate(tmp_path / "s.jsonl", {0: [scale(50)]}, slo=None)))
    with pytest.raises(EvidenceError, match="objective 'goodput'"):
        build_sweep_report(read_evidence(fabricate(tmp_path / "t.jsonl", {0: [scale(50)]}, objective="goodput")))


def test_the_objective_checks_its_flags() -> None:
    base = RunConfig(model="m", arms=())
    check_objective(base, "speed")
    for cfg, objective, words in [
        (base, "capacity", "give --slo"),
        (RunConfig(model="m", arms=(), slo=SLO), "speed", "for --objective capacity"),
        (RunConfig(model="m", arms=(), slo=SLO, concurrency_levels=(4,)), "capacity", "two or more"),
        (RunConfig(model="m", arms=(), slo=SLO, rate_levels=(1.0, 2.0)), "capacity", "rate levels"),
        (RunConfig(model="m", arms=(), slo=SLO, concurrency_levels=(1, 2)), "goodput", "use speed or capacity"),
    ]:
        with pytest.raises(ConfigError, match=words):
            check_objective(cfg, objective)
    with pytest.raises(ConfigError, match="frontier"):
        check_objective(RunConfig(model="m", arms=(), slo=SLO, concurrency_levels=(1, 2)), "capacity", [4096, 8192])
    check_objective(RunConfig(model="m", arms=(), slo=SLO, search="concurrency"), "capacity")


def test_the_capacity_comparison_of_one_session_a_side_is_an_estimate_without_an_interval() -> None:
    """`abtest sweep --finalist-sessions 1`: the pick against its runner-up is the ratio of the
    two sessions' capacities, no interval, and the words say which flag gives one."""
    from abtest.analysis.capacity import ArmCapacity, SessionCapacity, session_interval
    from abtest.analysis.loadpoint import CONCURRENCY
    from abtest.analysis.stratified import ONE_SESSION
    from abtest.analysis.sweep import Versus, _pct_ci

    def arm(v: float) -> ArmCapacity:
        return ArmCapacity("x", CONCURRENCY, (SessionCapacity(v, v, BRACKETED),), session_interval([v]),
                           session_interval([v]), BRACKETED, "")

    r = capacity_ratio(arm(2.0), arm(4.5))
    assert r.reason == ONE_SESSION and r.delta == pytest.approx(1.25) and math.isnan(r.interval(0.95)[0])
    assert _pct_ci(Versus("a", "b", r, "capacity")).startswith("+125.0 % (estimate only: 1 vs 1 server sessions")
