"""The report's inference on simulated A/A and A/B comparisons: how often the verdict claims a difference.

Each simulated comparison lays out two arms as `abtest run --blocks N` does (A0 B0 B1 A1 A2 B2 …),
two buckets 4× apart in TTFT with `--per-bucket` requests per bucket and session; every session has
a log-normal offset (sd `tau`), the box a linear drift per session slot, every request its noise.
It runs the analysis functions the report runs (`stratified.session_ratio` on decode tok/s and
TTFT of the "all" row, then `verdict.family`: Holm) and counts the verdicts that claim a difference:
with no true difference (the false-positive rate, bar 5 %) and with arm B 20 % slower in decode
(the power). docs/report.md ("Inference") has the table this prints;
tests/unit/test_inference.py asserts the bar on a smaller run.

    python benchmarks/inference_sim.py                 # 2000 comparisons per cell, ~1 min
    python benchmarks/inference_sim.py --n 500 --blocks 2
    python benchmarks/inference_sim.py --alternatives  # the tests abtest did not choose, one metric

`--alternatives` prints, for decode tok/s alone (one test at 5 %, no Holm), how often four
session-level tests reject: Welch or pooled degrees of freedom, with or without the floor at the
within-session variance (pooled + floor is `session_ratio`) — the numbers behind the choice.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
from scipy import stats as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the simulator lives with its test

from sessions_sim import simulate  # noqa: E402

# (decode, TTFT): session offset sd, drift per session slot, request CV; "unequal": arm B's
# sessions 4× as spread as A's (variance 16×) — the case the pooled variance is weakest in
SCENARIOS = {
    "GPU-like": {"tau": (0.01, 0.03), "drift": (0.002, 0.005), "cv": (0.02, 0.10)},
    "CPU-like": {"tau": (0.05, 0.08), "drift": (0.01, 0.02), "cv": (0.10, 0.25)},
    "no session effect": {"tau": (0.0, 0.0), "drift": (0.0, 0.0), "cv": (0.05, 0.20)},
    "unequal sessions": {"tau": (0.01, 0.02), "tau_b": (0.04, 0.08), "drift": (0.0, 0.0), "cv": (0.05, 0.20)},
}


def alternatives(rng: np.random.Generator, blocks: int, tau: tuple[float, float], drift: tuple[float, float],
                 cv: tuple[float, float], tau_b: tuple[float, float] | None = None, effect_decode: float = 1.0,
                 per_bucket: int = 12) -> dict[str, bool]:
    """Decode tok/s of one simulated comparison (one bucket): whether each candidate test rejects."""
    order = [arm for j in range(blocks) for arm in (("A", "B") if j % 2 == 0 else ("B", "A"))]
    sessions: dict[str, list[np.ndarray]] = {"A": [], "B": []}
    for slot, arm in enumerate(order):
        t = tau_b if (arm == "B" and tau_b is not None) else tau
        f = math.exp(rng.normal(0, t[0]) - drift[0] * slot) * (effect_decode if arm == "B" else 1.0)
        sessions[arm].append(rng.normal(80.0, cv[0] * 80.0, per_bucket) * f)
    k = blocks
    parts = {}
    for arm, xs in sessions.items():
        x = np.array(xs)  # (k, n)
        m = x.mean()
        between = x.mean(axis=1).var(ddof=1) / k
        within = ((x - x.mean(axis=1, keepdims=True)) ** 2).sum() / (x.size - k) / x.size
        parts[arm] = (m, between / m**2, within / m**2)
    theta = math.log(parts["B"][0] / parts["A"][0])
    out = {}
    for floor in (False, True):
        ua, ub = ((max(parts[a][1], parts[a][2]) if floor else parts[a][1]) for a in "AB")
        se = math.sqrt(ua + ub)  # balanced: the pooled variance gives the same se as Welch's
        for name, df in (("Welch", (ua + ub) ** 2 / (ua**2 / (k - 1) + ub**2 / (k - 1))), ("pooled", 2 * k - 2)):
            p = 2 * st.t.sf(abs(theta / se), df) if se > 0 else 0.0
            out[f"{name}{' + floor' if floor else ''}"] = p < 0.05
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="comparisons per cell")
    ap.add_argument("--blocks", type=int, nargs="*", default=[2, 3, 4])
    ap.add_argument("--seed", type=int, default=99)
    ap.add_argument("--alternatives", action="store_true", help="the candidate tests on decode tok/s instead")
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    if args.alternatives:
        names = ["Welch", "pooled", "Welch + floor", "pooled + floor"]
        print("| scenario | blocks | " + " | ".join(f"{n}: A/A / 20 % found" for n in names) + " |")
        print("|---|---:|" + "---:|" * len(names))
        for name, kw in SCENARIOS.items():
            for blocks in args.blocks:
                aa = [alternatives(rng, blocks, **kw) for _ in range(args.n)]
                pw = [alternatives(rng, blocks, effect_decode=0.8, **kw) for _ in range(args.n)]
                cells = [f"{np.mean([r[n] for r in aa]):.1%} / {np.mean([r[n] for r in pw]):.0%}" for n in names]
                print(f"| {name} | {blocks} | " + " | ".join(cells) + " |", flush=True)
        return 0
    print("| scenario | blocks per arm | A/A: verdicts claiming a difference | B 20 % slower in decode: found |")
    print("|---|---:|---:|---:|")
    for name, kw in SCENARIOS.items():
        for blocks in args.blocks:
            aa = sum(simulate(rng, blocks, **kw)[0] for _ in range(args.n)) / args.n
            power = sum(simulate(rng, blocks, effect_decode=0.8, **kw)[0] for _ in range(args.n)) / args.n
            print(f"| {name} | {blocks} | {aa:.1%} | {power:.1%} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
