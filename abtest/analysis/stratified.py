"""Comparisons within buckets, then combined; and over server sessions (`session_ratio`).

Buckets differ by design (a 32-token prompt's TTFT is not a 3k-token prompt's), and both arms run
the same bucket mix. Treating the pooled requests as one sample would count the spread between
buckets as noise and make every interval and p-value far too wide; these compare within buckets
and combine (weights: each bucket's share of the plan, or of both arms' requests by default).

Requests of one server session share that session's drift, so the report's comparisons count
sessions, not requests: `session_ratio` (docs/report.md, "Inference"). The request-level functions
above remain for what compares requests of one arm (the drift between its first and last session)
and for the nightly gate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .stats import (
    DEFAULT_RESAMPLES,
    DEFAULT_SEED,
    RatioCI,
    TestResult,
    bootstrap_t_bounds,
    log_ratio_and_se,
    scipy_stats,
)


def _common_strata(
    a: Sequence[float] | np.ndarray, a_strata: Sequence[str] | np.ndarray,
    b: Sequence[float] | np.ndarray, b_strata: Sequence[str] | np.ndarray, min_n: int,
    weights: Mapping[str, float] | None = None,
) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """(a values, b values, weight) of every stratum present in both with at least min_n finite
    values each. Weights: `weights[stratum]` renormalised over these strata, or (without
    `weights`) each stratum's share of the finite values of both arms."""
    x, xs = np.asarray(a, dtype=float).ravel(), np.asarray(a_strata).ravel()
    y, ys = np.asarray(b, dtype=float).ravel(), np.asarray(b_strata).ravel()
    found = []
    for label in dict.fromkeys(xs.tolist()):
        xa = x[(xs == label) & np.isfinite(x)]
        yb = y[(ys == label) & np.isfinite(y)]
        if xa.size >= min_n and yb.size >= min_n:
            found.append((label, xa, yb))
    raw = [float(weights.get(label, 0.0)) if weights is not None else float(xa.size + yb.size)
           for label, xa, yb in found]
    total = sum(raw)
    if total <= 0:
        return []
    return [(xa, yb, w / total) for (_, xa, yb), w in zip(found, raw, strict=True) if w > 0]


def stratified_mean(
    values: Sequence[float] | np.ndarray, strata: Sequence[str] | np.ndarray, weights: Mapping[str, float],
) -> float:
    """Σ w_h·mean_h over the strata that hold finite values, weights renormalised over those: the
    pooled ("all") row's mean, on the same footing as the stratified Δ beside it."""
    x, xs = np.asarray(values, dtype=float).ravel(), np.asarray(strata).ravel()
    num = den = 0.0
    for label, w in weights.items():
        v = x[(xs == label) & np.isfinite(x)]
        if v.size and w > 0:
            num += w * float(v.mean())
            den += w
    return num / den if den > 0 else math.nan


def stratified_welch(
    a: Sequence[float] | np.ndarray, a_strata: Sequence[str] | np.ndarray,
    b: Sequence[float] | np.ndarray, b_strata: Sequence[str] | np.ndarray, alternative: str = "two-sided",
    weights: Mapping[str, float] | None = None,
) -> TestResult:
    """Welch's t on stratified means M = Σ w_h·mean_h, Var(M) = Σ w_h²·s_h²/n_h, with
    Welch-Satterthwaite degrees of freedom; equals `welch_t` when there is one stratum."""
    strata = _common_strata(a, a_strata, b, b_strata, min_n=2, weights=weights)
    if not strata:
        return TestResult(math.nan, math.nan, "welch-stratified")
    ma = mb = va = vb = dof_den = 0.0
    for xa, yb, w in strata:
        ua, ub = w**2 * xa.var(ddof=1) / xa.size, w**2 * yb.var(ddof=1) / yb.size
        ma, mb, va, vb = ma + w * xa.mean(), mb + w * yb.mean(), va + ua, vb + ub
        dof_den += ua**2 / (xa.size - 1) + ub**2 / (yb.size - 1)
    if va + vb == 0:
        return TestResult(math.nan, 1.0 if ma == mb else 0.0, "welch-stratified")
    t = (ma - mb) / math.sqrt(va + vb)
    dof = (va + vb) ** 2 / dof_den
    if alternative == "less":
        p = scipy_stats().t.cdf(t, dof)
    elif alternative == "greater":
        p = scipy_stats().t.sf(t, dof)
    else:
        p = 2 * scipy_stats().t.sf(abs(t), dof)
    return TestResult(float(t), float(p), "welch-stratified")


def van_elteren(
    a: Sequence[float] | np.ndarray, a_strata: Sequence[str] | np.ndarray,
    b: Sequence[float] | np.ndarray, b_strata: Sequence[str] | np.ndarray, alternative: str = "two-sided",
) -> TestResult:
    """Van Elteren's stratified Wilcoxon rank-sum test (normal approximation, tie-corrected):
    per stratum the rank sum of `a`, weighted by 1/(N_h + 1). With one stratum it is the
    Mann-Whitney test's normal approximation without continuity correction."""
    num = var = 0.0
    for xa, yb, _ in _common_strata(a, a_strata, b, b_strata, min_n=1):
        n1, n2 = xa.size, yb.size
        n = n1 + n2
        ranks = scipy_stats().rankdata(np.concatenate([xa, yb]))
        _, ties = np.unique(ranks, return_counts=True)
        tie = float(np.sum(ties**3 - ties)) / (n * (n - 1)) if n > 1 else 0.0
        w = 1.0 / (n + 1)
        num += w * (ranks[:n1].sum() - n1 * (n + 1) / 2)
        var += w**2 * n1 * n2 / 12.0 * ((n + 1) - tie)
    if var <= 0:
        return TestResult(math.nan, math.nan, "van-elteren")
    z = num / math.sqrt(var)
    if alternative == "less":
        p = scipy_stats().norm.cdf(z)
    elif alternative == "greater":
        p = scipy_stats().norm.sf(z)
    else:
        p = 2 * scipy_stats().norm.sf(abs(z))
    return TestResult(float(z), float(p), "van-elteren")


def common_means(
    base: Sequence[float] | np.ndarray, base_strata: Sequence[str] | np.ndarray,
    other: Sequence[float] | np.ndarray, other_strata: Sequence[str] | np.ndarray,
    weights: Mapping[str, float] | None = None,
) -> tuple[float, float]:
    """Both arms' M = Σ w_h·mean_h over exactly the strata `ratio_ci_stratified` uses (≥ 2 finite
    values in each arm), so that M_other / M_base − 1 is its Δ."""
    strata = _common_strata(base, base_strata, other, other_strata, min_n=2, weights=weights)
    if not strata:
        return math.nan, math.nan
    return (float(sum(w * xa.mean() for xa, _, w in strata)), float(sum(w * yb.mean() for _, yb, w in strata)))


def ratio_ci_stratified(
    base: Sequence[float] | np.ndarray, base_strata: Sequence[str] | np.ndarray,
    other: Sequence[float] | np.ndarray, other_strata: Sequence[str] | np.ndarray,
    *, confidence: float = 0.95, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
    weights: Mapping[str, float] | None = None,
) -> RatioCI:
    """`ratio_ci`'s studentized interval for stratified means: θ = log(M_other / M_base) with
    M = Σ w_h·mean_h, each stratum of each arm resampled on its own, se² = Var(M_b)/M_b² +
    Var(M_o)/M_o². Strata missing from an arm, or with fewer than 2 values, are left out."""
    nan = math.nan
    strata = _common_strata(base, base_strata, other, other_strata, min_n=2, weights=weights)
    if not strata:
        return RatioCI(nan, nan, nan, confidence, "studentized-stratified", resamples, seed)
    rng = np.random.default_rng(seed)
    m = np.zeros(2)
    v = np.zeros(2)
    m_star = np.zeros((2, resamples))
    v_star = np.zeros((2, resamples))
    for xa, yb, w in strata:
        for k, x in enumerate((xa, yb)):
            m[k] += w * x.mean()
            v[k] += w**2 * x.var(ddof=1) / x.size
            r = x[rng.integers(0, x.size, size=(resamples, x.size))]
            m_star[k] += w * r.mean(axis=1)
            v_star[k] += w**2 * r.var(axis=1, ddof=1) / x.size
    if m[0] <= 0 or m[1] <= 0:
        return RatioCI(float(m[1] / m[0] - 1) if m[0] else nan, nan, nan, confidence, "studentized-stratified",
                       resamples, seed)
    theta, se = log_ratio_and_se(m[0], v[0], m[1], v[1])
    th_star, se_star = log_ratio_and_se(m_star[0], v_star[0], m_star[1], v_star[1])
    lo, hi = bootstrap_t_bounds(theta, se, th_star, se_star, 1 - confidence)
    return RatioCI(math.expm1(theta), float(lo), float(hi), confidence, "studentized-stratified", resamples, seed)


@dataclass(frozen=True)
class MeanCI:
    """A stratified mean with the within-bucket spread σ and the t-interval of the mean."""

    n: int
    mean: float
    std: float  # sqrt(Σ w_h·s_h²): requests' spread around their own bucket's mean
    low: float
    high: float


def mean_ci_stratified(
    values: Sequence[float] | np.ndarray, strata: Sequence[str] | np.ndarray, weights: Mapping[str, float],
    confidence: float = 0.95,
) -> MeanCI:
    """M = Σ w_h·mean_h over the buckets with finite values (weights renormalised), Var(M) =
    Σ w_h²·s_h²/n_h, and M ± t(ν)·sqrt(Var(M)) with Welch–Satterthwaite ν; a bucket of one value
    adds its mean and no variance. With one bucket: the plain one-sample t-interval."""
    x, xs = np.asarray(values, dtype=float).ravel(), np.asarray(strata).ravel()
    parts = [(w, v) for label, w in weights.items() if w > 0
             for v in [x[(xs == label) & np.isfinite(x)]] if v.size]
    nan = math.nan
    n = sum(v.size for _, v in parts)
    if not parts:
        return MeanCI(0, nan, nan, nan, nan)
    total = sum(w for w, _ in parts)
    mean = sum(w / total * float(v.mean()) for w, v in parts)
    spread = [(w / total, v) for w, v in parts if v.size > 1]
    if not spread:
        return MeanCI(n, mean, nan, nan, nan)
    sd = math.sqrt(sum(w * float(v.var(ddof=1)) for w, v in spread) / sum(w for w, _ in spread))
    u = [(w**2 * float(v.var(ddof=1)) / v.size, v.size) for w, v in spread]
    var_m = sum(a for a, _ in u)
    if var_m <= 0:
        return MeanCI(n, mean, sd, mean, mean)
    dof = var_m**2 / sum(a**2 / (k - 1) for a, k in u)
    half = float(scipy_stats().t.ppf(0.5 + confidence / 2, dof)) * math.sqrt(var_m)
    return MeanCI(n, mean, sd, mean - half, mean + half)


def mean_ci(values: Sequence[float] | np.ndarray, confidence: float = 0.95) -> MeanCI:
    """The plain one-sample t-interval of the mean (the one-bucket case)."""
    x = np.asarray(values, dtype=float).ravel()
    return mean_ci_stratified(x, np.zeros(x.size, dtype=int), {0: 1.0}, confidence)  # type: ignore[dict-item]


# --------------------------------------------------------------------------------------------------
# Comparisons over server sessions: the report's inference

# Why a comparison has no interval or p-value (SessionRatio.reason); "" when it has both.
NO_DATA = "no-data"  # no bucket with a finite value in both arms
ONE_SESSION = "one-session"  # fewer than 2 server sessions on a side
NO_VARIANCE = "no-variance"  # nothing varies, between sessions or within them: not testable
NOT_POSITIVE = "not-positive"  # a mean ≤ 0 has no log ratio
# a standard error of the log ratio below this is "no variance": identical values, up to rounding
NO_VARIANCE_SE = 1e-9


@dataclass(frozen=True)
class SessionRatio:
    """Δ = M_other / M_base − 1 with its inference over server sessions.

    θ = log(M_other / M_base); `se` its standard error and `df` its degrees of freedom, from the
    spread between sessions (never below the spread within them); the interval θ ± t(df)·se and
    the p-value of t = θ/se are one statistic, so the (1 − α) interval excludes 0 exactly when
    p < α. No interval and no p-value when `reason` says why (fewer than 2 sessions a side, ...).
    """

    base_mean: float
    other_mean: float
    theta: float
    se: float
    df: float
    k_base: int  # server sessions per arm: the fewest that any compared bucket has values from
    k_other: int
    reason: str = ""
    within_floor: bool = False  # an arm's between-session spread was below its within-session one
    k_base_any: int = 0  # sessions with values in any compared bucket (more than k_base when
    k_other_any: int = 0  # sessions ran different buckets, as files of different plans pooled do)

    @property
    def delta(self) -> float:
        return math.expm1(self.theta) if math.isfinite(self.theta) else math.nan

    def interval(self, confidence: float = 0.95) -> tuple[float, float]:
        """The two-sided `confidence` interval of Δ (nan, nan without an inference)."""
        if self.reason:
            return math.nan, math.nan
        half = float(scipy_stats().t.ppf(0.5 + confidence / 2, self.df)) * self.se
        return math.expm1(self.theta - half), math.expm1(self.theta + half)

    @property
    def p_value(self) -> float:
        """Two-sided p of t = θ/se on `df` degrees of freedom (nan without an inference)."""
        if self.reason:
            return math.nan
        return float(2 * scipy_stats().t.sf(abs(self.theta / self.se), self.df))


def _session_parts(
    x: np.ndarray, sess: np.ndarray, strata: np.ndarray, used: Sequence[tuple[str, float]],
) -> tuple[float, float, float, int, int]:
    """One arm: M = Σ w_h·mean_h over the used strata (the request means), the cluster-robust
    variance of M over its sessions, k/(k−1)·Σ_s e_s² with e_s = Σ_h w_h·(n_sh/N_h)·(m_sh − mean_h)
    (s²_sessions/k when sessions are of equal size), the within-session variance Σ_h w_h²·s²_w,h/N_h
    (s²_w,h pooled around each session's own mean), the fewest sessions any stratum has values
    from (a stratum seen by one session says nothing about the spread between sessions) and the
    sessions with values at all."""
    keep = np.isfinite(x)
    labels = list(dict.fromkeys(sess[keep & np.isin(strata, [h for h, _ in used])].tolist()))
    k_any = len(labels)
    k = k_any
    e = np.zeros(k_any)
    mean = within = 0.0
    for h, w in used:
        in_h = keep & (strata == h)
        xs, ss = x[in_h], sess[in_h]
        n_h = xs.size
        m_h = float(xs.mean())
        mean += w * m_h
        sq, k_h = 0.0, 0
        for j, lab in enumerate(labels):
            v = xs[ss == lab]
            if v.size:
                e[j] += w * v.size / n_h * (float(v.mean()) - m_h)
                sq += float(np.sum((v - v.mean()) ** 2))
                k_h += 1
        if n_h > k_h:
            within += w**2 * (sq / (n_h - k_h)) / n_h
        k = min(k, k_h)
    between = k_any / (k_any - 1) * float(np.sum(e**2)) if k_any >= 2 else math.nan
    return mean, between, within, k, k_any


def session_ratio(
    base: Sequence[float] | np.ndarray, base_sessions: Sequence[Any] | np.ndarray,
    other: Sequence[float] | np.ndarray, other_sessions: Sequence[Any] | np.ndarray,
    base_strata: Sequence[str] | np.ndarray | None = None, other_strata: Sequence[str] | np.ndarray | None = None,
    weights: Mapping[str, float] | None = None,
) -> SessionRatio:
    """Compare two arms with the server session as the unit of analysis.

    M = Σ w_h·mean_h per arm over the strata both arms hold (≥ 2 finite values each; one stratum
    without `*_strata`), the same means the tables show. Each arm's Var(M) is the cluster-robust
    variance over its sessions, floored at the within-session variance (a session's mean cannot vary
    less than its own requests say; a chance agreement of 2 sessions is not read as no noise). On
    the log scale, U = Var(M)/M², pooled over both arms as the per-session variance
    s²_p = ((k_b−1)·k_b·U_b + (k_o−1)·k_o·U_o)/(k_b + k_o − 2), se² = s²_p·(1/k_b + 1/k_o),
    df = k_b + k_o − 2: the t-test of a nested (sessions within arms) random-effects model, which
    in a balanced design is the F-test of the arms against the between-session mean square.
    Where no stratum has 2 values on both sides but some have one (one value per session and one
    session on a side, as a capacity is), M over those is an estimate with reason ONE_SESSION: no
    interval, no p-value. NO_DATA only when no stratum has a value on both sides.
    """
    x, y = np.asarray(base, dtype=float).ravel(), np.asarray(other, dtype=float).ravel()
    xs = np.asarray(base_sessions).ravel()
    ys = np.asarray(other_sessions).ravel()
    xh = np.zeros(x.size, dtype=int).astype(str) if base_strata is None else np.asarray(base_strata).ravel().astype(str)
    yh = np.zeros(y.size, dtype=int).astype(str) if other_strata is None else np.asarray(other_strata).ravel().astype(str)
    w = None if weights is None else {str(k): v for k, v in weights.items()}
    nan = math.nan
    found = _common_strata_labels(x, xh, y, yh, min_n=2, weights=w)
    if not found:
        # a single value on a side (one value per session, one session: a capacity): the means'
        # ratio is an estimate, with no interval (ONE_SESSION: one session cannot show a spread)
        single = _common_strata_labels(x, xh, y, yh, min_n=1, weights=w)
        if not single:
            return SessionRatio(nan, nan, nan, nan, nan, 0, 0, NO_DATA)
        ma, _, _, ka, ka_any = _session_parts(x, xs, xh, single)
        mb, _, _, kb, kb_any = _session_parts(y, ys, yh, single)
        # every stratum has one value on some side, so that side has one session there: k < 2
        if ma <= 0 or mb <= 0:
            return SessionRatio(ma, mb, nan, nan, nan, ka, kb, NOT_POSITIVE, k_base_any=ka_any, k_other_any=kb_any)
        return SessionRatio(ma, mb, float(np.log(mb / ma)), nan, nan, ka, kb, ONE_SESSION,
                            k_base_any=ka_any, k_other_any=kb_any)
    ma, va, wa, ka, ka_any = _session_parts(x, xs, xh, found)
    mb, vb, wb, kb, kb_any = _session_parts(y, ys, yh, found)
    if ma <= 0 or mb <= 0:
        return SessionRatio(ma, mb, nan, nan, nan, ka, kb, NOT_POSITIVE, k_base_any=ka_any, k_other_any=kb_any)
    theta = float(np.log(mb / ma))
    if ka < 2 or kb < 2:
        return SessionRatio(ma, mb, theta, nan, nan, ka, kb, ONE_SESSION, k_base_any=ka_any, k_other_any=kb_any)
    # each mean's cluster-robust variance is over every session that holds values; pooled with the
    # count, and on the df, of the fewest sessions a stratum has (what the spread was measured on)
    ua, ub = max(va, wa) / ma**2, max(vb, wb) / mb**2
    df = ka + kb - 2
    s2 = ((ka - 1) * ka * ua + (kb - 1) * kb * ub) / df
    se = math.sqrt(s2 * (1 / ka + 1 / kb))
    floor = wa > va or wb > vb
    reason = "" if se > NO_VARIANCE_SE else NO_VARIANCE
    return SessionRatio(ma, mb, theta, se, float(df), ka, kb, reason, floor, k_base_any=ka_any, k_other_any=kb_any)


def _common_strata_labels(
    x: np.ndarray, xh: np.ndarray, y: np.ndarray, yh: np.ndarray, min_n: int,
    weights: Mapping[str, float] | None,
) -> list[tuple[str, float]]:
    """(stratum, weight) of `_common_strata`'s selection, weights renormalised over it."""
    found = []
    for label in dict.fromkeys(xh.tolist()):
        na = int(np.sum((xh == label) & np.isfinite(x)))
        nb = int(np.sum((yh == label) & np.isfinite(y)))
        if na >= min_n and nb >= min_n:
            found.append((label, float(weights.get(label, 0.0)) if weights is not None else float(na + nb)))
    total = sum(w for _, w in found)
    if total <= 0:
        return []
    return [(label, w / total) for label, w in found if w > 0]
