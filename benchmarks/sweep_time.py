"""Time to advice of `abtest sweep`: seconds from the sweep's start to its advice, one command.

    python benchmarks/sweep_time.py                       # tiny-moe on this box's llama-server, 3 repeats
    python benchmarks/sweep_time.py --repeats 5 --fit-competitor on --load-mode both
    python benchmarks/sweep_time.py --model gpt-oss-20b --vram-budget 9GiB --repeats 1   # on a GPU box

Each repeat runs the real `abtest sweep` CLI (a subprocess, so nothing is shared between
repeats), reads `time_to_advice_s` from the trail it wrote and the server sessions it started
from its evidence, and prints one row per repeat and the median. With `--json FILE` the rows and
the configuration (the box's load average before and after, the command) are written there too.
Not a test: times depend on the box (a shared 2-core box moves them by tens of per cent).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one(args: argparse.Namespace, out: Path) -> dict:
    cmd = [sys.executable, "-c", "from abtest.cli import main; main()", "sweep", "--model", args.model,
           "--runs", str(args.runs), "--max-tokens", str(args.max_tokens), "--out", str(out), "--quiet",
           "--fit-competitor", args.fit_competitor, "--load-mode", args.load_mode,
           "--finalist-sessions", str(args.finalist_sessions)]
    for flag, val in (("--vram-budget", args.vram_budget), ("--buckets", args.buckets), ("--ctx", args.ctx),
                      ("--server-bin", args.server_bin), ("--threads", args.threads), ("--ncmoe", args.ncmoe)):
        if val:
            cmd += [flag, str(val)]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 4):
        raise SystemExit(f"abtest sweep exited {proc.returncode}: {proc.stderr.strip()[-400:]}")
    ev = next(out.glob("*.jsonl"))
    side = json.loads(ev.with_name(ev.stem + ".sweep.json").read_text())
    sessions = sum(1 for line in ev.read_text().splitlines() if line.strip() and json.loads(line).get("kind") == "arm_start")
    advice = next((ln.strip("*") for ln in proc.stdout.splitlines() if ln.startswith("**with")), "")
    return {"time_to_advice_s": side.get("time_to_advice_s"), "wall_s": round(wall, 2), "server_sessions": sessions,
            "exit_code": proc.returncode, "advice": advice}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny-moe")
    ap.add_argument("--vram-budget", default=None)
    ap.add_argument("--ncmoe", default=None)
    ap.add_argument("--ctx", default=None)
    ap.add_argument("--buckets", default="seed004")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--threads", default="1")
    ap.add_argument("--server-bin", default=None)
    ap.add_argument("--fit-competitor", default="auto", choices=["auto", "on", "off"])
    ap.add_argument("--load-mode", default="mmap", choices=["mmap", "none", "both"])
    ap.add_argument("--finalist-sessions", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    load_before = os.getloadavg()
    rows = []
    for i in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="sweep-time-") as d:
            r = one(args, Path(d))
        rows.append(r)
        print(f"repeat {i + 1}: time to advice {r['time_to_advice_s']} s (process {r['wall_s']} s), "
              f"{r['server_sessions']} server sessions — {r['advice'][:90]}")
    times = [r["time_to_advice_s"] for r in rows if r["time_to_advice_s"] is not None]
    load_after = os.getloadavg()
    print(f"median time to advice: {statistics.median(times):.1f} s over {len(times)} repeats "
          f"(min {min(times):.1f}, max {max(times):.1f}); load average {load_before[0]:.1f} → {load_after[0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "rows": rows,
                                         "load_before": load_before, "load_after": load_after}, indent=1) + "\n")


if __name__ == "__main__":
    main()
