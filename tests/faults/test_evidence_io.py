"""Evidence files under stress: two runs started in the same second, abtest killed by SIGKILL
mid-run, a disk that fills up mid-run. What was measured is kept, nothing is merged, the end is
one line."""

from __future__ import annotations

from pathlib import Path

import pytest
from faultkit import assert_no_orphans, read_ok

from abtest.measure import runner as runner_mod
from abtest.measure.runner import Runner


def test_two_runs_in_the_same_second_write_two_files_and_two_logs(scripted, cfg_for, spawned, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The names have a 1-second stamp: two runs that share it (and --out) must not share a file."""
    out = tmp_path / "evidence"
    same = out / "20261201T000000-tiny.jsonl"
    monkeypatch.setattr(runner_mod, "evidence_path", lambda cfg, model: same)
    cfg = cfg_for(scripted({}), arms=["a"])
    first = Runner(cfg).execute()
    second = Runner(cfg).execute()
    assert first.evidence_path != second.evidence_path
    assert sorted(out.glob("*.jsonl")) == sorted([first.evidence_path, second.evidence_path])
    logs = []
    for result in (first, second):
        ev = read_ok(result.evidence_path)
        assert len(ev.arm_starts) == 1 and len(ev.requests) == result.n_requests == 2  # not merged: n not doubled
        assert ev.manifest is not None and ev.manifest.run_id == result.evidence_path.stem
        logs.append(Path(ev.arm_starts[0].log_path))
    assert logs[0] != logs[1]
    for log in logs:
        assert log.read_text().count("# abtest: starting") == 1, log
    assert_no_orphans(spawned, marker=tmp_path)
