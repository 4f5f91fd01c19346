"""Make docs/example-report.{html,md,png} from the committed H100 evidence and docs/example-nightly.png
from the committed week of tiny-moe nights.

    python scripts/example-report.py            # needs chromium for the screenshots (apt-get install -y chromium)

The HTML page and the Markdown are what `abtest report --format html|markdown` prints for the
short-bucket H100 files; the screenshots are taken by tests/headless.py (the browser tests' client).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SHORT = [DOCS / "results" / "evidence" / f"{stamp}-gpt-oss-20b-like-q4_0-seed0.jsonl"
         for stamp in ("20261122T224950", "20261122T225625")]


def main() -> int:
    sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "unit")]
    from headless import open_page
    from test_nightly_index import unpack_week

    from abtest.analysis.arms import load_evidence
    from abtest.analysis.gate import evaluate_history
    from abtest.analysis.nights import load_history
    from abtest.analysis.report import build_report
    from abtest.render.html import render_history_html, render_html
    from abtest.render.plots import history_svgs, report_svgs
    from abtest.render.report import render_markdown

    report = build_report(load_evidence(SHORT))
    page = DOCS / "example-report.html"
    page.write_text(render_html(report, report_svgs(report)), encoding="utf-8")
    md = DOCS / "example-report.md"
    head = md.read_text(encoding="utf-8").split("\n---\n", 1)[0]
    md.write_text(head + "\n---\n\n" + render_markdown(report).replace("# abtest report", "## abtest report", 1),
                  encoding="utf-8")
    open_page(page.as_uri(), screenshot=DOCS / "example-report.png")
    print(f"wrote {page}, {md}, {DOCS / 'example-report.png'}")

    with tempfile.TemporaryDirectory() as tmp:
        d = unpack_week(Path(tmp) / "nightly")
        links = {}
        for night_dir in sorted(p for p in d.iterdir() if p.is_dir()):
            r = build_report(load_evidence(sorted(night_dir.glob("*.jsonl"))))
            (night_dir / "report").mkdir()
            (night_dir / "report" / "report.html").write_text(render_html(r, report_svgs(r)), encoding="utf-8")
            links[night_dir.name] = f"{night_dir.name}/report/report.html"
        result = evaluate_history(load_history(d))
        index = d / "index.html"
        index.write_text(render_history_html(result, history_svgs(result), links), encoding="utf-8")
        open_page(index.as_uri(), screenshot=DOCS / "example-nightly.png")
    print(f"wrote {DOCS / 'example-nightly.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
