"""Rate levels (`abtest run --rate 5,40`): every session offers each rate in turn on one server of
`--parallel` slots, every record stamped with its level, and the report splits every table by the
rate — against the scripted slot model, whose capacity is known (2 slots, 8 tokens of 10 ms each:
25 req/s)."""

from __future__ import annotations

from pathlib import Path

import pytest
from faultkit import read_ok

from abtest.analysis.report import build_report
from abtest.analysis.slo import parse_slo
from abtest.config import RunConfig, validate
from abtest.errors import ConfigError
from abtest.measure.runner import Runner
from abtest.render.report import render, to_json


def test_rate_levels_are_validated() -> None:
    assert [c.rate for c in RunConfig(model="m", arms=(), rate_levels=(1.0, 4.0)).levels()] == [1.0, 4.0]
    assert RunConfig(model="m", arms=(), rate_levels=(1.0, 4.0), parallel=6).server_slots == 6
    assert RunConfig(model="m", arms=(), rate_levels=(1.0, 4.0), concurrency=3).server_slots == 3
    with pytest.raises(ConfigError, match="differ"):
        validate(RunConfig(model="m", arms=(), rate_levels=(2.0, 2.0)))
    with pytest.raises(ConfigError, match="> 0"):
        validate(RunConfig(model="m", arms=(), rate_levels=(1.0, 0.0)))
    with pytest.raises(ConfigError, match="closed loop"):
        validate(RunConfig(model="m", arms=(), rate_levels=(1.0, 2.0), concurrency_levels=(1, 2)))
    with pytest.raises(ConfigError, match="interleaved"):
        validate(RunConfig(model="m", arms=(), rate_levels=(1.0, 2.0), schedule="interleaved"))
    with pytest.raises(ConfigError, match="--parallel"):
        validate(RunConfig(model="m", arms=(), parallel=0))


def test_each_rate_level_runs_in_turn_and_every_table_splits_by_it(scripted, cfg_for, spawned,
                                                                     tmp_path: Path) -> None:
    server = scripted({"slots": {"n": 2, "step_ms": 10}})
    cfg = cfg_for(server, arms=["a", "b"], runs=8, warmup=1, max_tokens=8, rate_levels=(5.0, 40.0), parallel=2,
                  blocks=2, request_timeout_s=30.0)
    ev = read_ok(Runner(cfg).execute().evidence_path)
    assert len(ev.arm_starts) == 4 and len(spawned) == 4  # one server per session, not per level
    for start in ev.arm_starts:
        assert start.argv[start.argv.index("-np") + 1] == "2"
    for arm in ("a", "b"):
        for block in (0, 1):
            reqs = [r for r in ev.requests if r.arm == arm and r.block == block]
            assert [(r.warmup, r.load["rate_rps"], r.load["level"]) for r in reqs] == (
                [(True, 5.0, 0)] + [(False, 5.0, 0)] * 16 + [(True, 40.0, 1)] + [(False, 40.0, 1)] * 16)
            assert all(r.load["mode"] == "open" and r.load["levels"] == 2 and r.load["server_slots"] == 2
                       for r in reqs)
            assert all(r.t_scheduled_ns is not None for r in reqs if not r.warmup)

    report = build_report([ev], slo=parse_slo("ttft_p95<=60ms"))
    assert [(lr.group, lr.point.label) for lr in report.levels] == [("a", "r=5"), ("a", "r=40"), ("b", "r=5"),
                                                                    ("b", "r=40")]
    assert [lr.meets_slo for lr in report.levels] == [True, False, True, False]
    assert {s.bucket for s in report.buckets} == {"b r=5", "b r=40"}  # not pooled over the rates
    assert [(lr.group, lr.rate_rps) for lr in report.load] == [("a", 5.0), ("a", 40.0), ("b", 5.0), ("b", 40.0)]
    for c in report.capacity:
        assert c.kind == "rate" and c.status == "bracketed" and len(c.sessions) == 2
        assert all(s.low == 5.0 and s.high == 40.0 and s.load is not None and 5 <= s.load < 40 for s in c.sessions)
    (d,) = report.capacity_deltas
    assert (d.group, d.baseline, d.k_base, d.k_other) == ("b", "a", 2, 2)
    text = render(report, "markdown")
    assert "## Capacity" in text and "| a | r=5 |" in text and "| b | r=40 |" in text
    data = to_json(report)
    assert {c["arm"] for c in data["capacity"]} == {"a", "b"} and data["capacity_line"].startswith("Within")
    assert [lv["load"] for lv in data["levels"]] == ["r=5", "r=40", "r=5", "r=40"]
