"""The verdict: one sentence per arm, quoting only the comparisons that settle a claim.

A verdict is one claim: that the arm differs from its baseline (or not). It quotes the headline
comparisons, decode tok/s and TTFT of the "all" row (or of the only bucket), as one family: their
p-values are adjusted by Holm's procedure and each is quoted with the interval at the level Holm
tested it at, so an interval excludes 0 exactly when the adjusted p < 0.05, and a verdict claims a
difference with probability ≤ 5 % when there is none (whatever the number of metrics it quotes).
VRAM is a measurement, not a sample: a change is claimed only beyond `VRAM_FLOOR_MIB` and
`VRAM_FLOOR_FRAC` (identical servers differ by a few MiB), never as a significance claim.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..fmt import fmt_p, fmt_pct, fmt_speed
from .arms import ArmGroup
from .compare import ALPHA, Comparison, headline
from .equivalence import cannot_differ
from .metrics import METRIC_BY_KEY
from .stats import holm

if TYPE_CHECKING:  # the report holds the verdict; the verdict reads the report
    from .report import Report

# The comparisons a verdict quotes, in the order it quotes them (of the headline row).
VERDICT_METRICS = ("decode_tps", "ttft_ms")
# A VRAM peak change the verdict claims: more than both (the nightly gate's floors, docs/nightly.md).
VRAM_FLOOR_MIB = 64.0
VRAM_FLOOR_FRAC = 0.02

# VerdictLine.status
DIFFERS = "differs"  # a quoted comparison is significant after Holm
NO_DIFFERENCE = "no-difference-detected"  # every quoted comparison has an inference; none is significant
NO_INFERENCE = "no-inference"  # estimates only (e.g. one server session per arm)
CANNOT_DIFFER = "cannot-differ"  # the recogniser: the arms compute the same thing
FAILED = "failed"  # the arm (or all its requests) failed
NO_BASELINE = "no-baseline"


@dataclass(frozen=True)
class Claim:
    """One comparison of a verdict's family, with its Holm adjustment."""

    comparison: Comparison
    p_holm: float  # Holm-adjusted p-value over the family
    confidence: float  # 1 − the level Holm tested it at (0.975 for the first of two, then 0.95)
    low: float  # the interval of Δ at `confidence`: excludes 0 exactly when p_holm < ALPHA
    high: float

    @property
    def claim(self) -> bool:
        return self.p_holm < ALPHA


@dataclass(frozen=True)
class VerdictLine:
    """One arm's verdict, as text and as the data behind it."""

    group: str
    baseline: str | None
    text: str
    status: str
    family: tuple[Claim, ...] = ()
    vram_claim: bool = False  # a VRAM change beyond the floors is stated
    cannot_differ: str | None = None  # why the arms cannot differ (recogniser on), else None
    sessions: tuple[int, int] = (0, 0)  # server sessions with values of the headline row: (baseline, arm)

    @property
    def claims_difference(self) -> bool:
        """Whether the sentence claims any difference (a metric after Holm, or VRAM)."""
        return self.status == DIFFERS or self.vram_claim


def family(comps: Sequence[Comparison], alpha: float = ALPHA) -> list[Claim]:
    """The verdict's family: Holm over the comparisons with an inference, each with the interval at
    the level it was tested at. Comparisons without a p-value are not in it."""
    with_p = [c for c in comps if math.isfinite(c.p_value)]
    out = []
    for c, (p_adj, level) in zip(with_p, holm([c.p_value for c in with_p], alpha), strict=True):
        lo, hi = c.inference.interval(1 - level)
        out.append(Claim(c, p_adj, 1 - level, lo, hi))
    return out


def _headline(report: Report, group: str, metric: str) -> Comparison | None:
    return next((c for c in report.comparisons if c.group == group and c.metric == metric
                 and headline(c, report.comparisons, report.buckets)), None)


def _name(metric: str) -> str:
    return "decode tok/s" if metric == "decode_tps" else "TTFT"


def _vram(report: Report, g: ArmGroup, b: ArmGroup) -> tuple[str, bool]:
    mem = {m.group: m for m in report.memory}
    vg, vb = mem[g.label].vram_peak_mib, mem[b.label].vram_peak_mib
    change = report.vram_peak_change(g.label)
    if not math.isfinite(change):
        return "", False
    pct = fmt_pct(change, signed=True)
    if abs(vg - vb) <= VRAM_FLOOR_MIB or abs(change) <= VRAM_FLOOR_FRAC:
        return f"has the same VRAM peak within {VRAM_FLOOR_MIB:.0f} MiB ({pct})", False
    diff = (vb - vg) / 1024.0
    if diff >= 0:
        return f"saves {diff:.1f} GiB VRAM ({pct})", True
    return f"uses {-diff:.1f} GiB more VRAM ({pct})", True


def change_words(metric: str, delta: float, low: float = math.nan, high: float = math.nan,
                 confidence: float = math.nan, p_text: str = "") -> str:
    """A Δ of a headline metric in words: "5.9× slower decode (−83 %; 97.5 % CI 5.6–6.2×, p …)" when
    the factor reads better (≥ 1.5×, hyperfine's "times slower"), else "8.2 % lower decode tok/s
    (97.5 % CI −12 % … −5 %, p …)"; the brackets hold the interval only when `p_text` is given."""
    m = METRIC_BY_KEY[metric]
    speed = fmt_speed(delta, m.higher_is_better)
    if speed:
        inside = fmt_pct(delta)
        if p_text:
            ranged = fmt_speed(delta, m.higher_is_better, low, high)
            ci = (f"{confidence * 100:g} % CI {ranged.removeprefix(speed).strip(' ()')}" if ranged != speed
                  else _ci(low, high, confidence))
            inside += f"; {ci}, {p_text}"
        return f"{speed} {'decode' if metric == 'decode_tps' else _name(metric)} ({inside})"
    word = "higher" if delta > 0 else "lower"
    out = f"{fmt_pct(abs(delta), signed=False)} {word} {_name(metric)}"
    return out + (f" ({_ci(low, high, confidence)}, {p_text})" if p_text else "")


def _ci(lo: float, hi: float, confidence: float) -> str:
    return f"{confidence * 100:g} % CI {fmt_pct(lo)} … {fmt_pct(hi)}"


def verdict_lines(report: Report, groups: Sequence[ArmGroup], pairs: Sequence[tuple[ArmGroup, ArmGroup | None]],
                  *, recognise_identical: bool = True) -> list[VerdictLine]:
    eq = {e.group: e for e in report.equivalence}
    out: list[VerdictLine] = []
    for g, b in pairs:
        if b is None:
            out.append(VerdictLine(g.label, None, f"{g.label}: no baseline arm {report.baseline!r} to compare with.",
                                   NO_BASELINE))
            continue
        if not g.ok:
            why = "failed" if any(r.failed for r in g.runs) else "has no successful measured requests"
            out.append(VerdictLine(g.label, b.label, f"{g.label} {why}; nothing to compare with {b.label}.", FAILED))
            continue
        quoted = [c for m in VERDICT_METRICS if (c := _headline(report, g.label, m)) is not None
                  and math.isfinite(c.ci.delta)]
        claims = family(quoted)
        by_metric = {cl.comparison.metric: cl for cl in claims}
        sessions = max((c.sessions for c in quoted), default=(0, 0), key=lambda k: min(k))
        tail: list[str] = []
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

        same = cannot_differ(g, b) if recognise_identical else None
        if same is not None:
            measured = ", ".join(f"{_name(c.metric)} {fmt_pct(c.ci.delta)}" for c in quoted)
            head = f"cannot differ from {b.label}: {same}; not ranked"
            if measured:
                head += f" (measured Δ {measured}: server-session noise)"
            text = "; ".join([head, *tail])
            out.append(VerdictLine(g.label, b.label, f"{g.label} (vs {b.label}) {text}.", CANNOT_DIFFER,
                                   tuple(claims), cannot_differ=same, sessions=sessions))
            continue

        parts: list[str] = []
        vram_text, vram_claim = _vram(report, g, b)
        if vram_text:
            parts.append(vram_text)
        estimates = []
        changes = []
        for c in quoted:
            cl = by_metric.get(c.metric)
            if cl is None:  # no inference: the estimate alone
                estimates.append(change_words(c.metric, c.ci.delta))
                continue
            holm_p = f"{fmt_p(cl.p_holm)}, Holm"
            if cl.claim:
                changes.append(change_words(c.metric, c.ci.delta, cl.low, cl.high, cl.confidence, holm_p))
            else:
                parts.append(f"shows no significant change in {_name(c.metric)} ({fmt_pct(c.ci.delta)}, "
                             f"{_ci(cl.low, cl.high, cl.confidence)}, {holm_p})")
        if changes:  # "saves 1 GiB VRAM, has 5.9× slower decode (…) and 5.7× slower TTFT (…)"
            at = 1 if vram_text else 0
            parts[at:at] = ["has " + changes[0], *changes[1:]]
        if estimates:
            parts.append("measures " + " and ".join(estimates))
        reasons = list(dict.fromkeys(c.reason for c in quoted if c.metric not in by_metric))
        notes: list[str] = [f"no significance claim: {r}" for r in reasons]
        if claims:
            kb, ko = sessions
            notes.append(f"{kb} server sessions per arm" if kb == ko
                         else f"{ko} server sessions of {g.label}, {kb} of {b.label}")
        if any(cl.claim for cl in claims):
            status = DIFFERS
        else:
            status = NO_DIFFERENCE if claims else NO_INFERENCE
        text = "; ".join(filter(None, [_join_parts(parts), *notes, *tail]))
        vs = b.label
        if g.identity.server_build != b.identity.server_build:  # implementations as arms: say which ran which
            vs = f"{b.label}; server build {g.identity.server_build} vs {b.identity.server_build}"
        out.append(VerdictLine(g.label, b.label,
                               f"{g.label} (vs {vs}) {text}." if text else f"{g.label}: no measurements to compare.",
                               status, tuple(claims), vram_claim=vram_claim, sessions=sessions))
    return out


def _join_parts(parts: list[str]) -> str:
    """"a, b and c" """
    return " and ".join(filter(None, [", ".join(parts[:-1]), parts[-1]])) if parts else ""
