from __future__ import annotations

import json
from pathlib import Path

import pytest
from factories import request as _rec

from abtest.errors import EvidenceError
from abtest.evidence import EvidenceWriter, check_writable, read_evidence
from abtest.records import SCHEMA_VERSION, RunEnd, RunManifest, TokenIds, VramSample


def _manifest() -> RunManifest:
    return RunManifest(run_id="r", abtest_version="0", started_at="t", argv=[], host={}, gpu={"available": False},
                       models=[], config={})


def test_round_trip_and_partial(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    with EvidenceWriter(path) as w:
        w.write(_manifest())
        w.write(_rec([(5, 1), (9, 2)], e2e_ms=1.0))
        w.write(VramSample("a", 1.0, None, None, None, None, None, 1.0, 2.0))
    ev = read_evidence(path)
    assert ev.partial and ev.problems == []
    assert ev.requests[0].events[1].n_tokens == 2 and ev.memory[0].host_rss_file_mib == 2.0
    first = json.loads(path.read_text().splitlines()[0])
    assert first["kind"] == "run_start" and first["schema"] == SCHEMA_VERSION
    with EvidenceWriter(path) as w:
        w.write(TokenIds(arm="a", seq=0, token_ids=[1, 2, 3], source="test"))
        w.write(RunEnd("t", 1.0, 1, 0, []))
    ev = read_evidence(path)
    assert not ev.partial and ev.requests[0].token_ids == [1, 2, 3]


def test_truncated_last_line_and_unknown_kind_are_reported_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    with EvidenceWriter(path) as w:
        w.write(_manifest())
    with open(path, "a") as fh:
        fh.write(json.dumps({"kind": "from_the_future", "schema": 1}) + "\n")
        fh.write('{"kind": "request", "arm": "a", "bu')
    ev = read_evidence(path)
    assert ev.manifest is not None
    assert any("truncated last line" in p for p in ev.problems)
    assert any("unknown record kind" in p for p in ev.problems)


def test_newer_schema_is_refused_per_line(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    path.write_text(json.dumps({"kind": "run_end", "schema": SCHEMA_VERSION + 1}) + "\n")
    ev = read_evidence(path)
    assert any("upgrade abtest" in p for p in ev.problems)


def test_unwritable_directory_fails_fast(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(EvidenceError, match="--out"):
        check_writable(blocker / "sub")


def test_committed_gpu_evidence_still_reads() -> None:
    """Old files stay readable: the H100 evidence in docs/results predates ArmStart.spawn_ns."""
    root = Path(__file__).resolve().parents[2] / "docs" / "results" / "evidence"
    files = sorted(root.glob("*.jsonl"))
    assert files
    for f in files:
        ev = read_evidence(f)
        assert ev.problems == [] and not ev.partial
        assert [a.arm for a in ev.arm_starts] == ["baseline", "ncmoe12", "cpu-moe"]
        assert all(a.spawn_ns == 0 for a in ev.arm_starts)
        assert all(r.ok for r in ev.requests)
