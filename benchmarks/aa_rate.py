"""A/A false-positive rate of abtest's verdict, measured through the real `abtest run` and `abtest report`.

Runs the same comparison of two identical arms N times (a fresh `abtest run` each time, its own
servers), reports each with `abtest report --format json`, and counts the runs whose report claims
a difference that cannot be there:

* verdict: the headline ("all" row, or the only bucket) decode tok/s or TTFT comparison is
  significant — what the verdict sentence says;
* any: any comparison of any metric in any bucket is significant (the family, counted once per run).

    python benchmarks/aa_rate.py --n 40                          # tiny-moe, CPU server, ~5 min
    python benchmarks/aa_rate.py --n 20 --time-limit-s 480 --out /tmp/aa-gpu
    python benchmarks/aa_rate.py --arm a="-ngl 99" --arm b="-ngl 99 --cpu-moe"   # the CPU demo's A/A

Prints the rates with Clopper–Pearson 95 % intervals and writes `aa.tsv` (one line per run: the
evidence file, each headline p-value, the flags) and `aa.json` (the summary) under --out.
Performance and calibration numbers belong in docs/report.md with the command that made them; this
is a benchmark, not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from scipy import stats as st

HEADLINE = ("decode_tps", "ttft_ms")


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact binomial interval for k successes in n trials."""
    if n == 0:
        return float("nan"), float("nan")
    a = 1 - confidence
    lo = 0.0 if k == 0 else float(st.beta.ppf(a / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(st.beta.ppf(1 - a / 2, k + 1, n - k))
    return lo, hi


def _p(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3g}"


def judge(report: dict[str, Any]) -> dict[str, Any]:
    """The headline p-values and whether the verdict / any comparison claims a difference."""
    comps = report.get("comparisons", [])
    buckets = {c["bucket"] for c in comps}
    head_bucket = "all" if "all" in buckets else (next(iter(buckets)) if len(buckets) == 1 else None)
    head = {c["metric"]: c for c in comps if c["bucket"] == head_bucket and c["metric"] in HEADLINE}
    return {
        "p": {m: head[m]["p_value"] if m in head else None for m in HEADLINE},
        "delta": {m: head[m]["delta"] if m in head else None for m in HEADLINE},
        "verdict_claims": any(c.get("significant") for c in head.values()),
        "any_claims": any(c.get("significant") for c in comps),
        "verdict": report.get("verdict", []),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=40, help="A/A runs (default 40)")
    ap.add_argument("--model", default="tiny-moe")
    ap.add_argument("--arm", action="append", help='NAME="ARGS" (default: a="-ngl 99" b="-ngl 99")')
    ap.add_argument("--runs", type=int, default=3, help="--runs of each abtest run")
    ap.add_argument("--buckets", default="tok8,tok128")
    ap.add_argument("--extra", default="", help="more `abtest run` options, one string")
    ap.add_argument("--out", type=Path, default=Path("/tmp/abtest-aa"))
    ap.add_argument("--time-limit-s", type=float, default=0, help="stop starting runs after this long (0: none)")
    args = ap.parse_args()
    arms = args.arm or ['a=-ngl 99', 'b=-ngl 99']
    args.out.mkdir(parents=True, exist_ok=True)
    abtest = [sys.executable, "-m", "abtest"]
    rows: list[dict[str, Any]] = []
    t0 = time.monotonic()
    load0 = os.getloadavg()[0]
    for i in range(args.n):
        if args.time_limit_s and time.monotonic() - t0 > args.time_limit_s:
            print(f"time limit reached after {i} runs", file=sys.stderr)
            break
        run_dir = args.out / f"run{i:03d}"
        cmd = [*abtest, "run", "--model", args.model, "--runs", str(args.runs), "--buckets", args.buckets,
               "--out", str(run_dir), "--quiet", *[x for a in arms for x in ("--arm", a)], *args.extra.split()]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        files = sorted(run_dir.glob("*.jsonl"))
        if proc.returncode not in (0, 1) or not files:
            print(f"run {i}: abtest run failed (exit {proc.returncode}): {proc.stderr.strip()[-300:]}", file=sys.stderr)
            continue
        rep = subprocess.run([*abtest, "report", "--format", "json", "--baseline", arms[0].split("=", 1)[0],
                              str(files[-1])], capture_output=True, text=True)
        if rep.returncode != 0:
            print(f"run {i}: abtest report failed (exit {rep.returncode}): {rep.stderr.strip()[-300:]}", file=sys.stderr)
            continue
        row = {"run": i, "file": str(files[-1]), **judge(json.loads(rep.stdout))}
        rows.append(row)
        p = row["p"]
        print(f"run {i:3d}: decode p={_p(p['decode_tps'])} ttft p={_p(p['ttft_ms'])} "
              f"verdict_claims={row['verdict_claims']} any_claims={row['any_claims']}", flush=True)
    n = len(rows)
    summary: dict[str, Any] = {"n": n, "model": args.model, "arms": arms, "runs": args.runs, "buckets": args.buckets,
                               "extra": args.extra, "wall_s": round(time.monotonic() - t0, 1),
                               "load_before": load0, "load_after": os.getloadavg()[0]}
    for key in ("verdict_claims", "any_claims"):
        k = sum(1 for r in rows if r[key])
        lo, hi = clopper_pearson(k, n)
        summary[key] = {"k": k, "rate": k / n if n else None, "ci95": [lo, hi]}
        print(f"{key}: {k}/{n} = {k / n if n else float('nan'):.1%} (95 % CI {lo:.1%} … {hi:.1%})")
    # uniformity of the headline p-values under A/A (Kolmogorov–Smirnov against U(0, 1))
    for m in HEADLINE:
        ps = [r["p"][m] for r in rows if isinstance(r["p"][m], (int, float))]
        if len(ps) >= 5:
            ks = st.kstest(ps, "uniform")
            summary[f"ks_{m}"] = {"n": len(ps), "statistic": float(ks.statistic), "p_value": float(ks.pvalue)}
            print(f"p-values of {m}: KS vs uniform D = {ks.statistic:.3f}, p = {ks.pvalue:.3g} (n = {len(ps)})")
    with (args.out / "aa.tsv").open("w") as fh:
        fh.write("run\tfile\tp_decode\tp_ttft\tdelta_decode\tdelta_ttft\tverdict_claims\tany_claims\n")
        for r in rows:
            fh.write(f"{r['run']}\t{r['file']}\t{r['p']['decode_tps']}\t{r['p']['ttft_ms']}\t{r['delta']['decode_tps']}\t"
                     f"{r['delta']['ttft_ms']}\t{int(r['verdict_claims'])}\t{int(r['any_claims'])}\n")
    (args.out / "aa.json").write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
