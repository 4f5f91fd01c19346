"""Write (or check) the report snapshot of the committed H100 evidence: the reference a refactor must keep.

    python scripts/report-snapshot.py            # rewrite tests/snapshots/*.gz from docs/results
    python scripts/report-snapshot.py --check    # exit 1 and name the files that differ

tests/unit/test_report_snapshot.py runs the same comparison in the suite. A landing that changes
the report on purpose regenerates the snapshot and lists the differences in its notes.
"""

from __future__ import annotations

import argparse
import gzip
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SNAPSHOTS = ROOT / "tests" / "snapshots"
RESULTS = ROOT / "docs" / "results"

# name -> evidence files (relative to docs/results), as docs/results/README.md made the reports
SETS: dict[str, list[str]] = {
    "h100-short": ["evidence/20261122T224950-gpt-oss-20b-like-q4_0-seed0.jsonl",
                   "evidence/20261122T225625-gpt-oss-20b-like-q4_0-seed0.jsonl"],
    "h100-long": ["evidence/20261122T222427-gpt-oss-20b-like-q4_0-seed0.jsonl"],
    "h100-qwen": ["qwen/20261122T223418-qwen3-30b-a3b-like-q4_0-seed0.jsonl"],
}
SWEEP = "sweep/20261122T224604-gpt-oss-20b-like-q4_0-seed0.jsonl"


def render_all() -> dict[str, str]:
    """Snapshot file name -> its text, made with the code on this checkout."""
    sys.path.insert(0, str(ROOT))
    from abtest.analysis.arms import load_evidence
    from abtest.analysis.report import build_report
    from abtest.analysis.sweep import report_from_file
    from abtest.render.report import render
    from abtest.render.sweep import render_markdown

    out: dict[str, str] = {}
    for name, files in SETS.items():
        report = build_report(load_evidence([RESULTS / f for f in files]))
        report.abtest_version = "<version>"
        for fmt, ext in (("json", "json"), ("markdown", "md"), ("csv", "csv")):
            out[f"{name}.{ext}.gz"] = render(report, fmt)
    out["h100-sweep.md.gz"] = render_markdown(report_from_file(RESULTS / SWEEP))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare instead of writing")
    args = ap.parse_args()
    texts = render_all()
    if args.check:
        bad = [n for n, t in texts.items()
               if not (SNAPSHOTS / n).exists() or gzip.decompress((SNAPSHOTS / n).read_bytes()).decode() != t]
        for n in bad:
            print(f"differs: tests/snapshots/{n}")
        return 1 if bad else 0
    SNAPSHOTS.mkdir(parents=True, exist_ok=True)
    for n, t in texts.items():
        (SNAPSHOTS / n).write_bytes(gzip.compress(t.encode(), mtime=0))
        print(f"wrote tests/snapshots/{n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
