"""Time to advice of `abtest sweep`: seconds from the sweep's start to its advice, one command.

    python benchmarks/sweep_time.py                       # tiny-moe on this box's llama-server, 3 repeats
    python benchmarks/sweep_time.py --repeats 5 --fit-competitor on --load-mode both
    python benchmarks/sweep_time.py --model /tmp/models/gpt-oss-20b-arch-mxfp4-seed0.gguf \
        --vram-budget 9GiB --ctx 4096 --repeats 1 --json out.json            # on a GPU box
    python benchmarks/sweep_time.py --from-evidence docs/results/.../X.jsonl.gz   # where a sweep's time went

Each repeat runs the real `abtest sweep` CLI (a subprocess, so nothing is shared between
repeats), reads `time_to_advice_s` from the trail it wrote and the server sessions it started
from its evidence, and prints one row per repeat and the median, then where the last repeat's
time went, per server session (load = spawn to /health, warm-up, measured requests, after = the
last response to the next spawn: stop, untimed requests, the sweep's own work such as
llama-fit-params). With `--json FILE` the rows, the sessions and the configuration (the box's load
average before and after, the command) are written there too.

Flags left out are the sweep's own defaults, except with the default model (tiny-moe on a
2-core CPU box), which runs `--buckets seed004 --max-tokens 128 --threads 1` unless told otherwise.
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


CPU_BOX = {"buckets": "seed004", "max_tokens": "128", "threads": "1"}  # with the default model only
FLAGS = (("--vram-budget", "vram_budget"), ("--buckets", "buckets"), ("--ctx", "ctx"), ("--server-bin", "server_bin"),
         ("--threads", "threads"), ("--ncmoe", "ncmoe"), ("--runs", "runs"), ("--max-tokens", "max_tokens"),
         ("--fit-competitor", "fit_competitor"), ("--load-mode", "load_mode"),
         ("--finalist-sessions", "finalist_sessions"), ("--session-rule", "session_rule"))


def sweep_argv(args: argparse.Namespace, out: Path) -> list[str]:
    """The `abtest sweep` command line of one repeat: only the flags given (or the CPU-box preset)."""
    cmd = ["sweep", "--model", args.model or "tiny-moe", "--out", str(out), "--quiet"]
    for flag, key in FLAGS:
        val = getattr(args, key)
        if val is None and args.model is None:
            val = CPU_BOX.get(key)
        if val is not None:
            cmd += [flag, str(val)]
    if args.cpu_moe_reference:
        cmd.append("--cpu-moe-reference")
    return cmd


def session_costs(evidence: Path) -> list[dict]:
    """Per server session of a sweep's evidence: seconds of load (spawn to /health), warm-up,
    measured requests, and after (the last response to the next session's spawn, or to the end of
    its memory samples for the last one), from arm_start spawn_ns/ready_ms and request
    t_send_ns/e2e_ms (one perf_counter clock)."""
    import gzip

    opener = gzip.open if evidence.suffix == ".gz" else open
    sessions: list[dict] = []
    with opener(evidence, "rt", encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            d = json.loads(line)
            k = d.get("kind")
            if k == "arm_start":
                sessions.append({"arm": d["arm"], "block": d.get("block", 0), "spawn_s": d["spawn_ns"] / 1e9,
                                 "load_s": (d.get("ready_ms") or 0.0) / 1e3, "warmup_s": 0.0, "measured_s": 0.0,
                                 "n_measured": 0, "last_s": d["spawn_ns"] / 1e9, "mem_s": 0.0})
            elif sessions and k == "request" and d.get("arm") == sessions[-1]["arm"]:
                cur = sessions[-1]
                e2e = (d.get("e2e_ms") or 0.0) / 1e3
                cur["warmup_s" if d.get("warmup") else "measured_s"] += e2e
                cur["n_measured"] += 0 if d.get("warmup") else 1
                cur["last_s"] = max(cur["last_s"], d["t_send_ns"] / 1e9 + e2e)
            elif sessions and k == "memory" and d.get("arm") == sessions[-1]["arm"]:
                sessions[-1]["mem_s"] = max(sessions[-1]["mem_s"], (d.get("t_ms") or 0.0) / 1e3)
    out = []
    for i, c in enumerate(sessions):
        end = sessions[i + 1]["spawn_s"] if i + 1 < len(sessions) else max(c["last_s"], c["spawn_s"] + c["mem_s"])
        out.append({"arm": c["arm"], "block": c["block"], "start_s": round(c["spawn_s"] - sessions[0]["spawn_s"], 1),
                    "load_s": round(c["load_s"], 1), "warmup_s": round(c["warmup_s"], 1),
                    "n_measured": c["n_measured"], "measured_s": round(c["measured_s"], 1),
                    "after_s": round(end - c["last_s"], 1), "session_s": round(end - c["spawn_s"], 1)})
    return out


def print_sessions(rows: list[dict]) -> None:
    print(f"{'session':28} {'start':>6} {'load':>5} {'warm-up':>7} {'measured':>12} {'after':>6} {'total':>6}  (s)")
    for r in rows:
        print(f"{r['arm'] + ' #' + str(r['block'] + 1):28} {r['start_s']:6.1f} {r['load_s']:5.1f} {r['warmup_s']:7.1f} "
              f"{r['measured_s']:7.1f} ({r['n_measured']:2d}) {r['after_s']:6.1f} {r['session_s']:6.1f}")
    tot = {k: round(sum(r[k] for r in rows), 1) for k in ("load_s", "warmup_s", "measured_s", "after_s", "session_s")}
    print(f"{'all ' + str(len(rows)) + ' sessions':28} {'':6} {tot['load_s']:5.1f} {tot['warmup_s']:7.1f} "
          f"{tot['measured_s']:7.1f}      {tot['after_s']:6.1f} {tot['session_s']:6.1f}")


def one(args: argparse.Namespace, out: Path) -> dict:
    cmd = [sys.executable, "-c", "from abtest.cli import main; main()", *sweep_argv(args, out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 4):
        raise SystemExit(f"abtest sweep exited {proc.returncode}: {proc.stderr.strip()[-400:]}")
    ev = next(out.glob("*.jsonl"))
    side = json.loads(ev.with_name(ev.stem + ".sweep.json").read_text())
    sessions = session_costs(ev)
    advice = next((ln.strip("*") for ln in proc.stdout.splitlines() if ln.startswith("**with")), "")
    return {"time_to_advice_s": side.get("time_to_advice_s"), "wall_s": round(wall, 2),
            "server_sessions": len(sessions), "exit_code": proc.returncode, "advice": advice,
            "sessions": sessions, "next_sessions": side.get("next_sessions", []), "argv": cmd[3:]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="default: tiny-moe with the CPU-box preset")
    for flag, key in FLAGS:
        ap.add_argument(flag, dest=key, default=None)
    ap.add_argument("--cpu-moe-reference", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--from-evidence", type=Path, default=None,
                    help="print where an existing sweep evidence file's time went, and run nothing")
    args = ap.parse_args()
    if args.from_evidence is not None:
        print_sessions(session_costs(args.from_evidence))
        return
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
    print("command: abtest " + " ".join(rows[-1]["argv"]))
    print_sessions(rows[-1]["sessions"])
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json), "from_evidence": None},
                                         "rows": rows, "load_before": load_before, "load_after": load_after},
                                        indent=1) + "\n")


if __name__ == "__main__":
    main()
