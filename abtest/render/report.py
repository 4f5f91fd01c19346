"""The report rendered: terminal, Markdown, CSV and JSON, from a built `Report` only."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..analysis import capacity as cap
from ..analysis import stats
from ..analysis.compare import ALPHA
from ..analysis.equivalence import Divergence
from ..analysis.memory import several_gpus
from ..analysis.metrics import METRIC_BY_KEY, METRICS
from ..analysis.report import Report
from ..analysis.verdict import VerdictLine
from ..errors import ConfigError
from ..fmt import fmt_count, fmt_gib, fmt_money, fmt_num, fmt_p_cell, fmt_pct, fmt_speed
from .tables import (
    ColumnGroup,
    Section,
    Table,
    cell,
    fit_width,
    flatten,
    layout_widths,
    markdown_table,
    records,
)


def _mean_pm(s: stats.Summary) -> str:
    if s.n == 0:
        return "—"
    if s.n == 1:
        return fmt_num(s.mean)
    return f"{fmt_num(s.mean)} ± {fmt_num(s.std)}"


def provenance_line(report: Report) -> str:
    shas = sorted({p.model_sha256 for p in report.provenance if p.model_sha256})
    builds = sorted({p.server_build for p in report.provenance})
    gpus = sorted({p.gpu for p in report.provenance})
    dates = sorted({d for p in report.provenance for d in p.date.split(", ")})
    models = sorted({p.model for p in report.provenance})
    return (f"model {', '.join(models)} (sha256 {', '.join(shas) or '?'}) · llama-server {', '.join(builds)} · "
            f"{'; '.join(gpus)} · run {', '.join(dates)} · abtest {report.abtest_version}")


def sections(report: Report) -> list[Section]:
    """The report as titled sections of text and tables (shared by Markdown and terminal output)."""
    verdict = list(report.verdict) or ["No arm to compare with the baseline."]
    out = [Section("Verdict", paragraphs=verdict)]
    if report.warnings:
        out.append(Section("Warnings", bullets=[str(w) for w in report.warnings]))

    out.append(_bucket_section(report))
    if report.levels:
        out.append(_levels_section(report))
    if report.capacity:
        out.append(_capacity_section(report))
    if report.load:
        out.append(_load_section(report))
    if any(n > 1 for n in _session_counts(report).values()):
        out.append(_session_section(report))
    out.append(_memory_section(report))
    eq = _equivalence_section(report)
    if eq is not None:
        out.append(eq)
    out.append(_cost_section(report))
    out.append(_provenance_section(report))
    if report.notes:
        out.append(Section("Notes", bullets=list(report.notes)))
    return out


def _bucket_section(report: Report) -> Section:
    """Per bucket: each arm's mean ± σ, p50, p95 and its Δ to the baseline."""
    bucket_order = list(dict.fromkeys(s.bucket for s in report.buckets))
    sec = Section("Latency and throughput per bucket",
                  paragraphs=["mean ± σ, then median and p95 over requests; Δ is the arm's mean over the "
                              "baseline's, and ratio the same as a factor where it is 1.5× or more. Its 95 % interval and p-value count server sessions, not requests: "
                              "one t statistic on the log ratio whose error is the spread between sessions "
                              "(never less than the spread within them), so the interval excludes 0 exactly "
                              "when p < 0.05. They are unadjusted; the verdict adjusts the ones it quotes "
                              "(Holm). Warm-up and failed requests are left out.",
                              "The \"all\" row holds one number per arm: each bucket's mean weighted by "
                              "that bucket's share of the plan (every arm's requests, failed ones included); "
                              "its Δ compares within buckets and combines them with the same weights."])
    reasons = list(dict.fromkeys(c.reason for c in report.comparisons if c.reason and math.isfinite(c.ci.delta)))
    for reason in reasons:
        sec.paragraphs.append(f"No interval or p-value where {reason}.")
    for bucket in bucket_order:
        rows_by_group = {s.group: s for s in report.buckets if s.bucket == bucket}
        groups = [g for g in report.groups if g in rows_by_group]
        comps = {(c.group, c.metric): c for c in report.comparisons if c.bucket == bucket}
        delta_groups = [g for g in groups if any((g, m.key) in comps for m in METRICS)]
        headers = ["metric"]
        col_groups = []
        for g in groups:
            col_groups.append(ColumnGroup(g, list(range(len(headers), len(headers) + 3)), ["mean ± σ", "p50", "p95"],
                                          unit=g))
            headers += [g, "p50", "p95"]
        for g in delta_groups:
            col_groups.append(ColumnGroup(f"{g} vs {report.paired_baseline.get(g, report.baseline)}",
                                          list(range(len(headers), len(headers) + 3)), [f"Δ vs {report.paired_baseline.get(g, report.baseline)} (95 % CI)", "ratio", "p"],
                                          unit=g))
            headers += [f"Δ {g} (95 % CI)", "ratio", "p"]
        rows = []
        n_row = ["n (failed)"]
        for g in groups:
            s = rows_by_group[g]
            n_row += [f"{s.n - s.n_failed} ({s.n_failed})", "", ""]
        n_row += ["", "", ""] * len(delta_groups)
        rows.append(n_row)
        for m in METRICS:
            row = [f"{m.label} {m.unit}"]
            for g in groups:
                s = rows_by_group[g]
                summ = s.summaries[m.key]
                row += ([fmt_num(summ.mean), "", ""] if s.pooled
                        else [_mean_pm(summ), fmt_num(summ.median), fmt_num(summ.p95)])
            for g in delta_groups:
                c = comps.get((g, m.key))
                if c is None or not math.isfinite(c.ci.delta):
                    row += ["—", "", "—"]
                    continue
                ci = (f" ({fmt_pct(c.ci.low)} … {fmt_pct(c.ci.high)})" if math.isfinite(c.ci.low) else "")
                row += [f"{fmt_pct(c.ci.delta)}{ci}", fmt_speed(c.ci.delta, m.higher_is_better, c.ci.low, c.ci.high),
                        fmt_p_cell(c.p_value, missing="n/a")]
            rows.append(row)
        # split narrow as: the baselines, then each arm beside its comparison
        order = [cg for cg in col_groups[:len(groups)] if cg.title in report.baseline_groups]
        for cg in col_groups[:len(groups)]:
            if cg not in order:
                order += [cg] + [d for d in col_groups[len(groups):] if d.title.startswith(f"{cg.title} vs ")]
        order += [cg for cg in col_groups if cg not in order]
        sec.tables.append(Table(f"bucket: {bucket}", headers, rows, right=set(range(1, len(headers))),
                                groups=order))
    return sec


def _levels_section(report: Report) -> Section:
    """Load levels: per arm and level (concurrency or rate), throughput and latency (the curve)."""
    rows = [[lr.group, lr.point.label, f"{lr.n - lr.n_failed} ({lr.n_failed})", fmt_num(lr.req_per_s),
             fmt_num(lr.output_tok_per_s), fmt_num(lr.ttft_p50_ms), fmt_num(lr.ttft_p95_ms), fmt_num(lr.tpot_p50_ms),
             fmt_num(lr.tpot_p95_ms)] for lr in report.levels]
    sec = Section("Load levels", paragraphs=[
        "Each session ran every load level in turn on one server (-np: the slots of the highest "
        "concurrency, or --parallel), each level after its own warm-up: c=N a closed loop of N "
        "requests in flight, r=X an open loop offering X req/s (a capacity search probes levels it "
        "picks). req/s and tok/s: completed requests and generated tokens over the level's wall time "
        "(first send to last end), summed over sessions; latencies in ms over the level's requests."])
    headers = ["arm", "load", "n (failed)", "req/s", "tok/s", "TTFT p50", "TTFT p95", "TPOT p50", "TPOT p95"]
    if report.slo:  # the p50s make way for the goodput and the judgement (80 columns)
        rows = [[*row[:5], row[6], row[8], fmt_num(lr.goodput_rps), _slo_ok(lr.meets_slo, lr.failed_requests_decide)]
                for row, lr in zip(rows, report.levels, strict=True)]
        headers = ["arm", "load", "n (fail)", "req/s", "tok/s", "TTFT p95", "TPOT p95", "good/s", "SLO ok"]
        sec.paragraphs.append(f"SLO: {', '.join(map(str, report.slo))} — a level meets it when its "
                              "percentiles do; a failed request is a miss, placed above every served one "
                              "(the p95 columns are over the served requests): \"no (failed)\" marks a "
                              "level that its served requests alone would meet. Goodput counts the "
                              "requests that meet every limit themselves, per second (vLLM's goodput).")
    sec.tables.append(Table("", headers, rows, right=set(range(1, len(headers)))))
    return sec


def _slo_ok(meets: bool | None, failed_requests_decide: bool | None) -> str:
    """The Load levels table's SLO cell: yes, no, or "no (failed)" when failed requests decided it."""
    if meets is None:
        return "—"
    return "yes" if meets else "no (failed)" if failed_requests_decide else "no"


def _capacity_section(report: Report) -> Section:
    """Capacity at the SLO: per arm over its sessions, with intervals, and each arm over its baseline."""
    def iv(i: cap.Interval) -> str:
        return f"{fmt_num(i.low)}–{fmt_num(i.high)}" if math.isfinite(i.low) else "—"

    rows = [[c.group, c.kind, str(len(c.sessions)), fmt_num(c.load.mean), iv(c.load), fmt_num(c.req_per_s.mean),
             iv(c.req_per_s), c.status] for c in report.capacity]
    sec = Section("Capacity", paragraphs=[
        f"Within {', '.join(map(str, report.slo))}: the highest load each server session carries, "
        "between the last level that meets every objective and the first that does not (each "
        "failing objective's percentile/limit taken as linear in the load there; req/s interpolated "
        "at the same point), then the mean over sessions with a 95 % t-interval over sessions (log "
        "scale). at-least: every level run met it (raise the levels); none-met: even the lowest failed. "
        "Ratios: each arm's capacity (rate levels: req/s offered; concurrency levels: req/s carried) "
        "over its baseline's, one t statistic over sessions on the log ratio."])
    sec.tables.append(Table("", ["arm", "levels", "sess", "load", "95 % CI", "req/s", "95 % CI", "status"], rows,
                            right={2, 3, 4, 5, 6}))
    per = [[c.group, s.session or "—", fmt_num(s.low), fmt_num(s.high), fmt_num(s.load), fmt_num(s.req_per_s),
            s.limited_by or "—"] for c in report.capacity for s in c.sessions]
    if any(len(c.sessions) > 1 for c in report.capacity):
        sec.tables.append(Table("per session: the bracketing levels and the estimate",
                                ["arm", "session", "met", "failed", "load", "req/s", "limited by"], per,
                                right={2, 3, 4, 5}))
    for d in report.capacity_deltas:
        sec.paragraphs.append(cap.delta_phrase(d) + ".")
    return sec


def _load_section(report: Report) -> Section:
    """Open-loop arms: the load offered and achieved, TTFT from the send and from the schedule."""
    rows = []
    for lr in report.load:
        growth = ""
        if lr.first_quarter_ttft_ms and lr.last_quarter_ttft_ms is not None:
            growth = f"{lr.last_quarter_ttft_ms / lr.first_quarter_ttft_ms:.1f}×" + (" ↑" if lr.queue_growing else "")
        rows.append([lr.group, fmt_num(lr.rate_rps), fmt_num(lr.achieved_rps), str(lr.max_in_flight or "—"),
                     fmt_num(lr.send_lag_p99_ms), fmt_num(lr.ttft_p50_ms), fmt_num(lr.ttft_from_schedule_p50_ms),
                     fmt_num(lr.ttft_from_schedule_p99_ms), growth])
    sec = Section("Open loop", paragraphs=[
        "rate, done: req/s offered and completed; flight: most requests in flight at a send; ms. Each request was "
        "sent when the schedule had it due, with no connection cap. TTFT is from the send (the "
        "server's answer time); sch(edule) adds the client's send lag: what a user arriving then "
        "waits, the rate-run figure of AIPerf and guidellm. growth: the from-schedule TTFT of the "
        "last quarter of a session's requests over its first; ↑ at 2× or more, a queue building up "
        "(the offered rate is above what the arm serves)."])
    sec.tables.append(Table("", ["arm", "rate", "done", "flight", "lag p99", "TTFT p50", "sch p50", "sch p99",
                                 "growth"], rows, right=set(range(1, 9))))
    return sec


def _session_counts(report: Report) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in report.sessions:
        counts[row.group] = counts.get(row.group, 0) + 1
    return counts


def _session_section(report: Report) -> Section:
    """Each server session of each arm: the unit the intervals count, and the drift between them."""
    rows = [[r.group, r.session or "—", ", ".join(r.buckets), f"{r.n - r.n_failed} ({r.n_failed})",
             fmt_num(r.means.get("decode_tps")), fmt_num(r.means.get("ttft_ms"))] for r in report.sessions]
    lowest = " of the lowest load level" if report.levels else ""
    sec = Section("Server sessions", paragraphs=[
        "Each arm's server sessions in the order they ran (a block of `abtest run --blocks`, or a pooled "
        f"file), with the means of the headline row{lowest}: these, not the requests, are the samples the "
        "comparisons count."],
        tables=[Table("", ["arm", "session", "buckets", "n (failed)", "decode tok/s", "TTFT ms"], rows,
                      right={3, 4, 5})])
    drift = [[d.group, f"{METRIC_BY_KEY[d.metric].label} {METRIC_BY_KEY[d.metric].unit}", f"{d.first} → {d.last}",
              fmt_pct(d.ci.delta),
              f"{fmt_pct(d.ci.low)} … {fmt_pct(d.ci.high)}" if math.isfinite(d.ci.low) else "—"]
             for d in report.drift]
    if drift:
        sec.tables.append(Table("drift: each arm's last session against its first, over their requests "
                                "(studentized bootstrap, within buckets)",
                                ["arm", "metric", "sessions", "Δ", "95 % CI"], drift, right={3, 4}))
    return sec


def _memory_section(report: Report) -> Section:
    """VRAM and host RSS per arm, and the server log's breakdown."""
    mem_rows = []
    for mr in report.memory:
        change = report.vram_peak_change(mr.group)
        delta = fmt_pct(change) if math.isfinite(change) else ""
        mem_rows.append([mr.group, fmt_gib(mr.vram_after_load_mib), fmt_gib(mr.vram_peak_mib), delta,
                         fmt_gib(mr.device_peak_mib), fmt_gib(mr.rss_anon_peak_mib), fmt_gib(mr.rss_file_peak_mib),
                         str(mr.n_samples)])
    mem_sec = Section("Memory", paragraphs=[
        "GiB. VRAM is this server process's own (NVML per-process); device is the whole GPU. Host RSS "
        "anon is heap, file is mmapped model pages resident in RAM."])
    mem_sec.tables.append(Table("", ["arm", "VRAM after load", "VRAM peak", "Δ peak", "device peak",
                                     "RSS anon peak", "RSS file peak", "samples"], mem_rows, right=set(range(1, 8))))
    if several_gpus(report.memory):  # several GPUs: each one's peak
        mem_sec.tables.append(Table(
            "VRAM peak per GPU (this server process's own), GiB; NVML index · UUID", ["arm", "GPU", "VRAM peak"],
            [[mr.group, f"{mr.gpu_nvml_index.get(u, '?')} · {u[:12]}", fmt_gib(mib)]
             for mr in report.memory for u, mib in mr.gpu_peaks_mib.items()], right={2}))
    flat = {mr.group: dict(flatten(mr.breakdown)) for mr in report.memory}
    keys = list(dict.fromkeys(k for mr in report.memory for k in flat[mr.group]))
    for title, part in (("llama-server's memory table at exit, MiB", "exit_table."),
                        ("llama-server's buffers at load, MiB", "buffers."), ("load", "")):
        mine = [k for k in keys if k.startswith(part) and (part or not k.startswith(("exit_table.", "buffers.")))]
        if mine:
            rows = [[breakdown_label(k)] + [_breakdown_cell(flat[g].get(k)) for g in report.groups] for k in mine]
            mem_sec.tables.append(Table(title, ["item"] + list(report.groups), rows,
                                        right=set(range(1, len(report.groups) + 1))))
    return mem_sec


def _divergence(d: Divergence) -> str:
    """'tok8-a run 0 @ 5' and, where a `--margins` probe recorded them, the two tokens (this arm's
    vs the baseline's) and the baseline's logit margin there."""
    text = f"{d.prompt_id} run {d.run_index} @ {d.position}"
    if d.token is not None and d.baseline_token is not None:
        text += f": {d.token!r} vs {d.baseline_token!r}"
    if d.margin is not None:
        text += f", margin {'' if d.margin_is_exact else '≥ '}{d.margin:.3g}"
    return text


# llama-server's names for what a buffer holds (server/log.py's keys) -> what a person calls it
_KIND_LABEL = {"model_mib": "model weights", "kv_mib": "KV cache", "context_mib": "KV cache (context)",
               "compute_mib": "compute buffer", "output_mib": "output buffer", "rs_mib": "recurrent state",
               "unaccounted_mib": "unaccounted", "self_mib": "used by llama-server", "total_mib": "device total",
               "free_mib": "device free", "description": "device"}
_TOP_LABEL = {"offloaded_layers": "layers offloaded to the GPU", "total_layers": "layers in the model",
              "load_mode": "load mode"}


def _is_host(device: str) -> bool:
    """Host memory in llama-server's buffer names: CPU, CPU_Mapped, CPU_REPACK, CUDA_Host, Host."""
    return device.upper().startswith(("CPU", "HOST")) or device.endswith("_Host")


def breakdown_label(key: str) -> str:
    """A flattened breakdown key as words: "exit_table.CUDA0.model_mib" -> "GPU model weights (CUDA0)",
    "buffers.CPU_Mapped.model_mib" -> "host model weights (CPU_Mapped)"; unknown keys unchanged."""
    if key in _TOP_LABEL:
        return _TOP_LABEL[key]
    parts = key.split(".")
    if len(parts) == 3 and parts[0] in ("exit_table", "buffers"):
        _, dev, kind = parts
        what = _KIND_LABEL.get(kind, kind)
        if kind in ("model_mib", "kv_mib", "context_mib", "compute_mib", "output_mib", "rs_mib"):
            return f"{'host' if _is_host(dev) else 'GPU'} {what} ({dev})"
        return f"{what} ({dev})"
    if parts[0] == "fit":
        return "fit: " + " ".join(parts[1:]).replace("_mib", " (MiB)").replace("_", " ")
    return key


def _breakdown_cell(v: object) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return cell(v)
    return f"{v:,}" if isinstance(v, int) or float(v).is_integer() else fmt_num(float(v))


def _equivalence_section(report: Report) -> Section | None:
    """Exact-match rates of generated tokens against the baseline."""
    if not report.equivalence:
        return None
    rows = []
    for e in report.equivalence:
        rate = f"{e.identical}/{e.pairs}" + (f" ({e.identical / e.pairs:.0%})" if e.pairs else "")
        if e.unpaired:
            rate += f"; {e.unpaired} without a baseline partner"
        divs = "; ".join(_divergence(d) for d in e.divergences[:3])
        if len(e.divergences) > 3:
            divs += f"; … {len(e.divergences) - 3} more"
        greedy = {True: "yes", False: "no", None: "?"}[e.greedy]
        rows.append([e.group, e.baseline, e.compared_by, greedy, rate, divs or "—"])
    return Section("Output equivalence", paragraphs=[
        "Same prompt_id and run_index in both arms; generated token ids compared (text when ids are "
        "absent); an output whose prompt and run the baseline never ran is not a pair, and is counted "
        "apart. First divergence is the index of the first differing token (or character)."],
        tables=[Table("", ["arm", "vs", "compared by", "greedy", "exact match", "first divergence"], rows)])


def has_gpu(report: Report) -> bool:
    """Whether any arm ran on a box with a GPU (the cost per GPU-hour means nothing without one)."""
    return any(not p.gpu.startswith("no GPU") for p in report.provenance)


def _cost_section(report: Report) -> Section:
    """The seed reports' cost table and the throughput projection (priced per GPU-hour only where
    there was a GPU)."""
    priced = has_gpu(report)
    rows = []
    any_experts = any(cr.n_expert for cr in report.cost)
    for cr in report.cost:
        name = f"{cr.model} · {cr.group}" + (f" · c={cr.concurrency}" if cr.concurrency != 1 else "")
        row = [name, fmt_num(cr.tokens_per_s), fmt_num(cr.first_token_ms, 1), fmt_num(cr.vram_gb, 2),
               fmt_count(cr.total_params), fmt_count(cr.active_params)]
        if any_experts:
            row.append(f"{cr.n_expert_used}/{cr.n_expert}" if cr.n_expert else "—")
        if priced:
            row.append(fmt_money(cr.cost_per_1m))
        rows.append(row)
    headers = ["Model", "Tokens/sec", "First Token (ms)", "VRAM (GB)", "Total Params", "Active Params"]
    if any_experts:
        headers.append("Experts used/total")
    if priced:
        headers.append("Cost/1M tokens")
    price = (f"cost at ${report.gpu_hour_cost:.2f} per GPU-hour." if priced else
             "no GPU on the box, so no cost per GPU-hour (--gpu-hour-cost prices a GPU).")
    cost_sec = Section("Cost", paragraphs=[
        f"Tokens/sec is the aggregate output throughput at the concurrency measured (completion tokens over "
        f"the time the arm had requests in flight, prefill included); First Token is the median TTFT; VRAM "
        f"is the peak of the server process in decimal GB; {price}"],
        tables=[Table("", headers, rows, right=set(range(1, len(headers))))])
    if report.cost:
        cols = [f"{c.group}" + (f" c={c.concurrency}" if c.concurrency != 1 else "") for c in report.cost]
        proj = [
            ["Tokens/sec"] + [fmt_num(c.tokens_per_s) for c in report.cost],
            ["Tokens/day"] + [fmt_count(c.tokens_per_day) for c in report.cost],
        ]
        if priced:
            proj += [
                ["GPU-hours per 1B tokens"] + [fmt_num(c.gpu_hours_per_1b, 1) for c in report.cost],
                [f"Cost per 1B tokens (${report.gpu_hour_cost:.2f}/GPU-hour)"]
                + [fmt_money(c.cost_per_1b) for c in report.cost],
            ]
        cost_sec.tables.append(Table("throughput projection", ["Metric"] + cols, proj,
                                     right=set(range(1, len(cols) + 1))))
    return cost_sec


def _provenance_section(report: Report) -> Section:
    """Where every number came from: model, build, GPU, host, files."""
    rows = [[p.group, p.model, p.model_sha256 or "?", p.server_build, p.gpu, p.host, p.date,
             p.abtest_version, ", ".join(p.files)] for p in report.provenance]
    return Section("Provenance", tables=[Table("", ["arm", "model", "model sha256", "server build", "GPU · driver",
                                                         "host", "date", "abtest", "evidence"], rows)],
                       paragraphs=[f"report by abtest {report.abtest_version}; comparisons over server "
                                   f"sessions (session-t, Holm over the verdict's metrics); drift intervals by "
                                   f"bootstrap, seed {report.seed}, {report.resamples} resamples; baseline arm: "
                                   f"{report.baseline}"
                                   + ("" if report.recognise_identical
                                      else "; arms that cannot differ are not recognised")])


# A Markdown table wider than this (characters of its cells) is split by its column groups: what a
# laptop shows of a rendered page without scrolling sideways.
MARKDOWN_WIDTH = 120


def render_markdown(report: Report) -> str:
    parts = [f"# abtest report: {', '.join(report.groups)}", "", f"_{provenance_line(report)}_", ""]
    for sec in sections(report):
        parts.append(f"## {sec.title}\n")
        for p in sec.paragraphs:
            parts.append(p + "\n")
        for b in sec.bullets:
            parts.append(f"- {b}")
        if sec.bullets:
            parts.append("")
        for t in sec.tables:
            parts += [markdown_table(part) + "\n" for part in fit_width(t, MARKDOWN_WIDTH, pad=3)]
    return "\n".join(parts).rstrip() + "\n"


def terminal_renderable(report: Report, width: int | None = None) -> Any:
    """A rich renderable of the whole report (the CLI prints it; the library does not).

    `width` is the terminal's: a table wider than it is split into its column groups (one arm, or
    one comparison, per table), and a table that still does not fit is stacked, one block per row
    (`terminal_tables`), so no number is ever broken over lines."""
    from rich.console import Group
    from rich.text import Text

    items: list[Any] = [Text(f"abtest report — {provenance_line(report)}", style="bold")]
    for sec in sections(report):
        items.append(Text(""))
        items.append(Text(sec.title, style="bold underline"))
        for p in sec.paragraphs:
            items.append(Text(p, style="bold" if sec.title == "Verdict" else "dim"))
        for b in sec.bullets:
            items.append(Text(f"  ! {b}" if sec.title == "Warnings" else f"  • {b}",
                              style="yellow" if sec.title == "Warnings" else ""))
        for t in sec.tables:
            items += terminal_tables(t, width)
    return Group(*items)


def terminal_tables(t: Table, width: int | None = None) -> list[Any]:
    """One table as rich renderables no wider than `width` (None: as wide as it is)."""
    from rich import box
    from rich.padding import Padding
    from rich.table import Table as RichTable
    from rich.text import Text

    out: list[Any] = []
    # rich's SIMPLE_HEAD: a space, a blank rule and a space between columns, a space at each edge
    room = width - 2 if width else None
    for part in (fit_width(t, room, pad=3) if room else [t]):
        widths = layout_widths(part, room, pad=3) if room else None
        if room and widths is None:  # stacked: a block per row, "header  value" lines
            if part.title:
                out.append(Text(part.title, style="italic"))
            for name, pairs in records(part):
                grid = RichTable.grid(padding=(0, 2))
                grid.add_column(style="dim", no_wrap=True)
                grid.add_column(overflow="fold")
                for h, c in pairs:
                    grid.add_row(h, c)
                out += [Text(f"  {name}", style="bold"), Padding(grid, (0, 0, 0, 4))]
            continue
        rt = RichTable(title=part.title or None, box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False)
        for i, h in enumerate(part.headers):
            rt.add_column(h, justify="right" if i in part.right else "left", overflow="fold",
                          width=widths[i] if widths else None)
        for r in part.rows:
            rt.add_row(*r)
        out.append(rt)
    return out


def _jsonable(v: Any) -> Any:
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, (np.floating, np.integer)):
        return _jsonable(v.item())
    if isinstance(v, np.ndarray):
        return [_jsonable(x) for x in v.tolist()]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, Path):
        return str(v)
    return v


def _summary_dict(s: stats.Summary) -> dict[str, Any]:
    return {"n": s.n, "mean": s.mean, "std": s.std, "median": s.median, "p95": s.p95, "min": s.min, "max": s.max,
            "cv": s.cv}


def to_json(report: Report) -> dict[str, Any]:
    """The report as one JSON-able dict (NaN becomes null); raw per-request samples included."""
    multi_gpu = several_gpus(report.memory)
    d: dict[str, Any] = {
        "abtest_version": report.abtest_version,
        "baseline": report.baseline,
        "settings": {"gpu_hour_cost": report.gpu_hour_cost, "bootstrap_seed": report.seed,
                     "bootstrap_resamples": report.resamples,
                     "ci": "95 %, t over server sessions on the log ratio (session-t); the verdict's at Holm levels",
                     "alpha": ALPHA, "recognise_identical": report.recognise_identical},
        "provenance": [vars(p) for p in report.provenance],
        "verdict": report.verdict,
        "verdicts": [_verdict_dict(v) for v in report.verdicts],
        "claims_difference": any(v.claims_difference for v in report.verdicts),
        "warnings": [{"kind": w.kind.name, "subject": w.subject, "text": w.text} for w in report.warnings],
        "buckets": [
            {"bucket": s.bucket, "arm": s.group, "concurrency": s.concurrency, "n": s.n, "n_failed": s.n_failed,
             "metrics": {k: _summary_dict(v) for k, v in s.summaries.items()},
             "samples": {k: s.samples[k] for k in ("ttft_ms", "decode_tps", "e2e_ms")}}
            for s in report.buckets
        ],
        "comparisons": [
            {"arm": c.group, "baseline": c.baseline, "bucket": c.bucket, "metric": c.metric, "n_base": c.n_base,
             "n_arm": c.n_other, "base_mean": c.base_mean, "arm_mean": c.other_mean, "delta": c.ci.delta,
             "ci_low": c.ci.low, "ci_high": c.ci.high, "p_value": c.p_value, "test": c.test,
             "significant": c.significant, "sessions_base": c.sessions[0], "sessions_arm": c.sessions[1],
             "se_log": c.inference.se, "df": c.inference.df, "within_floor": c.inference.within_floor,
             "no_inference": c.reason or None}
            for c in report.comparisons
        ],
        "sessions": [vars(r) for r in report.sessions],
        "drift": [{"arm": d.group, "metric": d.metric, "first": d.first, "last": d.last, "n_first": d.n_first,
                   "n_last": d.n_last, "delta": d.ci.delta, "ci_low": d.ci.low, "ci_high": d.ci.high,
                   "flagged": d.flagged} for d in report.drift],
        "memory": [
            {"arm": m.group, "vram_after_load_mib": m.vram_after_load_mib, "vram_peak_mib": m.vram_peak_mib,
             "device_peak_mib": m.device_peak_mib, "rss_anon_peak_mib": m.rss_anon_peak_mib,
             "rss_file_peak_mib": m.rss_file_peak_mib, "breakdown": m.breakdown, "samples": m.n_samples,
             # several GPUs: the PID's own peak on each, by UUID, with its NVML index (absent for one GPU)
             **({"vram_peak_by_gpu": [{"uuid": u, "nvml_index": m.gpu_nvml_index.get(u), "vram_peak_mib": mib}
                                      for u, mib in m.gpu_peaks_mib.items()]} if multi_gpu else {})}
            for m in report.memory
        ],
        "equivalence": [
            {"arm": e.group, "baseline": e.baseline, "pairs": e.pairs, "identical": e.identical, "unpaired": e.unpaired,
             "exact_match_rate": e.identical / e.pairs if e.pairs else None, "compared_by": e.compared_by,
             "greedy": e.greedy,
             "divergences": [{k: v for k, v in vars(x).items() if v is not None} for x in e.divergences]}
            for e in report.equivalence
        ],
        "cost": [
            {"arm": c.group, "model": c.model, "concurrency": c.concurrency, "tokens_per_s": c.tokens_per_s,
             "first_token_ms": c.first_token_ms, "vram_gb": c.vram_gb, "total_params": c.total_params,
             "active_params": c.active_params, "n_expert": c.n_expert, "n_expert_used": c.n_expert_used,
             "n_gpus": c.n_gpus, "cost_per_1m_tokens": c.cost_per_1m, "tokens_per_day": c.tokens_per_day,
             "gpu_hours_per_1b_tokens": c.gpu_hours_per_1b, "cost_per_1b_tokens": c.cost_per_1b}
            for c in report.cost
        ],
        "failed_requests": report.failed_requests,
        "notes": report.notes,
    }
    if report.levels:  # only for level runs: older reports' JSON stays as it was
        d["levels"] = [{"arm": lr.group, **{k: v for k, v in vars(lr).items() if k != "group"}, "load": lr.point.label,
                        "load_kind": lr.point.kind, "load_value": lr.point.value} for lr in report.levels]
    if report.slo:
        d["slo"] = [str(o) for o in report.slo]
    if report.capacity:
        d["capacity"] = [_capacity_dict(c) for c in report.capacity]
        d["capacity_deltas"] = [{"arm": x.group, **{k: v for k, v in vars(x).items() if k != "group"}}
                                for x in report.capacity_deltas]
        d["capacity_line"] = cap.capacity_verdict(report.capacity, report.capacity_deltas, report.slo)
    return _jsonable(d)


def _capacity_dict(c: cap.ArmCapacity) -> dict[str, Any]:
    return {"arm": c.group, "load_kind": c.kind, "status": c.status, "limited_by": c.limited_by,
            "load": c.load.mean, "load_low": c.load.low, "load_high": c.load.high,
            "req_per_s": c.req_per_s.mean, "req_per_s_low": c.req_per_s.low, "req_per_s_high": c.req_per_s.high,
            "headline": c.headline.mean, "headline_low": c.headline.low, "headline_high": c.headline.high,
            "sessions": [vars(s) for s in c.sessions]}


def _verdict_dict(v: VerdictLine) -> dict[str, Any]:
    """One verdict as data: what the A/A benchmark counts (`claims_difference`) and why."""
    return {
        "arm": v.group, "baseline": v.baseline, "text": v.text, "status": v.status,
        "claims_difference": v.claims_difference, "vram_claim": v.vram_claim, "cannot_differ": v.cannot_differ,
        "sessions_base": v.sessions[0], "sessions_arm": v.sessions[1],
        "family": [{"metric": c.comparison.metric, "bucket": c.comparison.bucket, "delta": c.comparison.ci.delta,
                    "p_value": c.comparison.p_value, "p_holm": c.p_holm, "confidence": c.confidence,
                    "ci_low": c.low, "ci_high": c.high, "claim": c.claim} for c in v.family],
    }


CSV_COLUMNS = ["section", "arm", "bucket", "metric", "stat", "value", "unit"]


def render_csv(report: Report) -> str:
    """One tidy table: every number (and every provenance field) on its own row."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)

    def num(v: Any) -> str:
        if v is None:
            return ""
        if isinstance(v, float):
            return repr(v) if math.isfinite(v) else ""
        return str(v)

    for p in report.provenance:
        for k, v in vars(p).items():
            if k != "group":
                w.writerow(["provenance", p.group, "", "", k, ";".join(v) if isinstance(v, list) else v, ""])
    w.writerow(["provenance", "", "", "", "report_abtest_version", report.abtest_version, ""])
    for s in report.buckets:
        w.writerow(["requests", s.group, s.bucket, "", "n", s.n, "requests"])
        w.writerow(["requests", s.group, s.bucket, "", "n_failed", s.n_failed, "requests"])
        for key, summ in s.summaries.items():
            unit = METRIC_BY_KEY[key].unit
            for stat in ("n", "mean", "std", "median", "p95", "min", "max"):
                w.writerow(["metric", s.group, s.bucket, key, stat, num(getattr(summ, stat)), unit if stat != "n" else ""])
    for c in report.comparisons:
        for stat, v in (("delta", c.ci.delta), ("ci_low", c.ci.low), ("ci_high", c.ci.high), ("p_value", c.p_value)):
            w.writerow(["delta_vs_" + c.baseline, c.group, c.bucket, c.metric, stat, num(v),
                        "fraction" if stat != "p_value" else c.test])
    for m in report.memory:
        for stat in ("vram_after_load_mib", "vram_peak_mib", "device_peak_mib", "rss_anon_peak_mib", "rss_file_peak_mib"):
            w.writerow(["memory", m.group, "", "", stat, num(getattr(m, stat)), "MiB"])
        for k, v in flatten(m.breakdown):
            w.writerow(["breakdown", m.group, "", "", k, num(v) if not isinstance(v, list) else json.dumps(v), ""])
    for e in report.equivalence:
        w.writerow(["equivalence", e.group, "", e.compared_by, "pairs", e.pairs, ""])
        w.writerow(["equivalence", e.group, "", e.compared_by, "identical", e.identical, ""])
        w.writerow(["equivalence", e.group, "", e.compared_by, "unpaired", e.unpaired, ""])
    for cr in report.cost:
        for stat, v, unit in (("tokens_per_s", cr.tokens_per_s, "tok/s"), ("first_token_ms", cr.first_token_ms, "ms"),
                              ("vram_gb", cr.vram_gb, "GB"), ("total_params", cr.total_params, ""),
                              ("active_params", cr.active_params, ""), ("cost_per_1m_tokens", cr.cost_per_1m, "USD"),
                              ("tokens_per_day", cr.tokens_per_day, "tokens"),
                              ("gpu_hours_per_1b_tokens", cr.gpu_hours_per_1b, "GPU-hours"),
                              ("cost_per_1b_tokens", cr.cost_per_1b, "USD")):
            w.writerow(["cost", cr.group, f"c={cr.concurrency}", "", stat, num(v), unit])
    for f in report.warnings:
        w.writerow(["warning", f.subject, "", "", f.kind.name, f.text, ""])
    for v in report.verdicts:
        w.writerow(["verdict", v.group, "", "", v.status, v.text, ""])
        for claim in v.family:
            w.writerow(["verdict", v.group, claim.comparison.bucket, claim.comparison.metric, "p_holm",
                        num(claim.p_holm), ""])
    return buf.getvalue()


def render(report: Report, fmt: str) -> str:
    """"markdown", "csv" or "json" as text (the terminal format is `terminal_renderable`)."""
    if fmt == "markdown":
        return render_markdown(report)
    if fmt == "csv":
        return render_csv(report)
    if fmt == "json":
        return json.dumps(to_json(report), indent=2, ensure_ascii=False) + "\n"
    raise ConfigError(f"unknown report format {fmt!r}; choose terminal, markdown, csv or json")
