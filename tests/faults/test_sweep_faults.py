"""The sweep against the scripted server: a setting none of whose requests has a decode rate says
why, instead of failing with an empty note; a capacity sweep (--objective capacity) over settings
whose capacity differs by construction picks the one that carries more within the SLO."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from fakes import SCRIPTED_PY
from faultkit import read_ok

from abtest.analysis.capacity import BRACKETED, NONE_MET
from abtest.analysis.sweep import ranked, report_from_file
from abtest.measure.sweep import SweepRunner


def test_a_setting_without_any_decode_rate_says_why(scripted, cfg_for, spawned, tmp_path: Path) -> None:
    # 4 tokens a request: fewer than a decode rate needs (docs/metrics.md), so no setting has one
    cfg = cfg_for(scripted({"schedule": {"ttft_ms": 5, "itl_ms": 2}}), arms=["a"], max_tokens=4)
    runner = SweepRunner(cfg, "0,2", None, 512.0, 0.0)
    result = runner.execute()
    measured = [e for e in runner.trail if e.get("status") in ("measured", "failed")]
    assert measured and all(e["status"] == "failed" for e in measured)
    assert all("no request of this setting has a decode rate" in (e.get("error") or "") and "--max-tokens"
               in e["error"] for e in measured), measured
    assert result.evidence_path.exists()


def _per_setting_server(tmp_path: Path, scripts: dict[str, dict]) -> Path:
    """A `llama-server` stand-in that runs the scripted server with the script of its --n-cpu-moe
    value (``x``: none given), so that settings differ by construction."""
    d = tmp_path / "per-setting"
    d.mkdir()
    for n, script in scripts.items():
        (d / f"script-{n}.json").write_text(json.dumps(script))
    wrapper = d / "llama-server"
    wrapper.write_text(
        "#!/bin/sh\nn=x; prev=\nfor a in \"$@\"; do [ \"$prev\" = \"--n-cpu-moe\" ] && n=$a; prev=$a; done\n"
        f'exec {sys.executable} {SCRIPTED_PY} --script @{d}/script-$n.json "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


def test_a_capacity_sweep_picks_the_setting_that_carries_more_within_the_slo(cfg_for, spawned,
                                                                             tmp_path: Path) -> None:
    # two slots each (the script's n overrides -np); a TTFT within 100 ms needs a free slot:
    # N=0 steps 5 ms (a request ~45 ms: concurrency 4 waits one request, ~45 ms; 8 waits three,
    # ~135 ms), N=2 steps 15 ms (concurrency 4 waits ~135 ms), N=4 answers every request after
    # 150 ms (no level meets the SLO)
    server = _per_setting_server(tmp_path, {
        "0": {"slots": {"n": 2, "step_ms": 5}}, "2": {"slots": {"n": 2, "step_ms": 15}},
        "4": {"schedule": {"ttft_ms": 150, "itl_ms": 1}}, "x": {}})
    cfg = cfg_for(server, arms=["a"], runs=4, max_tokens=8, slo="ttft_p95<=100ms", concurrency_levels=(1, 2, 4, 8))
    runner = SweepRunner(cfg, "0,2,4", None, 512.0, 0.0, fit_competitor="off", objective="capacity")
    result = runner.execute()
    ev = read_ok(result.evidence_path)
    extra = ev.manifest.config["extra"]["sweep"]  # type: ignore[union-attr]
    assert extra["objective"] == "capacity" and extra["slo"] == "ttft_p95<=100ms"
    # every server has slots for the highest level; every measured request is stamped with its level
    assert all(s.argv[s.argv.index("-np") + 1] == "8" for s in ev.arm_starts)
    measured = [r for r in ev.requests if not r.warmup]
    assert {(r.load["level"], r.concurrency) for r in measured} == {(0, 1), (1, 2), (2, 4), (3, 8)}
    # the finalists (the two that carry most) ran a second session; the one meeting nothing did not
    assert sorted((s.arm, s.block) for s in ev.arm_starts) == [("ncmoe0", 0), ("ncmoe0", 1), ("ncmoe2", 0),
                                                               ("ncmoe2", 1), ("ncmoe4", 0)]
    rep = report_from_file(result.evidence_path)
    r0, r2, r4 = (rep.row(n) for n in (0, 2, 4))
    assert r0 is not None and r2 is not None and r4 is not None
    assert r4.capacity is not None and r4.capacity.status == NONE_MET
    assert r2.capacity is not None and r2.capacity.status == BRACKETED  # meets 1 and 2, fails 4
    assert all(s.high is not None and s.high <= 4 for s in r2.capacity.sessions)
    assert r0.capacity is not None and r0.capacity.load.mean > r2.capacity.load.mean
    assert rep.best == 0 and [r.n for r in ranked(rep.rows, None, "capacity")] == [0, 2, 4]
    assert rep.advice.startswith("with no VRAM budget (no GPU seen) within TTFT p95 ≤ 100 ms, use `--n-cpu-moe 0`")
    (v,) = rep.versus
    assert (v.base, v.other, v.metric) == ("ncmoe2", "ncmoe0", "capacity")
    assert any("`--n-cpu-moe 4`: meets the SLO at none of the levels run: ranked last" in n for n in rep.notes)
