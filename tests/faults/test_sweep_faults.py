"""The sweep against the scripted server: a setting none of whose requests has a decode rate says
why, instead of failing with an empty note."""

from __future__ import annotations

from pathlib import Path

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
