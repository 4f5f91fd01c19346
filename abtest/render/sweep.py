"""The sweep report rendered: the VRAM-vs-speed table, the frontier, the advice, and its plot."""

from __future__ import annotations

import math
from pathlib import Path

from ..analysis.findings import warned_by
from ..analysis.stratified import MeanCI
from ..analysis.sweep import (
    MIB,
    NO_INTERVAL_TEXT,
    FrontierPoint,
    SettingRow,
    SweepReport,
    budget_label,
    capacity_score,
    capacity_text,
    fit_flags,
    fit_placement_text,
    fit_sentence,
    flag_of,
    frontier_sentence,
    load_mode_sentence,
)
from ..fmt import fmt_fixed, fmt_gib, fmt_num
from .tables import Table, markdown_table


def _table(headers: list[str], rows: list[list[str]], right: set[int]) -> str:
    return markdown_table(Table("", headers, rows, right))


def _pm_ci(c: MeanCI, digits: int = 1) -> str:
    """'80.0 ± 3.0 [76.9–83.1]': mean ± σ [95 % interval of the mean]."""
    if not c.n:
        return "—"
    out = f"{fmt_fixed(c.mean, digits)} ± {fmt_fixed(c.std, digits)}" if c.n > 1 else fmt_fixed(c.mean, digits)
    if c.n > 1 and math.isfinite(c.low):  # rates and times are positive: a t-interval below 0 shows as 0
        out += f" [{fmt_fixed(max(c.low, 0.0), digits)}–{fmt_fixed(c.high, digits)}]"
    return out


def main_table(rep: SweepReport) -> str:
    ref = flag_of(rep.reference, rep.n_layer) if rep.reference is not None else "--cpu-moe"  # blank: not measured
    tt = f"TTFT ms ({rep.long_bucket})" if rep.long_bucket else "TTFT ms"
    cpu = rep.backend == "cpu"
    headers = ["N", "flag", "VRAM pred GiB", "VRAM meas GiB", "err MiB", "decode tok/s", f"× {ref}", tt,
               "GPU MiB/tok", "host MiB/tok", "GPU GB/s", "host GB/s", "frontier"]
    capacity = rep.objective == "capacity"
    if capacity:
        headers.insert(5, "capacity req/s")
    rows = []
    for r in rep.rows:
        sp = r.speedup
        t = r.ttft.get(rep.long_bucket) if rep.long_bucket else None
        meas = fmt_gib(r.vram_peak_mib) if r.vram_peak_mib is not None else ("—" if r.status == "measured" else r.status)
        lo, hi = sp.interval() if sp is not None else (math.nan, math.nan)
        if sp is not None and math.isfinite(lo):
            speed = f"{1 + sp.delta:.2f} [{1 + lo:.2f}–{1 + hi:.2f}]"
        elif sp is not None and math.isfinite(sp.delta):
            speed = f"{1 + sp.delta:.2f}"
        else:
            speed = "—"
        rows.append([
            str(r.n) + (" ←" if r.n == rep.best else ""),
            f"`{flag_of(r.n, rep.n_layer)}`",
            fmt_gib(r.predicted.get("total_mib")),
            meas,
            fmt_fixed(r.error_mib, 0) if r.error_mib is not None else "—",
            _pm_ci(r.decode),
            speed,
            _pm_ci(t, 0) if t is not None else "—",
            "—" if cpu else fmt_fixed(r.gpu_bytes_per_token / MIB, 0),
            fmt_fixed(r.host_bytes_per_token / MIB, 0),
            fmt_fixed(r.gpu_bw / 1e9, 1) if r.decode.n and not cpu else "—",
            fmt_fixed(r.host_bw / 1e9, 1) if r.decode.n else "—",
            "★" if r.on_frontier else "",
        ])
        if capacity:
            rows[-1].insert(5, capacity_cell(r))
    return _table(headers, rows, set(range(2, 13 if capacity else 12)))


def capacity_cell(r: SettingRow) -> str:
    """'3.10 (2.80–3.40) @c4'; '≥ 50.0 @c8' (every level met: a lower bound); 'none met'."""
    c = r.capacity
    if c is None or not math.isfinite(capacity_score(r)):
        return "none met" if c is not None and capacity_score(r) == -math.inf else "—"
    iv = c.headline
    txt = ("≥ " if c.status != "bracketed" else "") + fmt_num(iv.mean)
    if math.isfinite(iv.low):
        txt += f" ({fmt_num(iv.low)}–{fmt_num(iv.high)})"
    if c.kind == "concurrency" and math.isfinite(c.load.mean):
        v = c.load.mean
        txt += f" @c{v:g}" if v == round(v, 3) else f" @c{fmt_num(v)}"
    return txt


def frontier_line(rep: SweepReport) -> str:
    fr = sorted((r for r in rep.rows if r.on_frontier), key=lambda r: r.vram_mib or 0.0)
    if not fr:
        return ""
    steps = [f"{flag_of(r.n, rep.n_layer)} ({fmt_gib(r.vram_mib, 1)} GiB, {fmt_fixed(r.decode.mean)} tok/s)" for r in fr]
    return "Frontier (no setting is both smaller and faster): " + " → ".join(steps) + "."


def buffers_table(rep: SweepReport) -> str:
    """Predicted buffers beside what llama-server printed (-lv 4)."""
    headers = ["N", "device", "model pred", "model log", "KV pred", "KV log", "compute pred", "compute log"]
    rows = []
    for r in rep.rows:
        if not r.buffers or not r.predicted:
            continue
        p = r.predicted
        gpu = next((k for k in r.buffers if k.startswith("CUDA") and not k.endswith("_Host")), None)
        if gpu is not None:
            b = r.buffers[gpu]
            rows.append([str(r.n), gpu, fmt_fixed(p["weights_mib"]), fmt_fixed(b.get("model_mib", math.nan)), fmt_fixed(p["kv_mib"]),
                         fmt_fixed(b.get("kv_mib", math.nan)), fmt_fixed(p["compute_mib"]), fmt_fixed(b.get("compute_mib", math.nan))])
        elif "CPU" in r.buffers and rep.backend == "cpu":
            # A CPU build holds everything in host buffers: compare with vram.cpu_buffers.
            cb, pc = r.buffers, rep.cpu_build
            model_log = sum(cb.get(k, {}).get("model_mib", 0.0) for k in cb if k.startswith("CPU"))
            model_pred = pc.get("model_mapped_mib", math.nan) + pc.get("model_repack_mib", math.nan)
            rows.append([str(r.n), "CPU (all)", fmt_fixed(model_pred, 2), fmt_fixed(model_log, 2), fmt_fixed(pc.get("kv_mib", math.nan), 2),
                         fmt_fixed(cb["CPU"].get("kv_mib", math.nan), 2), fmt_fixed(pc.get("compute_mib", math.nan), 2),
                         fmt_fixed(cb["CPU"].get("compute_mib", math.nan), 2)])
    if not rows:
        return ""
    return _table(headers, rows, set(range(2, 8)))


def time_to_advice_line(rep: SweepReport) -> str:
    """'Time to advice: 98 s from the sweep's start (2 server sessions).' ('' when not recorded)."""
    if rep.time_to_advice_s is None:
        return ""
    if len(rep.contexts) > 1:
        return (f"Time to advice: {rep.time_to_advice_s:.0f} s from the sweep's start, for all {len(rep.contexts)} "
                f"context sizes ({rep.sweep_sessions} server sessions).")
    return f"Time to advice: {rep.time_to_advice_s:.0f} s from the sweep's start ({rep.n_sessions} server sessions)."


def render_markdown(rep: SweepReport, *, in_frontier: bool = False) -> str:
    """One context size's report; in_frontier: a section of sweep-frontier.md, which says the time once."""
    parts = [f"# abtest sweep: {rep.model}", ""]
    bits = [f"backend {rep.backend}", f"{rep.n_layer} layers", f"-c {rep.n_ctx}"]
    if rep.budget_mib is not None:
        bits.append(f"budget {budget_label(rep.budget_mib)}")
    if rep.free_mib is not None:
        bits.append(f"free at start {fmt_gib(rep.free_mib)} GiB")
    if len(rep.contexts) > 1:
        bits.append(f"{rep.n_sessions} server sessions at this size")
    parts += [f"_{', '.join(bits)}; evidence {rep.evidence_path.name}_", ""]
    if len(rep.contexts) > 1 and not in_frontier:
        sizes = ", ".join(str(c) for c in rep.contexts)
        parts += [f"_This is -c {rep.n_ctx}, one of the sweep's {len(rep.contexts)} context sizes ({sizes}); "
                  "sweep-frontier.md has every one._", ""]
    parts += [f"**{rep.advice}**", ""]
    fs = fit_sentence(rep)
    if fs:
        parts += [f"vs llama.cpp's own placement: {fs}.", ""]
    ls = load_mode_sentence(rep)
    if ls:
        parts += [f"{ls}.", ""]
    ta = time_to_advice_line(rep)
    if ta and not in_frontier:
        parts += [ta, ""]
    parts += [main_table(rep), ""]
    fl = frontier_line(rep)
    if fl:
        parts += [fl, ""]
    parts.append("VRAM meas = per-PID NVML peak; decode = buckets' means weighted by their share of the requests, "
                 "± σ within buckets [95 % stratified t-interval]; TTFT = mean ± σ [95 % t-interval]; "
                 "× = ratio of decode rates, compared within buckets, with a 95 % interval over server sessions "
                 "(none with one session a side); MiB/tok = weight (+KV) bytes "
                 "each decoded token reads; GB/s = that × decode tok/s; ★ = on the VRAM/speed frontier; ← = advice."
                 + (f" capacity = req/s carried within {', '.join(map(str, rep.slo))} at the concurrency shown, "
                    "mean (95 % interval) over server sessions; ≥ = every level met (a lower bound); "
                    "none met = not even the lowest level (ranked last)." if capacity_rows(rep) else ""))
    if rep.explanation:
        parts += ["", "## What limits speed", ""] + [f"- {e}" for e in rep.explanation]
    if len(rep.rows) and any(len(r.ttft) > 1 for r in rep.rows):
        bks = sorted({b for r in rep.rows for b in r.ttft})
        rows = [[str(r.n)] + [_pm_ci(r.ttft[b], 0) if b in r.ttft else "—" for b in bks] for r in rep.rows]
        parts += ["", "## TTFT ms per bucket", "", _table(["N"] + bks, rows, set(range(1, len(bks) + 1)))]
    if rep.fit is not None:
        parts += ["", "## llama.cpp's --fit at the same budget", "", fit_section(rep)]
    if rep.versus:
        what = "capacity within the SLO" if rep.objective == "capacity" else "decode tok/s"
        parts += ["", f"## Comparisons over server sessions ({what})", "", versus_table(rep)]
    if rep.warnings:
        parts += ["", "## The server's own warnings", ""] + warning_lines(rep)
    bt = buffers_table(rep)
    if bt:
        parts += ["", "## Predicted buffers vs the server log (MiB)", "", bt]
    if rep.trail:
        steps = []
        for t in rep.trail:
            what = t.get("status", "?")
            v = t.get("vram_mib")
            steps.append(f"{t.get('arm')} {what}" + (f" {v / 1024:.2f} GiB" if isinstance(v, (int, float)) else ""))
        parts += ["", "## Search order", "", " → ".join(steps)]
    if rep.notes:
        parts += ["", "## Notes", ""] + [f"- {n}" for n in rep.notes]
    return "\n".join(parts) + "\n"


def fit_section(rep: SweepReport) -> str:
    fit = rep.fit
    assert fit is not None
    t = fit.target
    lines = [f"- arm `{fit.arm}`: `{fit_flags(fit)}` (no -ngl: fit aborts when it is set), {fit.status}"
             + (f" — {fit.reason}" if fit.reason else "")]
    if t:
        lines.append(f"- fit-target: {t.get('derivation') or t.get('reason')}")
    if fit.status == "measured":
        vram = f"{fmt_gib(fit.vram_peak_mib, 2)} GiB" if fit.vram_peak_mib is not None else "not measured"
        lines.append(f"- measured: per-PID peak {vram}"
                     + (" — over the budget, disqualified" if fit.over_budget else "")
                     + f"; decode {_pm_ci(fit.decode)} tok/s over {fit.sessions} server session(s)")
        if rep.objective == "capacity":
            lines.append(f"- within {', '.join(map(str, rep.slo))}: {capacity_text(fit.capacity)}")
    if fit.placement or fit.plan:
        lines.append(f"- placement: {fit_placement_text(fit)}")
    if fit.plan.get("stdout"):
        out = fit.plan["stdout"]
        lines.append(f"- llama-fit-params printed: `{out if len(out) <= 160 else out[:157] + '...'}`")
    return "\n".join(lines)


def versus_table(rep: SweepReport) -> str:
    rows = []
    for v in rep.versus:
        lo, hi = v.interval()
        p = v.ratio.p_value
        rows.append([f"`{v.other}` vs `{v.base}`", f"{v.ratio.delta * 100:+.1f} %" if math.isfinite(v.ratio.delta) else "—",
                     f"{lo * 100:+.1f} % … {hi * 100:+.1f} %" if math.isfinite(lo) else "no interval",
                     f"{p:.3f}" if math.isfinite(p) else "n/a", f"{v.ratio.k_other} / {v.ratio.k_base}",
                     NO_INTERVAL_TEXT.get(v.ratio.reason, v.ratio.reason)])
    what = "Δ capacity" if rep.objective == "capacity" else "Δ decode"
    return _table(["comparison", what, "95 % CI", "p", "sessions", "why no interval"], rows, {1, 2, 3})


def capacity_rows(rep: SweepReport) -> bool:
    return rep.objective == "capacity"


def warning_lines(rep: SweepReport) -> list[str]:
    """Each warning once, with the arms that printed it."""
    by_text: dict[str, list[str]] = {}
    for arm, ws in rep.warnings.items():
        for w in ws:
            by_text.setdefault(w, []).append(arm)
    out = []
    for w, arms in by_text.items():
        out.append(f"- `{w}` ({warned_by(arms, rep.arms_ended)})")
    return out


def frontier_markdown(reps: list[SweepReport], points: list[FrontierPoint]) -> str:
    """The context × offload frontier: one row per context, the sentence, then each stage's report."""
    if not reps:
        return ""
    rep0 = reps[0]
    rows = []
    for p, r in zip(points, reps, strict=True):
        rows.append([str(p.n_ctx), flag_of(p.predicted_n, r.n_layer) if p.predicted_n is not None else "—",
                     f"`{flag_of(p.n, r.n_layer)}`" if p.n is not None else "nothing fits",
                     fmt_gib(p.vram_mib) if p.vram_mib is not None else "—",
                     fmt_fixed(p.decode_tps) if math.isfinite(p.decode_tps) else "—",
                     fmt_fixed(p.fit_decode_tps) if p.fit_decode_tps is not None else "—", r.advice])
    parts = [f"# abtest sweep frontier: {rep0.model}", "",
             f"**{frontier_sentence(points, rep0.budget_mib, rep0.n_layer)}**", "",
             _table(["-c", "predicted boundary", "fastest measured", "VRAM GiB", "decode tok/s", "fit tok/s", "advice"],
                    rows, {3, 4, 5}), ""]
    ta = time_to_advice_line(rep0)
    if ta:
        parts += [ta, ""]
    for r in reps:
        parts.append(render_markdown(r, in_frontier=True).replace("# abtest sweep:", f"## -c {r.n_ctx}:", 1))
    return "\n".join(parts)


def write_frontier_plot(frontiers: list[tuple[float | None, list[FrontierPoint]]], path: Path,
                        title: str = "") -> Path | None:
    """Decode tok/s against context size, one line per budget (and fit's, dashed, where measured)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not any(p.n is not None for _, pts in frontiers for p in pts):
        return None
    fig = Figure(figsize=(6.5, 4.2))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for i, (budget, pts) in enumerate(frontiers):
        ok = [p for p in pts if p.n is not None]
        label = budget_label(budget) if budget is not None else "no budget"
        ax.plot([p.n_ctx for p in ok], [p.decode_tps for p in ok], "o-", color=f"C{i}", label=f"abtest's pick, {label}")
        for p in ok:
            ax.annotate(f"{p.n}", (p.n_ctx, p.decode_tps), textcoords="offset points", xytext=(4, 4), fontsize=8)
        fit = [p for p in pts if p.fit_decode_tps is not None]
        if fit:
            ax.plot([p.n_ctx for p in fit], [p.fit_decode_tps or math.nan for p in fit], "s--", color=f"C{i}", alpha=0.6,
                    label=f"--fit, {label}")
    ax.set_xscale("log", base=2)
    ticks = sorted({p.n_ctx for _, pts in frontiers for p in pts})
    ax.set_xticks(ticks, [f"{t // 1024}k" if t % 1024 == 0 else str(t) for t in ticks])
    ax.set_xlabel("context size (-c, tokens)")
    ax.set_ylabel("decode tok/s (labels: --n-cpu-moe N)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def write_plot(rep: SweepReport, path: Path) -> Path | None:
    """decode tok/s and TTFT against VRAM, one point per setting, 95 % intervals, frontier, budget."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [r for r in rep.rows if r.vram_mib is not None and r.decode.n]
    if not rows:
        return None
    fig = Figure(figsize=(11, 4.2))
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    for ax, get, label in (
        (ax1, lambda r: r.decode, "decode (tok/s)"),
        (ax2, lambda r: r.ttft.get(rep.long_bucket or "", MeanCI(0, math.nan, math.nan, math.nan, math.nan)),
         f"TTFT ms ({rep.long_bucket})"),
    ):
        for r in rows:
            c = get(r)
            if not c.n:
                continue
            x = (r.vram_mib or 0) / 1024
            err = None
            if math.isfinite(c.low):
                err = [[c.mean - c.low], [c.high - c.mean]]
            filled = r.vram_peak_mib is not None
            ax.errorbar([x], [c.mean], yerr=err, fmt="o", color="C0" if r.on_frontier else "C7",
                        mfc=None if filled else "none", capsize=3)
            ax.annotate(f"{r.n}", (x, c.mean), textcoords="offset points", xytext=(4, 4), fontsize=8)
        if ax is ax1:
            fr = sorted((r for r in rows if r.on_frontier), key=lambda r: r.vram_mib or 0)
            if len(fr) > 1:
                ax.plot([(r.vram_mib or 0) / 1024 for r in fr], [r.decode.mean for r in fr], "-", color="C0", alpha=0.5)
        if rep.budget_mib is not None:
            ax.axvline(rep.budget_mib / 1024, color="C3", ls="--", lw=1, label=f"budget {budget_label(rep.budget_mib)}")
            ax.legend(loc="best", fontsize=8)
        ax.set_xlabel("VRAM GiB (per-PID peak; hollow = predicted)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{rep.model}: --n-cpu-moe N (labels), -c {rep.n_ctx}", fontsize=10)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def write_outputs(rep: SweepReport, out_dir: Path | str) -> tuple[Path, Path | None]:
    """OUT/sweep-report.md and OUT/sweep-vram-speed.png."""
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    md = d / "sweep-report.md"
    md.write_text(render_markdown(rep), encoding="utf-8")
    png = write_plot(rep, d / "sweep-vram-speed.png")
    return md, png
