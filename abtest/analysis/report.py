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
from .capacity import ArmCapacity, CapacityDelta, capacities, capacity_verdict
from .compare import BucketStats, Comparison, Level, bucket_stats, compare_groups, session_means
from .cost import DEFAULT_GPU_HOUR_COST, CostRow, cost_rows
from .equivalence import Equivalence, equivalence_of
from .findings import (
    Drift,
    Finding,
    ReportWarning,
    drift_of,
    findings_for,
)
from .levels import LevelRow, level_rows
from .memory import MemoryRow, memory_row
from .openloop import LoadRow, load_rows
from .slo import Objective
from .verdict import VerdictLine, verdict_lines


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
class SessionRow:
    """One server session of an arm group: where it came from and its headline means."""

    group: str
    session: str  # `ArmGroup.session_label` ("" for a group's only session)
    file: str
    block: int
    n: int  # measured requests, failed included
    n_failed: int
    buckets: list[str]  # the buckets its measured requests ran
    means: dict[str, float]  # headline metric -> the session's (stratified) mean


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
    levels: list[LevelRow] = field(default_factory=list)  # load levels (--concurrency 1,2,4): the curve
    slo: tuple[Objective, ...] = ()  # report --slo: the objectives the levels are judged against
    capacity: list[ArmCapacity] = field(default_factory=list)  # with --slo and levels: per arm, over sessions
    capacity_deltas: list[CapacityDelta] = field(default_factory=list)  # each arm's capacity over its baseline's
    verdicts: list[VerdictLine] = field(default_factory=list)  # the verdict as data (`verdict` is its text)
    sessions: list[SessionRow] = field(default_factory=list)
    drift: list[Drift] = field(default_factory=list)
    recognise_identical: bool = True  # whether the verdict names arms that cannot differ
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
    recognise_identical: bool = True,
    slo: Sequence[Objective] = (),
) -> Report:
    """Everything the report says, as data. Raises ConfigError for mixed models or a bad --baseline.

    `seed` and `resamples` drive the one bootstrap left, the drift between an arm's first and last
    session; `recognise_identical` False lets the verdict rank arms that cannot differ (the A/A
    calibration runs so)."""
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
        comparisons += compare_groups(g, b, per_bucket)
    memory = [memory_row(g) for g in groups]
    equivalence = [equivalence_of(g, b) for g, b in pairs if b is not None]
    cost = cost_rows(groups, memory, gpu_hour_cost)
    drift = [d for g in groups for d in drift_of(g, seed=seed, resamples=resamples)]
    findings += findings_for(groups, per_bucket, comparisons, drift)
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
        levels=level_rows(groups, slo),
        slo=tuple(slo),
        sessions=_session_rows(groups, per_bucket),
        drift=drift,
        recognise_identical=recognise_identical,
    )
    report.capacity, report.capacity_deltas = capacities(groups, slo, report.paired_baseline)
    report.verdicts = verdict_lines(report, groups, pairs, recognise_identical=recognise_identical)
    report.verdict = [v.text for v in report.verdicts]
    capacity = capacity_verdict(report.capacity, report.capacity_deltas, slo)
    if capacity:  # a load-level run judged against an SLO: the capacity is the answer it asked for
        report.verdict.insert(0, capacity)
    return report


def _level_order(level: Level) -> tuple[int, bool, float]:
    """Concurrency first, then a rate level's offered rate (plain levels, rate None, first)."""
    return level[0], level[1] is not None, level[1] or 0.0


def _session_rows(groups: Sequence[ArmGroup], buckets: Sequence[BucketStats]) -> list[SessionRow]:
    """Every session of every group, with its means of the headline row (the "all" row of the
    lowest load level, or the group's only bucket there)."""
    out = []
    for g in groups:
        mine = [s for s in buckets if s.group == g.label]
        if mine:  # with load levels: the lowest level's rows (its "all" row, or its only bucket)
            low = min((s.level for s in mine), key=_level_order)
            mine = [s for s in mine if s.level == low]
        head = next((s for s in mine if s.pooled), mine[0] if len(mine) == 1 else None)
        means = {key: session_means(head, key, len(g.runs)) if head is not None else [] for key in ("decode_tps", "ttft_ms")}
        for j, run in enumerate(g.runs):
            measured = run.measured
            out.append(SessionRow(
                group=g.label, session=g.session_label(run), file=run.evidence.path.name, block=run.block,
                n=len(measured), n_failed=sum(1 for r in measured if not r.ok),
                buckets=list(dict.fromkeys(r.bucket for r in measured)),
                means={key: v[j] if j < len(v) else math.nan for key, v in means.items()},
            ))
    return out
