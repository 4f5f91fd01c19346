"""`abtest report`: evidence files in, a decision out.

The report reads evidence JSONL and nothing else (no server, no GPU, no network), so it can be
re-made anywhere from the files alone. It works in two steps, data first and rendering second:

    build_report(evidences, ...) -> Report      # numbers, comparisons, warnings, verdict
    render_markdown / render_csv / to_json / terminal_renderable(Report)

What the sections mean, the statistics chosen and why: docs/report.md. Metric formulas: `stats`.

Pooling: one arm's requests from several files are pooled only when the host, the GPU (names and
driver), the model SHA256, the server build and the server argv (with --port, the model path and
--log-file values masked) all match; otherwise the arm is shown once per file, side by side, and a
note says what differs. Files whose SHA256 differs for the same model name are refused
(ConfigError) unless `allow_mixed_models`.
"""

from __future__ import annotations

import csv
import enum
import io
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..errors import ConfigError, EvidenceError
from ..evidence import Evidence, read_evidence
from ..records import ArmEnd, ArmStart, RequestRecord, VramSample
from . import stats

DEFAULT_GPU_HOUR_COST = 3.50  # USD, the H100 cloud price seed 003 uses
ALPHA = 0.05  # a delta is "significant" when p < ALPHA and its 95 % CI excludes 0

# Warning thresholds (docs/report.md explains each)
MIN_N = 10  # fewer measured requests than this: p95 and intervals are unreliable
HIGH_CV = {"decode_tps": 0.10, "ttft_ms": 0.20}
MIN_DETECTABLE = 0.05  # an interval that spans 0 and is wider than ±5 % has not settled the claim
CLOCK_SPREAD = 0.10  # SM clock range / max under load
TEMPERATURE_SPREAD_C = 10

MIB = 1024 * 1024


# --------------------------------------------------------------------------------------------------
# Metrics shown per bucket


@dataclass(frozen=True)
class MetricDef:
    key: str
    label: str
    unit: str
    higher_is_better: bool
    test: str  # "welch" or "mann-whitney"


METRICS: tuple[MetricDef, ...] = (
    MetricDef("ttft_ms", "TTFT", "ms", False, "mann-whitney"),
    MetricDef("itl_ms", "ITL", "ms", False, "mann-whitney"),
    MetricDef("decode_tps", "decode", "tok/s", True, "welch"),
    MetricDef("e2e_ms", "end-to-end", "ms", False, "mann-whitney"),
    MetricDef("tpot_ms", "TPOT", "ms", False, "mann-whitney"),
)
METRIC_BY_KEY = {m.key: m for m in METRICS}


# --------------------------------------------------------------------------------------------------
# Warnings


class ReportWarning(enum.Enum):
    """What can make a number untrustworthy, each with the flag or action that fixes it."""

    FEW_SAMPLES = (
        "only {n} successful measured requests per bucket ({buckets}); p95 and 95 % intervals need "
        "more — raise --runs"
    )
    UNRESOLVED = (
        "{metric}: Δ {delta} with 95 % CI {ci} on {n} requests per arm cannot rule out a {mde} "
        "change; about {need} per arm would — raise --runs"
    )
    HIGH_CV = (
        "{metric} varies a lot (coefficient of variation up to {cv} > {limit}, in {buckets}); quiet "
        "the machine, lock GPU clocks, or raise --runs"
    )
    FIRST_OUTLIER = (
        "the first measured request is an outlier ({metric} {value}, modified Z = {z}); caches or lazy "
        "allocations were still warming — raise --warmup"
    )
    CLOCKS_MOVED = (
        "GPU SM clock moved {lo}–{hi} MHz during the measured requests; lock clocks "
        "(nvidia-smi -lgc) or raise --warmup"
    )
    TEMPERATURE_MOVED = (
        "GPU temperature ranged {lo}–{hi} °C during the measured requests; let the GPU reach a "
        "steady state first — raise --warmup"
    )
    FAILED_REQUESTS = "{n_failed} of {n} measured requests failed (first: {error}); see the server log {log}"
    ARM_FAILED = "the arm failed: {error}; its server log: {log}"
    PARTIAL_RUN = "no run_end record: the run was interrupted; statistics use the requests that finished"
    BAD_LINES = "{problem}"
    PROMPT_CACHE = (
        "{n} requests reused the prompt cache (cache_n > 0), so TTFT is understated — send "
        "cache_prompt: false"
    )

    def format(self, **kw: Any) -> str:
        return self.value.format(**kw)


@dataclass(frozen=True)
class Finding:
    kind: ReportWarning
    subject: str  # the arm, bucket or file it is about
    text: str

    def __str__(self) -> str:
        return f"{self.subject}: {self.text}"


# --------------------------------------------------------------------------------------------------
# Arms, identities and pooling


# Keys of manifest.host that identify a machine (volatile ones such as free memory are ignored).
HOST_KEYS = ("hostname", "node", "machine", "cpu", "cpu_model", "cpu_count", "mem_total_mib")
# argv options whose value differs run to run without changing what is measured.
_MASKED_OPTIONS = {"--port": "<port>", "-m": "<model>", "--model": "<model>", "--log-file": "<log>"}


@dataclass(frozen=True)
class Identity:
    """What must match for two files' requests of one arm to be pooled."""

    host: str
    gpu: str
    model_sha256: str
    server_build: str
    argv: tuple[str, ...]

    @property
    def env(self) -> tuple[str, str, str]:
        return (self.host, self.gpu, self.model_sha256)

    def differences(self, other: Identity) -> list[str]:
        names = {"host": "host", "gpu": "GPU/driver", "model_sha256": "model SHA256",
                 "server_build": "server build", "argv": "server argv"}
        return [label for key, label in names.items() if getattr(self, key) != getattr(other, key)]


def normalize_argv(argv: Sequence[str]) -> tuple[str, ...]:
    """argv with the values that do not change the measurement masked: --port, the model path
    (compared by SHA256 instead), --log-file; the binary reduced to its file name."""
    out: list[str] = []
    it = iter(enumerate(argv))
    for i, arg in it:
        if i == 0:
            out.append(Path(arg).name)
            continue
        key, eq, _ = arg.partition("=")
        if key in _MASKED_OPTIONS:
            out.append(key)
            out.append(_MASKED_OPTIONS[key])
            if not eq:
                next(it, None)
            continue
        out.append(arg)
    return tuple(out)


def _host_label(host: dict[str, Any]) -> str:
    return str(host.get("hostname") or host.get("node") or host.get("machine") or "?")


def _host_key(host: dict[str, Any]) -> str:
    picked = {k: host[k] for k in HOST_KEYS if k in host}
    return json.dumps(picked or host, sort_keys=True, default=str)


def gpu_devices(gpu: dict[str, Any]) -> str:
    """e.g. "NVIDIA H100 80GB HBM3", "2× NVIDIA H200", or "no GPU (reason)"."""
    if not gpu:
        return "GPU unknown"
    if not gpu.get("available", True):
        return f"no GPU ({gpu.get('reason') or 'not available'})"
    names = [str(d.get("name", "?")) for d in gpu.get("devices", []) if isinstance(d, dict)]
    counted = {n: names.count(n) for n in dict.fromkeys(names)}
    return ", ".join(f"{c}× {n}" if c > 1 else n for n, c in counted.items()) or "GPU"


def gpu_label(gpu: dict[str, Any]) -> str:
    """e.g. "NVIDIA H100 80GB HBM3 · driver 550.54.15", or "no GPU (reason)"."""
    dev = gpu_devices(gpu)
    if not gpu or not gpu.get("available", True):
        return dev
    return f"{dev} · driver {gpu.get('driver') or '?'}"


def _gpu_key(gpu: dict[str, Any]) -> str:
    devices = [
        {k: d.get(k) for k in ("name", "uuid", "memory_total_mib") if k in d}
        for d in gpu.get("devices", []) if isinstance(d, dict)
    ]
    return json.dumps({"available": gpu.get("available"), "driver": gpu.get("driver"), "devices": devices},
                      sort_keys=True, default=str)


def build_id(build: dict[str, Any] | None) -> str:
    build = build or {}
    return str(build.get("build_id") or build.get("version_text") or "?")


@dataclass
class ArmRun:
    """One arm as one evidence file recorded it."""

    evidence: Evidence
    arm: str
    start: ArmStart | None
    end: ArmEnd | None
    requests: list[RequestRecord]  # every request of the arm, warm-up included
    memory: list[VramSample]
    identity: Identity
    model_name: str
    model_entry: dict[str, Any]

    @property
    def failed(self) -> bool:
        return self.end is not None and self.end.status == "failed"

    @property
    def measured(self) -> list[RequestRecord]:
        return [r for r in self.requests if not r.warmup]


@dataclass
class ArmGroup:
    """One or more ArmRuns pooled (identical identity), reported as one column."""

    label: str
    arm: str
    identity: Identity
    runs: list[ArmRun]

    @property
    def measured(self) -> list[RequestRecord]:
        return [r for run in self.runs for r in run.measured]

    @property
    def ok(self) -> list[RequestRecord]:
        return [r for r in self.measured if r.ok]

    @property
    def sources(self) -> list[Path]:
        return [run.evidence.path for run in self.runs]

    @property
    def model_name(self) -> str:
        return self.runs[0].model_name

    @property
    def model_entry(self) -> dict[str, Any]:
        return self.runs[0].model_entry


def _model_entry(ev: Evidence, start: ArmStart | None) -> tuple[str, dict[str, Any]]:
    models = ev.manifest.models if ev.manifest else []
    if start is not None:
        for m in models:
            if m.get("path") == start.model_path or (start.model_sha256 and m.get("sha256") == start.model_sha256):
                return str(m.get("name") or Path(start.model_path).stem), m
        return Path(start.model_path).stem or "?", {}
    if len(models) == 1:
        return str(models[0].get("name", "?")), models[0]
    return "?", {}


def arm_runs(ev: Evidence) -> list[ArmRun]:
    """The arms of one file, in file order (arms seen only in request records included)."""
    names = list(dict.fromkeys(ev.arms() + [r.arm for r in ev.requests]))
    manifest = ev.manifest
    host = manifest.host if manifest else {}
    gpu = manifest.gpu if manifest else {}
    out = []
    for name in names:
        start = next((a for a in reversed(ev.arm_starts) if a.arm == name), None)
        end = next((a for a in reversed(ev.arm_ends) if a.arm == name), None)
        model_name, entry = _model_entry(ev, start)
        sha = start.model_sha256 if start else str(entry.get("sha256", ""))
        ident = Identity(
            host=_host_key(host),
            gpu=_gpu_key(gpu),
            model_sha256=sha or "",
            server_build=build_id(start.server_build) if start else "?",
            argv=normalize_argv(start.argv) if start else (),
        )
        out.append(ArmRun(
            evidence=ev, arm=name, start=start, end=end,
            requests=[r for r in ev.requests if r.arm == name],
            memory=[m for m in ev.memory if m.arm == name],
            identity=ident, model_name=model_name, model_entry=entry,
        ))
    return out


def check_models(runs: Iterable[ArmRun], *, allow_mixed_models: bool = False) -> None:
    """Refuse to pool files whose SHA256 differs for one model name (ConfigError)."""
    seen: dict[str, dict[str, Path]] = {}
    for run in runs:
        if run.identity.model_sha256:
            seen.setdefault(run.model_name, {}).setdefault(run.identity.model_sha256, run.evidence.path)
    for name, shas in seen.items():
        if len(shas) > 1 and not allow_mixed_models:
            listing = "; ".join(f"{sha[:12]} in {path.name}" for sha, path in shas.items())
            raise ConfigError(
                f"model {name!r} has {len(shas)} different SHA256s across the evidence files ({listing}); "
                "these are different weights, so their numbers are not comparable — report them separately, "
                "or pass --allow-mixed-models to show them side by side"
            )


def group_runs(runs: Sequence[ArmRun]) -> tuple[list[ArmGroup], list[str]]:
    """Pool runs with the same arm name and identity; label the rest side by side. Returns notes."""
    groups: list[ArmGroup] = []
    for run in runs:
        g = next((g for g in groups if g.arm == run.arm and g.identity == run.identity), None)
        if g is None:
            groups.append(ArmGroup(label=run.arm, arm=run.arm, identity=run.identity, runs=[run]))
        else:
            g.runs.append(run)
    notes = []
    by_arm: dict[str, list[ArmGroup]] = {}
    for g in groups:
        by_arm.setdefault(g.arm, []).append(g)
    used = set()
    for arm, gs in by_arm.items():
        if len(gs) == 1:
            if len(gs[0].runs) > 1:
                notes.append(f"{arm}: pooled {len(gs[0].runs)} files ({', '.join(p.name for p in gs[0].sources)})")
            continue
        diffs = sorted({d for g in gs[1:] for d in gs[0].identity.differences(g.identity)})
        for g in gs:
            label = f"{arm} [{g.sources[0].stem}]"
            k = 2
            while label in used:
                label = f"{arm} [{g.sources[0].stem} #{k}]"
                k += 1
            used.add(label)
            g.label = label
        notes.append(
            f"{arm}: shown side by side, not pooled, across {', '.join(p.name for g in gs for p in g.sources)} "
            f"— {', '.join(diffs)} differ"
        )
    return groups, notes


def resolve_baseline(groups: Sequence[ArmGroup], evidences: Sequence[Evidence], name: str | None) -> str:
    """--baseline NAME, else an arm called "baseline", else the config's first arm, else the first seen."""
    arms = list(dict.fromkeys(g.arm for g in groups))
    if not arms:
        raise EvidenceError("the evidence files hold no arms — was the run started? (no arm_start records)")
    if name is not None:
        if name not in arms:
            raise ConfigError(f"--baseline {name!r} is not an arm of these files; arms: {', '.join(arms)}")
        return name
    if "baseline" in arms:
        return "baseline"
    for ev in evidences:
        cfg_arms = ev.manifest.config.get("arms") if ev.manifest else None
        if isinstance(cfg_arms, dict):
            cfg_arms = [{"name": k} for k in cfg_arms]
        for a in cfg_arms or []:
            n = a.get("name") if isinstance(a, dict) else a
            if n in arms:
                return str(n)
    return arms[0]


def _baseline_for(g: ArmGroup, baselines: Sequence[ArmGroup]) -> ArmGroup | None:
    if not baselines:
        return None

    def score(b: ArmGroup) -> tuple[int, int]:
        shared = bool(set(b.sources) & set(g.sources))
        return (int(shared), int(b.identity.env == g.identity.env))

    return max(baselines, key=score)  # max keeps the first of equals


# --------------------------------------------------------------------------------------------------
# Report data


@dataclass
class BucketStats:
    """One arm group in one bucket: summaries and the raw per-request samples behind them."""

    bucket: str
    group: str
    concurrency: int
    n: int  # measured requests (warm-up excluded), failed included
    n_failed: int
    summaries: dict[str, stats.Summary]
    samples: dict[str, np.ndarray]  # per request; itl_ms per request = that request's mean ITL
    itl_tokens: np.ndarray  # every token's ITL, pooled (the ITL summary is over these)
    pooled: bool = False  # the "all" row: every bucket of this concurrency together
    strata: np.ndarray | None = None  # pooled rows: each sample's bucket (compared within buckets)


@dataclass
class Comparison:
    group: str
    baseline: str
    bucket: str
    metric: str
    n_base: int
    n_other: int
    base_mean: float
    other_mean: float
    ci: stats.RatioCI
    p_value: float
    test: str

    @property
    def significant(self) -> bool:
        """p < ALPHA and the 95 % interval excludes 0."""
        if not math.isfinite(self.ci.low):
            return False
        return self.p_value < ALPHA and not self.ci.covers(0.0)

    @property
    def better(self) -> bool:
        up = self.ci.delta > 0
        return up if METRIC_BY_KEY[self.metric].higher_is_better else not up


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


@dataclass
class Divergence:
    bucket: str
    prompt_id: str
    run_index: int
    position: int  # first differing token index (or character index when compared by text)


@dataclass
class Equivalence:
    group: str
    baseline: str
    pairs: int
    identical: int
    compared_by: str  # "token_ids", "text" or "token_ids+text"
    greedy: bool | None
    divergences: list[Divergence]


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
    abtest_version: str = __version__


# --------------------------------------------------------------------------------------------------
# Building the report


def expand_paths(paths: Iterable[Path | str]) -> list[Path]:
    """Files as given; directories become their *.jsonl files (sorted). ConfigError if none."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(p.glob("*.jsonl")))
        elif p.exists():
            out.append(p)
        else:
            raise ConfigError(f"evidence file {p} does not exist — pass files written by `abtest run` (evidence/*.jsonl)")
    if not out:
        raise ConfigError("no evidence files given (directories are searched for *.jsonl) — e.g. abtest report evidence/")
    return list(dict.fromkeys(out))


def load_evidence(paths: Iterable[Path | str]) -> list[Evidence]:
    return [read_evidence(p) for p in expand_paths(paths)]


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
    pairs = [(g, _baseline_for(g, baselines)) for g in groups if g.arm != base_name]

    findings: list[Finding] = []
    for ev in evidences:
        for prob in ev.problems:
            findings.append(Finding(ReportWarning.BAD_LINES, ev.path.name, ReportWarning.BAD_LINES.format(problem=prob)))
        if ev.partial and ev.manifest is not None:
            findings.append(Finding(ReportWarning.PARTIAL_RUN, ev.path.name, ReportWarning.PARTIAL_RUN.format()))

    bucket_stats = _bucket_stats(groups)
    comparisons = []
    for g, b in pairs:
        if b is None:
            continue
        comparisons += _compare(g, b, bucket_stats, seed=seed, resamples=resamples)
    memory = [memory_row(g) for g in groups]
    equivalence = [_equivalence(g, b) for g, b in pairs if b is not None]
    cost = _cost_rows(groups, memory, gpu_hour_cost)
    findings += _findings(groups, bucket_stats, comparisons)
    failed = {g.label: sum(1 for r in g.measured if not r.ok) for g in groups}
    report = Report(
        baseline=base_name,
        gpu_hour_cost=gpu_hour_cost,
        seed=seed,
        resamples=resamples,
        provenance=[_provenance(g) for g in groups],
        verdict=[],
        buckets=bucket_stats,
        comparisons=comparisons,
        memory=memory,
        equivalence=equivalence,
        cost=cost,
        warnings=findings,
        notes=notes,
        groups=[g.label for g in groups],
        baseline_groups=[g.label for g in baselines],
        failed_requests=failed,
    )
    report.verdict = _verdict(report, groups, pairs)
    return report


def _bucket_label(bucket: str, concurrency: int, all_c1: bool) -> str:
    return bucket if all_c1 else f"{bucket} c={concurrency}"


def _bucket_stats(groups: Sequence[ArmGroup]) -> list[BucketStats]:
    measured = [r for g in groups for r in g.measured]
    all_c1 = all(r.concurrency == 1 for r in measured)
    keys = list(dict.fromkeys((r.bucket, r.concurrency) for r in measured))
    concs = list(dict.fromkeys(c for _, c in keys))
    out: list[BucketStats] = []
    for g in groups:
        mine = g.measured
        for bucket, conc in keys:
            reqs = [r for r in mine if r.bucket == bucket and r.concurrency == conc]
            if reqs or not mine:
                out.append(_one_bucket(_bucket_label(bucket, conc, all_c1), g.label, conc, reqs))
        for conc in concs:
            if sum(1 for b, c in keys if c == conc) > 1:
                reqs = [r for r in mine if r.concurrency == conc]
                out.append(_one_bucket(_bucket_label("all", conc, all_c1), g.label, conc, reqs, pooled=True))
    return out


def _one_bucket(label: str, group: str, conc: int, reqs: Sequence[RequestRecord], pooled: bool = False) -> BucketStats:
    ok = [r for r in reqs if r.ok]
    itl_each = [stats.itl_ms(r) for r in ok]
    samples = {
        "ttft_ms": np.array([stats.ttft_ms(r) for r in ok]),
        "itl_ms": np.array([x.mean() if x.size else math.nan for x in itl_each]),
        "decode_tps": np.array([stats.decode_tps(r) for r in ok]),
        "e2e_ms": np.array([stats.e2e_ms(r) for r in ok]),
        "tpot_ms": np.array([stats.tpot_ms(r) for r in ok]),
    }
    itl_tokens = np.concatenate(itl_each) if itl_each else np.empty(0)
    summaries = {k: stats.summarize(v) for k, v in samples.items()}
    summaries["itl_ms"] = stats.summarize(itl_tokens)
    strata = np.array([r.bucket for r in ok]) if pooled else None
    return BucketStats(label, group, conc, len(reqs), len(reqs) - len(ok), summaries, samples, itl_tokens, pooled,
                       strata)


def _compare(g: ArmGroup, b: ArmGroup, buckets: Sequence[BucketStats], *, seed: int, resamples: int) -> list[Comparison]:
    mine = {s.bucket: s for s in buckets if s.group == g.label}
    base = {s.bucket: s for s in buckets if s.group == b.label}
    out = []
    for label, s in mine.items():
        bs = base.get(label)
        if bs is None:
            continue
        for m in METRICS:
            x, y = bs.samples[m.key], s.samples[m.key]
            fx, fy = np.isfinite(x), np.isfinite(y)
            x, y = x[fx], y[fy]
            if s.strata is not None and bs.strata is not None:
                # buckets pooled: compare within buckets, then combine (see stats, "Stratified")
                xs, ys = bs.strata[fx], s.strata[fy]
                ci = stats.ratio_ci_stratified(x, xs, y, ys, seed=seed, resamples=resamples)
                test = (stats.stratified_welch(x, xs, y, ys) if m.test == "welch"
                        else stats.van_elteren(x, xs, y, ys))
            else:
                ci = stats.ratio_ci(x, y, seed=seed, resamples=resamples)
                test = stats.welch_t(x, y) if m.test == "welch" else stats.mann_whitney(x, y)
            out.append(Comparison(
                group=g.label, baseline=b.label, bucket=label, metric=m.key, n_base=int(x.size), n_other=int(y.size),
                base_mean=float(np.mean(x)) if x.size else math.nan,
                other_mean=float(np.mean(y)) if y.size else math.nan,
                ci=ci, p_value=test.p_value, test=test.test,
            ))
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
    return MemoryRow(
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


def _find_key(obj: Any, key: str) -> Any:
    if isinstance(obj, dict):
        if key in obj:
            return obj[key]
        for v in obj.values():
            found = _find_key(v, key)
            if found is not None:
                return found
    elif isinstance(obj, list):
        for v in obj:
            found = _find_key(v, key)
            if found is not None:
                return found
    return None


def first_divergence(a: Sequence[Any], b: Sequence[Any]) -> int | None:
    """Index of the first differing element; the shorter length if one is a prefix; None if equal."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def _equivalence(g: ArmGroup, b: ArmGroup) -> Equivalence:
    base_index: dict[tuple[Path | None, str, int], RequestRecord] = {}
    for run in b.runs:
        for r in run.measured:
            if r.ok:
                base_index.setdefault((run.evidence.path, r.prompt_id, r.run_index), r)
                base_index.setdefault((None, r.prompt_id, r.run_index), r)
    pairs = identical = 0
    used: set[str] = set()
    divs: list[Divergence] = []
    for run in g.runs:
        for r in run.measured:
            if not r.ok:
                continue
            other = base_index.get((run.evidence.path, r.prompt_id, r.run_index)) or base_index.get(
                (None, r.prompt_id, r.run_index))
            if other is None:
                continue
            pairs += 1
            if r.token_ids is not None and other.token_ids is not None:
                used.add("token_ids")
                pos = first_divergence(r.token_ids, other.token_ids)
            else:
                used.add("text")
                pos = first_divergence(r.text, other.text)
            if pos is None:
                identical += 1
            else:
                divs.append(Divergence(r.bucket, r.prompt_id, r.run_index, pos))
    temps = [_find_key(run.evidence.manifest.config, "temperature") for run in g.runs + b.runs if run.evidence.manifest]
    temps = [t for t in temps if isinstance(t, (int, float))]
    greedy = (all(t == 0 for t in temps)) if temps else None
    return Equivalence(g.label, b.label, pairs, identical, "+".join(sorted(used)) or "-", greedy, divs)


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


def _cost_rows(groups: Sequence[ArmGroup], memory: Sequence[MemoryRow], cost: float) -> list[CostRow]:
    out = []
    mem = {m.group: m for m in memory}
    for g in groups:
        entry = g.model_entry
        params = entry.get("params")
        merged = {**(params if isinstance(params, dict) else {}), **entry}
        manifest = g.runs[0].evidence.manifest
        n_gpus = max(1, len((manifest.gpu or {}).get("devices", []) if manifest else []))
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


def _int_or_none(v: Any) -> int | None:
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _measured_window_samples(run: ArmRun) -> list[VramSample]:
    """Memory samples taken while the measured requests ran.

    Samples carry t_ms since spawn; requests carry this host's monotonic send time. The two clocks
    meet only at ready_ms (spawn -> healthy), so the window is placed by assuming the first request
    followed /health at once: [ready + (first measured send - first send), + measured span].
    Falls back to every sample after ready_ms when fewer than 3 fall inside.
    """
    ready = run.start.ready_ms if run.start else 0.0
    after = [s for s in run.memory if s.t_ms >= ready]
    reqs = run.requests
    measured = [r for r in reqs if not r.warmup]
    if not reqs or not measured:
        return after
    t0 = min(r.t_send_ns for r in reqs)
    m0 = min(r.t_send_ns for r in measured)
    m1 = max(r.t_send_ns + (r.e2e_ms or 0.0) * 1e6 for r in measured)
    lo = ready + (m0 - t0) / 1e6
    hi = ready + (m1 - t0) / 1e6
    inside = [s for s in after if lo <= s.t_ms <= hi]
    return inside if len(inside) >= 3 else after


def _fmt_p(p: float) -> str:
    if not math.isfinite(p):
        return "p = n/a"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def _findings(groups: Sequence[ArmGroup], buckets: Sequence[BucketStats], comps: Sequence[Comparison]) -> list[Finding]:
    out: list[Finding] = []
    for g in groups:
        for run in g.runs:
            subj = g.label if len(g.runs) == 1 else f"{g.label} ({run.evidence.path.name})"
            log = run.end.log_path if run.end else (run.start.log_path if run.start else "?")
            if run.failed:
                out.append(Finding(ReportWarning.ARM_FAILED, subj,
                                   ReportWarning.ARM_FAILED.format(error=run.end.error if run.end else "?", log=log)))
            measured = run.measured
            failed = [r for r in measured if not r.ok]
            if failed:
                out.append(Finding(ReportWarning.FAILED_REQUESTS, subj, ReportWarning.FAILED_REQUESTS.format(
                    n_failed=len(failed), n=len(measured), error=failed[0].error, log=log)))
            cached = [r for r in measured if r.ok and (r.cache_n or 0) > 0]
            if cached:
                out.append(Finding(ReportWarning.PROMPT_CACHE, subj, ReportWarning.PROMPT_CACHE.format(n=len(cached))))
            out += _first_outlier(run, subj)
            window = _measured_window_samples(run)
            clocks = [s.sm_clock_mhz for s in window if s.sm_clock_mhz]
            if clocks:
                loaded = [c for c in clocks if c >= 0.5 * max(clocks)]
                if (max(loaded) - min(loaded)) / max(loaded) > CLOCK_SPREAD:
                    out.append(Finding(ReportWarning.CLOCKS_MOVED, subj,
                                       ReportWarning.CLOCKS_MOVED.format(lo=min(loaded), hi=max(loaded))))
            temps = [s.temperature_c for s in window if s.temperature_c is not None]
            if temps and max(temps) - min(temps) > TEMPERATURE_SPREAD_C:
                out.append(Finding(ReportWarning.TEMPERATURE_MOVED, subj,
                                   ReportWarning.TEMPERATURE_MOVED.format(lo=min(temps), hi=max(temps))))
    # per arm, one line per kind: the buckets it concerns and the worst value
    few: dict[str, list[BucketStats]] = {}
    noisy: dict[tuple[str, str], list[tuple[BucketStats, float]]] = {}
    for s in buckets:
        if s.pooled:
            continue  # pooled over buckets of different prompt lengths: spread is expected
        ok_n = s.n - s.n_failed
        if 0 < ok_n < MIN_N:
            few.setdefault(s.group, []).append(s)
        for key, limit in HIGH_CV.items():
            cv = s.summaries[key].cv
            if math.isfinite(cv) and cv > limit:
                noisy.setdefault((s.group, key), []).append((s, cv))
    for group, rows in few.items():
        out.append(Finding(ReportWarning.FEW_SAMPLES, group, ReportWarning.FEW_SAMPLES.format(
            n=min(r.n - r.n_failed for r in rows), buckets=_bucket_list([r.bucket for r in rows]))))
    for (group, key), pairs in noisy.items():
        m = METRIC_BY_KEY[key]
        worst = max(pairs, key=lambda p: p[1])
        out.append(Finding(ReportWarning.HIGH_CV, group, ReportWarning.HIGH_CV.format(
            metric=f"{m.label} {m.unit}", cv=f"{worst[1]:.0%}", limit=f"{HIGH_CV[key]:.0%}",
            buckets=_bucket_list([p[0].bucket for p in pairs]))))
    # is N enough for the claim? only for the comparisons the verdict quotes
    for c in comps:
        if not headline(c, comps, buckets) or c.metric not in ("decode_tps", "ttft_ms"):
            continue
        if math.isfinite(c.ci.low) and c.ci.covers(0.0) and max(-c.ci.low, c.ci.high) > MIN_DETECTABLE:
            n = min(c.n_base, c.n_other)
            m = METRIC_BY_KEY[c.metric]
            out.append(Finding(ReportWarning.UNRESOLVED, f"{c.group} vs {c.baseline}",
                               ReportWarning.UNRESOLVED.format(
                                   metric=f"{m.label} {m.unit}", delta=fmt_pct(c.ci.delta),
                                   ci=f"{fmt_pct(c.ci.low)} … {fmt_pct(c.ci.high)}", n=n,
                                   mde=f"{MIN_DETECTABLE:.0%}",
                                   need=stats.required_n_from_ci(n, c.ci.low, c.ci.high, MIN_DETECTABLE))))
    return out


def _bucket_list(names: Sequence[str]) -> str:
    return ", ".join(names) if len(names) <= 4 else f"{', '.join(names[:3])} and {len(names) - 3} more"


def _first_outlier(run: ArmRun, subj: str) -> list[Finding]:
    measured = sorted((r for r in run.measured if r.ok), key=lambda r: r.seq)
    if not measured:
        return []
    first = measured[0]
    same = [r for r in measured if r.bucket == first.bucket and r.concurrency == first.concurrency]
    for key, fn in (("ttft_ms", stats.ttft_ms), ("decode_tps", stats.decode_tps)):
        values = np.array([fn(r) for r in same])
        if np.isfinite(values).all() and stats.is_outlier(values, 0):
            z = stats.modified_z_scores(values)[0]
            m = METRIC_BY_KEY[key]
            return [Finding(ReportWarning.FIRST_OUTLIER, subj, ReportWarning.FIRST_OUTLIER.format(
                metric=m.label, value=f"{fmt_num(values[0])} {m.unit}", z=f"{z:+.1f}"))]
    return []


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
        host=_host_label(manifest.host) if manifest else "?",
        date=", ".join(d for d in dates if d) or "?",
        abtest_version=", ".join(versions) or "?",
        files=[p.name for p in g.sources],
    )


# --------------------------------------------------------------------------------------------------
# Verdict


def headline(c: Comparison, comps: Sequence[Comparison], buckets: Sequence[BucketStats]) -> bool:
    """Whether the verdict quotes this comparison: the pooled "all" row, or the only bucket."""
    pooled = {s.bucket for s in buckets if s.pooled}
    if pooled:
        return c.bucket == next((s.bucket for s in buckets if s.pooled and s.group == c.group), None)
    return len({x.bucket for x in comps if x.group == c.group}) == 1


def _overall(report: Report, group: str, metric: str) -> Comparison | None:
    return next((c for c in report.comparisons if c.group == group and c.metric == metric
                 and headline(c, report.comparisons, report.buckets)), None)


def _verdict(report: Report, groups: Sequence[ArmGroup], pairs: Sequence[tuple[ArmGroup, ArmGroup | None]]) -> list[str]:
    mem = {m.group: m for m in report.memory}
    eq = {e.group: e for e in report.equivalence}
    out = []
    for g, b in pairs:
        if b is None:
            out.append(f"{g.label}: no baseline arm {report.baseline!r} to compare with.")
            continue
        if not g.ok:
            why = "failed" if any(r.failed for r in g.runs) else "has no successful measured requests"
            out.append(f"{g.label} {why}; nothing to compare with {b.label}.")
            continue
        parts: list[str] = []
        tail: list[str] = []
        vg, vb = mem[g.label].vram_peak_mib, mem[b.label].vram_peak_mib
        if math.isfinite(vg) and math.isfinite(vb) and vb > 0:
            diff = (vb - vg) / 1024.0
            pct = fmt_pct(vg / vb - 1, signed=True)
            if diff >= 0:
                parts.append(f"saves {diff:.1f} GiB VRAM ({pct})")
            else:
                parts.append(f"uses {-diff:.1f} GiB more VRAM ({pct})")
        for metric in ("decode_tps", "ttft_ms"):
            c = _overall(report, g.label, metric)
            if c is None or not math.isfinite(c.ci.delta):
                continue
            name = "decode tok/s" if metric == "decode_tps" else "TTFT"
            if c.significant:
                if not c.better:
                    verb = "costs"
                else:
                    verb = "gains" if METRIC_BY_KEY[metric].higher_is_better else "cuts"
                parts.append(f"{verb} {fmt_pct(c.ci.delta)} {name} ({_fmt_p(c.p_value)})")
            else:
                parts.append(f"shows no significant change in {name} ({fmt_pct(c.ci.delta)}, "
                             f"95 % CI {fmt_pct(c.ci.low)} … {fmt_pct(c.ci.high)}, {_fmt_p(c.p_value)})")
        e = eq.get(g.label)
        if e and e.pairs:
            kind = "greedy requests" if e.greedy else "requests"
            if e.identical == e.pairs:
                tail.append(f"outputs identical on {e.identical}/{e.pairs} {kind}")
            else:
                first = min(e.divergences, key=lambda d: d.position)
                unit = "character" if e.compared_by == "text" else "token"
                tail.append(f"outputs identical on {e.identical}/{e.pairs} {kind} "
                             f"(earliest divergence at {unit} {first.position}, {first.prompt_id})")
        failed = report.failed_requests.get(g.label, 0)
        if failed:
            tail.append(f"{failed} of {len(g.measured)} measured requests failed")
        text = "; ".join(filter(None, [_join_parts(parts), *tail]))
        out.append(f"{g.label} (vs {b.label}) {text}." if text else f"{g.label}: no measurements to compare.")
    return out


def _join_parts(parts: list[str]) -> str:
    """"a, b and c" """
    return " and ".join(filter(None, [", ".join(parts[:-1]), parts[-1]])) if parts else ""


# --------------------------------------------------------------------------------------------------
# Number formatting


MINUS = "\u2212"


def fmt_num(v: float | None, digits: int | None = None) -> str:
    """Compact human number: 11,800 / 80.3 / 1.25 / 0.0123; "—" for missing."""
    if v is None or not math.isfinite(v):
        return "—"
    a = abs(v)
    if digits is not None:
        s = f"{v:,.{digits}f}"
    elif a >= 1000:
        s = f"{v:,.0f}"
    elif a >= 100:
        s = f"{v:.1f}"
    elif a >= 1:
        s = f"{v:.2f}"
    elif a == 0:
        s = "0"
    else:
        s = f"{v:.3g}"
    return s.replace("-", MINUS)


def fmt_pct(frac: float, signed: bool = True) -> str:
    """0.123 -> "+12 %", -0.0123 -> "−1.2 %" (one decimal below 10 %)."""
    if frac is None or not math.isfinite(frac):
        return "—"
    pct = frac * 100.0
    s = f"{pct:+.0f}" if abs(pct) >= 10 else f"{pct:+.1f}"
    if not signed:
        s = s.lstrip("+")
    return s.replace("-", MINUS) + " %"


def fmt_count(v: float | None) -> str:
    """Large counts with a suffix: 20.9B parameters, 10.6M tokens/day; "—" when missing."""
    if v is None or not math.isfinite(v):
        return "—"
    for div, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(v) >= div:
            return f"{v / div:.1f}{suffix}"
    return f"{v:.0f}"


def fmt_money(v: float) -> str:
    if not math.isfinite(v):
        return "—"
    if v >= 100:
        return f"${v:,.0f}"
    return f"${v:.3f}" if v < 1 else f"${v:.2f}"


def _mean_pm(s: stats.Summary) -> str:
    if s.n == 0:
        return "—"
    if s.n == 1:
        return fmt_num(s.mean)
    return f"{fmt_num(s.mean)} ± {fmt_num(s.std)}"


def _gib(mib: float) -> str:
    return fmt_num(mib / 1024.0, 2) if math.isfinite(mib) else "—"


# --------------------------------------------------------------------------------------------------
# Sections: one table model, rendered to Markdown or to the terminal


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[str]]
    right: set[int] = field(default_factory=set)  # right-aligned column indexes


@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    bullets: list[str] = field(default_factory=list)


def provenance_line(report: Report) -> str:
    shas = sorted({p.model_sha256[:12] for p in report.provenance if p.model_sha256})
    builds = sorted({p.server_build for p in report.provenance})
    gpus = sorted({p.gpu for p in report.provenance})
    dates = sorted({d for p in report.provenance for d in p.date.split(", ")})
    models = sorted({p.model for p in report.provenance})
    return (f"model {', '.join(models)} (sha256 {', '.join(shas) or '?'}) · llama-server {', '.join(builds)} · "
            f"{'; '.join(gpus)} · run {', '.join(dates)} · abtest {report.abtest_version}")


def sections(report: Report) -> list[Section]:
    """The report as titled sections of text and tables (shared by Markdown and terminal output)."""
    out = [Section("Verdict", paragraphs=list(report.verdict) or ["No arm to compare with the baseline."])]
    if report.warnings:
        out.append(Section("Warnings", bullets=[str(w) for w in report.warnings]))

    # per-bucket tables
    bucket_order = list(dict.fromkeys(s.bucket for s in report.buckets))
    sec = Section("Latency and throughput per bucket",
                  paragraphs=["mean ± σ, then median and p95; Δ is the arm's mean over the baseline's, "
                              "with a 95 % studentized-bootstrap interval and a p-value (Welch's t for "
                              "tok/s, Mann-Whitney for latencies). Warm-up and failed requests are left out."])
    for bucket in bucket_order:
        rows_by_group = {s.group: s for s in report.buckets if s.bucket == bucket}
        groups = [g for g in report.groups if g in rows_by_group]
        comps = {(c.group, c.metric): c for c in report.comparisons if c.bucket == bucket}
        delta_groups = [g for g in groups if any((g, m.key) in comps for m in METRICS)]
        headers = ["metric"]
        for g in groups:
            headers += [g, "p50", "p95"]
        for g in delta_groups:
            headers += [f"Δ {g} (95 % CI)", "p"]
        rows = []
        n_row = ["n (failed)"]
        for g in groups:
            s = rows_by_group[g]
            n_row += [f"{s.n - s.n_failed} ({s.n_failed})", "", ""]
        n_row += ["", ""] * len(delta_groups)
        rows.append(n_row)
        for m in METRICS:
            row = [f"{m.label} {m.unit}"]
            for g in groups:
                summ = rows_by_group[g].summaries[m.key]
                row += [_mean_pm(summ), fmt_num(summ.median), fmt_num(summ.p95)]
            for g in delta_groups:
                c = comps.get((g, m.key))
                if c is None or not math.isfinite(c.ci.delta):
                    row += ["—", "—"]
                    continue
                ci = (f" ({fmt_pct(c.ci.low)} … {fmt_pct(c.ci.high)})" if math.isfinite(c.ci.low) else "")
                row += [f"{fmt_pct(c.ci.delta)}{ci}", _fmt_p(c.p_value).removeprefix("p ").removeprefix("= ")]
            rows.append(row)
        sec.tables.append(Table(f"bucket: {bucket}", headers, rows, right=set(range(1, len(headers)))))
    out.append(sec)

    # memory
    base_mem = {m.group: m for m in report.memory}
    mem_rows = []
    base_groups = report.baseline_groups
    bpeak = base_mem[base_groups[0]].vram_peak_mib if base_groups else math.nan
    for mr in report.memory:
        delta = (fmt_pct(mr.vram_peak_mib / bpeak - 1) if math.isfinite(bpeak) and bpeak > 0
                 and math.isfinite(mr.vram_peak_mib) and mr.group not in base_groups else "")
        mem_rows.append([mr.group, _gib(mr.vram_after_load_mib), _gib(mr.vram_peak_mib), delta,
                         _gib(mr.device_peak_mib), _gib(mr.rss_anon_peak_mib), _gib(mr.rss_file_peak_mib),
                         str(mr.n_samples)])
    mem_sec = Section("Memory", paragraphs=[
        "GiB. VRAM is this server process's own (NVML per-process); device is the whole GPU. Host RSS "
        "anon is heap, file is mmapped model pages resident in RAM."])
    mem_sec.tables.append(Table("", ["arm", "VRAM after load", "VRAM peak", "Δ peak", "device peak",
                                     "RSS anon peak", "RSS file peak", "samples"], mem_rows, right=set(range(1, 8))))
    keys = list(dict.fromkeys(k for mr in report.memory for k, _ in flatten(mr.breakdown)))
    if keys:
        flat = {mr.group: dict(flatten(mr.breakdown)) for mr in report.memory}
        rows = [[k] + [_cell(flat[g].get(k)) for g in report.groups] for k in keys]
        mem_sec.tables.append(Table("memory breakdown (from the server log)", ["item"] + list(report.groups), rows,
                                    right=set(range(1, len(report.groups) + 1))))
    out.append(mem_sec)

    # equivalence
    if report.equivalence:
        rows = []
        for e in report.equivalence:
            rate = f"{e.identical}/{e.pairs}" + (f" ({e.identical / e.pairs:.0%})" if e.pairs else "")
            divs = "; ".join(f"{d.prompt_id} run {d.run_index} @ {d.position}" for d in e.divergences[:3])
            if len(e.divergences) > 3:
                divs += f"; … {len(e.divergences) - 3} more"
            greedy = {True: "yes", False: "no", None: "?"}[e.greedy]
            rows.append([e.group, e.baseline, e.compared_by, greedy, rate, divs or "—"])
        out.append(Section("Output equivalence", paragraphs=[
            "Same prompt_id and run_index in both arms; generated token ids compared (text when ids are "
            "absent). First divergence is the index of the first differing token (or character)."],
            tables=[Table("", ["arm", "vs", "compared by", "greedy", "exact match", "first divergence"], rows)]))

    # cost (seed layout)
    rows = []
    any_experts = any(cr.n_expert for cr in report.cost)
    for cr in report.cost:
        name = f"{cr.model} · {cr.group}" + (f" · c={cr.concurrency}" if cr.concurrency != 1 else "")
        row = [name, fmt_num(cr.tokens_per_s), fmt_num(cr.first_token_ms, 1), fmt_num(cr.vram_gb, 2),
               fmt_count(cr.total_params), fmt_count(cr.active_params)]
        if any_experts:
            row.append(f"{cr.n_expert_used}/{cr.n_expert}" if cr.n_expert else "—")
        row.append(fmt_money(cr.cost_per_1m))
        rows.append(row)
    headers = ["Model", "Tokens/sec", "First Token (ms)", "VRAM (GB)", "Total Params", "Active Params"]
    if any_experts:
        headers.append("Experts used/total")
    headers.append("Cost/1M tokens")
    cost_sec = Section("Cost", paragraphs=[
        f"Tokens/sec is the aggregate output throughput at the concurrency measured (completion tokens over "
        f"the time the arm had requests in flight, prefill included); First Token is the median TTFT; VRAM "
        f"is the peak of the server process in decimal GB; cost at ${report.gpu_hour_cost:.2f} per GPU-hour."],
        tables=[Table("", headers, rows, right=set(range(1, len(headers))))])
    if report.cost:
        cols = [f"{c.group}" + (f" c={c.concurrency}" if c.concurrency != 1 else "") for c in report.cost]
        proj = [
            ["Tokens/sec"] + [fmt_num(c.tokens_per_s) for c in report.cost],
            ["Tokens/day"] + [fmt_count(c.tokens_per_day) for c in report.cost],
            ["GPU-hours per 1B tokens"] + [fmt_num(c.gpu_hours_per_1b, 1) for c in report.cost],
            [f"Cost per 1B tokens (${report.gpu_hour_cost:.2f}/GPU-hour)"] + [fmt_money(c.cost_per_1b) for c in report.cost],
        ]
        cost_sec.tables.append(Table("throughput projection", ["Metric"] + cols, proj, right=set(range(1, len(cols) + 1))))
    out.append(cost_sec)

    # provenance
    rows = [[p.group, f"{p.model} ({p.model_sha256[:12] or '?'})", p.server_build, p.gpu, p.host, p.date,
             p.abtest_version, ", ".join(p.files)] for p in report.provenance]
    out.append(Section("Provenance", tables=[Table("", ["arm", "model (sha256)", "server build", "GPU · driver",
                                                         "host", "date", "abtest", "files"], rows)],
                       paragraphs=[f"report by abtest {report.abtest_version}; bootstrap seed {report.seed}, "
                                   f"{report.resamples} resamples; baseline arm: {report.baseline}"]))
    if report.notes:
        out.append(Section("Notes", bullets=list(report.notes)))
    return out


def _cell(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (int, float)):
        return fmt_num(float(v))
    return str(v)


def flatten(d: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested dicts/lists as ("a.b.c", leaf) pairs, in order."""
    out: list[tuple[str, Any]] = []
    if isinstance(d, dict):
        for k, v in d.items():
            out += flatten(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(d, list) and any(isinstance(x, (dict, list)) for x in d):
        for i, v in enumerate(d):
            out += flatten(v, f"{prefix}[{i}]")
    else:
        out.append((prefix, d))
    return out


# --------------------------------------------------------------------------------------------------
# Renderers


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|")


def markdown_table(t: Table) -> str:
    lines = []
    if t.title:
        lines.append(f"**{t.title}**\n")
    lines.append("| " + " | ".join(_md_escape(h) for h in t.headers) + " |")
    lines.append("|" + "|".join("---:" if i in t.right else "---" for i in range(len(t.headers))) + "|")
    for r in t.rows:
        lines.append("| " + " | ".join(_md_escape(c) for c in r) + " |")
    return "\n".join(lines)


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
            parts.append(markdown_table(t) + "\n")
    return "\n".join(parts).rstrip() + "\n"


def terminal_renderable(report: Report) -> Any:
    """A rich renderable of the whole report (the CLI prints it; the library does not)."""
    from rich import box
    from rich.console import Group
    from rich.table import Table as RichTable
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
            rt = RichTable(title=t.title or None, box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False)
            for i, h in enumerate(t.headers):
                rt.add_column(h, justify="right" if i in t.right else "left", overflow="fold")
            for r in t.rows:
                rt.add_row(*r)
            items.append(rt)
    return Group(*items)


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
    d: dict[str, Any] = {
        "abtest_version": report.abtest_version,
        "baseline": report.baseline,
        "settings": {"gpu_hour_cost": report.gpu_hour_cost, "bootstrap_seed": report.seed,
                     "bootstrap_resamples": report.resamples, "ci": "studentized bootstrap, 95 %"},
        "provenance": [vars(p) for p in report.provenance],
        "verdict": report.verdict,
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
             "significant": c.significant}
            for c in report.comparisons
        ],
        "memory": [
            {"arm": m.group, "vram_after_load_mib": m.vram_after_load_mib, "vram_peak_mib": m.vram_peak_mib,
             "device_peak_mib": m.device_peak_mib, "rss_anon_peak_mib": m.rss_anon_peak_mib,
             "rss_file_peak_mib": m.rss_file_peak_mib, "breakdown": m.breakdown, "samples": m.n_samples}
            for m in report.memory
        ],
        "equivalence": [
            {"arm": e.group, "baseline": e.baseline, "pairs": e.pairs, "identical": e.identical,
             "exact_match_rate": e.identical / e.pairs if e.pairs else None, "compared_by": e.compared_by,
             "greedy": e.greedy, "divergences": [vars(x) for x in e.divergences]}
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
    return _jsonable(d)


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
    for v in report.verdict:
        w.writerow(["verdict", "", "", "", "", v, ""])
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
