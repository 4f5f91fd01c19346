"""PNG figures for `abtest report --out DIR`, drawn from a built `Report` (or `HistoryResult`) only.

Figures are drawn on matplotlib's Agg canvas through `matplotlib.figure.Figure`, never through
pyplot, so importing this module changes no global backend and no window ever opens.
"""

from __future__ import annotations

import io
import math
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..analysis.memory import several_gpus
from ..errors import ConfigError

if TYPE_CHECKING:
    from ..analysis.gate import HistoryResult
    from ..analysis.report import Report

DPI = 110

# While set (`_captured`), figures are kept as SVG text under their file's stem instead of written.
_CAPTURE: ContextVar[list[tuple[str, str]] | None] = ContextVar("_CAPTURE", default=None)


def _out_dir(out: Path | str) -> Path:
    d = Path(out)
    if _CAPTURE.get() is not None:
        return d
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create --out directory {d} ({exc.strerror}) — pass a directory you can write") from exc
    return d


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    sink = _CAPTURE.get()
    if sink is not None:
        sink.append((path.stem, _svg(fig)))
        return path
    try:
        fig.savefig(path, dpi=DPI, bbox_inches="tight")
    except OSError as exc:
        raise ConfigError(f"cannot write {path} ({exc.strerror}) — pass another --out") from exc
    return path


def _svg(fig: Figure) -> str:
    """The figure as SVG text, the same bytes for the same figure (no date, fixed ids)."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": "abtest", "svg.fonttype": "path"}):
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buf.getvalue()
    return text[text.index("<svg"):]  # the XML prolog and doctype do not belong inside HTML


def report_svgs(report: Report) -> list[tuple[str, str]]:
    """The figures of `write_report_plots` as (name, SVG text), written nowhere: what the HTML
    report inlines."""
    token = _CAPTURE.set([])
    try:
        write_report_plots(report, Path("."))
        return list(_CAPTURE.get() or [])
    finally:
        _CAPTURE.reset(token)


def history_svgs(result: HistoryResult) -> list[tuple[str, str]]:
    """The figures of `write_history_key_plots` as (name, SVG text), written nowhere: the nightly
    index inlines them."""
    token = _CAPTURE.set([])
    try:
        write_history_key_plots(result, Path("."))
        return list(_CAPTURE.get() or [])
    finally:
        _CAPTURE.reset(token)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def write_report_plots(report: Report, out: Path | str) -> list[Path]:
    """Distributions of TTFT and decode tok/s per bucket and arm, VRAM over time per arm, the
    memory breakdown per arm and, for load levels, the throughput curves and each metric against load. Returns the files written."""
    d = _out_dir(out)
    paths = [
        _distribution(report, "ttft_ms", "TTFT (ms)", d / "ttft_ms.png"),
        _distribution(report, "decode_tps", "decode (tok/s)", d / "decode_tps.png"),
        _vram_over_time(report, d / "vram_over_time.png"),
        _memory_breakdown(report, d / "memory_breakdown.png"),
        _levels(report, d / "load_levels.png"),
        _load_metrics(report, d / "load_metrics.png"),
    ]
    return [p for p in paths if p is not None]


def _levels(report: Report, path: Path) -> Path | None:
    """Load levels: aggregate tok/s against TTFT p95 per arm (the Pareto view), each point a level
    labelled with its load (c=N or r=X), and tok/s against the load."""
    rows = [r for r in report.levels if r.output_tok_per_s and r.ttft_p95_ms]
    if not rows:
        return None
    fig = Figure(figsize=(11, 4.2))
    pareto, curve = fig.subplots(1, 2)
    for group in dict.fromkeys(r.group for r in rows):
        mine = [r for r in rows if r.group == group]
        x = [r.ttft_p95_ms for r in mine]
        y = [r.output_tok_per_s for r in mine]
        pareto.plot(x, y, marker="o", label=group)
        for r in mine:
            pareto.annotate(r.point.label, (r.ttft_p95_ms, r.output_tok_per_s), fontsize=7,
                            textcoords="offset points", xytext=(4, 4))
        curve.plot([r.point.value for r in mine], y, marker="o", label=group)
    for o in report.slo:
        if o.metric == "ttft" and o.percentile == 95:
            pareto.axvline(o.limit_ms, color="grey", ls="--", lw=1, label=str(o))
    pareto.set_xlabel("TTFT p95 (ms)")
    pareto.set_ylabel("output tok/s (all requests in flight)")
    pareto.set_title("throughput against TTFT p95, per load level")
    _load_axis(curve, rows)
    curve.set_ylabel("output tok/s")
    curve.set_title("throughput against load")
    for ax in (pareto, curve):
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path)


def _load_axis(ax: Any, rows: Any) -> None:
    kinds = {r.point.kind for r in rows}
    ax.set_xlabel(" / ".join(sorted("concurrency" if k == "concurrency" else "req/s offered" for k in kinds)))
    values = sorted({r.point.value for r in rows})
    if values and min(values) > 0 and max(values) / min(values) >= 4:
        ax.set_xscale("log", base=2)
        if len(values) <= 12:
            ax.set_xticks(values, [f"{v:g}" for v in values])


# (attribute of LevelRow, axis label, SLO metric drawn as a limit line)
_LOAD_METRICS = (("req_per_s", "req/s completed", None), ("output_tok_per_s", "output tok/s", None),
                 ("ttft_p95_ms", "TTFT p95 (ms)", "ttft"), ("tpot_p95_ms", "TPOT p95 (ms)", "tpot"))


def _load_metrics(report: Report, path: Path) -> Path | None:
    """Each metric against the load, per arm: req/s, tok/s, TTFT p95, TPOT p95, with the SLO's
    limits (p95 objectives) as dashed lines and each arm's capacity as a dotted vertical line."""
    rows = list(report.levels)
    if not rows:
        return None
    fig = Figure(figsize=(11, 7.5))
    axes = fig.subplots(2, 2).ravel()
    groups = list(dict.fromkeys(r.group for r in rows))
    colors = {g: f"C{i % 10}" for i, g in enumerate(groups)}
    for ax, (attr, label, metric) in zip(axes, _LOAD_METRICS, strict=True):
        for g in groups:
            mine = [r for r in rows if r.group == g and getattr(r, attr) is not None]
            ax.plot([r.point.value for r in mine], [getattr(r, attr) for r in mine], marker="o", label=g,
                    color=colors[g])
        for o in report.slo:
            if o.metric == metric and o.percentile == 95:
                ax.axhline(o.limit_ms, color="grey", ls="--", lw=1, label=str(o))
        for c in report.capacity:
            if c.group in colors and math.isfinite(c.load.mean):
                ax.axvline(c.load.mean, color=colors[c.group], ls=":", lw=1)
        _load_axis(ax, rows)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    axes[2].legend(fontsize=7)
    fig.suptitle("each metric against load, per arm" + (" (dotted: capacity at the SLO)" if report.capacity else ""))
    return _save(fig, path)


def _distribution(report: Report, key: str, ylabel: str, path: Path) -> Path | None:
    buckets = list(dict.fromkeys(s.bucket for s in report.buckets if not s.pooled))
    buckets = buckets or list(dict.fromkeys(s.bucket for s in report.buckets))
    if not buckets:
        return None
    fig = Figure(figsize=(max(4.0, 3.2 * len(buckets)), 4.2))
    axes = fig.subplots(1, len(buckets), squeeze=False)[0]
    rng = np.random.default_rng(0)  # jitter only
    for ax, bucket in zip(axes, buckets, strict=True):
        rows = [s for s in report.buckets if s.bucket == bucket]
        data = [s.samples[key][np.isfinite(s.samples[key])] for s in rows]
        labels = [s.group for s in rows]
        present = [(lab, v) for lab, v in zip(labels, data, strict=True) if v.size]
        if not present:
            ax.set_title(f"{bucket} (no data)")
            continue
        ax.boxplot([v for _, v in present], showfliers=False, widths=0.5)
        for i, (_, v) in enumerate(present, 1):
            ax.plot(i + rng.uniform(-0.12, 0.12, v.size), v, "o", ms=3, alpha=0.6)
        ax.set_xticks(range(1, len(present) + 1), [lab for lab, _ in present], rotation=15)
        meds = [float(np.median(v)) for _, v in present]
        if min(meds) > 0 and max(meds) / min(meds) > 20:
            ax.set_yscale("log")
        ax.set_title(bucket)
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{ylabel} per request, by bucket and arm")
    return _save(fig, path)


def vram_lines(report: Report) -> list[tuple[str, list[float], list[float]]]:
    """The lines of the VRAM-over-time plot, (label, t_ms, MiB): one per arm (and file), the PID's
    own VRAM; with several GPUs one per arm and GPU ("arm · GPU <NVML index>"), each GPU's share."""
    out: list[tuple[str, list[float], list[float]]] = []
    multi = several_gpus(report.memory)
    for m in report.memory:
        if multi and m.gpu_series:
            for u, per_file in m.gpu_series.items():
                gpu = f"GPU {m.gpu_nvml_index[u]}" if u in m.gpu_nvml_index else u[:12]
                for i, (t, v) in enumerate(per_file):
                    if t:
                        out.append((f"{m.group} · {gpu}" + (f" #{i + 1}" if len(per_file) > 1 else ""), t, v))
            continue
        for i, (t, v) in enumerate(m.series):
            if t:
                out.append((m.group if len(m.series) == 1 else f"{m.group} #{i + 1}", t, v))
    return out


def _vram_over_time(report: Report, path: Path) -> Path | None:
    lines = vram_lines(report)
    if not lines:
        return None
    multi = several_gpus(report.memory)
    fig = Figure(figsize=(7.5, 4.2))
    ax = fig.subplots()
    for label, t, v in lines:
        ax.plot(np.asarray(t) / 1000.0, np.asarray(v) / 1024.0, label=label, lw=1.2)
    ax.set_xlabel("seconds since the server was spawned")
    ax.set_ylabel("VRAM of the server process" + (" per GPU" if multi else "") + " (GiB)")
    ax.set_title("VRAM over time per arm" + (" and GPU" if multi else ""))
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def _memory_breakdown(report: Report, path: Path) -> Path | None:
    """Stacked bars of llama-server's buffers (model / KV / compute / output) per device and arm;
    falls back to VRAM and host RSS when no arm has a parsed breakdown."""
    rows: list[tuple[str, dict[str, float]]] = []
    for m in report.memory:
        buffers = m.breakdown.get("buffers") if isinstance(m.breakdown, dict) else None
        if isinstance(buffers, dict) and buffers:
            for dev, kinds in buffers.items():
                if isinstance(kinds, dict):
                    where = "host" if dev.upper().startswith("CPU") or dev.endswith("_Host") else "GPU"
                    rows.append((f"{m.group} · {where} {dev}", {k: float(v) for k, v in kinds.items()
                                                        if isinstance(v, (int, float))}))
    if not rows:
        for m in report.memory:
            vals = {"VRAM peak": m.vram_peak_mib, "RSS anon": m.rss_anon_peak_mib, "RSS file": m.rss_file_peak_mib}
            rows.append((m.group, {k: v for k, v in vals.items() if math.isfinite(v)}))
    if not any(r for _, r in rows):
        return None
    kinds = list(dict.fromkeys(k for _, r in rows for k in r))
    fig = Figure(figsize=(7.5, 0.6 * len(rows) + 1.8))
    ax = fig.subplots()
    left = np.zeros(len(rows))
    for k in kinds:
        gib = np.array([r.get(k, 0.0) for _, r in rows]) / 1024.0
        ax.barh(range(len(rows)), gib, left=left, label=_BUFFER_LABEL.get(k, k.removesuffix("_mib")))
        left += gib
    ax.set_yticks(range(len(rows)), [lab for lab, _ in rows])
    ax.invert_yaxis()
    ax.set_xlabel("GiB")
    ax.set_title("memory breakdown per arm (llama-server buffers)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


_BUFFER_LABEL = {"model_mib": "model weights", "kv_mib": "KV cache", "compute_mib": "compute buffer",
                 "output_mib": "output buffer", "rs_mib": "recurrent state"}


def write_history_plots(result: HistoryResult, out: Path | str) -> list[Path]:
    """One trend plot per metric: nightly value per arm, the trailing-window reference, regressions
    marked."""
    d = _out_dir(out)
    paths = []
    for metric in result.metrics:
        series = [s for s in result.series if s.metric == metric]
        if not any(np.isfinite(s.values).any() for s in series):
            continue
        fig = Figure(figsize=(8.0, 4.0))
        ax = fig.subplots()
        for s in series:
            x = np.arange(len(s.nights))
            (line,) = ax.plot(x, s.values, "o-", ms=3, lw=1.2, label=s.label)
            check = next((c for c in result.checks if c.key == s.key and c.metric == metric), None)
            if check is not None and math.isfinite(check.reference):
                ax.axhline(check.reference, color=line.get_color(), ls=":", lw=1)
                if check.regression:
                    ax.plot([x[-1]], [s.values[-1]], "x", ms=12, mew=2.5, color="red")
        nights = series[0].nights if series else []
        step = max(1, len(nights) // 10)
        ax.set_xticks(range(0, len(nights), step), [nights[i][5:] for i in range(0, len(nights), step)], rotation=30)
        ax.set_ylabel(_METRIC_LABEL.get(metric, metric))
        ax.set_title(f"{_METRIC_LABEL.get(metric, metric)} per night (dotted: trailing median; ✕ regression)")
        ax.grid(alpha=0.3)
        ax.legend()
        paths.append(_save(fig, d / f"trend_{_safe(metric)}.png"))
    return paths


_METRIC_LABEL: dict[str, Any] = {
    "decode_tps": "decode tok/s (nightly median)",
    "ttft_ms": "TTFT ms (nightly median)",
    "vram_peak_mib": "peak VRAM MiB",
}


def write_history_key_plots(result: HistoryResult, out: Path | str) -> list[Path]:
    """One figure per (model, arm): decode tok/s, TTFT and peak VRAM over the nights, each with
    the trailing-window median tonight was judged against (dotted), tonight's regression marked ✕
    and every provenance change of the key as a dashed vertical line."""
    d = _out_dir(out)
    paths = []
    keys = list(dict.fromkeys(s.key for s in result.series))
    for key in keys:
        mine = {s.metric: s for s in result.series if s.key == key}
        metrics = [m for m in result.metrics if m in mine and np.isfinite(mine[m].values).any()]
        if not metrics:
            continue
        fig = Figure(figsize=(3.6 * len(metrics), 3.0))
        axes = fig.subplots(1, len(metrics), squeeze=False)[0]
        changes = [ch for ch in result.changes if ch.key == key]
        for ax, metric in zip(axes, metrics, strict=True):
            s = mine[metric]
            x = np.arange(len(s.nights))
            ax.plot(x, s.values, "o-", ms=3.5, lw=1.3, color="#2456a6")
            check = next((c for c in result.checks if c.key == key and c.metric == metric), None)
            if check is not None and math.isfinite(check.reference):
                ax.axhline(check.reference, color="#5b6270", ls=":", lw=1)
                if check.regression and np.isfinite(s.values[-1]):
                    ax.plot([x[-1]], [s.values[-1]], "x", ms=11, mew=2.5, color="#c0261c")
            for ch in changes:
                if ch.night in s.nights:
                    ax.axvline(s.nights.index(ch.night) - 0.5, color="#8a5a00", ls="--", lw=1)
            step = max(1, len(s.nights) // 8)
            ax.set_xticks(range(0, len(s.nights), step), [s.nights[i][5:] for i in range(0, len(s.nights), step)],
                          rotation=30, fontsize=8)
            ax.set_title(_METRIC_LABEL.get(metric, metric), fontsize=9)
            ax.grid(alpha=0.3)
            ax.tick_params(axis="y", labelsize=8)
        paths.append(_save(fig, d / f"trend_{_safe(key[0])}__{_safe(key[1])}.png"))
    return paths
