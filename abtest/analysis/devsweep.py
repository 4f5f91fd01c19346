"""The multi-device sweep's analysis: per ``-ts`` × ``--n-cpu-moe`` setting, each GPU's prediction and peak against its budget, decode tok/s, the pick.

Reads evidence only (the manifest's ``config.extra.sweep.devices`` holds the budgets, the grid and
every setting's per-GPU prediction; ``arm_end.memory.peak_by_gpu`` the measured per-PID peaks by
UUID, put in CUDA order by ``run_start.gpu.devices``, the devices the server could see, in order)
and the ``.sweep.json`` trail beside it. A setting *fits* when its peak on every GPU is within
that GPU's budget (measured; the prediction where NVML gave no per-device figure). The pick is
the fastest that fits (decode tok/s as `analysis.sweep`: stratified by bucket); it is compared
with its runner-up and with llama.cpp's ``--fit`` (``--fit-target`` per GPU) over server sessions.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..evidence import Evidence, read_evidence
from ..fmt import fmt_num
from ..records import ArmEnd, RequestRecord
from .stratified import MeanCI, SessionRatio, mean_ci_stratified, session_ratio
from .sweep import CONFIDENCE, _rates, read_sidecar

_ARM = re.compile(r"^ncmoe(?P<n>\d+)-ts(?P<ts>\d+(?:\.\d+)?(?:-\d+(?:\.\d+)?)+)$")
FIT_ARM = "fit"


@dataclass
class DeviceRow:
    arm: str
    ts: tuple[float, ...] | None  # None for fit
    n: int | None
    status: str  # "measured" | "failed" | "skipped" | "not run"
    reason: str
    predicted_mib: list[float]  # per GPU ([] for fit: fit predicts itself)
    peak_mib: list[float] | None  # measured per-PID peak per GPU, the largest over sessions
    budgets_mib: list[float]
    decode: MeanCI
    sessions: int

    @property
    def fits(self) -> bool:
        """Within every GPU's budget: on the measured peaks, else (no per-GPU figure) the prediction."""
        if self.status != "measured":
            return False
        figures = self.peak_mib if self.peak_mib is not None else self.predicted_mib
        return bool(figures) and all(v <= b for v, b in zip(figures, self.budgets_mib, strict=False))

    @property
    def basis(self) -> str:
        return "measured" if self.peak_mib is not None else "predicted"

    def flags(self) -> str:
        if self.ts is None:
            return "--fit on"
        return f"-ngl 99 -ts {','.join(f'{x:g}' for x in self.ts)} --n-cpu-moe {self.n}"


@dataclass(frozen=True)
class DeviceVersus:
    base: str
    other: str
    ratio: SessionRatio

    def interval(self) -> tuple[float, float]:
        return self.ratio.interval(CONFIDENCE)


@dataclass
class DeviceSweepReport:
    evidence_path: Path
    model: str
    budgets_mib: list[float]
    free_mib: list[float] | None
    uuids: list[str | None]
    grid: list[list[float]]
    rows: list[DeviceRow]
    best: str | None  # the pick's arm
    recommend: str  # "pick" | "fit" | "none"
    advice: str
    versus: list[DeviceVersus] = field(default_factory=list)
    fit_target: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    time_to_advice_s: float | None = None
    n_sessions: int = 0  # server sessions started (every arm, every session)

    def row(self, arm: str) -> DeviceRow | None:
        return next((r for r in self.rows if r.arm == arm), None)


def is_device_sweep(ev: Evidence) -> bool:
    extra = ((ev.manifest.config.get("extra") or {}).get("sweep") or {}) if ev.manifest else {}
    return isinstance(extra, dict) and isinstance(extra.get("devices"), dict)


def per_gpu_peak(end: ArmEnd, uuids: list[str | None]) -> list[float] | None:
    by = (end.memory or {}).get("peak_by_gpu")
    if not isinstance(by, dict) or not by or not uuids or None in uuids:
        return None
    return [float(by.get(u, 0.0)) for u in uuids]


def build_device_sweep(ev: Evidence, sidecar: dict[str, Any] | None = None) -> DeviceSweepReport:
    from ..errors import EvidenceError

    if ev.manifest is None or not is_device_sweep(ev):
        raise EvidenceError(f"{ev.path}: not a multi-device sweep (no config.extra.sweep.devices)")
    dev = ev.manifest.config["extra"]["sweep"]["devices"]
    budgets = [float(b) for b in dev.get("budgets_mib", [])]
    preds = {a: [float(d["total_mib"]) for d in p.get("devices", [])] for a, p in (dev.get("predictions") or {}).items()}
    uuids: list[str | None] = [d.get("uuid") for d in (ev.manifest.gpu or {}).get("devices") or [] if isinstance(d, dict)]
    trail = list((sidecar or {}).get("trail", []))
    first = {str(t.get("arm")): t for t in reversed(trail) if int(t.get("block") or 0) == 0}
    ends: dict[str, list[ArmEnd]] = {}
    for e in ev.arm_ends:
        ends.setdefault(e.arm, []).append(e)
    reqs: dict[str, list[RequestRecord]] = {}
    for r in ev.requests:
        if not r.warmup and r.ok:
            reqs.setdefault(r.arm, []).append(r)
    buckets = sorted({r.bucket for rs in reqs.values() for r in rs})
    counts = {b: sum(1 for rs in reqs.values() for r in rs if r.bucket == b) for b in buckets}
    weights = {b: c / sum(counts.values()) for b, c in counts.items()} if counts else {}
    arms = list(dict.fromkeys([*(str(t.get("arm")) for t in trail), *ends]))
    rows: list[DeviceRow] = []
    for arm in arms:
        m = _ARM.match(arm)
        if not m and arm != FIT_ARM:
            continue
        es, rs, t = ends.get(arm, []), reqs.get(arm, []), first.get(arm, {})
        if any(e.status == "ok" for e in es) and rs:
            status, reason = "measured", ""
        elif es:
            status, reason = "failed", next((e.error for e in es if e.error), "") or "requests failed"
        elif t.get("status") == "skipped":
            status, reason = "skipped", str(t.get("reason") or "")
        else:
            status, reason = "not run", "interrupted before this setting"
        peaks = [p for e in es if (p := per_gpu_peak(e, uuids)) is not None]
        peak = [max(col) for col in zip(*peaks, strict=True)] if peaks else None
        vals, strata, _ = _rates(rs)
        rows.append(DeviceRow(
            arm=arm, ts=tuple(float(x) for x in m["ts"].split("-")) if m else None,
            n=int(m["n"]) if m else None, status=status, reason=reason, predicted_mib=preds.get(arm, []),
            peak_mib=peak, budgets_mib=budgets, decode=mean_ci_stratified(vals, strata, weights),
            sessions=len({r.block for r in rs})))

    def vs(base: str, other: str) -> DeviceVersus:
        bv, bs, bb = _rates(reqs.get(base, []))
        ov, os_, ob = _rates(reqs.get(other, []))
        return DeviceVersus(base, other, session_ratio(bv, bb, ov, ob, bs, os_, weights=weights))

    fitting = sorted((r for r in rows if r.fits and r.ts is not None and r.decode.n > 0),
                     key=lambda r: (-r.decode.mean, r.n or 0))
    best = fitting[0].arm if fitting else None
    versus: list[DeviceVersus] = []
    if len(fitting) > 1:
        versus.append(vs(fitting[1].arm, fitting[0].arm))
    fit = next((r for r in rows if r.arm == FIT_ARM), None)
    if best is not None and fit is not None and fit.fits:
        versus.append(vs(FIT_ARM, best))
    recommend = _recommend(best, fit, versus)
    rep = DeviceSweepReport(
        evidence_path=Path(ev.path), model=str((ev.manifest.config["extra"]["sweep"].get("layout") or {}).get("name") or "?"),
        budgets_mib=budgets, free_mib=dev.get("free_mib"), uuids=uuids, grid=dev.get("grid", []), rows=rows,
        best=best, recommend=recommend, advice="", versus=versus,
        fit_target=dict(first.get(FIT_ARM, {}).get("fit_target") or {}),
        time_to_advice_s=(sidecar or {}).get("time_to_advice_s"), n_sessions=len(ev.arm_starts))
    rep.advice = advice_line(rep)
    rep.notes = _notes(rep)
    return rep


def _recommend(best: str | None, fit: DeviceRow | None, versus: list[DeviceVersus]) -> str:
    fit_ok = fit is not None and fit.fits
    if best is None:
        return "fit" if fit_ok else "none"
    if not fit_ok:
        return "pick"
    v = next((v for v in versus if v.base == FIT_ARM), None)
    lo = v.interval()[0] if v is not None else math.nan
    return "pick" if math.isfinite(lo) and lo > 0 else "fit"


def gib_list(values: list[float] | None) -> str:
    return " + ".join(f"{v / 1024:.2f}" for v in values) if values else "—"


def advice_line(rep: DeviceSweepReport) -> str:
    budgets = " + ".join(f"{b / 1024:.1f}" for b in rep.budgets_mib) + " GiB"
    if rep.recommend == "none":
        return (f"No setting fits every GPU's budget ({budgets}); raise a budget, add a GPU or use "
                "--cpu-moe (all experts in host memory).")
    row = rep.row(rep.best or "") if rep.recommend == "pick" else rep.row(FIT_ARM)
    assert row is not None
    used = gib_list(row.peak_mib if row.peak_mib is not None else row.predicted_mib)
    what = "measured per-PID peaks" if row.peak_mib is not None else "predicted"
    head = f"Use {row.flags()}: {fmt_num(row.decode.mean)} tok/s decode; {used} GiB of {budgets} ({what})"
    if rep.recommend == "fit" and rep.best is not None:
        head += f"; llama.cpp's --fit is not shown slower than {rep.best}"
    return head + "."


def _notes(rep: DeviceSweepReport) -> list[str]:
    out = []
    if rep.uuids and len(rep.uuids) != len(rep.budgets_mib):
        out.append(f"{len(rep.budgets_mib)} budgets for {len(rep.uuids)} visible GPUs: per-GPU peaks not mapped")
    if any(r.status == "measured" and r.peak_mib is None for r in rep.rows):
        out.append("some settings have no per-GPU NVML figure: they are judged on the prediction")
    out.append("per-GPU predictions are from llama.cpp's source and not yet checked on two GPUs (docs/sweep.md)")
    return out


def device_report_from_file(path: Path | str) -> DeviceSweepReport:
    p = Path(path)
    return build_device_sweep(read_evidence(p), read_sidecar(p))


__all__ = ["DeviceRow", "DeviceSweepReport", "build_device_sweep", "device_report_from_file", "is_device_sweep"]
