"""The load the runner applies, against the scripted server: blocks (server sessions in the order
A B B A, a restart each) and the open loop (every request sent when the schedule has it due, no
connection cap holding it back, the due time in its record)."""

from __future__ import annotations

import statistics
from pathlib import Path

from faultkit import read_ok

from abtest.measure.load import applied_load, session_order
from abtest.measure.runner import Runner


def test_session_order_is_counterbalanced() -> None:
    assert session_order(["a", "b"], 1) == [(0, "a"), (0, "b")]
    assert session_order(["a", "b"], 4) == [(0, "a"), (0, "b"), (1, "b"), (1, "a"),
                                             (2, "a"), (2, "b"), (3, "b"), (3, "a")]
    # every arm's mean position in time is the same once the blocks pair up
    order = session_order(["a", "b", "c"], 2)
    pos = {n: statistics.mean(i for i, (_, m) in enumerate(order) if m == n) for n in "abc"}
    assert len(set(pos.values())) == 1


def test_blocks_restart_every_arm_in_abba_order(scripted, cfg_for, spawned, tmp_path: Path) -> None:
    cfg = cfg_for(scripted({}), arms=["a", "b"], blocks=2, runs=2, warmup=1)
    result = Runner(cfg).execute()
    ev = read_ok(result.evidence_path)
    assert [(s.arm, s.block) for s in ev.arm_starts] == [("a", 0), ("b", 0), ("b", 1), ("a", 1)]
    assert [(e.arm, e.block, e.status) for e in ev.arm_ends] == [("a", 0, "ok"), ("b", 0, "ok"),
                                                                  ("b", 1, "ok"), ("a", 1, "ok")]
    assert len(spawned) == 4 and len({s.pid for s in ev.arm_starts}) == 4  # a server per session
    for arm in ("a", "b"):
        reqs = [r for r in ev.requests if r.arm == arm]
        assert [r.seq for r in reqs] == list(range(len(reqs)))  # (arm, seq) names one request
        assert [r.block for r in reqs] == [0] * 5 + [1] * 5  # 1 warm-up + 2 runs x 2 prompts each
        measured = [r for r in reqs if not r.warmup]
        assert sorted({r.run_index for r in measured}) == [0, 1, 2, 3]  # runs go on across blocks
        assert all(r.load["mode"] == "closed" and r.load["concurrency"] == 1 for r in reqs)
    assert {m.block for m in ev.memory if m.arm == "b"} == {0, 1}
    logs = [Path(s.log_path).name for s in ev.arm_starts]
    assert len(set(logs)) == 4 and logs[2].endswith(".b.b1.log")
    assert result.n_requests == 16


def test_an_arm_that_fails_to_start_is_not_started_again(scripted, cfg_for, spawned, tmp_path: Path) -> None:
    bad = scripted({"load_fault": "exit", "load_s": 0.05})
    cfg = cfg_for(bad, arms=["a"], blocks=3)
    result = Runner(cfg).execute()
    ev = read_ok(result.evidence_path)
    assert len(spawned) == 1  # one launch, not three
    assert [(e.block, e.status) for e in ev.arm_ends] == [(0, "failed"), (1, "failed"), (2, "failed")]
    assert "not started in block 1" in (ev.arm_ends[1].error or "")
    assert result.arms_failed == ["a"]


def test_open_loop_sends_on_schedule_without_a_connection_cap(scripted, cfg_for, spawned, tmp_path: Path) -> None:
    """The issue's case: 40 requests at 40 req/s, TTFT 100 ms, concurrency 1. A connection cap of
    concurrency + 4 held requests back (scheduled -> first token 572 ms p50 while the record said
    101 ms); now each is sent when due and says when that was."""
    server = scripted({"schedule": {"ttft_ms": 100, "itl_ms": 10}})  # ~250 ms a request: ~10 in flight
    cfg = cfg_for(server, arms=["a"], runs=20, rate=40.0, max_tokens=16, request_timeout_s=20.0)
    ev = read_ok(Runner(cfg).execute().evidence_path)
    reqs = [r for r in ev.requests if not r.warmup]
    assert len(reqs) == 40 and all(r.ok for r in reqs)
    assert all(r.t_scheduled_ns is not None for r in reqs)
    lag_ms = sorted((r.t_send_ns - r.t_scheduled_ns) / 1e6 for r in reqs)  # type: ignore[operator]
    # a busy 2-core box delays a send by milliseconds, never by the ~100 ms a waiting slot costs
    assert statistics.median(lag_ms) < 25 and lag_ms[-1] < 90, lag_ms
    from_schedule = [(r.t_send_ns - r.t_scheduled_ns) / 1e6 + (r.ttft_ms or 0) for r in reqs]  # type: ignore[operator]
    assert statistics.median(from_schedule) < 150, from_schedule
    assert max(r.load["in_flight_at_send"] for r in reqs) >= 7  # ~10 overlap at 40/s x 250 ms
    assert all(r.load["mode"] == "open" and r.load["rate_rps"] == 40.0 and r.load["connection_cap"] is None
               for r in reqs)


def test_applied_load_labels() -> None:
    from abtest.config import RunConfig

    closed = applied_load(RunConfig(model="m", arms=(), concurrency=4))
    assert closed["mode"] == "closed" and closed["concurrency"] == 4 and closed["server_slots"] == 4
    opened = applied_load(RunConfig(model="m", arms=(), rate=2.0, arrivals="poisson", concurrency=8))
    assert opened == {"mode": "open", "concurrency": None, "rate_rps": 2.0, "arrivals": "poisson",
                      "connection_cap": None, "server_slots": 8}
    assert applied_load(RunConfig(model="m", arms=(), schedule="interleaved"))["mode"] == "interleaved"


def test_the_report_shows_latency_from_the_schedule_and_a_growing_queue(scripted, cfg_for, spawned,
                                                                        tmp_path: Path) -> None:
    """A server whose answers slow down request after request (a queue building up) is flagged;
    one that keeps its pace is not; both show TTFT from the send beside TTFT from the schedule."""
    from abtest.analysis.report import build_report
    from abtest.render.report import render

    growing = {str(i): {"ttft_ms": 20 + 15 * i} for i in range(20)}
    ev = {}
    for name, script in (("steady", {"schedule": {"ttft_ms": 20, "itl_ms": 2}}),
                         ("growing", {"schedule": {"ttft_ms": 20, "itl_ms": 2}, "requests": growing})):
        cfg = cfg_for(scripted(script), arms=["a"], runs=10, rate=20.0, out_dir=str(tmp_path / name))
        ev[name] = read_ok(Runner(cfg).execute().evidence_path)
    rows = {name: build_report([e]).load for name, e in ev.items()}
    (steady,), (grow,) = rows["steady"], rows["growing"]
    assert not steady.queue_growing and grow.queue_growing
    assert steady.n == grow.n == 20 and steady.rate_rps == 20.0
    assert grow.ttft_from_schedule_p99_ms is not None and grow.ttft_from_schedule_p99_ms > 200
    assert steady.ttft_from_schedule_p50_ms is not None and steady.ttft_p50_ms is not None
    assert steady.ttft_from_schedule_p50_ms >= steady.ttft_p50_ms  # the send lag is never negative
    text = render(build_report([ev["growing"]]), "markdown")
    assert "## Open loop" in text and "↑" in text
    closed = cfg_for(scripted({}), arms=["a"], out_dir=str(tmp_path / "closed"))
    assert build_report([read_ok(Runner(closed).execute().evidence_path)]).load == []


def test_concurrency_levels_run_in_turn_in_every_session(scripted, cfg_for, spawned, tmp_path: Path) -> None:
    """`--concurrency 1,4`: one server per session, started with -np 4 (the highest level); each
    level in turn, low to high, with its own warm-up; every record labelled with its level."""
    cfg = cfg_for(scripted({"schedule": {"ttft_ms": 5, "itl_ms": 2}}), arms=["a"], runs=2, warmup=1,
                  concurrency_levels=(1, 4), blocks=2)
    result = Runner(cfg).execute()
    ev = read_ok(result.evidence_path)
    assert len(ev.arm_starts) == 2 and len(spawned) == 2  # levels share a session's server
    for start in ev.arm_starts:
        argv = start.argv
        assert argv[argv.index("-np") + 1] == "4"
    for block in (0, 1):
        reqs = [r for r in ev.requests if r.block == block]
        assert [(r.warmup, r.concurrency) for r in reqs] == [(True, 1)] + [(False, 1)] * 4 + [(True, 4)] + [(False, 4)] * 4
        assert [r.load["level"] for r in reqs] == [0] * 5 + [1] * 5 and all(r.load["levels"] == 2 for r in reqs)
        assert [r.load["concurrency"] for r in reqs if not r.warmup] == [1] * 4 + [4] * 4
    assert sorted(r.seq for r in ev.requests) == list(range(20))  # written as they end: c=4 may reorder
    assert result.n_requests == 16 and ev.arm_ends[0].n_requests == 8


def test_levels_are_validated() -> None:
    import pytest

    from abtest.config import RunConfig, validate
    from abtest.errors import ConfigError

    with pytest.raises(ConfigError, match="differ"):
        validate(RunConfig(model="m", arms=(), concurrency_levels=(2, 2)))
    with pytest.raises(ConfigError, match="closed loop"):
        validate(RunConfig(model="m", arms=(), concurrency_levels=(1, 2), rate=3.0))
    with pytest.raises(ConfigError, match="interleaved"):
        validate(RunConfig(model="m", arms=(), concurrency_levels=(1, 2), schedule="interleaved"))
    assert RunConfig(model="m", arms=(), concurrency_levels=(1, 8, 2)).server_slots == 8


def test_the_report_shows_each_level_of_a_slot_limited_server(scripted, cfg_for, spawned, tmp_path: Path) -> None:
    """A 2-slot server (the scripted slot model, 10 ms a step): at concurrency 1 one request is
    decoded at a time, at 4 two are and two wait — throughput rises to about twice, TTFT p95
    rises as requests queue. The Load levels section shows both levels of every arm."""
    from abtest.analysis.report import build_report
    from abtest.render.report import render

    server = scripted({"slots": {"n": 2, "step_ms": 10}})
    cfg = cfg_for(server, arms=["a", "b"], runs=4, warmup=1, max_tokens=12, concurrency_levels=(1, 4),
                  request_timeout_s=30.0)
    ev = read_ok(Runner(cfg).execute().evidence_path)
    rows = build_report([ev]).levels
    assert [(r.group, r.concurrency) for r in rows] == [("a", 1), ("a", 4), ("b", 1), ("b", 4)]
    for arm in ("a", "b"):
        one, four = (r for r in rows if r.group == arm)
        assert one.n == four.n == 8 and one.n_failed == four.n_failed == 0
        assert one.req_per_s and four.req_per_s and four.req_per_s > 1.4 * one.req_per_s  # 2 slots, not 1
        assert one.ttft_p95_ms and four.ttft_p95_ms and four.ttft_p95_ms > one.ttft_p95_ms  # the queue
    text = render(build_report([ev]), "markdown")
    assert "## Load levels" in text
    # within a TTFT p95 of 60 ms (one 10 ms step to the first token, alone; a queued request waits
    # for a whole request of 12 steps): concurrency 1 meets it, 4 does not
    from abtest.analysis.slo import parse_slo

    judged = build_report([ev], slo=parse_slo("ttft_p95<=60ms"))
    assert [r.meets_slo for r in judged.levels] == [True, False, True, False]
    assert all(r.goodput_rps is not None and r.req_per_s and r.goodput_rps <= r.req_per_s + 1e-9
               for r in judged.levels)
    text = render(judged, "markdown")
    # each session's capacity lies between the level met (1) and the one that was not (4)
    assert [(c.group, c.kind, c.status) for c in judged.capacity] == [("a", "concurrency", "bracketed"),
                                                                      ("b", "concurrency", "bracketed")]
    assert all(c.load.mean is not None and 1 <= c.load.mean < 4 for c in judged.capacity)
    assert "## Capacity" in text
    verdict = text.split("## Verdict", 1)[1].split("##", 1)[0]
    assert "Within TTFT p95 ≤ 60 ms: a carries " in verdict  # the capacity leads the verdict
    assert "at concurrency " in verdict and "(one session: no interval)" in verdict
    from abtest.render.plots import write_report_plots

    written = write_report_plots(judged, tmp_path / "plots")
    assert (tmp_path / "plots" / "load_levels.png") in written
    assert (tmp_path / "plots" / "load_levels.png").stat().st_size > 5000
    assert (tmp_path / "plots" / "load_metrics.png") in written
