"""What a person reads: the HTML page, the terminal at 80 columns, the wording of deltas, the memory labels."""

from __future__ import annotations

import html
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers_evidence import fabricate
from rich.console import Console

from abtest.analysis.arms import load_evidence
from abtest.analysis.metrics import METRIC_BY_KEY
from abtest.analysis.report import build_report
from abtest.analysis.verdict import change_words
from abtest.cli import cli
from abtest.fmt import fmt_speed, speed_factor
from abtest.render.html import render_html
from abtest.render.plots import report_svgs
from abtest.render.report import breakdown_label, render_markdown, sections, terminal_renderable
from abtest.render.tables import ColumnGroup, Table, fit_width, layout_widths, may_wrap, records

ROOT = Path(__file__).resolve().parents[2]
H100_LONG = ROOT / "docs" / "results" / "evidence" / "20261122T222427-gpt-oss-20b-like-q4_0-seed0.jsonl"


@pytest.fixture(scope="module")
def h100():
    return build_report(load_evidence([H100_LONG]))


# ------------------------------------------------------------------------------------------ wording


def test_a_large_change_reads_as_a_factor_and_a_small_one_as_a_percentage():
    assert speed_factor(-0.8, True) == pytest.approx((5.0, True))  # 1/0.2: five times slower
    assert speed_factor(4.0, False) == pytest.approx((5.0, True))  # a time five times as long
    assert speed_factor(-0.5, False) == pytest.approx((2.0, False))  # half the time: twice as fast
    assert fmt_speed(-0.8, True, -0.82, -0.78) == "5.0× slower (4.5–5.6×)"
    assert fmt_speed(-0.1, True) == ""  # 1.1×: "−10 %" reads better
    # an interval that crosses 1 has no factor range
    assert fmt_speed(1.0, True, -0.2, 2.0) == "2.0× faster"
    assert change_words("decode_tps", -0.8) == "5.0× slower decode (−80 %)"
    assert change_words("ttft_ms", 0.08, 0.02, 0.14, 0.95, "p = 0.004, Holm") == (
        "8.0 % higher TTFT (95 % CI +2.0 % … +14 %, p = 0.004, Holm)")
    assert change_words("decode_tps", -0.8, -0.82, -0.78, 0.975, "p < 0.001, Holm") == (
        "5.0× slower decode (−80 %; 97.5 % CI 4.5–5.6×, p < 0.001, Holm)")


def test_the_verdict_never_says_costs_minus(h100):
    for line in h100.verdict:
        assert "costs −" not in line and "gains −" not in line
        assert "× slower decode (−" in line and "× slower TTFT (+" in line


# ------------------------------------------------------------------------------------- memory labels


def test_memory_breakdown_rows_have_human_labels(h100):
    assert breakdown_label("exit_table.CUDA0.model_mib") == "GPU model weights (CUDA0)"
    assert breakdown_label("buffers.CPU_Mapped.model_mib") == "host model weights (CPU_Mapped)"
    assert breakdown_label("buffers.CUDA0.kv_mib") == "GPU KV cache (CUDA0)"
    assert breakdown_label("exit_table.CUDA0.compute_mib") == "GPU compute buffer (CUDA0)"
    assert breakdown_label("exit_table.CUDA0.unaccounted_mib") == "unaccounted (CUDA0)"
    assert breakdown_label("something.new") == "something.new"  # unknown keys are shown as they are
    md = render_markdown(h100)
    assert "exit_table." not in md and "buffers.CUDA0" not in md and "_mib" not in md
    assert "| GPU model weights (CUDA0) | 10,912 | 5,787 | 661 |" in md  # the log's own figures, MiB


# -------------------------------------------------------------------------------------------- tables


def test_a_wide_table_splits_by_its_groups_keeping_an_arm_with_its_comparison():
    t = Table("t", ["metric", "a", "b", "Δ b"], [["x", "1.000", "2.000", "+100 %"]], right={1, 2, 3},
              groups=[ColumnGroup("a", [1], ["mean"], unit="a"), ColumnGroup("b", [2], ["mean"], unit="b"),
                      ColumnGroup("b vs a", [3], ["Δ"], unit="b")])
    assert fit_width(t, 80) == [t]  # it fits: as it is
    # a and b would fit side by side (20), but b goes with its comparison
    parts = fit_width(t, 22, pad=2)
    assert [p.title for p in parts] == ["t — a", "t — b · b vs a"]
    assert [p.headers for p in parts] == [["metric", "mean"], ["metric", "b mean", "Δ"]]
    assert [p.rows for p in parts] == [[["x", "1.000"]], [["x", "2.000", "+100 %"]]]


def test_figures_never_wrap_words_may():
    assert not may_wrap("170.9 ± 34.94") and not may_wrap("+472 % (+398 % … +560 %)") and not may_wrap("20 (0)")
    assert not may_wrap("5.6× slower (5.4–5.8×)")
    assert may_wrap("H100 80GB HBM3")
    t = Table("", ["item", "a"], [["device", "H100 80GB HBM3"], ["mean", "170.9 ± 34.94"]])
    assert layout_widths(t, 22) is not None  # the device name wraps, the figure does not
    assert layout_widths(t, 20) is None
    assert records(t) == [("device", [("a", "H100 80GB HBM3")]), ("mean", [("a", "170.9 ± 34.94")])]


def _terminal(report, width: int) -> list[str]:
    con = Console(width=width, record=True, highlight=False, soft_wrap=False, color_system=None)
    con.print(terminal_renderable(report, width=width))
    return con.export_text().splitlines()


@pytest.mark.parametrize("width", [80, 100, 160])
def test_terminal_report_fits_the_terminal_and_breaks_no_number(h100, width):
    lines = _terminal(h100, width)
    from rich.cells import cell_len

    assert max(cell_len(line.rstrip()) for line in lines) <= width
    text = "\n".join(lines)
    # every figure of the bucket tables is on one line, whole
    bucket_sec = next(s for s in sections(h100) if s.title.startswith("Latency"))
    cells = {c for t in bucket_sec.tables for r in t.rows for c in r[1:] if c and not may_wrap(c)}
    missing = [c for c in cells if c not in text]
    assert not missing, missing[:5]
    assert h100.provenance[0].model_sha256 in text.replace("\n    ", "").replace(" ", "") or \
        h100.provenance[0].model_sha256 in re.sub(r"\s+", "", text)


def test_a_wide_terminal_keeps_one_table_per_bucket(h100):
    text = "\n".join(_terminal(h100, 250))
    assert "bucket: tok1024 —" not in text and "bucket: tok1024" in text


# --------------------------------------------------------------------------------------------- cost


def test_no_gpu_hour_price_on_a_box_without_a_gpu(tmp_path):
    rep = build_report(load_evidence([fabricate(tmp_path / "r.jsonl", gpu_available=False, backend="cpu")]))
    cost = next(s for s in sections(rep) if s.title == "Cost")
    flat = " ".join(cost.paragraphs) + " ".join(h for t in cost.tables for h in t.headers) + " ".join(
        r[0] for t in cost.tables for r in t.rows)
    assert "no GPU on the box" in flat and "GPU-hours" not in flat and "Cost/1M tokens" not in flat
    assert "Tokens/sec" in flat


# --------------------------------------------------------------------------------------------- HTML


def test_html_is_one_self_contained_page_with_every_section(h100):
    figures = report_svgs(h100)
    page = render_html(h100, figures)
    assert page.startswith("<!DOCTYPE html>") and page.count("<svg") == len(figures) >= 3
    # nothing is fetched: no script, no external URL in any src/href, a policy that forbids it
    assert "<script" not in page.lower()
    refs = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page)
    assert refs and all(r.startswith("#") for r in refs), [r for r in refs if not r.startswith("#")]
    assert "default-src 'none'" in page
    for sec in sections(h100):
        assert f"<h2>{html.escape(sec.title)}</h2>" in page
    # verdict first, with the same words as the terminal and Markdown
    assert page.index("<h2>Verdict</h2>") < page.index("<h2>Latency")
    for line in h100.verdict:
        assert html.escape(line) in page
    assert H100_LONG.name in page and h100.provenance[0].model_sha256 in page
    # the numbers are the terminal's cells
    mem = next(s for s in sections(h100) if s.title == "Memory")
    for r in mem.tables[0].rows:
        for c in r:
            assert f">{html.escape(c)}<" in page, c


def test_report_out_writes_html_beside_the_others_and_names_them(tmp_path):
    res = CliRunner().invoke(cli, ["report", str(H100_LONG), "--out", str(tmp_path / "o"), "--format", "json"])
    assert res.exit_code == 0, res.output
    written = sorted(p.name for p in (tmp_path / "o").iterdir())
    assert "report.html" in written and "report.md" in written
    said = res.stderr if hasattr(res, "stderr") else res.output
    assert f"wrote {len(written)} files to {tmp_path / 'o'}/" in said
    assert all(name in said for name in written)


def test_format_html_prints_the_page(tmp_path):
    res = CliRunner().invoke(cli, ["report", str(H100_LONG), "--format", "html"])
    assert res.exit_code == 0 and res.output.startswith("<!DOCTYPE html>") and "</html>" in res.output


def test_ratio_column_matches_the_delta(h100):
    c = next(c for c in h100.comparisons if c.bucket == "all" and c.metric == "decode_tps")
    word = fmt_speed(c.ci.delta, METRIC_BY_KEY["decode_tps"].higher_is_better, c.ci.low, c.ci.high)
    assert word.endswith("slower") and word in render_markdown(h100)


# ---------------------------------------------------------------------------------------------- help


def _commands(group, path=()):
    import click

    yield path, group
    if isinstance(group, click.Group):
        for name, sub in group.commands.items():
            yield from _commands(sub, (*path, name))


def test_every_help_has_an_example():
    for path, _cmd in _commands(cli):
        res = CliRunner().invoke(cli, [*path, "--help"], terminal_width=80)
        assert res.exit_code == 0, path
        assert "Example" in res.output, f"abtest {' '.join(path)} --help has no example"
        assert any(line.lstrip().startswith(" ".join(("abtest", *path))) for line in res.output.splitlines()), path


def test_every_help_fits_80_columns():
    """COLUMNS=80: click wraps prose, but \\b blocks (examples) and choice lists are printed as written."""
    too_long = []
    for path, _cmd in _commands(cli):
        res = CliRunner().invoke(cli, [*path, "--help"], terminal_width=80, env={"COLUMNS": "80"})
        assert res.exit_code == 0, path
        too_long += [f"{' '.join(('abtest', *path))}: {line}" for line in res.output.splitlines() if len(line) > 80]
    assert not too_long, "\n".join(too_long)


def test_synth_help_names_every_preset_whole():
    from abtest.models import presets

    res = CliRunner().invoke(cli, ["model", "synth", "--help"], terminal_width=80)
    words = res.output.replace(",", " ").split()
    assert all(name in words for name in presets.PRESETS)


def test_sweep_markdown_becomes_a_page_with_its_tables():
    from abtest.render.html import markdown_html, render_sweep_html

    md = "# t\n\n**with 9 GiB, use `--n-cpu-moe 7`**\n\n| N | v |\n|---|---:|\n| 7 | 8.8 |\n\n## more\n\n- a\n- b <x>\n"
    frags = markdown_html(md)
    assert frags[0] == "<h2>t</h2>" and "<strong>with 9 GiB, use <code>--n-cpu-moe 7</code></strong>" in frags[1]
    assert '<td class="num">8.8</td>' in frags[2] and "<li>b &lt;x&gt;</li>" in frags[-1]
    page = render_sweep_html(md, "abtest sweep", b"\x89PNG")
    assert page.count("data:image/png;base64,") == 1 and "<script" not in page
