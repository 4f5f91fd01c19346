"""`abtest report --history DIR`: tonight against the trailing nights, and a regression gate.

DIR holds one sub-directory per night, named YYYY-MM-DD, of evidence files (one per model). Per
(model, arm) and metric:

* nightly value   — decode tok/s and TTFT: the mean over buckets of the median of that night's
                    measured requests in the bucket; VRAM: the peak of the server process (MiB).
* reference       — the median of the nightly values of the last `window` nights before tonight
                    whose configuration (`ArmConfig`: model file, argv, buckets, ...) is tonight's
                    (7 by default; with fewer than `min_nights`: "no verdict yet").
* regression      — a change in the bad direction that is BOTH beyond the threshold AND
                    statistically significant (see `gate_samples`, `gate_values`).

Why both tests: requests of one night share that night's conditions (thermal state, background
load, a driver's mood), so nights differ by more than request noise explains. A request-level test
alone (tonight's requests vs the window's) would flag such ordinary night-to-night moves; a
prediction bound from the trailing *nightly* values measures exactly that spread; and the
threshold keeps the alarm to changes large enough to matter. docs/report.md has the measured
false-alarm and detection rates.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import ConfigError, EvidenceError, MissingNight, RegressionFound
from ..evidence import Evidence, read_evidence
from ..fmt import fmt_num, fmt_p_cell, fmt_pct
from . import stats, stratified
from .arms import ArmRun, arm_runs, build_id, gpu_devices, group_runs
from .memory import memory_row
from .metrics import METRIC_BY_KEY, VRAM_PEAK, MetricDef

NIGHT_DIR = re.compile(r"^\d{4}-\d{2}-\d{2}$")
MAX_PROBLEM_NOTES = 5  # tonight's evidence problems listed one by one; the rest are counted


@dataclass(frozen=True)
class Thresholds:
    """What counts as a regression (all settable from the CLI)."""

    decode_pct: float = 5.0  # decode tok/s down by more than this %
    ttft_pct: float = 5.0  # TTFT up by more than this %
    vram_pct: float = 2.0  # VRAM up by more than this % ...
    vram_mib: float = 64.0  # ... and by more than this many MiB
    alpha: float = 0.01  # one-sided significance level of each test
    window: int = 7  # trailing nights in the reference
    min_nights: int = 3  # fewer trailing nights than this: no verdict


# The metrics the gate watches, from the one metric table.
GATE_METRICS: tuple[MetricDef, ...] = (METRIC_BY_KEY["decode_tps"], METRIC_BY_KEY["ttft_ms"], VRAM_PEAK)


# --------------------------------------------------------------------------------------------------
# The gate (pure; the 200-seed tests call these directly)


@dataclass(frozen=True)
class GateResult:
    value: float  # tonight's nightly value
    reference: float  # median of the trailing nightly values
    change: float  # value / reference - 1
    p_value: float  # request-level one-sided Mann-Whitney (nan for single-valued metrics)
    bound: float  # one-sided (1-α) prediction bound from the trailing nightly values
    beyond_threshold: bool
    significant: bool
    regression: bool
    improvement: bool


def gate_samples(
    tonight: Sequence[float] | np.ndarray,
    window: Sequence[Sequence[float] | np.ndarray],
    *,
    higher_is_better: bool,
    threshold_pct: float,
    alpha: float = 0.01,
    nightly: tuple[float, Sequence[float]] | None = None,
    strata: tuple[Sequence[str] | np.ndarray, Sequence[Sequence[str] | np.ndarray]] | None = None,
) -> GateResult:
    """Gate a per-request metric: tonight's requests against the trailing nights' requests.

    Each night is summarised by one nightly value: the median of its requests, or the values given
    in `nightly` = (tonight's, [each window night's]) (the history uses the mean of per-bucket
    medians, which does not wobble with a mix of short and long prompts). Regression when all
    three hold, in the bad direction:
      1. tonight's value moved beyond `threshold_pct` % from the median of the window's values;
      2. a one-sided Mann-Whitney test of tonight's requests vs the pooled window's has p < α
         (van Elteren's stratified version when `strata` gives each request's bucket);
      3. tonight's value lies beyond the one-sided (1-α) prediction bound of the window's values
         (mean ± t·s·sqrt(1 + 1/n)), which carries the night-to-night spread.
    An improvement is the mirror image (reported, never an alarm).
    """
    t_all = np.asarray(tonight, dtype=float)
    t = t_all[np.isfinite(t_all)]
    arrays = [np.asarray(w, dtype=float) for w in window]
    keep = [i for i, w in enumerate(arrays) if np.isfinite(w).any()]
    nights = [arrays[i][np.isfinite(arrays[i])] for i in keep]
    if nightly is None:
        meds = np.array([np.median(w) for w in nights])
        value = float(np.median(t)) if t.size else math.nan
    else:
        meds = np.array([nightly[1][i] for i in keep], dtype=float)
        value = float(nightly[0])
    if t.size == 0 or meds.size == 0 or not math.isfinite(value):
        nan = math.nan
        return GateResult(nan, nan, nan, nan, nan, False, False, False, False)
    ref = float(np.median(meds))
    change = value / ref - 1 if ref else math.nan
    pooled = np.concatenate(nights)
    thr = threshold_pct / 100.0
    # bad direction first
    bad_alt, good_alt = ("less", "greater") if higher_is_better else ("greater", "less")
    if strata is None:
        def rank_test(alternative: str) -> float:
            return stats.mann_whitney(t, pooled, alternative=alternative).p_value
    else:
        t_lab = np.asarray(strata[0])[np.isfinite(t_all)]
        w_lab = np.concatenate([np.asarray(strata[1][i])[np.isfinite(arrays[i])] for i in keep])

        def rank_test(alternative: str) -> float:
            return stratified.van_elteren(t, t_lab, pooled, w_lab, alternative=alternative).p_value

    p_bad = rank_test(bad_alt)
    lo = stats.prediction_bound(meds, alpha=alpha, upper=False)
    hi = stats.prediction_bound(meds, alpha=alpha, upper=True)
    if higher_is_better:
        beyond_bad, beyond_good = change < -thr, change > thr
        out_bad, out_good = value < lo, value > hi
        bound = lo
    else:
        beyond_bad, beyond_good = change > thr, change < -thr
        out_bad, out_good = value > hi, value < lo
        bound = hi
    sig_bad = bool(p_bad < alpha and out_bad)
    # the improvement test only where it can matter (it costs a second rank test)
    sig_good = bool(beyond_good and out_good and rank_test(good_alt) < alpha)
    return GateResult(
        value=value, reference=ref, change=change, p_value=p_bad, bound=bound,
        beyond_threshold=bool(beyond_bad), significant=sig_bad,
        regression=bool(beyond_bad and sig_bad), improvement=bool(beyond_good and sig_good),
    )


def gate_values(
    tonight: float,
    window: Sequence[float],
    *,
    threshold_pct: float,
    floor_abs: float = 0.0,
    alpha: float = 0.01,
) -> GateResult:
    """Gate a once-per-night metric where up is bad (peak VRAM).

    Regression when tonight is above the median of the window by more than `threshold_pct` % AND
    by more than `floor_abs` (VRAM barely varies, so a relative threshold alone would fire on a few
    MiB), AND above the one-sided (1-α) prediction bound of the window (which is the window's value
    itself when VRAM never moved).
    """
    w = np.asarray([v for v in window if v is not None and math.isfinite(v)], dtype=float)
    if tonight is None or not math.isfinite(tonight) or w.size == 0:
        nan = math.nan
        return GateResult(nan, nan, nan, nan, nan, False, False, False, False)
    ref = float(np.median(w))
    change = tonight / ref - 1 if ref else math.nan
    diff = tonight - ref
    thr = threshold_pct / 100.0
    hi = stats.prediction_bound(w, alpha=alpha, upper=True)
    lo = stats.prediction_bound(w, alpha=alpha, upper=False)
    if not math.isfinite(hi):  # a single trailing value
        hi = lo = ref
    beyond_bad = bool(change > thr and diff > floor_abs)
    beyond_good = bool(change < -thr and -diff > floor_abs)
    sig_bad, sig_good = bool(tonight > hi), bool(tonight < lo)
    return GateResult(
        value=float(tonight), reference=ref, change=change, p_value=math.nan, bound=hi,
        beyond_threshold=beyond_bad, significant=sig_bad,
        regression=beyond_bad and sig_bad, improvement=beyond_good and sig_good,
    )


# --------------------------------------------------------------------------------------------------
# Nights on disk


# (model, arm): the model as the report names it (`ArmRun.model_name`), then the arm. Every
# comparison of the gate is between nights of one key: a night folder holds one evidence file per
# model of the nightly config, and the same arm name on two models is two different servers.
ArmKey = tuple[str, str]


def key_label(key: ArmKey) -> str:
    """"gpt-oss-20b · cpu-moe"."""
    return f"{key[0]} · {key[1]}"


@dataclass(frozen=True)
class ArmConfig:
    """What must be equal for two nights of one (model, arm) to be compared: the model file, the
    server argv (normalised by `abtest.argv.normalize`, as the report's `Identity.argv` is), the
    buckets and concurrency measured, and the max tokens. Several values when files of one night
    differ. Server build, driver and GPU are not here: their changes are what the gate is for."""

    model_sha256: tuple[str, ...]
    argv: tuple[tuple[str, ...], ...]
    buckets: tuple[str, ...]
    concurrency: tuple[int, ...]
    max_tokens: tuple[str, ...]

    @classmethod
    def of(cls, runs: Sequence[ArmRun]) -> ArmConfig:
        measured = [q for r in runs for q in r.measured]
        manifests = [r.evidence.manifest for r in runs if r.evidence.manifest]
        return cls(
            model_sha256=tuple(sorted({r.identity.model_sha256 for r in runs})),
            argv=tuple(sorted({r.identity.argv for r in runs})),
            buckets=tuple(sorted({q.bucket for q in measured})),
            concurrency=tuple(sorted({q.concurrency for q in measured})),
            max_tokens=tuple(sorted({str(m.config.get("max_tokens", "")) for m in manifests})),
        )

    def changes_from(self, before: ArmConfig) -> list[str]:
        """What differs, in words: e.g. ["server argv: --cpu-moe → --n-cpu-moe 12"]."""
        out = []
        if self.model_sha256 != before.model_sha256:
            out.append(f"model SHA256 {_joined(s[:12] for s in before.model_sha256)} → "
                       f"{_joined(s[:12] for s in self.model_sha256)}")
        if self.argv != before.argv:
            out.append("server argv: " + _argv_change(before.argv, self.argv))
        for name, old, new in (("buckets", before.buckets, self.buckets),
                               ("concurrency", before.concurrency, self.concurrency),
                               ("max tokens", before.max_tokens, self.max_tokens)):
            if old != new:
                out.append(f"{name} {_joined(map(str, old))} → {_joined(map(str, new))}")
        return out


def _joined(values: Iterable[str]) -> str:
    return ", ".join(v for v in values if v) or "?"


def _argv_change(old: tuple[tuple[str, ...], ...], new: tuple[tuple[str, ...], ...]) -> str:
    """The tokens that differ between two normalised argvs ("--cpu-moe → --n-cpu-moe 12")."""
    if len(old) != 1 or len(new) != 1:
        return f"{len(old)} → {len(new)} different command lines"
    a, b = old[0], new[0]
    parts = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if tag == "replace":
            parts.append(f"{' '.join(a[i1:i2])} → {' '.join(b[j1:j2])}")
        elif tag == "delete":
            parts.append(f"dropped {' '.join(a[i1:i2])}")
        elif tag == "insert":
            parts.append(f"added {' '.join(b[j1:j2])}")
    return "; ".join(parts)


@dataclass
class NightArm:
    """One (model, arm) on one night: the per-request samples and provenance the gate needs."""

    night: str
    arm: str
    decode_tps: np.ndarray  # per measured ok request
    ttft_ms: np.ndarray
    vram_peak_mib: float
    n_failed: int = 0
    provenance: dict[str, str] = field(default_factory=dict)
    strata: np.ndarray | None = None  # per request: its bucket (and concurrency); None = one stratum
    model: str = "?"
    config: ArmConfig | None = None  # None (in-memory tests): comparable with every night
    model_file: str = ""  # the GGUF's file name, which tells apart two files of one model name

    @property
    def key(self) -> ArmKey:
        return (self.model, self.arm)

    def samples(self, metric: str) -> np.ndarray:
        return np.asarray(getattr(self, metric), dtype=float)

    def value(self, metric: str) -> float:
        """The nightly value: the mean over buckets of each bucket's median (VRAM: the peak).

        Averaging per-bucket medians keeps the value steady when buckets differ a lot (TTFT of a
        32-token and a 2k-token prompt), where one median over the mix would jump between modes.
        """
        if metric == "vram_peak_mib":
            return self.vram_peak_mib
        a = self.samples(metric)
        ok = np.isfinite(a)
        if not ok.any():
            return math.nan
        if self.strata is None:
            return float(np.median(a[ok]))
        labels = np.asarray(self.strata)[ok]
        return float(np.mean([np.median(a[ok][labels == s]) for s in dict.fromkeys(labels.tolist())]))


@dataclass
class Night:
    night: str
    files: list[Path]
    arms: dict[ArmKey, NightArm]
    problems: list[str] = field(default_factory=list)
    missing: str = ""  # why the night holds no readable run ("" when it does)
    configured: dict[str, set[str]] = field(default_factory=dict)  # model -> arms its manifests list


# Changes named next to a regression as its likely cause (a new model file is an `ArmConfig`
# change instead: those nights are not compared at all).
PROVENANCE_FIELDS = ("server_build", "driver", "gpu")


def _provenance(runs: Sequence[ArmRun]) -> dict[str, str]:
    def joined(values: Sequence[str]) -> str:
        return " + ".join(dict.fromkeys(v for v in values if v)) or "?"

    manifests = [r.evidence.manifest for r in runs if r.evidence.manifest]
    return {
        "server_build": joined([build_id(r.start.server_build) for r in runs if r.start]),
        "driver": joined([str((m.gpu or {}).get("driver") or "") for m in manifests]),
        "gpu": joined([gpu_devices(m.gpu) for m in manifests]),
    }


def _model_file(run: ArmRun) -> str:
    return Path(run.start.model_path).name if run.start else Path(str(run.model_entry.get("path", ""))).name


def night_from_files(night: str, files: Sequence[Path]) -> Night:
    """One night's evidence reduced to per-(model, arm) samples (files of one key are pooled)."""
    return night_from_evidence(night, [read_evidence(f) for f in files])


def night_from_evidence(night: str, evidences: Sequence[Evidence]) -> Night:
    """The evidence files of one night, read, reduced to per-(model, arm) samples."""
    problems = [p for ev in evidences for p in ev.problems]
    problems += [f"{ev.path.name}: partial run (no run_end)" for ev in evidences if ev.partial and ev.manifest]
    runs = [r for ev in evidences for r in arm_runs(ev)]
    built: list[NightArm] = []
    for model, file, name in dict.fromkeys((r.model_name, _model_file(r), r.arm) for r in runs):
        mine = [r for r in runs if (r.model_name, _model_file(r), r.arm) == (model, file, name)]
        measured = [q for r in mine for q in r.measured]
        ok = [q for q in measured if q.ok]
        groups, _ = group_runs(mine)
        peaks = [memory_row(g).vram_peak_mib for g in groups]
        peaks = [p for p in peaks if math.isfinite(p)]
        built.append(NightArm(
            night=night, arm=name, model=model, model_file=file,
            decode_tps=np.array([stats.decode_tps(q) for q in ok], dtype=float),
            ttft_ms=np.array([stats.ttft_ms(q) for q in ok], dtype=float),
            vram_peak_mib=max(peaks) if peaks else math.nan,
            n_failed=len(measured) - len(ok),
            provenance=_provenance(mine),
            strata=np.array([f"{q.bucket}|c{q.concurrency}" for q in ok]),
            config=ArmConfig.of(mine),
        ))
    # Two files of one model name tonight (two quantisations whose GGUF headers share a name):
    # those keys carry the file name, so that they are never pooled.
    seen = [na.key for na in built]
    for na in built:
        if seen.count(na.key) > 1:
            na.model = f"{na.model} ({na.model_file})"
    arms = {na.key: na for na in built}
    configured: dict[str, set[str]] = {}
    for ev in evidences:
        if ev.manifest is None:
            continue
        models = {r.model_name for r in arm_runs(ev)} or {str(m.get("name", "?")) for m in ev.manifest.models}
        for model in models:
            configured.setdefault(model, set()).update(_configured_arms(ev))
    return Night(night=night, files=[ev.path for ev in evidences], arms=arms, problems=problems,
                 configured=configured)


def _configured_arms(ev: Evidence) -> set[str]:
    """The arm names a run was configured with (its manifest's config), as resolve_baseline reads them."""
    arms = ev.manifest.config.get("arms") if ev.manifest else None
    if isinstance(arms, dict):
        return {str(k) for k in arms}
    return {str(a.get("name") if isinstance(a, dict) else a) for a in arms or []}


def _read_night(night: str, sub: Path) -> Night:
    """One night folder; `Night.missing` says why it holds no readable run ("" when it does)."""
    if not sub.is_dir():
        return Night(night, [], {}, missing=f"{sub}/ does not exist")
    files = sorted(sub.glob("*.jsonl"))
    if not files:
        return Night(night, [], {}, missing=f"{sub}/ holds no *.jsonl evidence file")
    readable: list[Evidence] = []
    problems: list[str] = []
    for f in files:
        try:
            readable.append(read_evidence(f))
        except EvidenceError as exc:
            problems.append(str(exc))
    n = night_from_evidence(night, readable)
    n.files, n.problems = files, problems + n.problems
    if not n.arms:
        first = n.problems[0] if n.problems else "no arm records"
        n.missing = (f"{sub}/ holds no readable run in its {len(files)} evidence "
                     f"file{'s' if len(files) != 1 else ''} ({first})")
    return n


def load_history(directory: Path | str, night: str | None = None) -> list[Night]:
    """The YYYY-MM-DD sub-directories with evidence, oldest first, then tonight.

    Tonight is `night` (its folder may be absent) or else the newest YYYY-MM-DD folder; it is
    always the last element, with `missing` set when it holds no readable run, so that an empty
    tonight is reported as such and the previous night is never judged in its place. Later
    folders than `night` are ignored.
    """
    d = Path(directory)
    if not d.is_dir():
        raise ConfigError(f"--history {d} is not a directory — pass the folder holding YYYY-MM-DD/ nights")
    if night is not None and not NIGHT_DIR.match(night):
        raise ConfigError(f"--night {night!r} is not a date — pass YYYY-MM-DD, e.g. --night 2026-11-20")
    subs = sorted(p for p in d.iterdir() if p.is_dir() and NIGHT_DIR.match(p.name))
    if night is None:
        if not subs:
            raise ConfigError(f"--history {d} holds no YYYY-MM-DD/ sub-directories — pass the folder "
                              "scripts/nightly.sh writes (EVIDENCE_DIR)")
        night = subs[-1].name
    nights = []
    for sub in subs:
        if sub.name < night and any(sub.glob("*.jsonl")):
            past = _read_night(sub.name, sub)
            if past.arms:
                nights.append(past)
    nights.append(_read_night(night, d / night))
    return _same_keys(nights)


def _same_keys(nights: list[Night]) -> list[Night]:
    """A model name that two files shared on some night is told apart by file name on every night,
    so that each file keeps one history."""
    split = {na.model.removesuffix(f" ({na.model_file})") for n in nights for na in n.arms.values()
             if na.model_file and na.model.endswith(f" ({na.model_file})")}
    for n in nights:
        for na in n.arms.values():
            if na.model in split:
                na.model = f"{na.model} ({na.model_file})"
        n.arms = {na.key: na for na in n.arms.values()}
    return nights


# --------------------------------------------------------------------------------------------------
# Evaluation


@dataclass(frozen=True)
class ProvenanceChange:
    night: str
    model: str
    arm: str
    field: str
    old: str
    new: str

    @property
    def key(self) -> ArmKey:
        return (self.model, self.arm)

    def __str__(self) -> str:
        names = {"model_sha256": "model SHA256", "server_build": "server build", "driver": "driver", "gpu": "GPU"}
        return f"{names.get(self.field, self.field)} {self.old} → {self.new} ({self.night})"


@dataclass(frozen=True)
class ConfigChange:
    """Nights of a (model, arm) left out of tonight's window: their `ArmConfig` differs from tonight's."""

    model: str
    arm: str
    nights: tuple[str, ...]  # left out, among the key's last `window` nights before tonight
    what: tuple[str, ...]  # tonight's configuration against the latest of them, in words

    @property
    def key(self) -> ArmKey:
        return (self.model, self.arm)

    def __str__(self) -> str:
        span = self.nights[0] if len(self.nights) == 1 else f"{self.nights[0]} … {self.nights[-1]}"
        n = len(self.nights)
        return (f"{key_label(self.key)}: configuration changed ({'; '.join(self.what)}); "
                f"{n} night{'s' if n != 1 else ''} of the other configuration ({span}) not compared")


@dataclass
class Check:
    """One metric of one (model, arm) tonight."""

    model: str
    arm: str
    metric: str
    night: str
    # "regression", "improvement", "ok", "no verdict yet" (fewer than min_nights trailing nights
    # of tonight's configuration), "no data", or "missing" (evidence on a trailing night, none tonight)
    status: str
    gate: GateResult | None
    window_nights: list[str]
    threshold: str
    causes: list[ProvenanceChange] = field(default_factory=list)
    detail: str = ""  # for checks without a gate (no successful request, missing tonight)

    @property
    def key(self) -> ArmKey:
        return (self.model, self.arm)

    @property
    def label(self) -> str:
        return key_label(self.key)

    @property
    def regression(self) -> bool:
        return self.status == "regression"

    @property
    def missing(self) -> bool:
        return self.status == "missing"

    @property
    def verdict(self) -> bool:
        """Whether the gate judged this check (it had the nights and the data)."""
        return self.status in ("regression", "improvement", "ok")

    @property
    def reference(self) -> float:
        return self.gate.reference if self.gate else math.nan


@dataclass
class Series:
    model: str
    arm: str
    metric: str
    nights: list[str]
    values: np.ndarray

    @property
    def key(self) -> ArmKey:
        return (self.model, self.arm)

    @property
    def label(self) -> str:
        return key_label(self.key)


@dataclass
class HistoryResult:
    tonight: str
    nights: list[str]
    thresholds: Thresholds
    checks: list[Check]
    changes: list[ProvenanceChange]
    series: list[Series]
    metrics: list[str]
    notes: list[str]
    config_changes: list[ConfigChange] = field(default_factory=list)
    no_evidence: str = ""  # why tonight holds no readable run ("" when it does)
    abtest_version: str = __version__

    @property
    def regressions(self) -> list[Check]:
        return [c for c in self.checks if c.regression]

    @property
    def missing(self) -> list[Check]:
        return [c for c in self.checks if c.missing]

    @property
    def no_verdict(self) -> list[Check]:
        return [c for c in self.checks if c.status == "no verdict yet"]

    @property
    def outcome(self) -> str:
        """"no evidence" (exit 5), "regression" (exit 1), "missing" (exit 5), "no verdict yet" (no
        check could be judged: exit 0, and the headline says so) or "ok" (exit 0)."""
        if self.no_evidence:
            return "no evidence"
        if self.regressions:
            return "regression"
        if self.missing:
            return "missing"
        if not any(c.verdict for c in self.checks):
            return "no verdict yet"
        return "ok"


def provenance_changes(nights: Sequence[Night]) -> list[ProvenanceChange]:
    """Every change of model SHA256, server build, driver or GPU between consecutive nights of a key."""
    out = []
    last: dict[ArmKey, dict[str, str]] = {}
    for n in nights:
        for key, na in n.arms.items():
            prev = last.get(key)
            if prev is not None:
                for f in PROVENANCE_FIELDS:
                    if prev.get(f) != na.provenance.get(f):
                        out.append(ProvenanceChange(n.night, key[0], key[1], f, prev.get(f, "?"),
                                                    na.provenance.get(f, "?")))
            last[key] = na.provenance
    return out


def threshold_text(metric: str, th: Thresholds) -> str:
    if metric == "decode_tps":
        return f"−{th.decode_pct:g} %"
    if metric == "ttft_ms":
        return f"+{th.ttft_pct:g} %"
    return f"+{th.vram_pct:g} % and +{th.vram_mib:g} MiB"


def _strata(tonight: NightArm, window: Sequence[NightArm]) -> tuple[np.ndarray, list[np.ndarray]] | None:
    """Each request's bucket, tonight and per window night; None unless every night has them."""
    labels = [w.strata for w in window]
    if tonight.strata is None or any(x is None for x in labels):
        return None
    return tonight.strata, [x for x in labels if x is not None]


def check_night(
    tonight: NightArm, window: Sequence[NightArm], metric: str, th: Thresholds
) -> tuple[str, GateResult | None]:
    """Gate one metric of one key; ("no verdict yet", None) with too few trailing nights."""
    spec = METRIC_BY_KEY[metric]
    if len(window) < th.min_nights:
        return "no verdict yet", None
    if metric == "vram_peak_mib":
        g = gate_values(tonight.vram_peak_mib, [w.vram_peak_mib for w in window],
                        threshold_pct=th.vram_pct, floor_abs=th.vram_mib, alpha=th.alpha)
    else:
        g = gate_samples(tonight.samples(metric), [w.samples(metric) for w in window],
                         higher_is_better=spec.higher_is_better,
                         threshold_pct=th.decode_pct if metric == "decode_tps" else th.ttft_pct, alpha=th.alpha,
                         nightly=(tonight.value(metric), [w.value(metric) for w in window]),
                         strata=_strata(tonight, window))
    if not math.isfinite(g.value):
        return "no data", g
    return ("regression" if g.regression else "improvement" if g.improvement else "ok"), g


def evaluate_history(nights: Sequence[Night], thresholds: Thresholds | None = None) -> HistoryResult:
    """Tonight (the last night) against the trailing window, per (model, arm) and metric.

    The window of a key is its last `window` nights whose `ArmConfig` equals tonight's: nights of
    another configuration (argv, buckets, model file, ...) are never compared, and are named in
    `config_changes`; with fewer than `min_nights` of them the check is "no verdict yet". A key
    with evidence on one of the last `window` nights before tonight (nights with evidence) and
    none tonight is "missing": a model whose run wrote nothing tonight is a failure, never
    compared with another model's numbers.
    """
    th = thresholds or Thresholds()
    if not nights:
        raise ConfigError("no nights to evaluate")
    tonight = nights[-1]
    past_nights = [n for n in nights[:-1] if n.arms]
    changes = provenance_changes(nights)
    checks: list[Check] = []
    # a garbled file has a problem per line: the first few say enough
    notes = [f"{tonight.night}: {p}" for p in tonight.problems[:MAX_PROBLEM_NOTES]]
    if len(tonight.problems) > MAX_PROBLEM_NOTES:
        notes.append(f"{tonight.night}: … and {len(tonight.problems) - MAX_PROBLEM_NOTES} more problems")
    keys = list(dict.fromkeys(k for n in nights for k in n.arms))
    expected = {k for n in past_nights[-th.window:] for k in n.arms}
    config_changes: list[ConfigChange] = []
    for key in keys:
        model, arm = key
        recent = [n.arms[key] for n in past_nights if key in n.arms]  # every night of the key, oldest first
        if key not in tonight.arms:
            last_seen = max(n.night for n in nights if key in n.arms)
            if model in tonight.configured and arm not in tonight.configured[model]:
                notes.append(f"{key_label(key)}: not in tonight's configuration of {model} (last seen {last_seen})")
            elif key in expected:
                checks.append(Check(model, arm, "evidence", tonight.night, "missing", None,
                                    [w.night for w in recent[-th.window:]], "evidence tonight",
                                    detail=f"no evidence tonight (last seen {last_seen})"))
            else:
                notes.append(f"{key_label(key)}: not run since {last_seen} (outside the window of "
                             f"{th.window} nights: no longer expected)")
            continue
        na = tonight.arms[key]
        if na.n_failed:
            notes.append(f"{key_label(key)}: {na.n_failed} requests failed tonight")
        if na.decode_tps.size == 0 and na.ttft_ms.size == 0 and any(w.ttft_ms.size for w in recent):
            # a key that worked before and has no successful request tonight is the loudest
            # regression, whatever its configuration (a server that never started has no argv)
            window_nights = [w.night for w in recent[-th.window:]]
            checks.append(Check(model, arm, "requests", tonight.night, "regression", None, window_nights,
                                "a successful request", _causes(changes, key, window_nights, tonight.night),
                                detail=f"no successful request tonight ({na.n_failed} failed)"))
            continue
        past = [p for p in recent if _same_config(p, na)][-th.window:]
        other = [p for p in recent[-th.window:] if not _same_config(p, na)]
        if other and na.config is not None and other[-1].config is not None:
            config_changes.append(ConfigChange(model, arm, tuple(p.night for p in other),
                                               tuple(na.config.changes_from(other[-1].config))))
        window_nights = [w.night for w in past]
        for spec in GATE_METRICS:
            status, g = check_night(na, past, spec.key, th)
            c = Check(model, arm, spec.key, tonight.night, status, g, window_nights, threshold_text(spec.key, th))
            if c.regression:
                c.causes = _causes(changes, key, window_nights, tonight.night)
            checks.append(c)
    series = []
    night_names = [n.night for n in nights]
    for key in keys:
        for spec in GATE_METRICS:
            vals = np.array([n.arms[key].value(spec.key) if key in n.arms else math.nan for n in nights])
            series.append(Series(key[0], key[1], spec.key, night_names, vals))
    return HistoryResult(tonight=tonight.night, nights=night_names, thresholds=th, checks=checks, changes=changes,
                         series=series, metrics=[m.key for m in GATE_METRICS], notes=notes,
                         config_changes=config_changes, no_evidence=tonight.missing)


def _causes(changes: Sequence[ProvenanceChange], key: ArmKey, window_nights: Sequence[str],
            tonight: str) -> list[ProvenanceChange]:
    """The provenance changes of a key since its window began, newest first."""
    since = window_nights[0] if window_nights else ""
    return sorted((ch for ch in changes if ch.key == key and since < ch.night <= tonight),
                  key=lambda ch: ch.night, reverse=True)


def _same_config(a: NightArm, b: NightArm) -> bool:
    return a.config is None or b.config is None or a.config == b.config


def raise_for_outcome(result: HistoryResult) -> None:
    """MissingNight (exit 5) when tonight holds no readable run; RegressionFound (exit 1) when
    tonight regressed; MissingNight when a key of the trailing nights has no evidence tonight.
    The message is the one-line summary."""
    if result.no_evidence:
        raise MissingNight(f"no evidence for tonight ({result.tonight}): {result.no_evidence} — did tonight's "
                           "`abtest run` fail? (scripts/nightly.sh logs it in nightly.log)")
    regs, missing = result.regressions, result.missing
    gone = ""
    if missing:
        gone = (f"{len(missing)} missing on {result.tonight}: "
                + ", ".join(f"{c.label} ({c.detail.removeprefix('no evidence tonight (')}" for c in missing))
    if regs:
        text = (f"{len(regs)} regression{'s' if len(regs) != 1 else ''} on {result.tonight}: "
                + "; ".join(check_line(c) for c in regs))
        raise RegressionFound(text + (f"; and {gone}" if gone else ""))
    if missing:
        raise MissingNight(gone + " — did their `abtest run` fail? (scripts/nightly.sh: nightly.log)")


def check_line(c: Check) -> str:
    g = c.gate
    if g is None:
        text = f"{c.label}: {c.detail or c.status}"
    else:
        spec = METRIC_BY_KEY[c.metric]
        text = (f"{c.label} {spec.label} {fmt_num(g.value)} {spec.unit} vs {fmt_num(g.reference)} "
                f"({fmt_pct(g.change)}; threshold {c.threshold}")
        text += f", p {fmt_p_cell(g.p_value)})" if math.isfinite(g.p_value) else ")"
    if c.causes:
        text += " — likely cause: " + ", ".join(str(ch) for ch in c.causes)
    return text
