"""`build_report`: evidence files in, everything the report says as data out (no rendering)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from .. import __version__
from ..evidence import Evidence
from . import stats
from .arms import (
    ArmGroup,
    arm_runs,
    baseline_for,
    build_id,
    check_models,
    gpu_label,
    group_runs,
    host_label,
    resolve_baseline,
)
from .compare import BucketStats, Comparison, bucket_stats, compare_groups
from .cost import DEFAULT_GPU_HOUR_COST, CostRow, cost_rows
from .equivalence import Equivalence, equivalence_of
from .findings import (
    Finding,
    ReportWarning,
    findings_for,
)
from .memory import MemoryRow, memory_row
from .openloop import LoadRow, load_rows
from .verdict import verdict_lines


@dataclass
class ProvenanceRow:
    group: str
    model: str
    model_sha256: str
    server_version: str
    server_build: str
    gpu: str
    host: str
    date: str
    abtest_version: str
    files: list[str]


@dataclass
class Report:
    baseline: str
    gpu_hour_cost: float
    seed: int
    resamples: int
    provenance: list[ProvenanceRow]
    verdict: list[str]
    buckets: list[BucketStats]
    comparisons: list[Comparison]
    memory: list[MemoryRow]
    equivalence: list[Equivalence]
    cost: list[CostRow]
    warnings: list[Finding]
    notes: list[str]
    groups: list[str]
    baseline_groups: list[str]  # the labels of the baseline arm (several when shown side by side)
    failed_requests: dict[str, int]
    paired_baseline: dict[str, str] = field(default_factory=dict)  # group -> the baseline group it is compared with
    load: list[LoadRow] = field(default_factory=list)  # open-loop groups (--rate): latency from the schedule
    abtest_version: str = __version__

    def vram_peak_change(self, group: str) -> float:
        """peak VRAM of the group over its paired baseline's, minus 1 (nan without both)."""
        base = self.paired_baseline.get(group)
        mem = {m.group: m for m in self.memory}
        if base is None or group not in mem or base not in mem:
            return math.nan
        g, b = mem[group].vram_peak_mib, mem[base].vram_peak_mib
        return g / b - 1 if math.isfinite(g) and math.isfinite(b) and b > 0 else math.nan


def _provenance(g: ArmGroup) -> ProvenanceRow:
    runs = g.runs
    start = next((r.start for r in runs if r.start), None)
    manifest = next((r.evidence.manifest for r in runs if r.evidence.manifest), None)
    dates = sorted({(r.evidence.manifest.started_at or "")[:10] for r in runs if r.evidence.manifest})
    versions = sorted({r.evidence.manifest.abtest_version for r in runs if r.evidence.manifest})
    build = start.server_build if start else {}
    return ProvenanceRow(
        group=g.label,
        model=g.model_name,
        model_sha256=g.identity.model_sha256,
        server_version=str(build.get("version_text") or "?"),
        server_build=build_id(build),
        gpu=gpu_label(manifest.gpu) if manifest else "GPU unknown",
        host=host_label(manifest.host) if manifest else "?",
        date=", ".join(d for d in dates if d) or "?",
        abtest_version=", ".join(versions) or "?",
        files=[p.name for p in g.sources],
    )


def build_report(
    evidences: Sequence[Evidence],
    *,
    baseline: str | None = None,
    gpu_hour_cost: float = DEFAULT_GPU_HOUR_COST,
    allow_mixed_models: bool = False,
    seed: int = stats.DEFAULT_SEED,
    resamples: int = stats.DEFAULT_RESAMPLES,
) -> Report:
    """Everything the report says, as data. Raises ConfigError for mixed models or a bad --baseline."""
    runs = [run for ev in evidences for run in arm_runs(ev)]
    check_models(runs, allow_mixed_models=allow_mixed_models)
    groups, notes = group_runs(runs)
    base_name = resolve_baseline(groups, evidences, baseline)
    # baseline groups first, the rest in order of appearance
    groups.sort(key=lambda g: g.arm != base_name)
    baselines = [g for g in groups if g.arm == base_name]
    pairs = [(g, baseline_for(g, baselines)) for g in groups if g.arm != base_name]

    findings: list[Finding] = []
    for ev in evidences:
        for prob in ev.problems:
            findings.append(Finding(ReportWarning.BAD_LINES, ev.path.name, ReportWarning.BAD_LINES.format(problem=prob)))
        if ev.partial and ev.manifest is not None:
            findings.append(Finding(ReportWarning.PARTIAL_RUN, ev.path.name, ReportWarning.PARTIAL_RUN.format()))

    per_bucket = bucket_stats(groups)
    comparisons = []
    for g, b in pairs:
        if b is None:
            continue
        comparisons += compare_groups(g, b, per_bucket, seed=seed, resamples=resamples)
    memory = [memory_row(g) for g in groups]
    equivalence = [equivalence_of(g, b) for g, b in pairs if b is not None]
    cost = cost_rows(groups, memory, gpu_hour_cost)
    findings += findings_for(groups, per_bucket, comparisons)
    failed = {g.label: sum(1 for r in g.measured if not r.ok) for g in groups}
    report = Report(
        baseline=base_name,
        gpu_hour_cost=gpu_hour_cost,
        seed=seed,
        resamples=resamples,
        provenance=[_provenance(g) for g in groups],
        verdict=[],
        buckets=per_bucket,
        comparisons=comparisons,
        memory=memory,
        equivalence=equivalence,
        cost=cost,
        warnings=findings,
        notes=notes,
        groups=[g.label for g in groups],
        baseline_groups=[g.label for g in baselines],
        failed_requests=failed,
        paired_baseline={g.label: b.label for g, b in pairs if b is not None},
        load=load_rows(groups),
    )
    report.verdict = verdict_lines(report, groups, pairs)
    return report
