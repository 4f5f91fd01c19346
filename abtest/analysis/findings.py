"""Warnings: what can make a number untrustworthy, found in the evidence, each with its fix."""

from __future__ import annotations

import enum
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..fmt import fmt_num, fmt_pct
from ..records import arm_warnings
from . import stats, stratified
from .arms import (
    ArmGroup,
    ArmRun,
)
from .compare import BucketStats, Comparison, Level, headline, level_of, level_tag, plan_weights
from .memory import measured_window_samples
from .metrics import METRIC_BY_KEY, decode_unmeasurable

# Warning thresholds (docs/report.md explains each)
MIN_N = 10  # fewer measured requests than this: p95 and intervals are unreliable


HIGH_CV = {"decode_tps": 0.10, "ttft_ms": 0.20}  # between repeats of the same prompt
FIRST_EXCESS = 0.10  # a first request this much worse than its prompt's other repeats, at least


MIN_DETECTABLE = 0.05  # an interval that spans 0 and is wider than ±5 % has not settled the claim


CLOCK_SPREAD = 0.10  # SM clock range / max under load


TEMPERATURE_SPREAD_C = 10


DRIFT_MIN = 0.05  # the first and last session of an arm this far apart (and the interval excludes 0)
DRIFT_METRICS = ("decode_tps", "ttft_ms")


class ReportWarning(enum.Enum):
    """What can make a number untrustworthy, each with the flag or action that fixes it."""

    FEW_SAMPLES = (
        "only {n} successful measured requests per bucket ({buckets}); p95 and 95 % intervals need "
        "more — raise --runs"
    )
    UNRESOLVED = (
        "{metric}: Δ {delta} with 95 % CI {ci} over {n} server sessions per arm cannot rule out a {mde} "
        "change; about {need} sessions per arm would — raise --blocks"
    )
    HIGH_CV = (
        "{metric} varies a lot between repeats of the same prompt (coefficient of variation up to "
        "{cv} > {limit}, in {buckets}); quiet the machine, lock GPU clocks, or raise --runs"
    )
    FIRST_OUTLIER = (
        "the first measured request is an outlier ({metric} {value} against {usual} for the other "
        "repeats of its prompt, modified Z = {z}); caches or lazy allocations were still warming — "
        "raise --warmup (it was {warmup})"
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
    DECODE_UNMEASURABLE = (
        "decode tok/s, ITL and TPOT not measurable for {n} of {total} successful measured requests "
        "({reasons}), left out of those statistics (docs/metrics.md); their tokens arrived too close "
        "together to time — raise --max-tokens, or quiet the machine"
    )
    SUSPECT_REQUESTS = (
        "{n} of {total} successful measured requests carry what cannot be true (the first: {first}); "
        "they are kept as measured — a client that shares its cores with the server stamps late: quiet the "
        "machine, or leave the client a core (--threads below the core count)"
    )
    SESSION_DRIFT = (
        "{metric} moved {delta} from its first server session ({first}) to its last ({last}), 95 % CI "
        "{ci} over their requests: the box drifted or its sessions differ; the comparisons count it as "
        "noise between sessions, which widens them — quiet the machine, lock GPU clocks, raise --warmup "
        "or --blocks"
    )

    SERVER_WARNING = "the server's own log says: {text} ({sessions} server session(s)){hint}"

    def format(self, **kw: Any) -> str:
        return self.value.format(**kw)


@dataclass(frozen=True)
class Finding:
    kind: ReportWarning
    subject: str  # the arm, bucket or file it is about
    text: str

    def __str__(self) -> str:
        return f"{self.subject}: {self.text}"


@dataclass(frozen=True)
class Drift:
    """The first and the last server session of one arm group compared, over their requests
    (stratified by bucket, the studentized bootstrap of `stratified.ratio_ci_stratified`): within
    one arm, requests are the unit, and any difference is the box or the session, not the arm."""

    group: str
    metric: str
    first: str  # the sessions, as `ArmGroup.session_label` names them
    last: str
    n_first: int
    n_last: int
    ci: stats.RatioCI  # Δ = mean(last) / mean(first) − 1

    @property
    def flagged(self) -> bool:
        """Beyond DRIFT_MIN with an interval that excludes 0 (a SESSION_DRIFT warning)."""
        return (math.isfinite(self.ci.low) and not self.ci.covers(0.0)
                and abs(self.ci.delta) >= DRIFT_MIN)


def drift_of(g: ArmGroup, *, seed: int, resamples: int) -> list[Drift]:
    """Per headline metric, the group's last session against its first (none with one session)."""
    if len(g.runs) < 2:
        return []
    first, last = g.runs[0], g.runs[-1]
    weights = {f"{k[0]}|{level_tag(k[1])}": v for k, v in _plan_shares(g).items()}
    out = []
    for key in DRIFT_METRICS:
        fn = stats.decode_tps if key == "decode_tps" else stats.ttft_ms
        parts = []
        for run in (first, last):
            ok = [r for r in run.measured if r.ok]
            parts.append((np.array([fn(r) for r in ok], dtype=float),
                          np.array([f"{r.bucket}|{level_tag(level_of(r))}" for r in ok])))
        (x, xs), (y, ys) = parts
        ci = stratified.ratio_ci_stratified(x, xs, y, ys, seed=seed, resamples=resamples, weights=weights)
        if not math.isfinite(ci.delta):  # no bucket in common (files of different plans pooled)
            continue
        out.append(Drift(g.label, key, g.session_label(first), g.session_label(last),
                         int(np.isfinite(x).sum()), int(np.isfinite(y).sum()), ci))
    return out


def _plan_shares(g: ArmGroup) -> dict[tuple[str, Level], float]:
    """Each (bucket, level)'s share of the group's measured requests (failed included)."""
    measured = g.measured
    out: dict[tuple[str, Level], float] = {}
    for lv in dict.fromkeys(level_of(r) for r in measured):
        for bucket, share in plan_weights(measured, lv).items():
            out[(bucket, lv)] = share
    total = sum(out.values())
    return {k: v / total for k, v in out.items()} if total else {}


def findings_for(groups: Sequence[ArmGroup], buckets: Sequence[BucketStats], comps: Sequence[Comparison],
                 drift: Sequence[Drift] = ()) -> list[Finding]:
    out: list[Finding] = []
    for g in groups:
        for run in g.runs:
            where = g.session_label(run)
            subj = f"{g.label} ({where})" if where else g.label
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
            ok = [r for r in measured if r.ok]
            why = Counter(w for r in ok if (w := decode_unmeasurable(r)))
            if why:
                out.append(Finding(ReportWarning.DECODE_UNMEASURABLE, subj, ReportWarning.DECODE_UNMEASURABLE.format(
                    n=sum(why.values()), total=len(ok), reasons=", ".join(f"{k} {w}" for w, k in why.most_common()))))
            suspect = [r for r in ok if r.suspect]
            if suspect:
                out.append(Finding(ReportWarning.SUSPECT_REQUESTS, subj, ReportWarning.SUSPECT_REQUESTS.format(
                    n=len(suspect), total=len(ok), first=suspect[0].suspect[0])))
            out += _first_outlier(run, subj)
            window = measured_window_samples(run)
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
    out += _server_warnings(groups)
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
            cv = stats.repeat_cv(s.samples[key], s.prompt_ids)
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
            n = min(c.sessions)
            m = METRIC_BY_KEY[c.metric]
            out.append(Finding(ReportWarning.UNRESOLVED, f"{c.group} vs {c.baseline}",
                               ReportWarning.UNRESOLVED.format(
                                   metric=f"{m.label} {m.unit}", delta=fmt_pct(c.ci.delta),
                                   ci=f"{fmt_pct(c.ci.low)} … {fmt_pct(c.ci.high)}", n=n,
                                   mde=f"{MIN_DETECTABLE:.0%}",
                                   need=stats.required_n_from_ci(n, c.ci.low, c.ci.high, MIN_DETECTABLE))))
    for d in drift:
        if d.flagged:
            m = METRIC_BY_KEY[d.metric]
            out.append(Finding(ReportWarning.SESSION_DRIFT, d.group, ReportWarning.SESSION_DRIFT.format(
                metric=f"{m.label} {m.unit}", delta=fmt_pct(d.ci.delta), first=d.first, last=d.last,
                ci=f"{fmt_pct(d.ci.low)} … {fmt_pct(d.ci.high)}")))
    return out


def _server_warnings(groups: Sequence[ArmGroup]) -> list[Finding]:
    """Each warning line the servers printed (W/E, `server.log.server_warnings`), once, naming the
    arms whose sessions printed it ("every arm" when all did)."""
    by_text: dict[str, list[str]] = {}
    count: Counter[str] = Counter()
    for g in groups:
        for run in g.runs:
            for w in (arm_warnings(run.end) if run.end else []):
                if g.label not in by_text.setdefault(w, []):
                    by_text[w].append(g.label)
                count[w] += 1
    out = []
    for text, labels in by_text.items():
        out.append(Finding(ReportWarning.SERVER_WARNING, warned_by(labels, len(groups)),
                           ReportWarning.SERVER_WARNING.format(text=text, sessions=count[text],
                                                               hint=_warning_hint(text))))
    return out


def warned_by(arms: Sequence[str], n_arms: int) -> str:
    """Who printed a server warning: "every arm" when all `n_arms` arms that ran did (and there
    are several), else their names. The report's findings and the sweep's list both use it."""
    return "every arm" if len(arms) == n_arms > 1 else ", ".join(arms)


# What abtest can do about a server warning, where it can do something (matched on the words
# the server prints; a warning without an entry is quoted as it is).
_WARNING_HINTS = (
    # src/llama-model-loader.cpp, with -ot/--cpu-moe/--n-cpu-moe and mmap on
    ("--load-mode none", " — `abtest sweep --load-mode both` measures --load-mode none against mmap"),
)


def _warning_hint(text: str) -> str:
    return next((hint for marker, hint in _WARNING_HINTS if marker in text), "")


def _bucket_list(names: Sequence[str]) -> str:
    return ", ".join(names) if len(names) <= 4 else f"{', '.join(names[:3])} and {len(names) - 3} more"


def _first_outlier(run: ArmRun, subj: str) -> list[Finding]:
    """The first measured request against the other repeats of its own prompt (a bucket may mix
    prompt lengths), judged by how far its log-ratio to them stands out among every request's
    log-ratio to its repeats; flagged only when worse (slower TTFT, lower decode rate)."""
    measured = sorted((r for r in run.measured if r.ok), key=lambda r: r.seq)
    if not measured:
        return []
    first = measured[0]
    same = [r for r in measured if level_of(r) == level_of(first)]
    prompts = np.array([f"{r.bucket}\x00{r.prompt_id}" for r in same])
    warm = [r for r in run.requests if r.warmup]
    per_level = sum(1 for r in warm if level_of(r) == level_of(first))
    # with load levels each level had its own warm-up: quote the first level's, per level
    warmup = f"{per_level} per load level" if len({level_of(r) for r in warm}) > 1 else str(len(warm))
    for key, fn in (("ttft_ms", stats.ttft_ms), ("decode_tps", stats.decode_tps)):
        m = METRIC_BY_KEY[key]
        values = np.array([fn(r) for r in same])
        resid = stats.log_residuals_vs_repeats(values, prompts)
        worse = -resid[0] if m.higher_is_better else resid[0]
        pool = resid[1:][np.isfinite(resid[1:])]
        if not math.isfinite(worse) or pool.size < 5 or worse < math.log1p(FIRST_EXCESS):
            continue
        z = stats.modified_z_scores(np.concatenate([[resid[0]], pool]))[0]
        if abs(z) > stats.MODIFIED_Z_THRESHOLD:
            usual = float(np.median(values[1:][prompts[1:] == prompts[0]]))
            return [Finding(ReportWarning.FIRST_OUTLIER, subj, ReportWarning.FIRST_OUTLIER.format(
                metric=m.label, value=f"{fmt_num(values[0])} {m.unit}", usual=f"{fmt_num(usual)} {m.unit}",
                z=f"{z:+.1f}", warmup=warmup))]
    return []
