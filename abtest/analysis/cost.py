"""Cost in the seed reports' layout: aggregate throughput, cost per token, the GPU-hour projection."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..records import MIB
from . import stats
from .arms import ArmGroup
from .memory import MemoryRow

DEFAULT_GPU_HOUR_COST = 3.50  # USD, the H100 cloud price seed 003 uses




@dataclass
class CostRow:
    group: str
    model: str
    concurrency: int
    tokens_per_s: float  # aggregate: completion tokens / wall span of the measured requests
    first_token_ms: float  # median TTFT
    vram_gb: float  # peak PID VRAM, decimal GB (10^9 bytes) as in the seed tables
    total_params: float | None
    active_params: float | None
    n_expert: int | None
    n_expert_used: int | None
    n_gpus: int
    gpu_hour_cost: float

    @property
    def cost_per_1m(self) -> float:
        return self.gpu_hours_per_1b / 1000.0 * self.gpu_hour_cost if self.tokens_per_s > 0 else math.nan

    @property
    def tokens_per_day(self) -> float:
        return self.tokens_per_s * 86400.0

    @property
    def gpu_hours_per_1b(self) -> float:
        if not self.tokens_per_s > 0:
            return math.nan
        return 1e9 / (self.tokens_per_s * 3600.0) * self.n_gpus

    @property
    def cost_per_1b(self) -> float:
        return self.gpu_hours_per_1b * self.gpu_hour_cost


def busy_seconds(intervals: Iterable[tuple[float, float]]) -> float:
    """Length of the union of [start, end] intervals (seconds in, seconds out)."""
    total = 0.0
    cur_start = cur_end = None
    for a, b in sorted(intervals):
        if cur_end is None or a > cur_end:
            if cur_end is not None and cur_start is not None:
                total += cur_end - cur_start
            cur_start, cur_end = a, b
        else:
            cur_end = max(cur_end, b)
    if cur_end is not None and cur_start is not None:
        total += cur_end - cur_start
    return total


def aggregate_tokens_per_s(g: ArmGroup, concurrency: int) -> float:
    """Completion tokens of the measured ok requests over the time at least one measured request
    of this arm was in flight (union of send -> end intervals, per file).

    At concurrency 1 this is tokens over the sum of end-to-end times, prefill included; at
    concurrency N it is the server's aggregate output rate; with an interleaved schedule the other
    arm's turns are not counted against this one.
    """
    tokens = 0
    busy = 0.0
    for run in g.runs:
        reqs = [r for r in run.measured if r.concurrency == concurrency and r.e2e_ms is not None]
        busy += busy_seconds((r.t_send_ns / 1e9, r.t_send_ns / 1e9 + (r.e2e_ms or 0.0) / 1e3) for r in reqs)
        tokens += sum(r.completion_tokens for r in reqs if r.ok)
    return tokens / busy if busy > 0 else math.nan


def _num_or_none(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _int_or_none(v: Any) -> int | None:
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def gpus_used(g: ArmGroup) -> int:
    """GPUs the arm's server used, at least 1: the most devices its PID held memory on in one
    sample (`VramSample.pid_vram_by_gpu`, else `gpus` of the samples with PID memory); else, where
    NVML never listed the PID (a PID namespace), the most devices a sample read (the visible ones);
    else the devices the manifest lists (the visible ones; every one NVML saw in files written
    before `gpus` existed). Samples taken before the server allocated read every visible device,
    so they count only when no sample shows where the PID's memory is."""
    samples = [s for run in g.runs for s in run.memory]
    held = max((len(s.pid_vram_by_gpu) for s in samples if s.pid_vram_by_gpu), default=0)
    held = held or max((len(s.gpus) for s in samples if s.gpus and s.pid_vram_mib is not None), default=0)
    if held:
        return held
    most = max((len(s.gpus) for s in samples if s.gpus), default=0)
    if most:
        return most
    manifest = g.runs[0].evidence.manifest
    return max(1, len((manifest.gpu or {}).get("devices", []) if manifest else []))


def cost_rows(groups: Sequence[ArmGroup], memory: Sequence[MemoryRow], cost: float) -> list[CostRow]:
    out = []
    mem = {m.group: m for m in memory}
    for g in groups:
        entry = g.model_entry
        params = entry.get("params")
        merged = {**(params if isinstance(params, dict) else {}), **entry}
        n_gpus = gpus_used(g)
        for conc in sorted({r.concurrency for r in g.measured}) or [1]:
            ttft = [stats.ttft_ms(r) for r in g.ok if r.concurrency == conc]
            peak = mem[g.label].vram_peak_mib
            out.append(CostRow(
                group=g.label,
                model=g.model_name,
                concurrency=conc,
                tokens_per_s=aggregate_tokens_per_s(g, conc),
                first_token_ms=float(np.median(ttft)) if ttft else math.nan,
                vram_gb=peak * MIB / 1e9 if math.isfinite(peak) else math.nan,
                total_params=_num_or_none(merged.get("total_params")),
                active_params=_num_or_none(merged.get("active_params")),
                n_expert=_int_or_none(merged.get("n_expert")),
                n_expert_used=_int_or_none(merged.get("n_expert_used")),
                n_gpus=n_gpus,
                gpu_hour_cost=cost,
            ))
    return out
