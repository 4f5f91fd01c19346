"""One table model (titled sections of text and tables), its Markdown form, and its narrow layouts."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from typing import Any

from ..fmt import fmt_num


@dataclass
class ColumnGroup:
    """Columns that belong together (one arm's mean, p50 and p95; one comparison's Δ and p): a
    narrow layout keeps them in one table, under `title`, with `headers` for those columns."""

    title: str
    columns: list[int]
    headers: list[str]
    unit: str = ""  # consecutive groups of one unit (an arm and its comparison) stay together where they fit


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[str]]
    right: set[int] = field(default_factory=set)  # right-aligned column indexes
    groups: list[ColumnGroup] = field(default_factory=list)  # how to split it when it is too wide
    key: int = 1  # leading columns that name a row, repeated in every split table


@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    bullets: list[str] = field(default_factory=list)


def cell(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (int, float)):
        return fmt_num(float(v))
    return str(v)


def flatten(d: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested dicts/lists as ("a.b.c", leaf) pairs, in order."""
    out: list[tuple[str, Any]] = []
    if isinstance(d, dict):
        for k, v in d.items():
            out += flatten(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(d, list) and any(isinstance(x, (dict, list)) for x in d):
        for i, v in enumerate(d):
            out += flatten(v, f"{prefix}[{i}]")
    else:
        out.append((prefix, d))
    return out


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|")


def markdown_table(t: Table) -> str:
    lines = []
    if t.title:
        lines.append(f"**{t.title}**\n")
    lines.append("| " + " | ".join(_md_escape(h) for h in t.headers) + " |")
    lines.append("|" + "|".join("---:" if i in t.right else "---" for i in range(len(t.headers))) + "|")
    for r in t.rows:
        lines.append("| " + " | ".join(_md_escape(c) for c in r) + " |")
    return "\n".join(lines)


def text_width(s: str) -> int:
    """Terminal cells of a string (wide characters count twice)."""
    from rich.cells import cell_len

    return cell_len(s)


def _words(s: str) -> int:
    return max((text_width(w) for w in s.split()), default=0)


def may_wrap(cell: str) -> bool:
    """Whether a cell may be broken at its spaces: words may ("H100 80GB HBM3"), a figure never
    ("170.9 ± 34.94", "+472 % (+398 % … +560 %)", "20 (0)"), with its unit words neither
    ("5.6× slower (5.4–5.8×)")."""
    head = cell.lstrip()[:1]
    return bool(head) and head.isalpha() and any("a" <= ch.lower() <= "z" for ch in cell)


def column_widths(t: Table, *, wrap_headers: bool = True, wrap_text: bool = False) -> list[int]:
    """Each column's natural width: its longest cell, or its header (its longest word when headers
    may wrap); with `wrap_text`, the longest word of a cell that `may_wrap`."""
    out = []
    for i, h in enumerate(t.headers):
        head = _words(h) if wrap_headers else text_width(h)
        cells = [(_words(r[i]) if wrap_text and may_wrap(r[i]) else text_width(r[i])) for r in t.rows if i < len(r)]
        out.append(max([head] + cells))
    return out


def layout_widths(t: Table, width: int, pad: int = 2) -> list[int] | None:
    """Column widths that fit `t` in `width` with no figure broken over lines (headers and words
    may wrap), the room left given to the columns that would wrap most; None when it cannot fit."""
    full = column_widths(t, wrap_headers=False)
    natural = column_widths(t)
    least = column_widths(t, wrap_text=True)
    gaps = pad * max(0, len(natural) - 1)
    if sum(full) + gaps <= width:
        return full

    def spread(base: list[int], top: list[int]) -> list[int]:
        spare = width - gaps - sum(base)
        want = [b - a for a, b in zip(base, top, strict=True)]
        total = sum(want) or 1
        return [a + min(w, (spare * w) // total) for a, w in zip(base, want, strict=True)]

    if sum(natural) + gaps <= width:
        return spread(natural, full)
    if sum(least) + gaps <= width:
        return spread(least, natural)
    return None


def table_width(t: Table, *, wrap_headers: bool = True, pad: int = 2) -> int:
    """The width `t` takes with `pad` cells between columns and every cell on one line."""
    widths = column_widths(t, wrap_headers=wrap_headers)
    return sum(widths) + pad * max(0, len(widths) - 1)


def _sub_table(t: Table, groups: list[ColumnGroup]) -> Table:
    """The key columns and the columns of `groups`, under the groups' titles; rows empty in all of
    them are left out."""
    key = list(range(t.key))
    several = len(groups) > 1
    cols, heads = [], []
    for i, g in enumerate(groups):
        # a group's first header names it, unless the group before is of its unit (the arm, then its Δ)
        named = several and not (g.unit and i and groups[i - 1].unit == g.unit)
        kept = [(c, h) for c, h in zip(g.columns, g.headers, strict=True) if any(r[c] for r in t.rows)]
        for j, (c, h) in enumerate(kept):  # a column empty in every row (p50 of the "all" row) goes
            cols.append(c)
            heads.append(f"{g.title} {h}" if named and j == 0 else h)
    headers = [t.headers[i] for i in key] + heads
    rows = [[r[i] for i in key] + [r[c] for c in cols] for r in t.rows if any(r[c] for c in cols)]
    title = " · ".join(g.title for g in groups)
    right = {i for i in key if i in t.right} | {t.key + j for j, c in enumerate(cols) if c in t.right}
    return Table(f"{t.title} — {title}" if t.title else title, headers, rows, right=right, key=t.key)


def fit_width(t: Table, width: int, pad: int = 2) -> list[Table]:
    """`t` as tables no wider than `width` where it can be: itself when it fits, else its column
    groups packed, in order, into as few tables as fit, a unit of groups kept in one table when it
    fits in one (a group that fits nowhere gets its own). A table without groups is returned as
    it is (`records` is the layout that always fits)."""
    if layout_widths(t, width, pad) is not None or not t.groups:
        return [t]

    def fits(groups: list[ColumnGroup]) -> bool:
        return layout_widths(_sub_table(t, groups), width, pad) is not None

    units: list[list[ColumnGroup]] = []
    for g in t.groups:
        if units and g.unit and units[-1][-1].unit == g.unit:
            units[-1].append(g)
        else:
            units.append([g])
    chunks: list[list[ColumnGroup]] = [[]]
    for unit in units:
        if fits(chunks[-1] + unit):
            chunks[-1] += unit
            continue
        if fits(unit) or len(unit) == 1:
            chunks.append(list(unit))
            continue
        for g in unit:  # the unit fits in no table: its groups one by one
            if chunks[-1] and not fits(chunks[-1] + [g]):
                chunks.append([])
            chunks[-1].append(g)
    return [_sub_table(t, c) for c in chunks if c]


def records(t: Table) -> list[tuple[str, list[tuple[str, str]]]]:
    """`t` stacked: per row, its key cells as a heading and (header, cell) pairs, empty cells left out."""
    out = []
    for r in t.rows:
        name = " ".join(c for c in r[:t.key] if c)
        out.append((name, [(h, c) for h, c in zip(t.headers[t.key:], r[t.key:], strict=False) if c]))
    return out


def transpose(t: Table) -> Table:
    """`t` with rows as columns: one column per row (named by its key cells), one row per header —
    the shape a wide table of few rows (provenance, cost) reads best in on a page."""
    names = [" ".join(c for c in r[:t.key] if c) for r in t.rows]
    rows = [[h] + [r[i] if i < len(r) else "" for r in t.rows] for i, h in enumerate(t.headers) if i >= t.key]
    return Table(t.title, [" ".join(t.headers[:t.key])] + names, rows, key=1)


# a listing command's table needs this many columns; narrower (80, or piped) it prints `listing`
WIDE_TABLE_COLUMNS = 140


def listing(title: str, entries: list[tuple[str, list[str]]], width: int = 78) -> str:
    """A table too wide for the terminal as a list: the title wrapped to `width`, then per entry its
    head line and, indented beneath it, its detail lines (paths and names whole, never folded)."""
    lines = textwrap.wrap(title, width=width, break_on_hyphens=False)
    for head, details in entries:
        lines.append(f"  {head}")
        lines.extend(f"      {d}" for d in details if d)
    return "\n".join(lines)
