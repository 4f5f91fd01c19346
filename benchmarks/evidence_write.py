"""How long writing evidence stops the event loop, per record, while other requests stream.

    python benchmarks/evidence_write.py [--streams 4] [--itl-ms 5] [--tokens 128] [--records 300]
                                        [--code DIR] [--no-evidence] [--no-write]

In one process, as in `abtest run`: an asyncio loop runs `--streams` simulated streams, each a
request of `--tokens` token events `--itl-ms` apart on an absolute schedule; when one ends, its
`RequestRecord` (the size of a real one: events, chunk times, ids, text, timings) goes through the
runner's own `Runner.write`, timed on the loop (the *loop block per record*). Meanwhile the
runner's memory sampler (`VramSampler`, this process's /proc, every 100 ms) writes its samples
through `Runner._write_sample` on its thread, as in a run. Also measured: how late each token
event wakes against its schedule (what a late loop does to token stamps), with and without
evidence (`--no-evidence`: records are built and dropped). The control: right after each write, a
fixed piece of C work (SHA-256 of 32 KiB) timed at the same point of the loop: on a shared VM its
p99 shows the box's own noise (a vCPU woken from idle runs slow for a while), which no writer can
go below.

`--code DIR` imports abtest from another tree (e.g. `git archive` of an older commit) to measure
the code before a change with this same script. Results: printed, saved to
benchmarks/results/evidence_write-<label>.json and, unless --no-write, into docs/performance.md
between the ``evidence_write`` markers (one line per label).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import shlex
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
_BLOB = bytes(range(256)) * 128  # 32 KiB: SHA-256 of it is ~20-40 µs of C code, holding the GIL


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))] if s else float("nan")


def _record(mod: Any, arm: str, seq: int, events: list[tuple[int, int]], t_send_ns: int, e2e_ns: int) -> Any:
    ids = [1000 + (i * 7919) % 30000 for i in range(len(events))]
    return mod.RequestRecord(
        arm=arm, bucket="short", prompt_id=f"p{seq % 8}", run_index=seq // 8, seq=seq, warmup=False,
        endpoint="completion", concurrency=4, t_send_ns=t_send_ns, client_overhead_ms=0.05, status=200, error=None,
        ttft_ms=events[0][0] / 1e6, e2e_ms=e2e_ns / 1e6, prompt_tokens=64, completion_tokens=len(events),
        server_predicted_n=len(events), events=[mod.TokenEvent(t, n) for t, n in events],
        chunk_times_ns=[t for t, _ in events] + [e2e_ns], token_ids=ids,
        text="".join(f" tok{i}" for i in ids),
        timings={"prompt_n": 64, "prompt_ms": 12.5, "predicted_n": len(events), "predicted_ms": 640.1,
                 "predicted_per_second": 199.9, "cache_n": 0},
        cache_n=0, headers_ms=1.2, sent_at="2026-12-01T00:00:00+00:00",
    )


async def _run(args: argparse.Namespace, mods: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    records_mod, evidence_mod, runner_mod, sampler_mod = (mods[k] for k in ("records", "evidence", "runner", "sampler"))
    writer = None
    if not args.no_evidence:
        kw = {"new": True} if "new" in evidence_mod.EvidenceWriter.__init__.__code__.co_varnames else {}
        writer = evidence_mod.EvidenceWriter(out_dir / "bench.jsonl", **kw)
    fake = SimpleNamespace(writer=writer, _lock=threading.Lock(), _listeners=[], _evidence_failure=None)
    write = partial(runner_mod.Runner.write, fake) if writer is not None else (lambda rec: None)
    fake.write = write
    sink = partial(runner_mod.Runner._write_sample, fake) if writer is not None else (lambda s: None)
    sampler = sampler_mod.VramSampler(sampler_mod.Nvml(from_env=False), "a", os.getpid(), time.perf_counter_ns(),
                                      sink, args.sample_ms / 1000)
    sampler.start()
    block_ns: list[int] = []
    floor_ns: list[int] = []
    late_ms: list[float] = []
    itl_ns = int(args.itl_ms * 1e6)
    seq = 0
    done = asyncio.Event()

    async def stream(k: int) -> None:
        nonlocal seq
        await asyncio.sleep(k * args.itl_ms / args.streams / 1000)  # streams out of phase
        while seq < args.records:
            my, seq = seq, seq + 1
            t0 = time.perf_counter_ns()
            events = []
            for i in range(args.tokens):
                due = t0 + (i + 1) * itl_ns
                await asyncio.sleep(max(0, due - time.perf_counter_ns()) / 1e9)
                now = time.perf_counter_ns()
                late_ms.append((now - due) / 1e6)
                events.append((now - t0, 1))
            rec = _record(records_mod, "a", my, events, t0, time.perf_counter_ns() - t0)
            b0 = time.perf_counter_ns()
            write(rec)  # Runner._record's write, on the loop
            b1 = time.perf_counter_ns()
            hashlib.sha256(_BLOB).digest()  # the control: fixed C work at the same point of the loop
            floor_ns.append(time.perf_counter_ns() - b1)
            block_ns.append(b1 - b0)
        done.set()

    cpu0 = time.process_time()
    t_wall = time.perf_counter()
    with runner_mod.no_gc_pauses():  # as the runner times its requests
        await asyncio.gather(*(stream(k) for k in range(args.streams)))
    wall = time.perf_counter() - t_wall
    cpu = time.process_time() - cpu0
    sampler.stop()
    if writer is not None:
        writer.close()
        lines = (out_dir / "bench.jsonl").read_text().count("\n")
    else:
        lines = 0
    return {
        "records": len(block_ns), "lines_in_file": lines, "memory_samples": len(sampler.samples),
        "block_ms": {"p50": _pct(block_ns, 0.5) / 1e6, "p99": _pct(block_ns, 0.99) / 1e6, "max": max(block_ns) / 1e6},
        "control_ms": {"p50": _pct(floor_ns, 0.5) / 1e6, "p99": _pct(floor_ns, 0.99) / 1e6,
                       "max": max(floor_ns) / 1e6},
        "event_late_ms": {"p50": _pct(late_ms, 0.5), "p99": _pct(late_ms, 0.99), "max": max(late_ms)},
        "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--itl-ms", type=float, default=5.0)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--records", type=int, default=300)
    ap.add_argument("--sample-ms", type=float, default=100.0)
    ap.add_argument("--code", type=Path, default=ROOT, help="the abtest tree to import (default: this one)")
    ap.add_argument("--label", default=None, help="name of this result (default: the tree's git describe)")
    ap.add_argument("--no-evidence", action="store_true", help="build records, write nothing")
    ap.add_argument("--no-write", action="store_true", help="do not touch docs/performance.md")
    args = ap.parse_args()
    sys.path.insert(0, str(args.code.resolve()))
    import importlib

    mods = {k: importlib.import_module(f"abtest.{m}") for k, m in
            (("records", "records"), ("evidence", "evidence"), ("runner", "measure.runner"),
             ("sampler", "measure.sampler"))}
    label = args.label or ("no evidence" if args.no_evidence else args.code.name)
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        res = asyncio.run(_run(args, mods, Path(tmp)))
    res.update(label=label, load_avg_start=[round(x, 2) for x in load], load_avg_end=[round(x, 2) for x in os.getloadavg()],
               cpus=os.cpu_count(), python=platform.python_version(), at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
               command=shlex.join(["python", "benchmarks/evidence_write.py", *sys.argv[1:]]),
               params={k: getattr(args, k) for k in ("streams", "itl_ms", "tokens", "records", "sample_ms")})
    b, e, c = res["block_ms"], res["event_late_ms"], res["control_ms"]
    line = (f"{label}: loop block per record p50 {b['p50']:.3f} ms, p99 {b['p99']:.3f} ms, max {b['max']:.3f} ms "
            f"(control, SHA-256 of 32 KiB at the same point: p50 {c['p50']:.3f}, p99 {c['p99']:.3f} ms); "
            f"token events late p50 {e['p50']:.3f} ms, p99 {e['p99']:.3f} ms, max {e['max']:.2f} ms; "
            f"{res['records']} records, {res['memory_samples']} memory samples, CPU {res['cpu_s']} s in {res['wall_s']} s; "
            f"load {res['load_avg_start'][0]:.2f} → {res['load_avg_end'][0]:.2f} on {res['cpus']} CPUs")
    print(line)
    results = ROOT / "benchmarks" / "results"
    results.mkdir(exist_ok=True)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in label)
    (results / f"evidence_write-{safe}.json").write_text(json.dumps(res, indent=1) + "\n")
    if not args.no_write:
        _into_doc(label, f"- {line} (`{res['command']}`, {res['at']})")


def _into_doc(label: str, line: str) -> None:
    doc = ROOT / "docs" / "performance.md"
    text = doc.read_text()
    begin, end = "<!-- evidence_write:begin (written by benchmarks/evidence_write.py) -->", "<!-- evidence_write:end -->"
    if begin not in text:
        text = text.rstrip("\n") + f"\n\n{begin}\n{end}\n"
    head, rest = text.split(begin, 1)
    body, tail = rest.split(end, 1)
    kept = [ln for ln in body.strip("\n").splitlines() if ln and not ln.startswith(f"- {label}:")]
    doc.write_text(head + begin + "\n" + "\n".join([*kept, line]) + "\n" + end + tail)


if __name__ == "__main__":
    main()
