"""The multi-device sweep rendered: per setting each GPU's predicted and measured memory against its budget, decode, the advice."""

from __future__ import annotations

import math
from pathlib import Path

from ..analysis.devsweep import DeviceRow, DeviceSweepReport, gib_list
from ..fmt import fmt_fixed
from .tables import Table, markdown_table


def _decode(r: DeviceRow) -> str:
    c = r.decode
    if not c.n:
        return "—"
    out = fmt_fixed(c.mean, 1)
    if c.n > 1 and math.isfinite(c.low):
        out += f" [{fmt_fixed(max(c.low, 0.0), 1)}–{fmt_fixed(c.high, 1)}]"
    return out


def _status(r: DeviceRow) -> str:
    if r.status != "measured":
        return r.status
    if r.fits:
        return "fits"
    over = [i for i, (v, b) in enumerate(zip(r.peak_mib or r.predicted_mib, r.budgets_mib, strict=False)) if v > b]
    return "over GPU " + ",".join(map(str, over)) if over else "no figure"


def device_table(rep: DeviceSweepReport) -> str:
    head = ["setting", "pred GiB", "peak GiB", "status", "tok/s"]
    rows = []
    for r in rep.rows:
        name = r.arm + (" ←" if r.arm == (rep.best if rep.recommend == "pick" else "fit") else "")
        rows.append([name, gib_list(r.predicted_mib), gib_list(r.peak_mib), _status(r), _decode(r)])
    return markdown_table(Table("", head, rows, {1, 2, 4}))


def render_device_markdown(rep: DeviceSweepReport) -> str:
    budgets = " + ".join(f"{b / 1024:.1f}" for b in rep.budgets_mib)
    grid = "; ".join(",".join(f"{x:g}" for x in ts) for ts in rep.grid)
    parts = [f"# abtest sweep over {len(rep.budgets_mib)} GPUs: {rep.model}", "",
             f"_budgets {budgets} GiB (GPU 0 + GPU 1 ..., CUDA order); -ts searched: {grid}; "
             f"evidence {rep.evidence_path.name}_", "", f"**{rep.advice}**", ""]
    for v in rep.versus:
        lo, hi = v.interval()
        d = v.ratio.delta
        if math.isfinite(d):
            iv = f" [{lo * 100:+.1f} %, {hi * 100:+.1f} %]" if math.isfinite(lo) else " (no interval: one session a side)"
            parts.append(f"- {v.other} vs {v.base}: decode {d * 100:+.1f} %{iv}")
    if rep.versus:
        parts.append("")
    if rep.time_to_advice_s is not None:
        parts += [f"Time to advice: {rep.time_to_advice_s:.0f} s from the sweep's start ({rep.n_sessions} "
                  "server sessions).", ""]
    if rep.fit_target.get("margins_mib"):
        parts += [f"fit: --fit-target {','.join(map(str, rep.fit_target['margins_mib']))} "
                  f"({rep.fit_target.get('derivation', '')})", ""]
    parts += [device_table(rep), "",
              "pred / peak = per GPU (GPU 0 + GPU 1 ...): predicted before launch (abtest/models/split.py) / "
              "per-PID NVML peak; fits = every GPU's peak within its budget; tok/s = decode, buckets' means "
              "weighted by their share [95 % stratified t-interval]; ← = advice."]
    if rep.notes:
        parts += ["", *[f"- {n}" for n in rep.notes]]
    return "\n".join(parts) + "\n"


def write_device_outputs(rep: DeviceSweepReport, out_dir: Path | str) -> Path:
    """OUT/sweep-report.md (no plot: the VRAM/speed plot is of one budget)."""
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    md = d / "sweep-report.md"
    md.write_text(render_device_markdown(rep), encoding="utf-8")
    return md


__all__ = ["device_table", "render_device_markdown", "write_device_outputs"]
