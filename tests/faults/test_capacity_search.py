"""The capacity search (`abtest run --rate auto --slo ...`) against the scripted slot model (2
slots, 8 tokens of 10 ms: 25 req/s at most): each probe a load level of one server session,
stamped on every record, ramped then bisected, and the report's capacity inside the last bracket."""

from __future__ import annotations

from pathlib import Path

import pytest
from faultkit import read_ok

from abtest.analysis.report import build_report
from abtest.analysis.slo import parse_slo
from abtest.config import ArmSpec, RunConfig, validate
from abtest.errors import ConfigError
from abtest.measure.runner import Runner


def test_a_search_needs_an_slo_and_picks_its_own_levels() -> None:
    with pytest.raises(ConfigError, match="--slo"):
        validate(RunConfig(model="m", arms=(), search="rate"))
    with pytest.raises(ConfigError, match="own levels"):
        validate(RunConfig(model="m", arms=(), search="rate", slo="ttft_p95<=1s", rate_levels=(1.0, 2.0)))
    with pytest.raises(ConfigError, match="whole number"):
        validate(RunConfig(model="m", arms=(), search="concurrency", slo="ttft_p95<=1s", search_max=2.5))
    assert RunConfig(model="m", arms=(), search="concurrency", slo="ttft_p95<=1s").server_slots == 32
    assert RunConfig(model="m", arms=(), search="concurrency", slo="x", search_max=8).server_slots == 8
    with pytest.raises(ConfigError, match="--slo term"):
        Runner(RunConfig(model="m", arms=(ArmSpec("a", ()),), search="rate", slo="ttft<=1s"))


def test_a_rate_search_ramps_bisects_and_stamps_every_probe(scripted, cfg_for, spawned, tmp_path: Path) -> None:
    server = scripted({"slots": {"n": 2, "step_ms": 10}})
    cfg = cfg_for(server, arms=["a"], runs=6, warmup=1, max_tokens=8, search="rate", slo="ttft_p95<=60ms",
                  search_start=4.0, search_time_s=120.0, parallel=2, request_timeout_s=30.0)
    ev = read_ok(Runner(cfg).execute().evidence_path)
    assert len(spawned) == 1  # one server for every probe
    measured = [r for r in ev.requests if not r.warmup]
    assert all(r.load["search"] == "rate" and r.load["levels"] is None and r.load["mode"] == "open"
               for r in ev.requests)
    probes = list(dict.fromkeys((r.load["level"], r.load["rate_rps"]) for r in measured))
    assert [i for i, _ in probes] == list(range(len(probes)))  # one level per probe, in order
    rates = [x for _, x in probes]
    assert rates[:2] == [4.0, 8.0] and len(set(rates)) == len(rates)  # ramp by 2, nothing probed twice
    assert all(sum(1 for r in measured if r.load["rate_rps"] == x) == 12 for x in rates)
    assert sum(1 for r in ev.requests if r.warmup) == len(rates)  # a warm-up per probe

    report = build_report([ev], slo=parse_slo("ttft_p95<=60ms"))
    met = [lr.point.value for lr in report.levels if lr.meets_slo]
    failed = [lr.point.value for lr in report.levels if not lr.meets_slo]
    low = max(x for x in met if x < min(failed))
    assert (min(failed) - low) / low <= 0.02  # bisected to the search's tolerance
    (c,) = report.capacity
    assert c.kind == "rate" and c.status == "bracketed"
    (s,) = c.sessions
    assert s.low is not None and s.high is not None and s.load is not None and s.low <= s.load <= s.high
    assert (s.high - s.low) / s.low <= 0.02


def test_the_time_bound_ends_the_search(scripted, cfg_for, spawned, tmp_path: Path) -> None:
    server = scripted({"slots": {"n": 2, "step_ms": 10}})
    cfg = cfg_for(server, arms=["a"], runs=2, warmup=0, max_tokens=8, search="rate", slo="ttft_p95<=60ms",
                  search_start=4.0, search_time_s=0.05, parallel=2, request_timeout_s=30.0)
    ev = read_ok(Runner(cfg).execute().evidence_path)
    assert {r.load["rate_rps"] for r in ev.requests} == {4.0}  # the second probe would pass 0.05 s


def test_a_concurrency_search_ends_between_neighbours(scripted, cfg_for, spawned, tmp_path: Path) -> None:
    """2 slots: concurrency 2 never queues (TTFT one 10 ms step), 3 makes one request in three wait
    a whole request (8 steps): the search must end with the bracket 2–3."""
    server = scripted({"slots": {"n": 2, "step_ms": 10}})
    cfg = cfg_for(server, arms=["a"], runs=6, warmup=1, max_tokens=8, search="concurrency", slo="ttft_p95<=60ms",
                  search_max=8, request_timeout_s=30.0)
    ev = read_ok(Runner(cfg).execute().evidence_path)
    (start,) = ev.arm_starts
    assert start.argv[start.argv.index("-np") + 1] == "8"  # slots for the highest concurrency it may probe
    probed = list(dict.fromkeys(r.load["concurrency"] for r in ev.requests if not r.warmup))
    assert probed[:3] == [1, 2, 4] and all(r.load["search"] == "concurrency" for r in ev.requests)
    (c,) = build_report([ev], slo=parse_slo("ttft_p95<=60ms")).capacity
    (s,) = c.sessions
    assert (s.low, s.high) == (2, 3) and c.kind == "concurrency"
