"""Per-bucket statistics of each arm group and their comparisons with the baseline."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..records import RequestRecord
from . import stats, stratified
from .arms import ArmGroup
from .metrics import METRIC_BY_KEY, METRICS

ALPHA = 0.05  # a delta is "significant" when p < ALPHA and its 95 % CI excludes 0


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
    pooled: bool = False  # the "all" row: every bucket of this concurrency together
    strata: np.ndarray | None = None  # pooled rows: each sample's bucket (compared within buckets)
    # pooled rows: each bucket's share of the plan (requests of every arm, failed included); the
    # row's means are Σ share·bucket mean, the same weights its stratified Δ uses
    weights: dict[str, float] | None = None


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


def _bucket_label(bucket: str, concurrency: int, all_c1: bool) -> str:
    return bucket if all_c1 else f"{bucket} c={concurrency}"


def bucket_stats(groups: Sequence[ArmGroup]) -> list[BucketStats]:
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
                out.append(_one_bucket(_bucket_label("all", conc, all_c1), g.label, conc, reqs,
                                       weights=plan_weights(measured, conc)))
    return out


def plan_weights(measured: Sequence[RequestRecord], concurrency: int) -> dict[str, float]:
    """Each bucket's share of the measured requests of every arm at this concurrency, failed ones
    included: what the plan asked for, the same for every arm, so a bucket that failed more in one
    arm does not shift that arm's pooled mean towards the other buckets."""
    counts: dict[str, int] = {}
    for r in measured:
        if r.concurrency == concurrency:
            counts[r.bucket] = counts.get(r.bucket, 0) + 1
    total = sum(counts.values())
    return {b: n / total for b, n in counts.items()} if total else {}


def _one_bucket(label: str, group: str, conc: int, reqs: Sequence[RequestRecord],
                weights: dict[str, float] | None = None) -> BucketStats:
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
    if weights is None:
        summaries = {k: stats.summarize(v) for k, v in samples.items()}
        summaries["itl_ms"] = stats.summarize(itl_tokens)
        return BucketStats(label, group, conc, len(reqs), len(reqs) - len(ok), summaries, samples, itl_tokens, prompts)
    # the "all" row: only the stratified mean (a pooled σ, median or p95 would mix the buckets)
    strata = np.array([r.bucket for r in ok])
    nan = math.nan
    summaries = {k: stats.Summary(int(np.isfinite(v).sum()), stratified.stratified_mean(v, strata, weights),
                                  nan, nan, nan, nan, nan) for k, v in samples.items()}
    return BucketStats(label, group, conc, len(reqs), len(reqs) - len(ok), summaries, samples, itl_tokens, prompts,
                       pooled=True, strata=strata, weights=weights)


def compare_groups(g: ArmGroup, b: ArmGroup, buckets: Sequence[BucketStats], *, seed: int, resamples: int) -> list[Comparison]:
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
            if s.strata is not None and bs.strata is not None and s.weights is not None:
                # buckets pooled: compare within buckets, then combine (see stats, "Stratified")
                xs, ys, w = bs.strata[fx], s.strata[fy], s.weights
                ci = stratified.ratio_ci_stratified(x, xs, y, ys, seed=seed, resamples=resamples, weights=w)
                test = (stratified.stratified_welch(x, xs, y, ys, weights=w) if m.test == "welch"
                        else stratified.van_elteren(x, xs, y, ys))
                base_mean, other_mean = stratified.common_means(x, xs, y, ys, w)
            else:
                ci = stats.ratio_ci(x, y, seed=seed, resamples=resamples)
                test = stats.welch_t(x, y) if m.test == "welch" else stats.mann_whitney(x, y)
                base_mean = float(np.mean(x)) if x.size else math.nan
                other_mean = float(np.mean(y)) if y.size else math.nan
            out.append(Comparison(
                group=g.label, baseline=b.label, bucket=label, metric=m.key, n_base=int(x.size), n_other=int(y.size),
                base_mean=base_mean, other_mean=other_mean, ci=ci, p_value=test.p_value, test=test.test,
            ))
    return out


def headline(c: Comparison, comps: Sequence[Comparison], buckets: Sequence[BucketStats]) -> bool:
    """Whether the verdict quotes this comparison: the pooled "all" row, or the only bucket."""
    pooled = {s.bucket for s in buckets if s.pooled}
    if pooled:
        return c.bucket == next((s.bucket for s in buckets if s.pooled and s.group == c.group), None)
    return len({x.bucket for x in comps if x.group == c.group}) == 1
