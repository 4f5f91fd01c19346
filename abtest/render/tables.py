"""One table model (titled sections of text and tables) and its Markdown form."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..fmt import fmt_num


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[str]]
    right: set[int] = field(default_factory=set)  # right-aligned column indexes


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
