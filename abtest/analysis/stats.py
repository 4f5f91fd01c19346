"""Statistics for the report: summaries, tests, intervals, outliers, and the per-request metrics.

Pure functions over numbers (and, for the metrics, over `RequestRecord`s): nothing here reads files,
prints or keeps state. Every random draw takes an explicit seed so a report is reproducible.

Per-request metrics: `abtest.analysis.metrics` defines them (docs/metrics.md); the wrappers at
the end of this module only turn "not measurable" (None) into nan for the arrays.

Intervals: the delta between two arms is a ratio of means, ``mean(other) / mean(base) - 1``. Its 95 %
interval is a studentized (bootstrap-t) interval on the log ratio, chosen over the plain percentile
bootstrap and BCa because it had the coverage closest to 95 % at the small N a benchmark has
(docs/report.md has the numbers; tests/unit/test_stats.py re-measures them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ..records import RequestRecord
from . import metrics

# One seed for every bootstrap in a report: the same evidence gives the same intervals.
DEFAULT_SEED = 20240917
DEFAULT_RESAMPLES = 2000

# Iglewicz & Hoaglin (1993), "How to Detect and Handle Outliers": a modified Z-score above 3.5 in
# absolute value marks a potential outlier. 0.6745 is the 0.75 quantile of the standard normal,
# which makes MAD/0.6745 a consistent estimator of sigma.
MODIFIED_Z_THRESHOLD = 3.5
STUDENTIZED_MIN_N = 5  # the smallest n per arm whose coverage docs/report.md measured
_MAD_SCALE = 0.6745

Method = Literal["studentized", "percentile", "bca", "welch-log"]


def scipy_stats() -> Any:
    """scipy.stats, imported on first use: it costs ~0.8 s of CPU, which `abtest run` (and every
    command but report) never needs (the CLI imports the report command's modules to build --help)."""
    from scipy import stats

    return stats


def _clean(values: Sequence[float] | np.ndarray) -> np.ndarray:
    a = np.asarray(values, dtype=float).ravel()
    return a[np.isfinite(a)]


# --------------------------------------------------------------------------------------------------
# Summaries


@dataclass(frozen=True)
class Summary:
    """mean ± σ (sample standard deviation, ddof=1), median, p95 and range of one sample."""

    n: int
    mean: float
    std: float
    median: float
    p95: float
    min: float
    max: float

    @property
    def cv(self) -> float:
        """Coefficient of variation σ/mean (nan when undefined)."""
        if self.n < 2 or not self.mean:
            return math.nan
        return abs(self.std / self.mean)


def summarize(values: Sequence[float] | np.ndarray) -> Summary:
    """Summary of the finite values (NaN and inf dropped); nan fields for an empty sample."""
    a = _clean(values)
    if a.size == 0:
        nan = math.nan
        return Summary(0, nan, nan, nan, nan, nan, nan)
    std = float(np.std(a, ddof=1)) if a.size > 1 else math.nan
    return Summary(
        n=int(a.size),
        mean=float(np.mean(a)),
        std=std,
        median=float(np.median(a)),
        p95=percentile(a, 95),
        min=float(np.min(a)),
        max=float(np.max(a)),
    )


def percentile(values: Sequence[float] | np.ndarray, q: float) -> float:
    """The q-th percentile with linear interpolation between order statistics (numpy's default)."""
    a = _clean(values)
    return float(np.percentile(a, q)) if a.size else math.nan


def percentile_or_none(values: Sequence[float] | np.ndarray, q: float) -> float | None:
    """`percentile`, None where there is nothing to take it of (the report shows "—")."""
    v = percentile(values, q)
    return None if math.isnan(v) else v


# --------------------------------------------------------------------------------------------------
# Tests


@dataclass(frozen=True)
class TestResult:
    statistic: float
    p_value: float
    test: str

    __test__ = False  # not a pytest class


def welch_t(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, alternative: str = "two-sided") -> TestResult:
    """Welch's unequal-variance t-test of mean(a) vs mean(b); p is nan with fewer than 2 values a side."""
    x, y = _clean(a), _clean(b)
    if x.size < 2 or y.size < 2:
        return TestResult(math.nan, math.nan, "welch")
    if np.ptp(x) == 0 and np.ptp(y) == 0:
        # Two constant samples: equal means are no evidence of a difference, unequal ones are total.
        return TestResult(math.nan, 1.0 if x[0] == y[0] else 0.0, "welch")
    res = scipy_stats().ttest_ind(x, y, equal_var=False, alternative=alternative)
    return TestResult(float(res.statistic), float(res.pvalue), "welch")


def mann_whitney(
    a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, alternative: str = "two-sided"
) -> TestResult:
    """Mann-Whitney U test (scipy's automatic exact/asymptotic choice); for latency distributions."""
    x, y = _clean(a), _clean(b)
    if x.size < 1 or y.size < 1:
        return TestResult(math.nan, math.nan, "mann-whitney")
    res = scipy_stats().mannwhitneyu(x, y, alternative=alternative)
    return TestResult(float(res.statistic), float(res.pvalue), "mann-whitney")


def holm(p_values: Sequence[float], alpha: float = 0.05) -> list[tuple[float, float]]:
    """Holm's step-down procedure over one family of tests (Holm 1979), in the given order: each
    p-value's adjusted p, max over i ≤ j of min(1, (m − i + 1)·p_(i)) for the j-th smallest, and
    the level α_j it was tested at: α/(m − j + 1) up to the first p-value that is not rejected,
    whose level the rest keep. A (1 − α_j) interval from the same statistic as its p-value therefore
    excludes 0 exactly when the adjusted p < α. A nan p-value is not in the family (nan, nan)."""
    order = sorted((i for i, p in enumerate(p_values) if math.isfinite(p)), key=lambda i: p_values[i])
    m = len(order)
    out = [(math.nan, math.nan)] * len(p_values)
    running = 0.0
    stopped: float | None = None
    for j, i in enumerate(order):
        p = float(p_values[i])
        running = max(running, min(1.0, (m - j) * p))
        level = alpha / (m - j)
        if stopped is None and not p < level:
            stopped = level
        out[i] = (running, level if stopped is None else stopped)
    return out


# --------------------------------------------------------------------------------------------------
# Outliers


def modified_z_scores(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Iglewicz & Hoaglin's modified Z-score, 0.6745 (x - median) / MAD, for every value.

    When the MAD is 0 (over half the values equal) the mean absolute deviation scaled by 1.253314
    stands in, as IBM's SPSS and the original text suggest; all zeros if that is 0 too.
    """
    a = np.asarray(values, dtype=float).ravel()
    if a.size == 0:
        return a
    med = np.median(a)
    mad = np.median(np.abs(a - med))
    if mad > 0:
        return _MAD_SCALE * (a - med) / mad
    meanad = np.mean(np.abs(a - med))
    if meanad > 0:
        return (a - med) / (1.253314 * meanad)
    return np.zeros_like(a)


def is_outlier(values: Sequence[float] | np.ndarray, index: int, threshold: float = MODIFIED_Z_THRESHOLD) -> bool:
    """Whether values[index] has |modified Z| above `threshold` (needs at least 5 values to say yes)."""
    a = np.asarray(values, dtype=float).ravel()
    if a.size < 5:
        return False
    return bool(abs(modified_z_scores(a)[index]) > threshold)


def repeat_cv(values: Sequence[float] | np.ndarray, groups: Sequence[str] | np.ndarray) -> float:
    """Coefficient of variation between repeats of the same prompt, pooled over prompts:
    sqrt(Σ (x_i / mean_p − 1)² / (N − P)) over the prompts with at least 2 finite values (nan when
    none has). Unlike the bucket's CV it does not count the spread between different prompts."""
    x, g = np.asarray(values, dtype=float).ravel(), np.asarray(groups).ravel()
    ss, dof = 0.0, 0
    for label in dict.fromkeys(g.tolist()):
        v = x[(g == label) & np.isfinite(x)]
        m = v.mean() if v.size else 0.0
        if v.size >= 2 and m:
            ss += float(np.sum((v / m - 1.0) ** 2))
            dof += v.size - 1
    return math.sqrt(ss / dof) if dof else math.nan


def log_residuals_vs_repeats(values: Sequence[float] | np.ndarray, groups: Sequence[str] | np.ndarray) -> np.ndarray:
    """log(x_i / median of the other repeats of x_i's prompt), for every value whose prompt has at
    least 2 other finite, positive repeats; nan for the rest."""
    x, g = np.asarray(values, dtype=float).ravel(), np.asarray(groups).ravel()
    out = np.full(x.size, math.nan)
    ok = np.isfinite(x) & (x > 0)
    for i in range(x.size):
        others = x[(g == g[i]) & ok]
        if ok[i] and others.size >= 3:  # itself and two others
            rest = np.delete(others, int(np.flatnonzero(others == x[i])[0]))
            out[i] = math.log(x[i] / float(np.median(rest)))
    return out


# --------------------------------------------------------------------------------------------------
# Intervals for a relative difference of means


@dataclass(frozen=True)
class RatioCI:
    """The relative difference mean(other)/mean(base) - 1 with its interval (all as fractions)."""

    delta: float
    low: float
    high: float
    confidence: float
    method: str
    resamples: int
    seed: int | None

    def covers(self, value: float) -> bool:
        return self.low <= value <= self.high


def ratio_ci(
    base: Sequence[float] | np.ndarray,
    other: Sequence[float] | np.ndarray,
    *,
    confidence: float = 0.95,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    method: Method = "studentized",
) -> RatioCI:
    """Interval for mean(other)/mean(base) - 1, e.g. -0.89 for "89 % fewer tokens/s".

    Each arm is resampled on its own (the arms are independent samples). nan when either side has
    fewer than 2 finite values or a mean that is not positive (a log ratio needs positive means).
    The studentized interval falls back to the Welch-log one when an arm has fewer than
    `STUDENTIZED_MIN_N` values (below the coverage docs/report.md measured; the method says so).
    """
    x, y = _clean(base), _clean(other)
    nan = math.nan
    label: str = method
    if method == "studentized" and min(x.size, y.size) < STUDENTIZED_MIN_N:
        method, label = "welch-log", f"welch-log (n < {STUDENTIZED_MIN_N})"
    if x.size < 2 or y.size < 2 or np.mean(x) <= 0 or np.mean(y) <= 0:
        delta = float(np.mean(y) / np.mean(x) - 1) if x.size and y.size and np.mean(x) > 0 else nan
        return RatioCI(delta, nan, nan, confidence, label, resamples, seed)
    d, lo, hi = ratio_ci_batch(
        x[None, :], y[None, :], confidence=confidence, resamples=resamples, rng=np.random.default_rng(seed), method=method
    )
    return RatioCI(float(d[0]), float(lo[0]), float(hi[0]), confidence, label, resamples, seed)


def log_ratio_and_se(m_a: Any, vm_a: Any, m_b: Any, vm_b: Any) -> tuple[Any, Any]:
    """θ = log(m_b / m_a) and its delta-method standard error from each mean's variance (vm =
    Var(mean)): se² = vm_a/m_a² + vm_b/m_b². Elementwise on arrays."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(m_b / m_a), np.sqrt(vm_a / m_a**2 + vm_b / m_b**2)


def bootstrap_t_bounds(theta: Any, se: Any, th_star: np.ndarray, se_star: np.ndarray, alpha: float,
                       axis: int = -1) -> tuple[Any, Any]:
    """The studentized (bootstrap-t) interval as fractions: t* = (θ* − θ̂)/se*, then
    θ̂ − t*(1−α/2)·se … θ̂ − t*(α/2)·se mapped back with exp(·) − 1. A resample of identical values
    has se* 0: its t is ±inf (ranks correctly) or nan (dropped by nanquantile)."""
    th = np.expand_dims(theta, axis) if np.ndim(theta) else theta
    with np.errstate(divide="ignore", invalid="ignore"):
        t_star = (th_star - th) / se_star
        # interpolating between two infinite t* gives nan (inf − inf): that bound is unbounded anyway
        q_lo, q_hi = np.nanquantile(t_star, [alpha / 2, 1 - alpha / 2], axis=axis)
    with np.errstate(over="ignore", invalid="ignore"):  # a degenerate sample: an unbounded interval
        return np.expm1(theta - q_hi * se), np.expm1(theta - q_lo * se)


def _log_ratio_and_se(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """log(mean b / mean a) and its delta-method standard error, along the last axis."""
    na, nb = a.shape[-1], b.shape[-1]
    return log_ratio_and_se(a.mean(axis=-1), a.var(axis=-1, ddof=1) / na, b.mean(axis=-1), b.var(axis=-1, ddof=1) / nb)


def ratio_ci_batch(
    base: np.ndarray,
    other: np.ndarray,
    *,
    confidence: float = 0.95,
    resamples: int = DEFAULT_RESAMPLES,
    rng: np.random.Generator,
    method: Method = "studentized",
    chunk: int = 64,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectorised intervals for many experiments at once: base (E, n), other (E, m) -> (delta, low, high).

    Methods:
      * "studentized": bootstrap-t on θ = log(mean other / mean base), each resample studentized by
        its own delta-method standard error; interval θ̂ - t*(1-α/2)·se, θ̂ - t*(α/2)·se.
      * "percentile": the α/2 and 1-α/2 quantiles of the resampled ratio.
      * "bca": bias-corrected and accelerated percentile interval (Efron 1987), acceleration from
        the jackknife over both samples.
      * "welch-log": no resampling; θ̂ ± t(ν)·se with Welch-Satterthwaite ν on the log scale.
    """
    base = np.asarray(base, dtype=float)
    other = np.asarray(other, dtype=float)
    alpha = 1.0 - confidence
    theta, se = _log_ratio_and_se(base, other)
    delta = np.expm1(theta)
    if method == "welch-log":
        na, nb = base.shape[-1], other.shape[-1]
        ma, mb = base.mean(axis=-1), other.mean(axis=-1)
        ua = base.var(axis=-1, ddof=1) / (na * ma**2)
        ub = other.var(axis=-1, ddof=1) / (nb * mb**2)
        with np.errstate(divide="ignore", invalid="ignore"):
            nu = (ua + ub) ** 2 / (ua**2 / (na - 1) + ub**2 / (nb - 1))
        tq = scipy_stats().t.ppf(1 - alpha / 2, np.where(np.isfinite(nu), nu, na + nb - 2))
        return delta, np.expm1(theta - tq * se), np.expm1(theta + tq * se)

    n_exp = base.shape[0]
    lo = np.empty(n_exp)
    hi = np.empty(n_exp)
    for start in range(0, n_exp, chunk):
        sl = slice(start, min(start + chunk, n_exp))
        a, b = base[sl], other[sl]
        e = a.shape[0]
        ia = rng.integers(0, a.shape[1], size=(e, resamples, a.shape[1]))
        ib = rng.integers(0, b.shape[1], size=(e, resamples, b.shape[1]))
        ra = np.take_along_axis(a[:, None, :], ia, axis=2)
        rb = np.take_along_axis(b[:, None, :], ib, axis=2)
        if method == "studentized":
            th_star, se_star = _log_ratio_and_se(ra, rb)
            lo[sl], hi[sl] = bootstrap_t_bounds(theta[sl], se[sl], th_star, se_star, alpha, axis=1)
        else:
            th_star = np.log(rb.mean(axis=2) / ra.mean(axis=2))
            if method == "percentile":
                q_lo, q_hi = np.quantile(th_star, [alpha / 2, 1 - alpha / 2], axis=1)
            elif method == "bca":
                q_lo, q_hi = _bca_bounds(a, b, theta[sl], th_star, alpha)
            else:
                raise ValueError(f"unknown interval method {method!r}")
            lo[sl] = np.expm1(q_lo)
            hi[sl] = np.expm1(q_hi)
    return delta, lo, hi


def _bca_bounds(
    a: np.ndarray, b: np.ndarray, theta: np.ndarray, th_star: np.ndarray, alpha: float
) -> tuple[np.ndarray, np.ndarray]:
    """BCa quantiles of th_star (E, B) for θ = log(mean b / mean a)."""
    e, n_b = th_star.shape
    prop = (th_star < theta[:, None]).mean(axis=1)
    prop = np.clip(prop, 1.0 / (n_b + 1), 1 - 1.0 / (n_b + 1))
    z0 = scipy_stats().norm.ppf(prop)
    # Jackknife: leave one out of a (b whole), then one out of b (a whole).
    na, nb = a.shape[1], b.shape[1]
    sa, sb = a.sum(axis=1), b.sum(axis=1)
    ma, mb = sa / na, sb / nb
    jack_a = np.log(mb[:, None] / ((sa[:, None] - a) / (na - 1)))
    jack_b = np.log(((sb[:, None] - b) / (nb - 1)) / ma[:, None])
    jack = np.concatenate([jack_a, jack_b], axis=1)
    d = jack.mean(axis=1, keepdims=True) - jack
    with np.errstate(divide="ignore", invalid="ignore"):
        acc = (d**3).sum(axis=1) / (6.0 * ((d**2).sum(axis=1)) ** 1.5)
    acc = np.nan_to_num(acc)
    out = []
    for z in (scipy_stats().norm.ppf(alpha / 2), scipy_stats().norm.ppf(1 - alpha / 2)):
        adj = scipy_stats().norm.cdf(z0 + (z0 + z) / (1 - acc * (z0 + z)))
        out.append(np.array([np.quantile(th_star[i], adj[i]) for i in range(e)]))
    return out[0], out[1]


# --------------------------------------------------------------------------------------------------
# Planning and prediction


def required_n_from_ci(n: int, low: float, high: float, mde: float, *, alpha: float = 0.05, power: float = 0.8) -> int:
    """Requests per arm for a (1-α) interval like this one, measured on n per arm, to detect a
    relative change `mde` with `power`: the log-scale half-width shrinks as 1/sqrt(n), so
    n' = n · (half-width / log(1 + mde))² · ((z(1-α/2) + z(power)) / z(1-α/2))²."""
    if not (n > 0 and mde > 0 and math.isfinite(low) and math.isfinite(high) and low > -1):
        return 0
    half = (math.log1p(high) - math.log1p(low)) / 2
    z = scipy_stats().norm.ppf(1 - alpha / 2)
    factor = ((z + scipy_stats().norm.ppf(power)) / z) ** 2
    return int(math.ceil(n * (half / math.log1p(mde)) ** 2 * factor))


def prediction_bound(values: Sequence[float] | np.ndarray, *, alpha: float, upper: bool) -> float:
    """One-sided (1-α) prediction bound for one new observation from the same normal population
    as `values`: mean ± t(1-α, n-1) · s · sqrt(1 + 1/n). nan with fewer than 2 values."""
    a = _clean(values)
    if a.size < 2:
        return math.nan
    s = float(np.std(a, ddof=1))
    half = float(scipy_stats().t.ppf(1 - alpha, a.size - 1)) * s * math.sqrt(1 + 1 / a.size)
    return float(np.mean(a)) + (half if upper else -half)


# --------------------------------------------------------------------------------------------------
# Per-request metrics (formulas in the module docstring)


def _nan(v: float | None) -> float:
    return float(v) if v is not None else math.nan


# Per-request metrics: the definitions live once, in abtest.analysis.metrics (docs/metrics.md); these
# wrappers only turn "undefined" (None) into NaN for array statistics.


def ttft_ms(r: RequestRecord) -> float:
    """Send -> first token-carrying event, ms (metrics.ttft_ms)."""
    return _nan(metrics.ttft_ms(r))


def e2e_ms(r: RequestRecord) -> float:
    """Send -> end of stream, ms (metrics.e2e_ms)."""
    return _nan(metrics.e2e_ms(r))


def decode_tps(r: RequestRecord) -> float:
    """Tokens after the first read / (last token read - first token read); nan when not measurable
    (metrics.decode_tps, metrics.decode_unmeasurable)."""
    return _nan(metrics.decode_tps(r))


def tpot_ms(r: RequestRecord) -> float:
    """(last token arrival - TTFT) / (tokens - 1), vLLM's TPOT; nan when not measurable (metrics.tpot_ms)."""
    return _nan(metrics.tpot_ms(r))


def itl_ms(r: RequestRecord) -> np.ndarray:
    """Per-token inter-token latency, ms; empty when not measurable (metrics.itl_ms)."""
    return np.asarray(metrics.itl_ms(r), dtype=float)
