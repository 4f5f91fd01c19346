"""The nightly gate's result rendered: a chat-sized Markdown summary, the terminal table, JSON and CSV (HTML: render/html.py)."""

from __future__ import annotations

import csv
import io
import json
import math
import textwrap
from typing import Any

from ..analysis.gate import Check, HistoryResult, check_line, threshold_text
from ..analysis.metrics import METRIC_BY_KEY
from ..analysis.nights import key_label
from ..errors import ConfigError
from ..fmt import fmt_num, fmt_p_cell, fmt_pct
from .tables import Table, markdown_table

WIDTH = 80  # the summary is read in cron mail and chat: bullets wrap here, tables fit in it

HEADERS = ["arm", "metric", "tonight", "median", "change", "p", "status"]
RIGHT = {2, 3, 4, 5}


def _rows(checks: list[Check]) -> list[list[str]]:
    rows = []
    for c in checks:
        g = c.gate
        spec = METRIC_BY_KEY.get(c.metric)
        name = f"{spec.label} {spec.unit}" if spec else c.metric
        if g is None:
            rows.append([c.arm, name, "—", "—", "—", "—", c.status])
            continue
        rows.append([c.arm, name, fmt_num(g.value), fmt_num(g.reference), fmt_pct(g.change), fmt_p_cell(g.p_value),
                     c.status])
    return rows


def _tables(result: HistoryResult) -> list[Table]:
    """One table per model: the model's name is its title, so the rows stay narrow."""
    models = list(dict.fromkeys(c.model for c in result.checks))
    return [Table(m, HEADERS, _rows([c for c in result.checks if c.model == m]), RIGHT) for m in models]


def check_tables(result: HistoryResult) -> list[Table]:
    """Tonight's checks, one table per model (what every format shows)."""
    return _tables(result)


def summary_lines(result: HistoryResult) -> list[str]:
    """The lines under the headline, failures first (what every format shows)."""
    return _bullets(result)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def headline(result: HistoryResult) -> str:
    """"abtest nightly 2026-11-09: 1 regression (vs the median of the last 7 nights)" and its kin;
    never "no regression" for a check the gate could not judge."""
    head = f"abtest nightly {result.tonight}: "
    if result.outcome == "no evidence":
        return head + "no evidence tonight"
    judged = [c for c in result.checks if c.verdict]
    if result.outcome == "no verdict yet":
        n = max((len(c.window_nights) for c in result.checks), default=0)
        return head + f"no verdict yet ({_plural(n, 'night')}; the gate needs {result.thresholds.min_nights})"
    regs, missing = result.regressions, result.missing
    waiting = list(dict.fromkeys(c.key for c in result.no_verdict))
    parts = [_plural(len(regs), "regression")] if regs else []
    parts += [f"{len(missing)} missing"] if missing else []
    if not parts:
        keys = list(dict.fromkeys(c.key for c in judged))
        parts = [f"no regression in {_plural(len(keys), 'model·arm')}" if waiting else "no regression"]
    if waiting:
        parts.append(f"no verdict yet for {len(waiting)}")
    sizes = sorted({len(c.window_nights) for c in judged})
    vs = ""
    if sizes:  # windows differ where a configuration changed
        vs = f" (vs the median of the last {sizes[0]} nights)" if len(sizes) == 1 else \
            f" (vs the median of the last {sizes[0]}–{sizes[-1]} nights)"
    return head + ", ".join(parts) + vs


def _bullets(result: HistoryResult) -> list[str]:
    """The lines under the headline, failures first, shared by Markdown and the terminal."""
    if result.no_evidence:
        return [f"❌ {result.no_evidence}"] + [f"note: {n}" for n in result.notes]
    regs, missing = result.regressions, result.missing
    lines = [f"❌ {check_line(c)}" for c in regs + missing]
    lines += [f"✅ {check_line(c)}" for c in result.checks if c.status == "improvement"]
    lines += [f"⚠ {cc}" for cc in result.config_changes]
    th = result.thresholds
    waiting = {c.key: len(c.window_nights) for c in result.no_verdict}
    if waiting:
        lines.append("no verdict yet: " + ", ".join(f"{key_label(k)} ({n} of {th.min_nights} nights)"
                                                    for k, n in waiting.items()))
    if not regs and not missing:
        lines.append(f"thresholds: decode {threshold_text('decode_tps', th)}, TTFT "
                     f"{threshold_text('ttft_ms', th)}, VRAM {threshold_text('vram_peak_mib', th)}")
        tonight_changes = [ch for ch in result.changes if ch.night == result.tonight]
        if tonight_changes:
            lines.append("changed tonight: " + ", ".join(f"{key_label(ch.key)}: {ch}" for ch in tonight_changes))
    lines += [f"note: {n}" for n in result.notes]
    return lines


def _wrap(text: str, first: str, rest: str) -> str:
    """`text` filled to WIDTH columns; "p < 0.001" is never split across lines."""
    keep = "\x00"
    filled = textwrap.fill(text.replace("< ", "<" + keep), WIDTH, initial_indent=first, subsequent_indent=rest,
                           break_on_hyphens=False, break_long_words=False)
    return filled.replace(keep, " ")


def history_markdown(result: HistoryResult) -> str:
    """A short Markdown summary, fit for a chat notification or cron mail (80 columns)."""
    head = headline(result)
    bold, vs, rest = head.partition(" (vs")
    lines = [_wrap(f"**{bold}**" + (f"{vs}{rest}" if vs else ""), "", ""), ""]
    lines += [_wrap(b, "- ", "  ") for b in _bullets(result)]
    for t in _tables(result):
        lines += ["", markdown_table(t)]
    lines += ["", f"_abtest {result.abtest_version} · α = {result.thresholds.alpha:g} · window "
                  f"{result.thresholds.window} nights, {result.thresholds.min_nights} needed_"]
    return "\n".join(lines) + "\n"


def history_terminal(result: HistoryResult) -> Any:
    """A rich renderable of the summary and the tables (the CLI prints it)."""
    from rich import box
    from rich.console import Group
    from rich.table import Table as RichTable
    from rich.text import Text

    parts: list[Any] = [Text(headline(result), style="bold")]
    parts += [Text(_wrap(b, "  ", "    ")) for b in _bullets(result)]
    styles = {"regression": "bold red", "missing": "bold red", "improvement": "green"}
    for t in _tables(result):
        rt = RichTable(title=t.title, title_justify="left", box=box.SIMPLE_HEAD)
        for i, h in enumerate(t.headers):
            rt.add_column(h, justify="right" if i in t.right else "left")
        for r in t.rows:
            rt.add_row(*r, style=styles.get(r[-1], ""))
        parts.append(rt)
    return Group(*parts)


def history_json(result: HistoryResult) -> dict[str, Any]:
    def num(v: float) -> float | None:
        return float(v) if v is not None and math.isfinite(v) else None

    return {
        "abtest_version": result.abtest_version,
        "tonight": result.tonight,
        "nights": result.nights,
        "thresholds": vars(result.thresholds),
        "outcome": result.outcome,
        "headline": headline(result),
        "regressions": len(result.regressions),
        "missing": len(result.missing),
        "checks": [
            {"model": c.model, "arm": c.arm, "metric": c.metric, "status": c.status, "window_nights": c.window_nights,
             "threshold": c.threshold, "detail": c.detail, "causes": [vars(ch) for ch in c.causes],
             **({k: (num(v) if isinstance(v, float) else v) for k, v in vars(c.gate).items()} if c.gate else {})}
            for c in result.checks
        ],
        "provenance_changes": [vars(ch) for ch in result.changes],
        "config_changes": [{"model": cc.model, "arm": cc.arm, "nights": list(cc.nights), "what": list(cc.what)}
                           for cc in result.config_changes],
        "no_evidence": result.no_evidence,
        "series": [{"model": s.model, "arm": s.arm, "metric": s.metric, "values": [num(v) for v in s.values]}
                   for s in result.series],
        "notes": result.notes,
    }


def render_history(result: HistoryResult, fmt: str) -> str:
    if fmt == "markdown":
        return history_markdown(result)
    if fmt == "json":
        return json.dumps(history_json(result), indent=2, ensure_ascii=False) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["night", "model", "arm", "metric", "tonight", "reference", "change", "p_value", "status", "causes"])
        for c in result.checks:
            g = c.gate
            w.writerow([c.night, c.model, c.arm, c.metric, g.value if g else "", g.reference if g else "",
                        g.change if g else "", g.p_value if g and math.isfinite(g.p_value) else "", c.status,
                        "; ".join(str(ch) for ch in c.causes)])
        return buf.getvalue()
    raise ConfigError(f"unknown report format {fmt!r}; choose terminal, markdown, csv or json")
