"""The verdict: one sentence per arm, quoting only the comparisons that settle a claim."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..fmt import fmt_p, fmt_pct
from .arms import ArmGroup
from .compare import Comparison, headline
from .metrics import METRIC_BY_KEY

if TYPE_CHECKING:  # the report holds the verdict; the verdict reads the report
    from .report import Report


def _overall(report: Report, group: str, metric: str) -> Comparison | None:
    return next((c for c in report.comparisons if c.group == group and c.metric == metric
                 and headline(c, report.comparisons, report.buckets)), None)


def verdict_lines(report: Report, groups: Sequence[ArmGroup], pairs: Sequence[tuple[ArmGroup, ArmGroup | None]]) -> list[str]:
    mem = {m.group: m for m in report.memory}
    eq = {e.group: e for e in report.equivalence}
    out = []
    for g, b in pairs:
        if b is None:
            out.append(f"{g.label}: no baseline arm {report.baseline!r} to compare with.")
            continue
        if not g.ok:
            why = "failed" if any(r.failed for r in g.runs) else "has no successful measured requests"
            out.append(f"{g.label} {why}; nothing to compare with {b.label}.")
            continue
        parts: list[str] = []
        tail: list[str] = []
        vg, vb = mem[g.label].vram_peak_mib, mem[b.label].vram_peak_mib
        change = report.vram_peak_change(g.label)
        if math.isfinite(change):
            diff = (vb - vg) / 1024.0
            pct = fmt_pct(change, signed=True)
            if diff >= 0:
                parts.append(f"saves {diff:.1f} GiB VRAM ({pct})")
            else:
                parts.append(f"uses {-diff:.1f} GiB more VRAM ({pct})")
        for metric in ("decode_tps", "ttft_ms"):
            c = _overall(report, g.label, metric)
            if c is None or not math.isfinite(c.ci.delta):
                continue
            name = "decode tok/s" if metric == "decode_tps" else "TTFT"
            if c.significant:
                if not c.better:
                    verb = "costs"
                else:
                    verb = "gains" if METRIC_BY_KEY[metric].higher_is_better else "cuts"
                parts.append(f"{verb} {fmt_pct(c.ci.delta)} {name} ({fmt_p(c.p_value)})")
            else:
                parts.append(f"shows no significant change in {name} ({fmt_pct(c.ci.delta)}, "
                             f"95 % CI {fmt_pct(c.ci.low)} … {fmt_pct(c.ci.high)}, {fmt_p(c.p_value)})")
        e = eq.get(g.label)
        if e and e.pairs:
            kind = "greedy requests" if e.greedy else "requests"
            if e.identical == e.pairs:
                tail.append(f"outputs identical on {e.identical}/{e.pairs} {kind}")
            else:
                first = min(e.divergences, key=lambda d: d.position)
                unit = "character" if e.compared_by == "text" else "token"
                tail.append(f"outputs identical on {e.identical}/{e.pairs} {kind} "
                             f"(earliest divergence at {unit} {first.position}, {first.prompt_id})")
        failed = report.failed_requests.get(g.label, 0)
        if failed:
            tail.append(f"{failed} of {len(g.measured)} measured requests failed")
        text = "; ".join(filter(None, [_join_parts(parts), *tail]))
        out.append(f"{g.label} (vs {b.label}) {text}." if text else f"{g.label}: no measurements to compare.")
    return out


def _join_parts(parts: list[str]) -> str:
    """"a, b and c" """
    return " and ".join(filter(None, [", ".join(parts[:-1]), parts[-1]])) if parts else ""
