"""Measurement truth through the real `abtest run`: evidence written, sampler on, display off.

    python benchmarks/run_accuracy.py [--quick] [--out DIR] [--write-doc]

Each point is one `abtest run --quiet` (a subprocess pinned to CPU 0 with taskset) whose
`--server-bin` is the scripted llama-server impostor (tests/fakes/scripted.py, pinned to CPU 1)
with `--chunk-log`: the server logs, on CLOCK_MONOTONIC (the clock abtest stamps with), when each
request arrived (twice: when the kernel received its bytes, SO_TIMESTAMPNS, and when the server's
event loop read them), when each token chunk was written and its own from-arrival TTFT. abtest
sends `X-Request-Id: abtest-<arm>-b<block>-s<seq>` with every request, so each evidence record
pairs with its server lines exactly. Per point:

- TTFT error    = client TTFT (send -> first token event read) - server TTFT (the kernel's receipt
                  of the request's bytes -> first token chunk written). It is the send -> kernel
                  arrival time plus the client's own first-token lag: abtest's error alone. Where
                  the kernel stamp is missing (not Linux; the server log says why) the server's
                  read is used, and the point counts those requests (`n_no_kernel`);
- TTFT error from the server's read = the same against the server loop's read of the request
                  (the definition before the kernel stamp): it also holds the time the request's
                  bytes sat unread in the kernel while the single-threaded fake server wrote other
                  requests' tokens -- a wait of that server, not abtest's error, though a user of
                  such a server waits it too. Both are printed, and beside them
- send -> kernel arrival and send -> server read, which the two differ by;
- arrival lag   = client read time of a token event - server write time of that event;
- counts        = client token count vs max tokens vs the server's tokens sent;
- CPU           = user+system CPU of the abtest process itself (from /proc/PID/stat, servers
                  excluded), per 1k tokens: marginal (a big run minus a one-request run) and the
                  start-up (the one-request run) apart;
- open loop     = a slot-model server (n slots, a step time: a known capacity) driven at twice its
                  capacity with --rate: abtest's from-schedule TTFT (due -> first token read) against
                  the server's own first-token write time seen from the same due time, and the
                  report's Open loop section (the queue must be seen growing).

Schedule: TTFT 40 ms, ITL 8 ms, 1-3 tokens per event, an empty event every 5th and an SSE ping
every 7th (llama-server sends both), on /completion and on the chat endpoint with timings on every
chunk, with timings on the last chunk only, and with neither timings nor usage (abtest must then
fail the request, naming the cause, not count 0 tokens).

Results are printed, saved as JSON under --out and, with --write-doc, written into
docs/performance.md between the ``run_accuracy`` markers. Say the box's load with them: this
prints the load average before and after every point. A benchmark, not a test: nothing asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from fakes.scripted import SentChunk, read_chunk_log  # noqa: E402

from abtest.evidence import read_evidence  # noqa: E402
from abtest.measure.protocol import StreamRequest, request_id  # noqa: E402

DOC = ROOT / "docs" / "performance.md"
SCHEDULE = {"ttft_ms": 40, "itl_ms": 8, "tokens_per_event": [1, 2, 3], "empty_every": 5, "ping_every": 7}
TARGETS = {"ttft_p99_c1_ms": 0.5, "ttft_p99_c32_ms": 2.0, "lag_p99_c32_ms": 1.0, "open_p99_ms": 2.0,
           "cpu_per_1k_c32_s": 0.03, "startup_cpu_s": 1.0}


@dataclass
class Point:
    name: str
    endpoint: str = "completion"
    concurrency: int = 1
    runs: int = 16
    max_tokens: int = 32
    rate: float | None = None
    script: dict[str, Any] = field(default_factory=dict)
    # results
    n: int = 0
    n_ok: int = 0
    errors: list[str] = field(default_factory=list)
    counts_exact: bool | None = None
    ttft_err_ms: dict[str, float] = field(default_factory=dict)
    lag_ms: dict[str, float] = field(default_factory=dict)
    sched_err_ms: dict[str, float] = field(default_factory=dict)
    ttft_err_read_ms: dict[str, float] = field(default_factory=dict)  # against the server loop's read
    transit_ms: dict[str, float] = field(default_factory=dict)  # client send -> server's "arrive" (its read)
    kernel_transit_ms: dict[str, float] = field(default_factory=dict)  # client send -> the kernel's receipt
    n_no_kernel: int = 0  # requests whose "arrive" had no kernel stamp (TTFT error against the read)
    no_kernel_why: str = ""
    first_lag_ms: dict[str, float] = field(default_factory=dict)  # first token: client read - server write
    tokens: int = 0
    cpu_s: float | None = None
    wall_s: float = 0.0
    load: tuple[float, float] = (0.0, 0.0)
    open_loop: dict[str, Any] = field(default_factory=dict)


def _pcts(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {}
    s = sorted(xs)

    def q(p: float) -> float:
        return s[min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))]

    return {"p50": round(q(50), 4), "p99": round(q(99), 4), "max": round(s[-1], 4), "min": round(s[0], 4),
            "n": len(s)}


def _prompts(path: Path, n: int = 8) -> Path:
    with path.open("w") as fh:
        for i in range(n):
            fh.write(json.dumps({"id": f"p{i}", "bucket": "b", "text": f"Prompt number {i}: say something.",
                                 "target_tokens": None}) + "\n")
    return path


def _wrapper(d: Path, script: dict[str, Any], log: Path, server_cpu: int | None) -> Path:
    (d / "script.json").write_text(json.dumps(script))
    pin = f"taskset -c {server_cpu} " if server_cpu is not None and shutil.which("taskset") else ""
    w = d / "llama-server"
    w.write_text(f'#!/bin/sh\nexec {pin}{sys.executable} {ROOT / "tests/fakes/scripted.py"} '
                 f'--script @{d / "script.json"} --chunk-log {log} "$@"\n')
    w.chmod(0o755)
    return w


def _cpu_of(pid: int) -> float | None:
    """utime + stime of the process itself (not its children), in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _abtest_run(d: Path, p: Point, client_cpu: int | None, server_cpu: int | None) -> tuple[Path, Path, float | None]:
    log = d / "chunks.jsonl"
    wrapper = _wrapper(d, p.script, log, server_cpu)
    prompts = _prompts(d / "prompts.jsonl")
    cmd = [sys.executable, "-m", "abtest", "run", "--model", "tiny-moe", "--server-bin", str(wrapper),
           "--arm", "a=-ngl 99", "--runs", str(p.runs), "--blocks", "1", "--max-tokens", str(p.max_tokens),
           "--concurrency", str(p.concurrency), "--endpoint", p.endpoint, "--prompts", str(prompts),
           "--out", str(d / "ev"), "--quiet"]
    if p.rate:
        cmd += ["--rate", str(p.rate)]
    if client_cpu is not None and shutil.which("taskset"):
        cmd = ["taskset", "-c", str(client_cpu), *cmd]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(ROOT))
    last: list[float | None] = [None]

    def watch() -> None:  # the process's own CPU, sampled until it is gone
        while proc.poll() is None:
            v = _cpu_of(proc.pid)
            if v is not None:
                last[0] = v
            time.sleep(0.02)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    _, err = proc.communicate()
    t.join()
    p.wall_s = round(time.monotonic() - t0, 2)
    if proc.returncode not in (0, 4):
        raise RuntimeError(f"abtest run failed ({proc.returncode}): {err.strip()[-500:]}")
    ev_file = next((d / "ev").glob("*.jsonl"))
    return ev_file, log, last[0]


def measure(p: Point, base: Path, client_cpu: int | None, server_cpu: int | None) -> Point:
    d = base / p.name
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    load0 = os.getloadavg()[0]
    ev_file, log, cpu = _abtest_run(d, p, client_cpu, server_cpu)
    p.cpu_s = cpu
    p.load = (round(load0, 2), round(os.getloadavg()[0], 2))
    ev = read_evidence(ev_file)
    sent = read_chunk_log(log)
    by_req: dict[int, list[SentChunk]] = {}
    for c in sent:
        by_req.setdefault(c.req, []).append(c)
    req_of_id = {c.client_id: c.req for c in sent if c.kind == "request" and c.client_id}
    ttft_err, ttft_err_read, lags, sched_err, transit, kernel_transit, first_lag = [], [], [], [], [], [], []
    queue: list[tuple[int, float]] = []  # (due time, the server's arrive -> slot) per measured request
    exact = True
    measured = [r for r in ev.requests if not r.warmup]
    p.n = len(measured)
    for r in measured:
        if not r.ok:
            p.errors.append(r.error or "?")
            continue
        p.n_ok += 1
        rid = request_id(StreamRequest(arm=r.arm, bucket="", prompt_id="", prompt="", run_index=0, seq=r.seq,
                                       warmup=False, block=r.block))
        lines = by_req.get(req_of_id.get(rid, -1), [])
        summary = next((c for c in lines if c.kind == "summary"), None)
        data = [c for c in lines if c.kind == "data" and c.n_tokens > 0]
        sent_tokens = sum(c.n_tokens for c in data)
        p.tokens += r.completion_tokens
        if r.completion_tokens != p.max_tokens or sent_tokens != p.max_tokens:
            exact = False
        if summary is not None and summary.ttft_ms is not None and r.ttft_ms is not None:
            ttft_err_read.append(r.ttft_ms - summary.ttft_ms)
        arrive = next((c for c in lines if c.kind == "arrive"), None)
        if arrive is not None:
            transit.append((arrive.t_ns - r.t_send_ns) / 1e6)
            if arrive.t_kernel_ns is not None:
                kernel_transit.append((arrive.t_kernel_ns - r.t_send_ns) / 1e6)
            else:
                p.n_no_kernel += 1
                p.no_kernel_why = p.no_kernel_why or arrive.note
            if data and r.ttft_ms is not None:  # the server's TTFT from the kernel's receipt (else its read)
                t_in = arrive.t_kernel_ns if arrive.t_kernel_ns is not None else arrive.t_ns
                ttft_err.append(r.ttft_ms - (data[0].t_ns - t_in) / 1e6)
        if data and r.events:
            first_lag.append((r.t_send_ns + r.events[0].t_ns - data[0].t_ns) / 1e6)
        if len(data) == len(r.events):
            lags += [(r.t_send_ns + e.t_ns - c.t_ns) / 1e6 for e, c in zip(r.events, data, strict=True)]
        if r.t_scheduled_ns is not None and summary is not None and summary.queue_ms is not None:
            queue.append((r.t_scheduled_ns, summary.queue_ms))
        if r.t_scheduled_ns is not None and data and r.events:
            client = (r.t_send_ns + r.events[0].t_ns - r.t_scheduled_ns) / 1e6
            server = (data[0].t_ns - r.t_scheduled_ns) / 1e6
            sched_err.append(client - server)
    p.counts_exact = exact if p.n_ok else None
    p.ttft_err_ms, p.lag_ms, p.sched_err_ms = _pcts(ttft_err), _pcts(lags), _pcts(sched_err)
    p.ttft_err_read_ms, p.kernel_transit_ms = _pcts(ttft_err_read), _pcts(kernel_transit)
    p.transit_ms, p.first_lag_ms = _pcts(transit), _pcts(first_lag)
    if p.rate:
        p.open_loop = _open_loop_view(ev_file, [q for _, q in sorted(queue)])
    p.errors = sorted(set(p.errors))[:3]
    return p


def _open_loop_view(ev_file: Path, queue: list[float]) -> dict[str, Any]:
    """The report's Open loop row, and the server's own queue time (arrive -> slot) of the first
    and the last quarter of the measured requests, by due time."""
    from abtest.analysis.report import build_report

    rows = build_report([read_evidence(ev_file)]).load
    row = rows[0] if rows else None
    return {
        "report_row": asdict(row) if row else None,
        "growing": bool(row and row.queue_growing),
        "server_queue_ms_first_last": [round(statistics.median(queue[: max(len(queue) // 4, 1)]), 1),
                                       round(statistics.median(queue[-max(len(queue) // 4, 1):]), 1)] if queue else None,
    }


def plan(quick: bool) -> list[Point]:
    runs_c1, runs_c32 = (4, 8) if quick else (16, 16)
    sched = {"schedule": SCHEDULE}
    slots = {"slots": {"n": 4, "step_ms": 10}, "schedule": {k: SCHEDULE[k] for k in ("tokens_per_event", "empty_every",
                                                                                   "ping_every")}}
    # slot model: 4 slots, 10 ms a step, 32 tokens: ~0.33 s a request, ~12 req/s; offered twice that
    return [
        Point("startup", runs=1, max_tokens=32, script=sched),
        Point("completion-c1", runs=runs_c1, script=sched),
        Point("completion-c32", concurrency=32, runs=runs_c32 * 2, script=sched),
        Point("chat-c1", endpoint="chat", runs=runs_c1, script=sched),
        Point("chat-c32", endpoint="chat", concurrency=32, runs=runs_c32 * 2, script=sched),
        Point("chat-c32-last-timings", endpoint="chat", concurrency=32, runs=runs_c32,
              script={**sched, "chat_timings": "last"}),
        Point("chat-c32-no-timings-no-usage", endpoint="chat", concurrency=32, runs=runs_c32,
              script={**sched, "chat_timings": "none", "chat_usage": False}),
        Point("open-2x-capacity", rate=24.0, runs=runs_c32 // 2 if quick else 12, script=slots),
        # abtest's own CPU per token at c=32: two runs that differ only in their number of requests
        Point("cpu-c32-small", concurrency=32, runs=4, max_tokens=256, script=sched),
        Point("cpu-c32-big", concurrency=32, runs=8 if quick else 32, max_tokens=256, script=sched),
    ]


def _cpu_marginal(points: list[Point]) -> dict[str, float | None]:
    """Start-up: the CPU of the smallest run (one request per prompt, 32 tokens). Marginal at c=32:
    the CPU difference of two c=32 runs of 256-token requests over their token difference (the
    fixed costs, imports, launch and prompt fitting, cancel out)."""
    by = {p.name: p for p in points}
    start, small, big = by.get("startup"), by.get("cpu-c32-small"), by.get("cpu-c32-big")
    out: dict[str, float | None] = {"startup_cpu_s": start.cpu_s if start else None, "marginal_c32_s_per_1k": None}
    if small and big and small.cpu_s is not None and big.cpu_s is not None and big.tokens > small.tokens:
        out["marginal_c32_s_per_1k"] = round((big.cpu_s - small.cpu_s) / (big.tokens - small.tokens) * 1000, 4)
    return out


def render(res: dict[str, Any]) -> str:
    env = res["env"]
    lines = [
        f"Measured {res['when']} on {env['host']} ({env['cpus']} CPUs, Python {env['python']}); client on "
        f"CPU {env['client_cpu']}, scripted server on CPU {env['server_cpu']}; load average before/after "
        "each point in the table. Command: `python benchmarks/run_accuracy.py"
        f"{' --quick' if res['quick'] else ''}`.",
        "",
        "| point | ok/n | counts exact | TTFT err p50 / p99 ms | send → kernel arrival p50 / p99 ms | "
        "first-token lag p99 ms | TTFT err from server read p50 / p99 ms | send → server read p50 / p99 ms | "
        "arrival lag p50 / p99 ms | from-schedule err p99 ms | abtest CPU s | load |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]

    def pair(d: dict[str, float]) -> str:
        return f"{d.get('p50', '—')} / {d.get('p99', '—')}"

    for p in res["points"]:
        lines.append(
            f"| {p['name']} | {p['n_ok']}/{p['n']} | {p['counts_exact']} | {pair(p['ttft_err_ms'])} | "
            f"{pair(p.get('kernel_transit_ms', {}))} | {p['first_lag_ms'].get('p99', '—')} | "
            f"{pair(p.get('ttft_err_read_ms', {}))} | {pair(p['transit_ms'])} | {pair(p['lag_ms'])} | "
            f"{p['sched_err_ms'].get('p99', '—')} | {p['cpu_s']} | {p['load'][0]}–{p['load'][1]} |")
    lines.append("")
    cpu = res["cpu_per_1k_tokens_s"]
    lines.append(f"abtest process CPU (its own, servers excluded): start-up (the smallest run: 8 requests, "
                 f"imports, launch, prompt fitting) {cpu.get('startup_cpu_s')} s; marginal at concurrency 32 "
                 f"{cpu.get('marginal_c32_s_per_1k')} s per 1k tokens (cpu-c32-big minus cpu-c32-small).")
    lines.append("TTFT error = client TTFT − the server's own, counted from the kernel's receipt of the request "
                 "(SO_TIMESTAMPNS) to its write of the first token: the send → kernel arrival time (column 5) plus "
                 "the client's own lag in reading the first token (column 6), abtest's error alone. TTFT error from "
                 "server read = the same counted from the server's event loop reading the request (the definition "
                 "before): it adds the time the bytes sat unread in the kernel while the single-threaded fake "
                 "server wrote other requests' tokens (column 8 − column 5), a wait of that server, not of "
                 "abtest, though a user of such a server waits it too.")
    for p in res["points"]:
        if p.get("n_no_kernel"):
            lines.append(f"- {p['name']}: {p['n_no_kernel']} request(s) without a kernel arrival stamp "
                         f"({p['no_kernel_why']}): their TTFT error is from the server's read")
        if p["errors"]:
            lines.append(f"- {p['name']}: requests failed as: {'; '.join(e[:160] for e in p['errors'])}")
        if p["open_loop"]:
            ol = p["open_loop"]
            lines.append(f"- {p['name']}: report says queue growing = {ol['growing']}; server queue ms "
                         f"(first → last quarter) {ol['server_queue_ms_first_last']}; report row "
                         f"{json.dumps(ol['report_row'])}")
    lines.append("")
    lines.append("Targets (issue 13): " + ", ".join(f"{k} ≤ {v}" for k, v in TARGETS.items()) + ".")
    return "\n".join(lines)


def write_doc(section: str, name: str = "run_accuracy") -> None:
    text = DOC.read_text()
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{section}\n{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text += f"\n## Accuracy through `abtest run` (benchmarks/run_accuracy.py)\n\n{block}\n"
    DOC.write_text(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer requests per point")
    ap.add_argument("--out", type=Path, default=Path("/tmp/abtest-run-accuracy"))
    ap.add_argument("--client-cpu", type=int, default=0)
    ap.add_argument("--server-cpu", type=int, default=1)
    ap.add_argument("--only", default="", help="comma-separated point names")
    ap.add_argument("--write-doc", action="store_true")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    points = [p for p in plan(args.quick) if not args.only or p.name in args.only.split(",") or p.name == "startup"]
    # Byte-compile first, as `pip install` does: a fresh copy of the tree (the GPU box gets one per
    # call) would otherwise charge the compilation of every module to the start-up point's CPU.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "abtest")], check=False,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done = []
    for p in points:
        try:
            done.append(measure(p, args.out, args.client_cpu, args.server_cpu))
        except (RuntimeError, StopIteration) as exc:
            print(f"{p.name}: {exc}", file=sys.stderr)
            continue
        q = done[-1]
        print(f"{q.name:32s} ok {q.n_ok}/{q.n} exact={q.counts_exact} ttft_err={q.ttft_err_ms} "
              f"ttft_err_read={q.ttft_err_read_ms} send_to_kernel={q.kernel_transit_ms} lag={q.lag_ms} "
              f"sched={q.sched_err_ms} cpu={q.cpu_s} load={q.load} {q.errors[:1]}", flush=True)
    res = {
        "when": datetime.now(timezone.utc).isoformat(timespec="minutes"),
        "quick": args.quick,
        "env": {"host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
                "client_cpu": args.client_cpu, "server_cpu": args.server_cpu},
        "points": [asdict(p) for p in done],
        "cpu_per_1k_tokens_s": _cpu_marginal(done),
        "targets": TARGETS,
    }
    (args.out / "run_accuracy.json").write_text(json.dumps(res, indent=1) + "\n")
    text = render(res)
    print(text)
    if args.write_doc:
        write_doc(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
