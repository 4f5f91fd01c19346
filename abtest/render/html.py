"""Self-contained HTML pages: the report (sections, tables split to a laptop's width, plots inline) and the nightly index."""

from __future__ import annotations

import base64
import html
import math
import re
from collections.abc import Mapping, Sequence

from ..analysis.gate import HistoryResult, check_line
from ..analysis.nights import key_label
from ..analysis.report import Report
from ..fmt import fmt_num, fmt_pct
from .history import check_tables, headline, summary_lines
from .report import provenance_line, sections
from .tables import Section, Table, fit_width, table_width, transpose

# Characters of table a laptop's page shows without scrolling (about 1130 px of 13 px text).
PAGE_WIDTH = 120
PAGE_PAD = 3  # a cell's padding, in characters

# No request may leave the page: styles inline, images only as data, no scripts, no fonts.
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"

CSS = """
:root { color-scheme: light; --fg: #1d1f23; --dim: #5b6270; --line: #d9dde3; --bg-alt: #f5f7fa;
        --good: #176b35; --bad: #a3231b; --warn: #8a5a00; --accent: #2456a6; }
* { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       color: var(--fg); margin: 0 auto; padding: 24px 28px 64px; max-width: 1180px; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 34px 0 8px; padding-bottom: 4px; border-bottom: 2px solid var(--line); }
h3 { font-size: 15px; margin: 20px 0 6px; }
p { margin: 6px 0; }
.prov, .note, figcaption { color: var(--dim); font-size: 13px; }
.prov code, td.mono { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 12px; word-break: break-all; }
nav { margin: 12px 0 0; font-size: 13px; }
nav a { margin-right: 12px; color: var(--accent); text-decoration: none; }
.verdict { font-size: 17px; margin: 10px 0; padding: 10px 14px; border-left: 5px solid var(--line); background: var(--bg-alt); }
.verdict.differs { border-color: var(--bad); }
.verdict.no-difference-detected, .verdict.cannot-differ { border-color: var(--good); }
.verdict.no-inference { border-color: var(--warn); }
.badge { display: inline-block; font-size: 11px; text-transform: uppercase; letter-spacing: .04em;
         padding: 1px 6px; border-radius: 3px; background: var(--line); margin-right: 6px; vertical-align: 2px; }
ul.warnings li { color: var(--warn); margin: 4px 0; }
.scroll { overflow-x: auto; margin: 8px 0 14px; }
table { border-collapse: collapse; font-size: 13px; font-variant-numeric: tabular-nums; }
caption { text-align: left; font-weight: 600; padding: 4px 0; }
th, td { padding: 3px 10px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { text-align: left; background: var(--bg-alt); font-weight: 600; }
tbody th { white-space: nowrap; }
td.num, th.num { text-align: right; white-space: nowrap; }
td code { white-space: nowrap; }
tbody tr:hover { background: #eef3fb; }
figure { margin: 14px 0; }
figure svg, figure img { max-width: 100%; height: auto; display: block; }
footer { margin-top: 40px; color: var(--dim); font-size: 12px; }
"""

# Where each figure of `plots.report_svgs` goes, and what it shows.
FIGURES = {
    "ttft_ms": ("Latency and throughput per bucket", "TTFT per request, by bucket and arm (box: quartiles)"),
    "decode_tps": ("Latency and throughput per bucket", "decode tok/s per request, by bucket and arm"),
    "load_levels": ("Load levels", "throughput against TTFT p95 and against the concurrency"),
    "vram_over_time": ("Memory", "VRAM of each arm's server process over time"),
    "memory_breakdown": ("Memory", "llama-server's buffers per device and arm"),
}


def esc(s: str) -> str:
    return html.escape(s, quote=True)


def slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "section"


def table_html(t: Table, width: int = PAGE_WIDTH) -> str:
    """One table as HTML tables that fit `width` characters: split by its column groups, or with
    rows and columns swapped when it has few rows and no groups; else it scrolls."""
    out = []
    for part in fit_width(t, width, pad=PAGE_PAD):
        if table_width(part, pad=PAGE_PAD) > width and not part.groups and len(part.rows) <= 6:
            part = transpose(part)
        out.append(_one_table(part))
    return "\n".join(out)


def _one_table(t: Table) -> str:
    def cls(i: int) -> str:
        return ' class="num"' if i in t.right else ""

    head = "".join(f"<th{cls(i)} scope=\"col\">{esc(h)}</th>" for i, h in enumerate(t.headers))
    body = "\n".join("<tr>" + "".join(
        (f"<th scope=\"row\">{esc(c)}</th>" if i < t.key else f"<td{cls(i)}>{esc(c)}</td>") for i, c in enumerate(r))
        + "</tr>" for r in t.rows)
    caption = f"<caption>{esc(t.title)}</caption>" if t.title else ""
    return (f'<div class="scroll"><table>{caption}<thead><tr>{head}</tr></thead>\n'
            f"<tbody>\n{body}\n</tbody></table></div>")


def figure_html(name: str, svg: str, caption: str) -> str:
    return f'<figure id="fig-{esc(name)}">{svg}<figcaption>{esc(caption)}</figcaption></figure>'


def _section_html(sec: Section, report: Report, figures: Sequence[tuple[str, str, str]]) -> str:
    out = [f'<section id="{slug(sec.title)}"><h2>{esc(sec.title)}</h2>']
    if sec.title == "Verdict":
        status = {v.text: v.status for v in report.verdicts}
        for p in sec.paragraphs:
            st = status.get(p, "")
            badge = f'<span class="badge">{esc(st.replace("-", " "))}</span>' if st else ""
            out.append(f'<p class="verdict {esc(st)}">{badge}{esc(p)}</p>')
    else:
        out += [f'<p class="note">{esc(p)}</p>' for p in sec.paragraphs]
    if sec.bullets:
        kind = ' class="warnings"' if sec.title == "Warnings" else ""
        out.append(f"<ul{kind}>" + "".join(f"<li>{esc(b)}</li>" for b in sec.bullets) + "</ul>")
    out += [table_html(t) for t in sec.tables]
    out += [figure_html(name, svg, cap) for name, svg, cap in figures]
    out.append("</section>")
    return "\n".join(out)


def page(title: str, head_lines: Sequence[str], body: Sequence[str], nav: Sequence[str]) -> str:
    """A whole page around `body` (HTML fragments): the one style sheet, the policy that keeps
    every request inside the page."""
    links = "".join(f'<a href="#{slug(n)}">{esc(n)}</a>' for n in nav)
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title>", f"<style>{CSS}</style>", "</head>", "<body>",
        f"<header><h1>{esc(title)}</h1>", *head_lines, f"<nav>{links}</nav></header>", "<main>",
        *body, "</main>", "</body>", "</html>", ""])


def render_html(report: Report, figures: Sequence[tuple[str, str]] = ()) -> str:
    """The report as one HTML page that needs nothing else to show: `figures` are (name, SVG text)
    pairs (`plots.report_svgs`), placed in the section they belong to; the numbers are the cells
    of the terminal and Markdown tables (`sections`)."""
    secs = sections(report)
    titles = [s.title for s in secs]
    placed: dict[str, list[tuple[str, str, str]]] = {}
    loose = []
    for name, svg in figures:
        where, caption = FIGURES.get(name, ("Plots", name.replace("_", " ")))
        if where in titles:
            placed.setdefault(where, []).append((name, svg, caption))
        else:
            loose.append((name, svg, caption))
    if loose:  # figures of sections this page does not have (or new ones): before the provenance
        at = titles.index("Provenance") if "Provenance" in titles else len(secs)
        secs.insert(at, Section("Plots"))
        placed["Plots"] = loose
        titles = [s.title for s in secs]
    files = list(dict.fromkeys(f for p in report.provenance for f in p.files))
    head = [f'<p class="prov">{esc(provenance_line(report))}</p>',
            f'<p class="prov">evidence: {", ".join(f"<code>{esc(f)}</code>" for f in files) or "—"}</p>']
    body = [_section_html(s, report, placed.get(s.title, [])) for s in secs]
    body.append(f"<footer>abtest {esc(report.abtest_version)} · made by <code>abtest report --format html</code> "
                "from the evidence files above; needs no network.</footer>")
    return page(f"abtest report: {', '.join(report.groups)}", head, body, titles)


# ------------------------------------------------------------------------------------------------
# The nightly index: one page over the history directory


def render_history_html(result: HistoryResult, figures: Sequence[tuple[str, str]] = (),
                        links: Mapping[str, str] | None = None) -> str:
    """The nightly index page: tonight's gate (headline, lines, the checks per model), each
    regression with its likely cause, per (model, arm) the trends over the nights
    (`plots.history_svgs`), and every night with a link to its report page (`links`: night ->
    relative URL, given by the caller, who knows the files)."""
    links = dict(links or {})
    status = {"regression": "differs", "missing": "differs", "no evidence": "differs",
              "no verdict yet": "no-inference", "ok": "no-difference-detected"}[result.outcome]
    body = ['<section id="tonight"><h2>Tonight</h2>',
            f'<p class="verdict {status}"><span class="badge">{esc(result.outcome)}</span>'
            f"{esc(headline(result))}</p>"]
    lines = summary_lines(result)
    if lines:
        body.append("<ul>" + "".join(f"<li>{esc(line)}</li>" for line in lines) + "</ul>")
    body += [table_html(t) for t in check_tables(result)]
    for c in result.checks:  # "−61 %, p < 0.001, ok" needs its reason on the page
        g = c.gate
        if g is None or not g.beyond_threshold or g.regression or g.improvement:
            continue
        body.append(f'<p class="note">{esc(c.label)} {esc(_METRIC_NAME.get(c.metric, c.metric))}: '
                    f"{esc(fmt_pct(g.change))} is beyond "
                    f"the threshold ({esc(c.threshold)}) but within the spread of the nights before it (their "
                    f"one-sided prediction bound is {esc(fmt_num(g.bound))}): not called a regression.</p>")
    body.append("</section>")

    regs = result.regressions
    body.append('<section id="regressions"><h2>Regressions</h2>')
    if not regs:
        body.append(f'<p class="note">none tonight ({esc(result.outcome)}).</p>')
    for c in regs:
        cause = ("; ".join(str(ch) for ch in c.causes) if c.causes else
                 "no change of server build, driver or GPU in its window: the box or the load it ran under")
        body.append(f'<p class="verdict differs">{esc(check_line(c).split(" — likely cause:")[0])}'
                    f'<br><span class="note">provenance change: {esc(cause)}</span></p>')
    body.append("</section>")

    body.append('<section id="trends"><h2>Trends</h2>'
                '<p class="note">Nightly values per (model, arm): decode tok/s and TTFT are the mean over '
                "buckets of each bucket's median, VRAM the server's peak; dotted: the median of the nights "
                "tonight was judged against; ✕ a regression; dashed: a change of server build, driver or GPU.</p>")
    for name, svg in figures:
        key = next((s.key for s in result.series if name == f"trend_{_safe_name(s.model)}__{_safe_name(s.arm)}"),
                   None)
        cap = key_label(key) if key else name
        empty = [s.metric for s in result.series if s.key == key and not any(math.isfinite(v) for v in s.values)]
        note = "".join(f"; {_TREND_EMPTY.get(m, f'no {m} on any night')}" for m in empty)
        body.append(f"<h3>{esc(cap)}</h3>" + figure_html(name, svg, f"the last {len(result.nights)} nights{note}"))
    body.append("</section>")

    rows = []
    for night in reversed(result.nights):
        changed = "; ".join(f"{key_label(ch.key)}: {ch}" for ch in result.changes if ch.night == night)
        link = links.get(night)
        report = f'<a href="{esc(link)}">report</a>' if link else "—"
        mark = " (tonight)" if night == result.tonight else ""
        rows.append(f"<tr><th scope=\"row\">{esc(night)}{mark}</th><td>{report}</td><td>{esc(changed or '—')}</td></tr>")
    body.append('<section id="nights"><h2>Nights</h2><div class="scroll"><table><thead><tr><th>night</th>'
                "<th>report</th><th>provenance changes</th></tr></thead><tbody>" + "".join(rows)
                + "</tbody></table></div></section>")
    th = result.thresholds
    body.append(f"<footer>abtest {esc(result.abtest_version)} · α = {th.alpha:g} · window {th.window} nights, "
                f"{th.min_nights} needed · made by <code>abtest report --history</code>; needs no network.</footer>")
    head = [f'<p class="prov">{len(result.nights)} nights, {esc(result.nights[0] if result.nights else "—")} … '
            f"{esc(result.tonight)}</p>"]
    return page(f"abtest nightly: {result.tonight}", head, body, ["Tonight", "Regressions", "Trends", "Nights"])


_METRIC_NAME = {"decode_tps": "decode tok/s", "ttft_ms": "TTFT", "vram_peak_mib": "peak VRAM"}
_TREND_EMPTY = {"vram_peak_mib": "no VRAM on any night (no GPU, or no NVML, to sample)",
                "decode_tps": "no decode rate on any night", "ttft_ms": "no TTFT on any night"}


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


# ------------------------------------------------------------------------------------------------
# The sweep: its Markdown (render/sweep.py) as a page, with its plot inline


def _inline(text: str) -> str:
    """The inline Markdown the sweep writes: `code`, **bold**, _italic_ (escaped first)."""
    out = esc(text)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    return re.sub(r"(?<![\w])_(.+?)_(?![\w])", r"<em>\1</em>", out)


def markdown_html(md: str) -> list[str]:
    """The Markdown abtest's renderers write (headings, paragraphs, bullets, pipe tables) as HTML
    fragments; nothing else is promised."""
    out: list[str] = []
    blocks = re.split(r"\n\s*\n", md.strip())
    for block in blocks:
        lines = block.splitlines()
        if lines[0].startswith("#"):
            level = len(lines[0]) - len(lines[0].lstrip("#"))
            out.append(f"<h{min(level + 1, 4)}>{_inline(lines[0].lstrip('#').strip())}</h{min(level + 1, 4)}>")
            lines = lines[1:]
            if not lines:
                continue
        if all(line.startswith("|") for line in lines) and len(lines) >= 2:
            def cells(line: str) -> list[str]:
                return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            align = ["num" if c.endswith(":") else "" for c in cells(lines[1])]
            head = "".join(f'<th class="{a}">{_inline(h)}</th>' for h, a in zip(cells(lines[0]), align, strict=False))
            body = "".join("<tr>" + "".join(f'<td class="{a}">{_inline(c)}</td>' for c, a in
                                            zip(cells(line), align, strict=False)) + "</tr>" for line in lines[2:])
            out.append(f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>')
        elif all(line.startswith(("- ", "  ")) for line in lines):
            items = re.split(r"\n(?=- )", "\n".join(lines))
            out.append("<ul>" + "".join(f"<li>{_inline(' '.join(i[2:].split()))}</li>" for i in items) + "</ul>")
        else:
            out.append(f"<p>{_inline(' '.join(lines))}</p>")
    return out


def render_sweep_html(markdown: str, title: str, png: bytes | None = None) -> str:
    """A sweep's report (`render.sweep.render_markdown` or `frontier_markdown`) as one page, its
    plot (PNG bytes of `render.sweep.write_plot`) inline as a data URI."""
    body = markdown_html(markdown)
    if body and body[0].startswith("<h2>"):
        body = body[1:]  # the page's own h1 says it
    if png:
        uri = "data:image/png;base64," + base64.b64encode(png).decode()
        body.insert(min(2, len(body)), f'<figure id="fig-sweep"><img src="{uri}" alt="decode tok/s and TTFT '
                    'against VRAM per setting"><figcaption>decode tok/s and TTFT against VRAM, one point per '
                    "setting (95 % intervals; ★ frontier)</figcaption></figure>")
    nav = [re.sub(r"<[^>]+>", "", b)[0:80] for b in body if b.startswith("<h3>")]
    body = [b.replace("<h3>", f'<h3 id="{slug(re.sub(r"<[^>]+>", "", b))}">', 1) if b.startswith("<h3>") else b
            for b in body]
    return page(title, [], ['<section id="sweep">', *body, "</section>"], nav)
