"""The HTML pages opened in a real headless chromium: what a person sees, and that nothing leaves the page.

docs/example-report.html (the committed H100 evidence), a load-level report (the committed H200
evidence) and the nightly index of the committed week of tiny-moe nights: the verdict's words,
every section's heading, every plot drawn at a non-zero size, no console error, no request.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from headless import open_page  # noqa: E402

from abtest.analysis.arms import load_evidence  # noqa: E402
from abtest.analysis.gate import evaluate_history  # noqa: E402
from abtest.analysis.nights import load_history  # noqa: E402
from abtest.analysis.report import build_report  # noqa: E402
from abtest.analysis.slo import parse_slo  # noqa: E402
from abtest.render.html import render_history_html, render_html  # noqa: E402
from abtest.render.plots import history_svgs, report_svgs  # noqa: E402
from abtest.render.report import sections  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
SHORT = [DOCS / "results" / "evidence" / f"{stamp}-gpt-oss-20b-like-q4_0-seed0.jsonl" for stamp in ("20261122T224950", "20261122T225625")]
LOAD = sorted((DOCS / "results" / "h200-2026-12-02-load").glob("*.jsonl.gz"))


def _squash(s: str) -> str:
    return re.sub(r"\s+", " ", s).strip()


def _assert_seen(view, report, n_figures: int) -> None:
    text = _squash(view.text)
    for line in report.verdict:
        assert _squash(line) in text, line
    for sec in sections(report):
        assert sec.title in view.headings, sec.title
    assert view.headings.index("Verdict") == 1  # right under the title
    assert len(view.graphics) == n_figures
    for g in view.graphics:
        assert g["width"] > 100 and g["height"] > 100, g
    assert view.console_errors == []
    assert view.requests == []


def test_example_report_page_shows_everything(chromium, tmp_path):
    """docs/example-report.html as committed (scripts/example-report.py makes it from SHORT)."""
    page = DOCS / "example-report.html"
    report = build_report(load_evidence(SHORT))
    view = open_page(page.as_uri(), screenshot=tmp_path / "shot.png")
    _assert_seen(view, report, len(report_svgs(report)))
    assert view.title.startswith("abtest report")
    for f in SHORT:
        assert f.name in view.text
    assert report.provenance[0].model_sha256 in view.text
    assert (tmp_path / "shot.png").stat().st_size > 10_000


def test_load_level_report_shows_the_levels_and_their_plot(chromium, tmp_path):
    report = build_report(load_evidence(LOAD), slo=parse_slo("ttft_p95<=500ms"))
    figures = report_svgs(report)
    assert "load_levels" in [n for n, _ in figures]
    page = tmp_path / "report.html"
    page.write_text(render_html(report, figures), encoding="utf-8")
    view = open_page(page.as_uri())
    _assert_seen(view, report, len(figures))
    assert "Load levels" in view.headings and "Capacity" in view.headings
    assert "baseline carries at least" in view.text  # the capacity line (analysis/capacity.py)


def test_nightly_index_shows_tonight_trends_and_links(chromium, tmp_path):
    sys.path.insert(0, str(ROOT / "tests" / "unit"))
    from test_nightly_index import unpack_week

    d = unpack_week(tmp_path / "nightly")
    result = evaluate_history(load_history(d))
    figures = history_svgs(result)
    (d / result.tonight / "report").mkdir()
    (d / result.tonight / "report" / "report.html").write_text("<!DOCTYPE html><title>r</title>")
    page = d / "index.html"
    page.write_text(render_history_html(result, figures, {result.tonight: f"{result.tonight}/report/report.html"}),
                    encoding="utf-8")
    view = open_page(page.as_uri())
    for h in ("Tonight", "Regressions", "Trends", "Nights"):
        assert h in view.headings
    assert f"abtest nightly {result.tonight}:" in view.text
    assert len(view.graphics) == len(figures) == 2
    assert all(g["width"] > 100 and g["height"] > 100 for g in view.graphics)
    assert view.console_errors == [] and view.requests == []


def test_sweep_page_shows_its_advice_and_plot(chromium, tmp_path):
    from abtest.analysis.sweep import report_from_file
    from abtest.render.html import render_sweep_html
    from abtest.render.sweep import render_markdown, write_plot

    rep = report_from_file(DOCS / "results" / "sweep" / "20261122T224604-gpt-oss-20b-like-q4_0-seed0.jsonl")
    png = write_plot(rep, tmp_path / "plot.png")
    assert png is not None
    page = tmp_path / "sweep.html"
    page.write_text(render_sweep_html(render_markdown(rep), "abtest sweep", png.read_bytes()), encoding="utf-8")
    view = open_page(page.as_uri())
    assert "with 9 GiB, use --n-cpu-moe 7" in _squash(view.text)
    assert "What limits speed" in view.headings
    assert len(view.graphics) == 1 and view.graphics[0]["width"] > 300 and view.graphics[0]["height"] > 100
    assert view.console_errors == [] and view.requests == []


def test_the_probe_sees_a_console_error_and_a_request(chromium, tmp_path):
    """The checks above can fail: a page that logs an error and fetches an image is caught."""
    page = tmp_path / "bad.html"
    page.write_text('<!DOCTYPE html><html><body><h1>x</h1><img src="http://127.0.0.1:9/x.png" width="10" height="10">'
                    '<script>console.error("boom")</script></body></html>')
    view = open_page(page.as_uri())
    assert any("boom" in e for e in view.console_errors)
    assert "http://127.0.0.1:9/x.png" in view.requests
    assert view.headings == ["x"]


@pytest.mark.parametrize("name", ["example-report.png", "example-nightly.png"])
def test_the_screenshots_are_committed(name):
    png = DOCS / name
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
