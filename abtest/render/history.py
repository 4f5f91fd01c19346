"""The nightly gate's result rendered: a chat-sized Markdown summary, the terminal table, JSON and CSV."""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any

from ..analysis.gate import HistoryResult, check_line, key_label, threshold_text
from ..analysis.metrics import METRIC_BY_KEY
from ..errors import ConfigError
from ..fmt import fmt_num, fmt_p_cell, fmt_pct


def _rows(result: HistoryResult) -> list[list[str]]:
    rows = []
    for c in result.checks:
        g = c.gate
        spec = METRIC_BY_KEY.get(c.metric)
        name = f"{spec.label} {spec.unit}" if spec else c.metric
        if g is None:
            rows.append([c.label, name, "—", "—", "—", "—", c.detail or c.status])
            continue
        rows.append([c.label, name, fmt_num(g.value), fmt_num(g.reference), fmt_pct(g.change), fmt_p_cell(g.p_value),
                     c.status])
    return rows


HEADERS = ["model · arm", "metric", "tonight", "trailing median", "change", "p", "status"]


def _summary(result: HistoryResult) -> tuple[str, list[str]]:
    """The headline and the bullet lines (regressions first) shared by Markdown and the terminal."""
    regs, missing = result.regressions, result.missing
    n_window = max((len(c.window_nights) for c in result.checks), default=0)
    failures = [f"{len(regs)} regression{'s' if len(regs) != 1 else ''}"] if regs else []
    failures += [f"{len(missing)} missing"] if missing else []
    head = f"abtest nightly {result.tonight}: " + (", ".join(failures) or "no regression")
    lines = [f"❌ {check_line(c)}" for c in regs + missing]
    if result.no_evidence:
        head = f"abtest nightly {result.tonight}: no evidence tonight"
        lines = [f"❌ {result.no_evidence}"]
    lines += [f"✅ {check_line(c)}" for c in result.checks if c.status == "improvement"]
    if not regs and not missing:
        th = result.thresholds
        lines.append(f"thresholds: decode {threshold_text('decode_tps', th)}, TTFT "
                     f"{threshold_text('ttft_ms', th)}, VRAM {threshold_text('vram_peak_mib', th)}")
        tonight_changes = [ch for ch in result.changes if ch.night == result.tonight]
        if tonight_changes:
            lines.append("changed tonight: " + ", ".join(f"{key_label(ch.key)}: {ch}" for ch in tonight_changes))
    lines += [f"note: {n}" for n in result.notes]
    if result.no_evidence:
        return head, lines
    return f"{head} (vs the median of the last {n_window} nights)", lines


def history_markdown(result: HistoryResult) -> str:
    """A short Markdown summary, fit for a chat notification."""
    head, bullets = _summary(result)
    bold, vs, rest = head.partition(" (vs")
    lines = [f"**{bold}**" + (f"{vs}{rest}" if vs else ""), ""] + [f"- {b}" for b in bullets]
    lines += ["", "| " + " | ".join(HEADERS) + " |", "|---|---|---:|---:|---:|---:|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in _rows(result)]
    lines += ["", f"_abtest {result.abtest_version} · α = {result.thresholds.alpha:g} · window "
                  f"{result.thresholds.window} nights_"]
    return "\n".join(lines) + "\n"


def history_terminal(result: HistoryResult) -> Any:
    """A rich renderable of the summary and the table (the CLI prints it)."""
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    head, bullets = _summary(result)
    t = Table(box=box.SIMPLE_HEAD)
    for i, h in enumerate(HEADERS):
        t.add_column(h, justify="right" if 2 <= i <= 5 else "left")
    for c, r in zip(result.checks, _rows(result), strict=True):
        t.add_row(*r, style={"regression": "bold red", "missing": "bold red", "improvement": "green"}.get(c.status, ""))
    return Group(Text(head, style="bold"), *(Text(f"  {b}") for b in bullets), t)


def history_json(result: HistoryResult) -> dict[str, Any]:
    def num(v: float) -> float | None:
        return float(v) if v is not None and math.isfinite(v) else None

    return {
        "abtest_version": result.abtest_version,
        "tonight": result.tonight,
        "nights": result.nights,
        "thresholds": vars(result.thresholds),
        "outcome": result.outcome,
        "regressions": len(result.regressions),
        "missing": len(result.missing),
        "checks": [
            {"model": c.model, "arm": c.arm, "metric": c.metric, "status": c.status, "window_nights": c.window_nights,
             "threshold": c.threshold, "causes": [vars(ch) for ch in c.causes],
             **({k: (num(v) if isinstance(v, float) else v) for k, v in vars(c.gate).items()} if c.gate else {})}
            for c in result.checks
        ],
        "provenance_changes": [vars(ch) for ch in result.changes],
        "series": [{"model": s.model, "arm": s.arm, "metric": s.metric, "values": [num(v) for v in s.values]} for s in result.series],
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
