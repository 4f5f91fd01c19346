"""The report of the committed H100 evidence is what tests/snapshots says it is, byte for byte.

The snapshot was taken before the package was re-laid out; a change that alters the report on
purpose regenerates it (`python scripts/report-snapshot.py`) and lists the differences.
"""

from __future__ import annotations

import difflib
import gzip
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("report_snapshot", ROOT / "scripts" / "report-snapshot.py")
assert _spec and _spec.loader
snap = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(snap)

TEXTS = snap.render_all()


@pytest.mark.parametrize("name", sorted(TEXTS))
def test_report_matches_snapshot(name: str) -> None:
    want = gzip.decompress((snap.SNAPSHOTS / name).read_bytes()).decode()
    got = TEXTS[name]
    if got != want:
        diff = "".join(list(difflib.unified_diff(want.splitlines(True), got.splitlines(True), "snapshot", "now"))[:60])
        pytest.fail(f"{name} differs from tests/snapshots (regenerate only for an intended change):\n{diff}")


def test_snapshot_covers_every_set() -> None:
    assert {p.name for p in snap.SNAPSHOTS.glob("*.gz")} == set(TEXTS)
