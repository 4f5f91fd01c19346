"""Simulated comparisons of two arms laid out as `abtest run --blocks N` runs them, judged by the
report's own inference (tests/unit/test_inference.py asserts on it; benchmarks/inference_sim.py
prints the tables of docs/report.md from it)."""

from __future__ import annotations

import math

import numpy as np

from abtest.analysis import stats, stratified
from abtest.analysis.compare import Comparison
from abtest.analysis.verdict import family


def comparison(metric: str, inf: stratified.SessionRatio, bucket: str = "all", arm: str = "B",
               base: str = "A") -> Comparison:
    """A Comparison of the "all" row carrying a session-level inference (what compare builds)."""
    lo, hi = inf.interval(0.95)
    return Comparison(arm, base, bucket, metric, 0, 0, inf.base_mean, inf.other_mean,
                      stats.RatioCI(inf.delta, lo, hi, 0.95, "session-t", 0, None), inf.p_value, "session-t", inf)


def simulate(rng: np.random.Generator, blocks: int, tau: tuple[float, float], drift: tuple[float, float],
             cv: tuple[float, float], tau_b: tuple[float, float] | None = None, effect_decode: float = 1.0,
             per_bucket: int = 12) -> tuple[bool, list[float]]:
    """One comparison of arm B with arm A in the order A0 B0 B1 A1 ...: two buckets 4× apart in
    TTFT, `per_bucket` requests per bucket and session; each session a log-normal offset of sd
    `tau` (decode, TTFT; `tau_b` for arm B's sessions when they spread differently), a linear drift
    per session slot, per-request noise of CV `cv`, arm B's decode scaled by `effect_decode`.
    Returns whether the verdict's family (Holm over decode tok/s and TTFT) claims a difference,
    and the two raw p-values."""
    order = [arm for j in range(blocks) for arm in (("A", "B") if j % 2 == 0 else ("B", "A"))]
    data: dict[str, dict[str, list[np.ndarray]]] = {a: {"d": [], "t": [], "s": [], "h": []} for a in "AB"}
    strata = np.repeat(["short", "long"], per_bucket)
    s2 = math.log(1 + cv[1] ** 2)
    for slot, arm in enumerate(order):
        t = tau_b if (arm == "B" and tau_b is not None) else tau
        d = data[arm]
        fd = math.exp(rng.normal(0, t[0]) - drift[0] * slot) * (effect_decode if arm == "B" else 1.0)
        ft = math.exp(rng.normal(0, t[1]) + drift[1] * slot)
        d["d"].append(rng.normal(80.0, cv[0] * 80.0, 2 * per_bucket) * fd)
        d["t"].append(rng.lognormal(np.log(np.repeat([120.0, 480.0], per_bucket)) - s2 / 2, math.sqrt(s2)) * ft)
        d["s"].append(np.full(2 * per_bucket, len(d["s"])))
        d["h"].append(strata)
    a = {k: np.concatenate(v) for k, v in data["A"].items()}
    b = {k: np.concatenate(v) for k, v in data["B"].items()}
    w = {"short": 0.5, "long": 0.5}
    comps = [comparison(m, stratified.session_ratio(a[k], a["s"], b[k], b["s"], a["h"], b["h"], w))
             for m, k in (("decode_tps", "d"), ("ttft_ms", "t"))]
    return any(c.claim for c in family(comps)), [c.p_value for c in comps]
