"""Memory of each arm group: VRAM after load and at peak, host RSS, the log's breakdown."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..records import VramSample, measured_window_ms
from .arms import (
    ArmGroup,
    ArmRun,
)


@dataclass
class MemoryRow:
    group: str
    vram_after_load_mib: float
    vram_peak_mib: float
    device_peak_mib: float
    rss_anon_peak_mib: float
    rss_file_peak_mib: float
    breakdown: dict[str, Any]
    series: list[tuple[list[float], list[float]]]  # per file: (t_ms, pid VRAM MiB)
    n_samples: int
    # the PID's own VRAM peak per device, by NVML UUID (mean over the files that have the device);
    # empty for files without per-device samples
    gpu_peaks_mib: dict[str, float] = field(default_factory=dict)
    gpu_nvml_index: dict[str, int] = field(default_factory=dict)  # UUID -> NVML index, from run_start
    # the PID's own VRAM over time per device, by UUID: per file (t_ms, MiB), as `series` is for the sum;
    # empty for files without per-device samples
    gpu_series: dict[str, list[tuple[list[float], list[float]]]] = field(default_factory=dict)


def several_gpus(rows: Iterable[MemoryRow]) -> bool:
    """Whether the servers held memory on more than one GPU: then the report shows each GPU's peak
    and line (one GPU: the output as before the per-device figures existed)."""
    return len({u for mr in rows for u in mr.gpu_peaks_mib}) > 1


def gpu_peaks(run: ArmRun) -> dict[str, float]:
    """One file's per-device peaks of the PID's own VRAM, by UUID: the arm_end summary's
    `peak_by_gpu` and the memory samples' `pid_vram_by_gpu`, whichever is higher."""
    mem_end = run.end.memory if run.end else {}
    recorded = mem_end.get("peak_by_gpu") if isinstance(mem_end, dict) else None
    out: dict[str, float] = {}
    if isinstance(recorded, dict):
        out = {str(k): float(v) for k, v in recorded.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
    for s in run.memory:
        for uuid, mib in (s.pid_vram_by_gpu or {}).items():
            out[uuid] = max(mib, out.get(uuid, mib))
    return out


def _sample_value(d: dict[str, Any] | None, key: str) -> float:
    if not d:
        return math.nan
    v = d.get(key)
    return float(v) if isinstance(v, (int, float)) else math.nan


def _nanmean(values: Iterable[float]) -> float:
    a = np.array([v for v in values if math.isfinite(v)], dtype=float)
    return float(a.mean()) if a.size else math.nan


def _nanmax(values: Iterable[float | None]) -> float:
    a = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return max(a) if a else math.nan


def memory_row(g: ArmGroup) -> MemoryRow:
    after, peak, dev, anon, filem, series = [], [], [], [], [], []
    n_samples = 0
    breakdown: dict[str, Any] = {}
    for run in g.runs:
        mem_end = run.end.memory if run.end else {}
        a = _sample_value(run.start.memory_after_load if run.start else None, "pid_vram_mib")
        if not math.isfinite(a):
            a = _sample_value(mem_end.get("after_load"), "pid_vram_mib")
        ready = run.start.ready_ms if run.start else 0.0
        if not math.isfinite(a):
            a = next((s.pid_vram_mib for s in run.memory if s.t_ms >= ready and s.pid_vram_mib is not None), math.nan)
        after.append(a)
        pk = _sample_value(mem_end.get("peak"), "pid_vram_mib")
        peak.append(_nanmax([pk, *(s.pid_vram_mib for s in run.memory)]))
        dev.append(_nanmax([_sample_value(mem_end.get("peak"), "device_used_mib"), *(s.device_used_mib for s in run.memory)]))
        anon.append(_nanmax([_sample_value(mem_end.get("peak"), "host_rss_anon_mib"), *(s.host_rss_anon_mib for s in run.memory)]))
        filem.append(_nanmax([_sample_value(mem_end.get("peak"), "host_rss_file_mib"), *(s.host_rss_file_mib for s in run.memory)]))
        pts = [(s.t_ms, s.pid_vram_mib) for s in run.memory if s.pid_vram_mib is not None]
        series.append(([t for t, _ in pts], [v for _, v in pts]))
        n_samples += len(run.memory)
        if not breakdown and run.end and run.end.breakdown:
            breakdown = run.end.breakdown
    per_run = [gpu_peaks(run) for run in g.runs]
    gpu_series: dict[str, list[tuple[list[float], list[float]]]] = {}
    for run in g.runs:
        for u in dict.fromkeys(u for s in run.memory for u in (s.pid_vram_by_gpu or {})):
            pts = [(s.t_ms, s.pid_vram_by_gpu[u]) for s in run.memory if s.pid_vram_by_gpu and u in s.pid_vram_by_gpu]
            gpu_series.setdefault(u, []).append(([t for t, _ in pts], [v for _, v in pts]))
    uuids = list(dict.fromkeys(u for p in per_run for u in p))
    index: dict[str, int] = {}
    for run in g.runs:
        manifest = run.evidence.manifest
        for d in ((manifest.gpu or {}).get("devices") or []) if manifest else []:
            if isinstance(d, dict) and isinstance(d.get("uuid"), str) and isinstance(d.get("index"), int):
                index.setdefault(d["uuid"], d["index"])
    return MemoryRow(
        gpu_peaks_mib={u: _nanmean(p[u] for p in per_run if u in p) for u in uuids},
        gpu_nvml_index={u: index[u] for u in uuids if u in index},
        gpu_series=gpu_series,
        group=g.label,
        vram_after_load_mib=_nanmean(after),
        vram_peak_mib=_nanmean(peak),
        device_peak_mib=_nanmean(dev),
        rss_anon_peak_mib=_nanmean(anon),
        rss_file_peak_mib=_nanmean(filem),
        breakdown=breakdown,
        series=series,
        n_samples=n_samples,
    )


def measured_window_samples(run: ArmRun) -> list[VramSample]:
    """Memory samples taken while the measured requests ran.

    Samples carry t_ms since spawn; requests carry this host's monotonic send time, and
    `ArmStart.spawn_ns` puts the spawn on that clock (`records.measured_window_ms`). Files written
    before that field existed meet the two clocks only at ready_ms, so the window is guessed by
    assuming the first request followed /health at once. Falls back to every sample after ready_ms
    when fewer than 3 fall inside.
    """
    ready = run.start.ready_ms if run.start else 0.0
    after = [s for s in run.memory if s.t_ms >= ready]
    reqs = run.requests
    measured = [r for r in reqs if not r.warmup]
    if not reqs or not measured:
        return after
    window = measured_window_ms(reqs, run.start.spawn_ns if run.start else 0)
    if window is None:
        t0 = min(r.t_send_ns for r in reqs)
        m0 = min(r.t_send_ns for r in measured)
        m1 = max(r.t_send_ns + (r.e2e_ms or 0.0) * 1e6 for r in measured)
        window = ready + (m0 - t0) / 1e6, ready + (m1 - t0) / 1e6
    lo, hi = window
    inside = [s for s in after if lo <= s.t_ms <= hi]
    return inside if len(inside) >= 3 else after
