"""The nightly index page from the committed week of real tiny-moe nights, and with a regression and its cause."""

from __future__ import annotations

import gzip
import html
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from abtest.analysis.gate import evaluate_history
from abtest.analysis.nights import Night, NightArm, load_history
from abtest.cli import cli
from abtest.render.html import render_history_html
from abtest.render.plots import history_svgs

WEEK = Path(__file__).resolve().parents[1] / "fixtures" / "nightly-week"


def unpack_week(dest: Path) -> Path:
    """The committed week as nightly.sh leaves it: DEST/YYYY-MM-DD/*.jsonl."""
    for gz in sorted(WEEK.glob("*/*.jsonl.gz")):
        out = dest / gz.parent.name / gz.name.removesuffix(".gz")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(gzip.decompress(gz.read_bytes()))
    return dest


def test_the_fixture_is_a_week_of_real_nights(tmp_path):
    nights = load_history(unpack_week(tmp_path))
    assert [n.night for n in nights] == [f"2026-11-{d}" for d in range(25, 31)] + ["2026-12-01"]
    assert all(n.arms and not n.missing for n in nights)


def test_index_links_each_night_report_and_shows_the_trends(tmp_path):
    d = unpack_week(tmp_path / "nightly")
    # two nights have their report page, as nightly.sh writes it
    for night in ("2026-11-30", "2026-12-01"):
        (d / night / "report").mkdir()
        (d / night / "report" / "report.html").write_text("<!DOCTYPE html>")
    res = CliRunner().invoke(cli, ["report", "--history", str(d), "--html", str(d / "index.html")])
    assert res.exit_code == 0, res.output
    page = (d / "index.html").read_text()
    for h in ("Tonight", "Regressions", "Trends", "Nights"):
        assert f"<h2>{h}</h2>" in page
    assert 'href="2026-12-01/report/report.html"' in page and 'href="2026-11-30/report/report.html"' in page
    assert 'href="2026-11-25/report' not in page  # no page, no link
    result = evaluate_history(load_history(d))
    keys = {s.key for s in result.series}
    assert page.count("<svg") == len(keys) == 2  # one figure per (model, arm)
    assert html.escape("abtest nightly 2026-12-01: ") in page and "no VRAM on any night" in page
    assert "<script" not in page and "default-src 'none'" in page
    external = [r for r in re.findall(r'(?:src|href)="([^"]*)"', page) if "://" in r or r.startswith("//")]
    assert not external


def _night(name: str, decode: float, build: str) -> Night:
    rng = np.random.default_rng(int(name.replace("-", "")))
    arm = NightArm(night=name, arm="cpu-moe", decode_tps=rng.normal(decode, decode * 0.01, 40),
                   ttft_ms=rng.normal(50.0, 0.5, 40), vram_peak_mib=2000.0, model="m",
                   provenance={"server_build": build, "driver": "580", "gpu": "H100"})
    return Night(name, [], {("m", "cpu-moe"): arm})


def test_a_regression_is_marked_with_its_provenance_change():
    nights = [_night(f"2026-11-{d:02d}", 100.0, "b6000") for d in range(20, 27)]
    nights.append(_night("2026-11-27", 80.0, "b6100"))  # a new build tonight, 20 % slower
    result = evaluate_history(nights)
    assert [c.metric for c in result.regressions] == ["decode_tps"]
    page = render_history_html(result, history_svgs(result))
    section = page[page.index("<h2>Regressions</h2>"):page.index("<h2>Trends</h2>")]
    assert "m · cpu-moe" in section and "provenance change: server build b6000 → b6100 (2026-11-27)" in section
    assert "regression" in page[:page.index("<h2>Regressions</h2>")]


@pytest.mark.parametrize("fmt", ["html"])
def test_format_html_prints_the_index(tmp_path, fmt):
    d = unpack_week(tmp_path / "n")
    res = CliRunner().invoke(cli, ["report", "--history", str(d), "--format", fmt])
    assert res.exit_code == 0 and res.output.startswith("<!DOCTYPE html>")
    shutil.rmtree(d)
