"""Capacity truth: abtest's capacity search against a server whose capacity at the SLO is known.

    python benchmarks/capacity_truth.py [--blocks 2] [--out DIR] [--write-doc]
    python benchmarks/capacity_truth.py --doc-from DIR/capacity_truth.json   # the doc from a saved run

The server is the scripted llama-server's slot model (tests/fakes/scripted.py): n slots, one
decode step of `step_ms` giving one token to every busy slot, m tokens a request, no prompt cost
(`prompt_ms_per_token` 0), FIFO queue, a slot freed for the next step. Under uniform arrivals at
λ req/s (the open loop of `abtest run --rate`), every request's TTFT follows from that alone: it
is admitted at the first step start at or after both its arrival and a free slot, and its first
token comes at the end of that step. `model_ttft_ms` computes those TTFTs exactly (a replay of
the engine's rules, no randomness), the SLO's percentile over the probe's N requests is taken as
abtest takes it (numpy's linear percentile), and the truth is the highest λ whose p95 meets the
limit (a scan at 0.01 % steps). Roughly: below μ = n / (m·step) nothing queues (TTFT one to two
steps); above it the k-th request waits about k·(1/μ − 1/λ), so the p95 reaches the limit L at
λ* ≈ 1 / (1/μ − (L − 2·step) / (0.95·N)), a little above μ for a finite probe.

The run is the real `abtest run --rate auto --slo ttft_p95<=L --search-start S` (one arm, --blocks
sessions), its `--server-bin` a wrapper that starts the scripted server with the slot model; the
estimate is `abtest report --format json`'s capacity (mean over sessions, with its interval),
and each session's too. Also shown: what a ×2 grid of the search's own ramp levels alone would
have given (the same interpolation, no bisection) — the truth lies between two of them.

A benchmark, not a test: nothing asserts. Results are printed and saved as JSON under --out;
--write-doc puts them into docs/performance.md between the ``capacity_truth`` markers. Say the box
load with them (printed before and after).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from fakes import SCRIPTED_PY  # noqa: E402

from abtest.analysis.capacity import capacity_from_levels  # noqa: E402
from abtest.analysis.slo import parse_slo  # noqa: E402
from abtest.evidence import read_evidence  # noqa: E402

DOC = ROOT / "docs" / "performance.md"
BEGIN, END = "<!-- capacity_truth:begin -->", "<!-- capacity_truth:end -->"


def model_ttft_ms(rate: float, n_requests: int, slots: int, step_ms: float, tokens: int) -> list[float]:
    """Each request's TTFT under the slot model with arrivals at k/rate (ms): steps run back to
    back while a slot is busy; an idle engine starts a step when a request arrives; at a step's
    start free slots go to the queue's head; a request's first token comes at the end of its first
    step and its slot is free from the end of its `tokens`-th step."""
    arrive = [k * 1000.0 / rate for k in range(n_requests)]
    free_at = [0.0] * slots  # when each slot is next free (the end of its holder's last step)
    t_step = 0.0  # the start of the engine's current step grid (steps at t_step + j*step_ms)
    busy_until = -1.0  # the engine runs steps back to back until this time
    out = []
    for a in arrive:
        slot = min(range(slots), key=lambda i: free_at[i])
        ready = max(a, free_at[slot])
        if ready >= busy_until:  # idle by then: a step starts when the request comes
            start = ready
            t_step = start
        else:  # the next step boundary at or after `ready`
            j = math.ceil((ready - t_step) / step_ms - 1e-9)
            start = t_step + j * step_ms
        end_last = start + tokens * step_ms
        free_at[slot] = end_last
        busy_until = max(busy_until, end_last)
        out.append(start + step_ms - a)
    return out


def true_capacity(limit_ms: float, pct: float, n_requests: int, slots: int, step_ms: float, tokens: int,
                  lo: float, hi: float) -> float:
    """The highest rate in [lo, hi] (0.01 % steps) whose TTFT percentile meets the limit, scanning
    up from lo to the first rate that fails."""
    r = lo
    last_ok = math.nan
    while r <= hi:
        if float(np.percentile(model_ttft_ms(r, n_requests, slots, step_ms, tokens), pct)) <= limit_ms:
            last_ok = r
        else:
            break
        r *= 1.0001
    return last_ok


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--slots", type=int, default=8)
    ap.add_argument("--step-ms", type=float, default=20.0)
    ap.add_argument("--tokens", type=int, default=16, help="max tokens per request (= steps a request holds a slot)")
    ap.add_argument("--limit-ms", type=float, default=250.0, help="the SLO: TTFT p95 <= this")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--runs", type=int, default=16, help="requests per probe = runs x prompts")
    ap.add_argument("--start", type=float, default=8.0, help="--search-start (req/s)")
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--search-time-s", type=float, default=240.0)
    ap.add_argument("--out", type=Path, default=Path("/tmp/capacity_truth"))
    ap.add_argument("--write-doc", action="store_true")
    ap.add_argument("--doc-from", type=Path, help="write docs/performance.md from a saved capacity_truth.json, run nothing")
    args = ap.parse_args()
    if args.doc_from:
        _write_doc(json.loads(args.doc_from.read_text()))
        return

    n = args.prompts * args.runs
    mu = args.slots / (args.tokens * args.step_ms / 1000.0)
    truth = true_capacity(args.limit_ms, 95, n, args.slots, args.step_ms, args.tokens, mu / 4, mu * 4)
    approx = 1.0 / (1.0 / mu - (args.limit_ms - 2 * args.step_ms) / 1000.0 / (0.95 * n))
    print(f"model: {args.slots} slots, {args.step_ms:g} ms a step, {args.tokens} tokens: saturates at "
          f"{mu:.3f} req/s; TTFT p95 over {n} requests <= {args.limit_ms:g} ms up to {truth:.3f} req/s "
          f"(closed form ≈ {approx:.3f})")

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    script = out / "script.json"
    script.write_text(json.dumps({"slots": {"n": args.slots, "step_ms": args.step_ms}}))
    wrapper = out / "llama-server"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} {SCRIPTED_PY} --script @{script} "$@"\n')
    wrapper.chmod(0o755)
    prompts = out / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "bucket": "b", "text": f"Prompt number {i}.",
                                           "target_tokens": None}) + "\n" for i in range(args.prompts)))
    model = out / "tiny-moe.gguf"
    if not model.exists():
        from abtest.models.synth import write_synth

        write_synth(model, "tiny-moe", "q4_0", seed=0)
    slo = f"ttft_p95<={args.limit_ms:g}ms"
    cmd = [sys.executable, "-m", "abtest", "run", "-q", "--model", str(model), "--server-bin", str(wrapper),
           "--prompts", str(prompts), "--arm", "baseline=-ngl 99", "--runs", str(args.runs), "--warmup", "1",
           "--max-tokens", str(args.tokens), "--rate", "auto", "--slo", slo, "--search-start", f"{args.start:g}",
           "--search-time-s", f"{args.search_time_s:g}", "--parallel", str(args.slots), "--blocks",
           str(args.blocks), "--out", str(out / "evidence")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    load_before = _load()
    t0 = time.perf_counter()
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    wall_s = time.perf_counter() - t0
    load_after = _load()
    if run.returncode != 0:
        sys.exit(f"abtest run failed ({run.returncode}): {run.stderr[-2000:]}")
    evidence = Path(run.stdout.strip().splitlines()[-1])
    rep = subprocess.run([sys.executable, "-m", "abtest", "report", str(evidence), "--format", "json"],
                         capture_output=True, text=True, env=env, cwd=ROOT, check=True)
    data = json.loads(rep.stdout)
    (cap,) = data["capacity"]

    # what the ramp's x2 grid alone gives: the same interpolation over the levels start * 2^k
    ev = read_evidence(evidence)
    objectives = parse_slo(slo)
    grid = []
    for block in range(args.blocks):
        levels: dict[float, list[Any]] = {}
        for r in ev.requests:
            x = r.load.get("rate_rps")
            if r.block == block and not r.warmup and isinstance(x, float) and math.log2(x / args.start) % 1 == 0:
                levels.setdefault(x, []).append(r)
        g = capacity_from_levels(levels, objectives)
        grid.append({"block": block, "levels": sorted(levels), "load": g.load, "low": g.low, "high": g.high})

    sessions = [{"block": i, "low": s["low"], "high": s["high"], "load": s["load"],
                 "error": s["load"] / truth - 1 if s["load"] else None} for i, s in enumerate(cap["sessions"])]
    probes = sorted({r.load["rate_rps"] for r in ev.requests if not r.warmup})
    result = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "load_before": load_before, "load_after": load_after, "wall_s": round(wall_s, 1),
        "model": {"slots": args.slots, "step_ms": args.step_ms, "tokens": args.tokens, "requests_per_probe": n,
                  "saturation_rps": mu, "truth_rps": truth, "closed_form_rps": approx},
        "slo": slo, "command": " ".join(cmd[1:]).replace(str(ROOT) + "/", ""),
        "estimate": {"rps": cap["headline"], "low": cap["headline_low"], "high": cap["headline_high"],
                     "status": cap["status"], "error": cap["headline"] / truth - 1},
        "sessions": sessions, "grid_only": grid, "probes": probes, "capacity_line": data["capacity_line"],
    }
    (out / "capacity_truth.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    if args.write_doc:
        _write_doc(result)


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x * 100:+.1f} %"


def _write_doc(r: dict[str, Any]) -> None:
    m, e = r["model"], r["estimate"]
    lines = [
        BEGIN,
        f"Run {r['when']} on {r['host']}; load average {r['load_before']} before, {r['load_after']} after; "
        f"{r['wall_s']} s. Command: `python benchmarks/capacity_truth.py --write-doc`, which runs "
        f"`abtest {r['command'].removeprefix('-m abtest ')}`.",
        "",
        f"Server: the scripted slot model, {m['slots']} slots, {m['step_ms']:g} ms a step, {m['tokens']} tokens a "
        f"request, uniform arrivals: saturates at {m['saturation_rps']:.3f} req/s; with {m['requests_per_probe']} "
        f"requests a probe its TTFT p95 stays within {r['slo'].split('<=')[1]} up to **{m['truth_rps']:.3f} req/s** "
        f"(the truth; closed form {m['closed_form_rps']:.3f}).",
        "",
        "| | capacity (req/s offered) | 95 % CI | error vs truth |",
        "|---|---:|---:|---:|",
        f"| abtest, mean over {len(r['sessions'])} sessions | {e['rps']:.3f} | "
        + (f"{e['low']:.3f}–{e['high']:.3f}" if e["low"] is not None else "—") + f" | {_pct(e['error'])} |",
    ]
    for s in r["sessions"]:
        lines.append(f"| session {s['block']} (bracket {s['low']:g}–{s['high']:g}) | "
                     f"{s['load']:.3f} | | {_pct(s['error'])} |" if s["load"] else f"| session {s['block']} | — | | |")
    for g in r["grid_only"]:
        err = g["load"] / m["truth_rps"] - 1 if g["load"] else None
        lines.append(f"| ×2 grid alone {g['levels']}, session {g['block']} (bracket {g['low']}–{g['high']}) | "
                     + (f"{g['load']:.3f}" if g["load"] else "—") + f" | | {_pct(err)} |")
    lines += ["", f"Probes (req/s): {', '.join(f'{x:g}' for x in r['probes'])}. Verdict line: \"{r['capacity_line']}\"",
              END]
    text = DOC.read_text(encoding="utf-8")
    block = "\n".join(lines)
    if BEGIN in text:
        text = text.split(BEGIN)[0] + block + text.split(END, 1)[1]
    else:
        text = text.rstrip() + "\n\n## Capacity at an SLO against a known truth\n\n" + block + "\n"
    DOC.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
