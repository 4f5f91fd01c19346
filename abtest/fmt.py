"""Number formatting shared by the verdict's words and every renderer: one look for every figure."""

from __future__ import annotations

import math

MINUS = "\u2212"


def fmt_num(v: float | None, digits: int | None = None) -> str:
    """Compact human number: 11,800 / 80.3 / 1.25 / 0.0123; "—" for missing."""
    if v is None or not math.isfinite(v):
        return "—"
    a = abs(v)
    if digits is not None:
        s = f"{v:,.{digits}f}"
    elif a >= 1000:
        s = f"{v:,.0f}"
    elif a >= 100:
        s = f"{v:.1f}"
    elif a >= 1:
        s = f"{v:.2f}"
    elif a == 0:
        s = "0"
    else:
        s = f"{v:.3g}"
    return s.replace("-", MINUS)


def fmt_pct(frac: float, signed: bool = True) -> str:
    """0.123 -> "+12 %", -0.0123 -> "−1.2 %" (one decimal below 10 %)."""
    if frac is None or not math.isfinite(frac):
        return "—"
    pct = frac * 100.0
    s = f"{pct:+.0f}" if abs(pct) >= 10 else f"{pct:+.1f}"
    if not signed:
        s = s.lstrip("+")
    return s.replace("-", MINUS) + " %"


def fmt_count(v: float | None) -> str:
    """Large counts with a suffix: 20.9B parameters, 10.6M tokens/day; "—" when missing."""
    if v is None or not math.isfinite(v):
        return "—"
    for div, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(v) >= div:
            return f"{v / div:.1f}{suffix}"
    return f"{v:.0f}"


def fmt_money(v: float) -> str:
    if not math.isfinite(v):
        return "—"
    if v >= 100:
        return f"${v:,.0f}"
    return f"${v:.3f}" if v < 1 else f"${v:.2f}"


def fmt_p_cell(p: float, missing: str = "—") -> str:
    """A p-value for a table cell: "< 0.001" or "0.034"; `missing` when there is none."""
    if not math.isfinite(p):
        return missing
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def fmt_p(p: float) -> str:
    """A p-value in a sentence: "p < 0.001", "p = 0.034" or "p = n/a"."""
    cell = fmt_p_cell(p, missing="n/a")
    return f"p {cell}" if cell.startswith("<") else f"p = {cell}"


def fmt_gib(mib: float | None, digits: int = 2) -> str:
    """MiB shown as GiB with a fixed number of decimals: 11784 -> "11.51"; "—" for missing."""
    if mib is None or not math.isfinite(mib):
        return "—"
    return fmt_num(mib / 1024, digits)


def fmt_fixed(v: float, digits: int = 1) -> str:
    return f"{v:.{digits}f}" if v is not None and math.isfinite(v) else "—"


# A change this large or larger reads better as a factor ("5.9× slower") than as a percentage.
FACTOR_FROM = 1.5


def fmt_factor(f: float) -> str:
    """A speed factor: 5.94 -> "5.9×", 12.3 -> "12×", 1.52 -> "1.5×"; "—" when missing."""
    if f is None or not math.isfinite(f) or f <= 0:
        return "—"
    return f"{f:.0f}×" if f >= 10 else f"{f:.1f}×"


def speed_factor(delta: float, higher_is_better: bool) -> tuple[float, bool]:
    """A ratio of means minus 1 (Δ) as hyperfine's factor: (how many times, slower?).

    For a rate (higher is better) Δ −0.83 is 1/0.17 = 5.9× slower; for a time (lower is better)
    Δ +4.72 is 5.7× slower; the factor is always ≥ 1."""
    ratio = 1.0 + delta
    if not math.isfinite(ratio) or ratio <= 0:
        return math.nan, False
    slower = ratio < 1 if higher_is_better else ratio > 1
    return (max(ratio, 1 / ratio), slower)


def fmt_speed(delta: float, higher_is_better: bool, low: float = math.nan, high: float = math.nan) -> str:
    """Δ as words a person reads: "5.9× slower (5.6–6.2×)" when the factor is ≥ `FACTOR_FROM`,
    else "" (the percentage reads better then). The interval (Δ's) is shown when both ends are
    on the same side of 1."""
    f, slower = speed_factor(delta, higher_is_better)
    if not math.isfinite(f) or f < FACTOR_FROM:
        return ""
    out = f"{fmt_factor(f)} {'slower' if slower else 'faster'}"
    ends = [speed_factor(x, higher_is_better) for x in (low, high)]
    if all(math.isfinite(e[0]) and e[1] == slower and e[0] > 1 for e in ends):
        lo, hi = sorted(e[0] for e in ends)
        out += f" ({fmt_factor(lo).rstrip('×')}–{fmt_factor(hi)})"
    return out
