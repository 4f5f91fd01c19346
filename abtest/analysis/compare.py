"""Per-bucket statistics of each arm group and their comparisons with the baseline.

A comparison's unit of analysis is the server session (`stratified.session_ratio`): its 95 %
interval and its p-value are one t statistic over sessions, so they agree by construction, and
with fewer than 2 sessions on a side there is an estimate but neither (docs/report.md, "Inference").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..records import RequestRecord
from . import stats, stratified
from .arms import ArmGroup
from .loadpoint import is_level_run
from .metrics import METRIC_BY_KEY, METRICS

ALPHA = 0.05  # a delta is "significant" when p < ALPHA, which is when its 95 % interval excludes 0

# Why a comparison has no interval or p-value, in words (SessionRatio.reason -> text)
ONE_SESSION_TEXT = ("{who}: a session difference cannot be told from an arm difference; run with --blocks 2 "
                    "or more, or pool more files")
REASON_TEXT = {
    stratified.NO_DATA: "no bucket with values in both arms",
    stratified.NOT_POSITIVE: "a mean that is not positive has no ratio",
    stratified.NO_VARIANCE: "no variance between or within server sessions: nothing to test",
}

Level = tuple[int, float | None]  # (concurrency, offered rate of a rate-level run, else None)


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
    prompt_ids: np.ndarray  # each sample's prompt (repeats of one prompt share it)
    sessions: np.ndarray  # each sample's server session: its index in the group's `runs`
    pooled: bool = False  # the "all" row: every bucket of this concurrency together
    strata: np.ndarray | None = None  # pooled rows: each sample's bucket (compared within buckets)
    # pooled rows: each bucket's share of the plan (requests of every arm, failed included); the
    # row's means are Σ share·bucket mean, the same weights its stratified Δ uses
    weights: dict[str, float] | None = None
    rate_rps: float | None = None  # a run of rate levels (`--rate 0.5,1,2`): this row's offered rate

    @property
    def level(self) -> Level:
        """The load level the row is tabled at (`level_of` of its requests)."""
        return self.concurrency, self.rate_rps


@dataclass
class Comparison:
    group: str
    baseline: str
    bucket: str
    metric: str
    n_base: int  # finite per-request values
    n_other: int
    base_mean: float
    other_mean: float
    ci: stats.RatioCI  # the 95 % interval of `inference` (unbounded when it has none)
    p_value: float  # the p-value of the same statistic (nan when it has none)
    test: str
    inference: stratified.SessionRatio

    @property
    def significant(self) -> bool:
        """p < ALPHA, which is exactly when the 95 % interval excludes 0 (one statistic)."""
        return math.isfinite(self.p_value) and self.p_value < ALPHA

    @property
    def better(self) -> bool:
        up = self.ci.delta > 0
        return up if METRIC_BY_KEY[self.metric].higher_is_better else not up

    @property
    def sessions(self) -> tuple[int, int]:
        """Server sessions with values: (baseline, arm)."""
        return self.inference.k_base, self.inference.k_other

    @property
    def reason(self) -> str:
        """Why there is no interval and no p-value, in words ("" when there are both)."""
        code = self.inference.reason
        if code == stratified.ONE_SESSION:
            kb, ko = self.sessions
            if kb < 2 and ko < 2:
                who = "one server session per arm"
            else:
                who = f"only one server session of {self.baseline if kb < 2 else self.group}"
            if max(self.inference.k_base_any, self.inference.k_other_any) > max(kb, ko):
                who += " in a bucket (its sessions ran different buckets)"
            return ONE_SESSION_TEXT.format(who=who)
        return REASON_TEXT.get(code, code)


def level_of(r: RequestRecord) -> Level:
    """The level a request is tabled at: its concurrency and, in a run of rate levels (`--rate
    0.5,1,2`, a rate search), its offered rate, so that those levels are not pooled."""
    rate = r.load.get("rate_rps") if is_level_run(r) and r.load.get("mode") == "open" else None
    return r.concurrency, float(rate) if isinstance(rate, (int, float)) and not isinstance(rate, bool) else None


def level_tag(level: Level) -> str:
    """"c4", or "r2.5" for a rate level: the level part of a stratum's name."""
    return f"r{level[1]:g}" if level[1] is not None else f"c{level[0]}"


def _bucket_label(bucket: str, level: Level, all_c1: bool) -> str:
    if level[1] is not None:
        return f"{bucket} r={level[1]:g}"
    return bucket if all_c1 else f"{bucket} c={level[0]}"


def bucket_stats(groups: Sequence[ArmGroup]) -> list[BucketStats]:
    measured = [r for g in groups for r in g.measured]
    all_c1 = all(level_of(r) == (1, None) for r in measured)
    keys = list(dict.fromkeys((r.bucket, level_of(r)) for r in measured))
    levels = list(dict.fromkeys(lv for _, lv in keys))
    out: list[BucketStats] = []
    for g in groups:
        mine = g.measured
        session_of = {id(r): j for j, run in enumerate(g.runs) for r in run.requests}
        for bucket, lv in keys:
            reqs = [r for r in mine if r.bucket == bucket and level_of(r) == lv]
            if reqs or not mine:
                out.append(_one_bucket(_bucket_label(bucket, lv, all_c1), g.label, lv, reqs, session_of))
        for lv in levels:
            if sum(1 for b, c in keys if c == lv) > 1:
                reqs = [r for r in mine if level_of(r) == lv]
                out.append(_one_bucket(_bucket_label("all", lv, all_c1), g.label, lv, reqs, session_of,
                                       weights=plan_weights(measured, lv)))
    return out


def plan_weights(measured: Sequence[RequestRecord], level: Level) -> dict[str, float]:
    """Each bucket's share of the measured requests of every arm at this level, failed ones
    included: what the plan asked for, the same for every arm, so a bucket that failed more in one
    arm does not shift that arm's pooled mean towards the other buckets."""
    counts: dict[str, int] = {}
    for r in measured:
        if level_of(r) == level:
            counts[r.bucket] = counts.get(r.bucket, 0) + 1
    total = sum(counts.values())
    return {b: n / total for b, n in counts.items()} if total else {}


def _one_bucket(label: str, group: str, level: Level, reqs: Sequence[RequestRecord], session_of: dict[int, int],
                weights: dict[str, float] | None = None) -> BucketStats:
    conc, rate = level
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
    prompts = np.array([r.prompt_id for r in ok])
    sessions = np.array([session_of.get(id(r), 0) for r in ok], dtype=int)
    if weights is None:
        summaries = {k: stats.summarize(v) for k, v in samples.items()}
        summaries["itl_ms"] = stats.summarize(itl_tokens)
        return BucketStats(label, group, conc, len(reqs), len(reqs) - len(ok), summaries, samples, itl_tokens, prompts,
                           sessions, rate_rps=rate)
    # the "all" row: only the stratified mean (a pooled σ, median or p95 would mix the buckets)
    strata = np.array([r.bucket for r in ok])
    nan = math.nan
    summaries = {k: stats.Summary(int(np.isfinite(v).sum()), stratified.stratified_mean(v, strata, weights),
                                  nan, nan, nan, nan, nan) for k, v in samples.items()}
    return BucketStats(label, group, conc, len(reqs), len(reqs) - len(ok), summaries, samples, itl_tokens, prompts,
                       sessions, pooled=True, strata=strata, weights=weights, rate_rps=rate)


def compare_groups(g: ArmGroup, b: ArmGroup, buckets: Sequence[BucketStats]) -> list[Comparison]:
    """Every metric of every bucket both groups hold, compared over server sessions."""
    mine = {s.bucket: s for s in buckets if s.group == g.label}
    base = {s.bucket: s for s in buckets if s.group == b.label}
    out = []
    for label, s in mine.items():
        bs = base.get(label)
        if bs is None:
            continue
        for m in METRICS:
            x, y = bs.samples[m.key], s.samples[m.key]
            pooled = s.strata is not None and bs.strata is not None and s.weights is not None
            # buckets pooled: compare within buckets, then combine (stratified), sessions the unit
            inf = stratified.session_ratio(x, bs.sessions, y, s.sessions,
                                           bs.strata if pooled else None, s.strata if pooled else None,
                                           s.weights if pooled else None)
            lo, hi = inf.interval(0.95)
            base_mean, other_mean = inf.base_mean, inf.other_mean
            if inf.reason == stratified.NO_DATA and not pooled:  # no values on a side: each side's own mean
                fx, fy = x[np.isfinite(x)], y[np.isfinite(y)]
                base_mean = float(fx.mean()) if fx.size else math.nan
                other_mean = float(fy.mean()) if fy.size else math.nan
            if math.isfinite(inf.delta):
                delta = inf.delta
            else:
                delta = other_mean / base_mean - 1 if base_mean > 0 else math.nan
            method = f"session-t ({inf.df:.0f} df)" if not inf.reason else f"none ({inf.reason})"
            ci = stats.RatioCI(float(delta), lo, hi, 0.95, method, 0, None)
            out.append(Comparison(
                group=g.label, baseline=b.label, bucket=label, metric=m.key,
                n_base=int(np.isfinite(x).sum()), n_other=int(np.isfinite(y).sum()),
                base_mean=base_mean, other_mean=other_mean, ci=ci, p_value=inf.p_value,
                test="session-t", inference=inf,
            ))
    return out


def session_means(s: BucketStats, metric: str, n_sessions: int) -> list[float]:
    """Each session's mean of one row (index = the session's place in the group's `runs`): the
    weighted bucket means of its own requests for the "all" row, the plain mean for a bucket."""
    values = s.samples[metric]
    out = []
    for j in range(n_sessions):
        mine = s.sessions == j
        v = values[mine]
        if s.pooled and s.strata is not None and s.weights is not None:
            out.append(stratified.stratified_mean(v, s.strata[mine], s.weights))
        else:
            fv = v[np.isfinite(v)]
            out.append(float(fv.mean()) if fv.size else math.nan)
    return out


def headline(c: Comparison, comps: Sequence[Comparison], buckets: Sequence[BucketStats]) -> bool:
    """Whether the verdict quotes this comparison: the pooled "all" row, or the only bucket."""
    pooled = {s.bucket for s in buckets if s.pooled}
    if pooled:
        return c.bucket == next((s.bucket for s in buckets if s.pooled and s.group == c.group), None)
    return len({x.bucket for x in comps if x.group == c.group}) == 1
