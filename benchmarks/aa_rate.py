"""A/A false-positive rate of abtest's verdict, measured through the real `abtest run` and `abtest report`.

Runs the same comparison of two identical arms N times (a fresh `abtest run` each time, its own
servers), reports each with `abtest report --format json --no-recognise-identical` (the recogniser
of arms that cannot differ would answer an A/A run without any statistics), and counts the runs
whose report claims a difference that cannot be there:

* verdict: the verdict claims a difference (`verdicts[].claims_difference`: a quoted metric
  significant after Holm, or a VRAM change beyond the floors) — the rate the bar of 5 % is for;
* any: any comparison of any metric in any bucket is significant on its own, unadjusted (the
  tables' p-values; informative, no bar).

    python benchmarks/aa_rate.py --n 40 --blocks 2                # tiny-moe, CPU server
    python benchmarks/aa_rate.py --n 20 --blocks 2 --time-limit-s 480 --out /tmp/aa-gpu
    python benchmarks/aa_rate.py --arm baseline="-ngl 99" --arm cpu-moe="-ngl 99 --cpu-moe"   # the CPU demo's A/A
    python benchmarks/aa_rate.py --n 20 --pool 2     # two plain runs per trial, reported together (A B A B)
    python benchmarks/aa_rate.py --reanalyse DIR --pool 2 --out /tmp/re   # report evidence already there

Prints the rates with Clopper–Pearson 95 % intervals and a check of the headline p-values against
the uniform distribution (two-sided Kolmogorov–Smirnov, and one-sided for too many small ones),
and writes `aa.tsv` (one line per run: the evidence file, each headline p-value raw and Holm-adjusted,
the flags) and `aa.json` (the summary) under --out. Performance and calibration numbers belong in
docs/report.md with the command that made them; this is a benchmark, not a test: nothing here asserts.
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
    verdicts = report.get("verdicts", [])
    fam = {f["metric"]: f for v in verdicts for f in v.get("family", [])}
    if verdicts:
        claims = any(v.get("claims_difference") for v in verdicts)
        p = {m: fam[m]["p_value"] if m in fam else None for m in HEADLINE}
        p_holm: dict[str, Any] = {m: fam[m]["p_holm"] if m in fam else None for m in HEADLINE}
        delta = {m: fam[m]["delta"] if m in fam else None for m in HEADLINE}
    else:  # a report of an abtest before verdicts[] (request-level statistics)
        buckets = {c["bucket"] for c in comps}
        head_bucket = "all" if "all" in buckets else (next(iter(buckets)) if len(buckets) == 1 else None)
        head = {c["metric"]: c for c in comps if c["bucket"] == head_bucket and c["metric"] in HEADLINE}
        claims = any(c.get("significant") for c in head.values())
        p = {m: head[m]["p_value"] if m in head else None for m in HEADLINE}
        p_holm = {m: None for m in HEADLINE}
        delta = {m: head[m]["delta"] if m in head else None for m in HEADLINE}
    return {
        "p": p, "p_holm": p_holm, "delta": delta,
        "verdict_claims": claims,
        "any_claims": any(c.get("significant") for c in comps),
        "status": [v.get("status") for v in verdicts],
        "sessions": [(v.get("sessions_base"), v.get("sessions_arm")) for v in verdicts],
        "verdict": report.get("verdict", []),
    }


def _report(i: int, files: list[Path], abtest: list[str], arms: list[str], args: argparse.Namespace
            ) -> dict[str, Any] | None:
    """`abtest report --format json` of one trial's files, judged (None when the report failed)."""
    rep = subprocess.run([*abtest, "report", "--format", "json", "--baseline", arms[0].split("=", 1)[0],
                          *([] if args.recognise else ["--no-recognise-identical"]), *map(str, files)],
                         capture_output=True, text=True)
    if rep.returncode != 0:
        print(f"run {i}: abtest report failed (exit {rep.returncode}): {rep.stderr.strip()[-300:]}", file=sys.stderr)
        return None
    row = {"run": i, "file": ",".join(map(str, files)), **judge(json.loads(rep.stdout))}
    p = row["p"]
    print(f"run {i:3d}: decode p={_p(p['decode_tps'])} (Holm {_p(row['p_holm']['decode_tps'])}) "
          f"ttft p={_p(p['ttft_ms'])} (Holm {_p(row['p_holm']['ttft_ms'])}) "
          f"verdict_claims={row['verdict_claims']} any_claims={row['any_claims']} {row['status']}", flush=True)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=40, help="A/A runs (default 40)")
    ap.add_argument("--model", default="tiny-moe")
    ap.add_argument("--arm", action="append", help='NAME="ARGS" (default: a="-ngl 99" b="-ngl 99")')
    ap.add_argument("--runs", type=int, default=3, help="--runs of each abtest run")
    ap.add_argument("--buckets", default="tok8,tok128")
    ap.add_argument("--blocks", type=int, default=0,
                    help="--blocks of each abtest run: server sessions per arm (0: leave it to abtest run)")
    ap.add_argument("--pool", type=int, default=1,
                    help="abtest runs per A/A trial, reported together (their sessions pooled; default 1)")
    ap.add_argument("--reanalyse", type=Path, metavar="DIR",
                    help="run nothing: report the evidence files under DIR (sorted by name), --pool at a time")
    ap.add_argument("--recognise", action="store_true",
                    help="let the report recognise arms that cannot differ (off by default: a calibration)")
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
    found = sorted(args.reanalyse.rglob("*.jsonl"), key=lambda f: f.name) if args.reanalyse else []
    trials = len(found) // args.pool if args.reanalyse else args.n
    for i in range(trials):
        if args.time_limit_s and time.monotonic() - t0 > args.time_limit_s:
            print(f"time limit reached after {i} runs", file=sys.stderr)
            break
        if args.reanalyse:
            row = _report(i, found[i * args.pool:(i + 1) * args.pool], abtest, arms, args)
            rows += [row] if row else []
            continue
        run_dir = args.out / f"run{i:03d}"
        cmd = [*abtest, "run", "--model", args.model, "--runs", str(args.runs), "--buckets", args.buckets,
               "--out", str(run_dir), "--quiet", *[x for a in arms for x in ("--arm", a)],
               *(["--blocks", str(args.blocks)] if args.blocks else []), *args.extra.split()]
        failed = None
        for _ in range(args.pool):
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode not in (0, 1):
                failed = f"exit {proc.returncode}: {proc.stderr.strip()[-300:]}"
                break
        files = sorted(run_dir.glob("*.jsonl"))
        if failed or len(files) < args.pool:
            print(f"run {i}: abtest run failed ({failed or f'{len(files)} of {args.pool} files'})", file=sys.stderr)
            continue
        row = _report(i, files, abtest, arms, args)
        rows += [row] if row else []
    n = len(rows)
    summary: dict[str, Any] = {"n": n, "model": args.model, "arms": arms, "runs": args.runs, "buckets": args.buckets,
                               "blocks": args.blocks, "pool": args.pool, "recognise": args.recognise,
                               "reanalyse": str(args.reanalyse) if args.reanalyse else None,
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
            # "greater": the empirical CDF above the uniform's somewhere, i.e. too many small p-values
            small = st.kstest(ps, "uniform", alternative="greater")
            summary[f"ks_{m}"] = {"n": len(ps), "statistic": float(ks.statistic), "p_value": float(ks.pvalue),
                                  "p_value_too_small": float(small.pvalue),
                                  "below_0.05": sum(1 for x in ps if x < 0.05)}
            print(f"p-values of {m}: KS vs uniform D = {ks.statistic:.3f}, p = {ks.pvalue:.3g}; one-sided "
                  f"(too many small) p = {small.pvalue:.3g}; {summary[f'ks_{m}']['below_0.05']} below 0.05 "
                  f"(n = {len(ps)})")
    with (args.out / "aa.tsv").open("w") as fh:
        fh.write("run\tfile\tp_decode\tp_ttft\tp_holm_decode\tp_holm_ttft\tdelta_decode\tdelta_ttft\t"
                 "verdict_claims\tany_claims\tstatus\n")
        for r in rows:
            fh.write(f"{r['run']}\t{r['file']}\t{r['p']['decode_tps']}\t{r['p']['ttft_ms']}\t"
                     f"{r['p_holm']['decode_tps']}\t{r['p_holm']['ttft_ms']}\t{r['delta']['decode_tps']}\t"
                     f"{r['delta']['ttft_ms']}\t{int(r['verdict_claims'])}\t{int(r['any_claims'])}\t"
                     f"{','.join(map(str, r['status']))}\n")
    (args.out / "aa.json").write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
