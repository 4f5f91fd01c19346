"""Capacity side by side: abtest's concurrency search and guidellm's goodput search on one scripted
slot server whose capacity at the SLO is known.

    python -m venv /tmp/venv-guidellm && /tmp/venv-guidellm/bin/pip install guidellm==0.8.1
    python benchmarks/capacity_peer.py [--out DIR] [--write-doc]
    python benchmarks/capacity_peer.py --doc-from DIR/capacity_peer.json

guidellm is not a dependency of abtest: it lives in its own venv (PEER_VENVS of
benchmarks/client_accuracy.py). Both tools search over concurrency (closed loop) — guidellm's
goodput profile searches concurrency only — for the highest level whose TTFT p95 stays within the
limit (guidellm: 95 % of requests within it, its `target_attainment` 0.95, which is the same test).

The truth: the slot model with n slots, a step of `step_ms`, m tokens a request. At concurrency
c ≤ n every request gets a slot when it comes: its first token one step later. At c = n + 1, in
every wave of requests one waits for a whole request (m steps) — a fraction 1/(n + 1) of them, more
than 5 % for n < 19 — so TTFT p95 ≥ m·step for any probe long enough; the capacity at TTFT p95 ≤ L
with step < L < m·step is n. `closed_loop_ttft_ms` replays the engine's rules exactly for a probe
of N requests to check that the p95 is on the right side at n and n + 1. Place: n = 12 lies
between the ×2 levels 8 and 16.

The server: benchmarks/client_accuracy.py's BenchServer (the scripted server with an OpenAI
/v1/completions face, which guidellm speaks) for guidellm, the scripted server itself (abtest's
--server-bin wrapper) for abtest, the same script. A benchmark, not a test: nothing asserts.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import os
import platform
import shutil
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
sys.path.insert(0, str(ROOT / "benchmarks"))

from client_accuracy import BYTE_TOKENIZER, PEER_VENVS, BenchServer, _free_port, _http, make_byte_tokenizer  # noqa: E402
from fakes import SCRIPTED_PY  # noqa: E402
from fakes.scripted import Script  # noqa: E402

DOC = ROOT / "docs" / "performance.md"
BEGIN, END = "<!-- capacity_peer:begin -->", "<!-- capacity_peer:end -->"


def closed_loop_ttft_ms(c: int, n_requests: int, slots: int, step_ms: float, tokens: int,
                        rtt_ms: float = 0.5) -> list[float]:
    """Each request's TTFT with `c` clients, each sending its next request `rtt_ms` after its last
    one ended, against the slot model (steps back to back while busy, admission at a step's start,
    first token at the end of the first step, the slot free after `tokens` steps)."""
    free_at = [0.0] * slots
    t_step, busy_until = 0.0, -1.0
    clients = [(0.0, i) for i in range(c)]
    heapq.heapify(clients)
    out = []
    while len(out) < n_requests:
        a, who = heapq.heappop(clients)
        slot = min(range(slots), key=lambda i: free_at[i])
        ready = max(a, free_at[slot])
        if ready >= busy_until:
            start = t_step = ready
        else:
            start = t_step + math.ceil((ready - t_step) / step_ms - 1e-9) * step_ms
        end = start + tokens * step_ms
        free_at[slot] = end
        busy_until = max(busy_until, end)
        out.append(start + step_ms - a)
        heapq.heappush(clients, (end + rtt_ms, who))
    return out


class SlotServer:
    """BenchServer (the scripted server with an OpenAI face) started with the slot model: its engine
    is built at start from the script, so the script is given then (a /_bench/reset would not)."""

    def __init__(self, script: dict[str, Any]) -> None:
        self.port = _free_port()
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "serve", "--port",
                                      str(self.port), "--script", json.dumps(script)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.base_url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                if _http("GET", self.port, "/health")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("the slot server never became healthy")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def serve(port: int, script: str) -> None:
    import asyncio

    server = BenchServer(Script.from_dict(json.loads(script)), "127.0.0.1", port, None, in_process=False)
    asyncio.run(server.serve_forever())


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def run_abtest(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    script = out / "script.json"
    script.write_text(json.dumps({"slots": {"n": args.slots, "step_ms": args.step_ms}}))
    wrapper = out / "llama-server"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} {SCRIPTED_PY} --script @{script} "$@"\n')
    wrapper.chmod(0o755)
    prompts = out / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "bucket": "b", "text": f"Prompt number {i}.",
                                           "target_tokens": None}) + "\n" for i in range(4)))
    model = out / "tiny-moe.gguf"
    if not model.exists():
        from abtest.models.synth import write_synth

        write_synth(model, "tiny-moe", "q4_0", seed=0)
    slo = f"ttft_p95<={args.limit_ms:g}ms"
    cmd = [sys.executable, "-m", "abtest", "run", "-q", "--model", str(model), "--server-bin", str(wrapper),
           "--prompts", str(prompts), "--arm", "baseline=-ngl 99", "--runs", str(args.requests // 4), "--warmup", "1",
           "--max-tokens", str(args.tokens), "--concurrency", "auto", "--slo", slo, "--search-max", "64",
           "--blocks", str(args.blocks), "--out", str(out / "evidence")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - t0
    if run.returncode != 0:
        return {"error": run.stderr[-1500:]}
    evidence = run.stdout.strip().splitlines()[-1]
    rep = subprocess.run([sys.executable, "-m", "abtest", "report", evidence, "--format", "json"],
                         capture_output=True, text=True, env=env, cwd=ROOT, check=True)
    data = json.loads(rep.stdout)
    (cap,) = data["capacity"]
    probes = [lv["load_value"] for lv in data["levels"]]
    return {"capacity": cap["load"], "low": cap["load_low"], "high": cap["load_high"], "req_per_s": cap["req_per_s"],
            "sessions": [(s["low"], s["high"], s["load"]) for s in cap["sessions"]], "probes": sorted(probes),
            "wall_s": round(wall, 1), "command": "abtest " + " ".join(cmd[3:]).replace(str(out), "OUT"),
            "line": data["capacity_line"]}


def run_guidellm(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    venv = PEER_VENVS["guidellm"]
    if not (venv / "bin" / "guidellm").exists():
        return {"error": f"not installed: python -m venv {venv} && {venv}/bin/pip install guidellm==0.8.1"}
    make_byte_tokenizer(venv)
    srv = SlotServer({"slots": {"n": args.slots, "step_ms": args.step_ms}, "n_predict": args.tokens})
    try:
        gl_out = out / "guidellm"
        shutil.rmtree(gl_out, ignore_errors=True)
        gl_out.mkdir(parents=True)
        cmd = [str(venv / "bin" / "guidellm"), "run", "--backend", f"kind=openai_http,target={srv.base_url}",
               "--profile", "kind=goodput,initial_streams=1,max_streams=64,tolerance=0.05",
               "--constraint", f"kind=max_requests,count={args.requests}",
               "--data", f"kind=synthetic_text,prompt_tokens=16,output_tokens={args.tokens}",
               "--tokenizer", f"kind=huggingface_auto,model={BYTE_TOKENIZER}",
               "--metrics", json.dumps({"kind": "generative", "slo": {"ttft_ms": args.limit_ms}}),
               "--output", f"kind=json,path={gl_out / 'gl.json'}", "--disable-console-interactive"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=gl_out, timeout=1200)
        wall = time.perf_counter() - t0
    finally:
        srv.stop()
    res: dict[str, Any] = {"rc": proc.returncode, "wall_s": round(wall, 1),
                           "command": " ".join(cmd).replace(srv.base_url, "URL").replace(str(out), "OUT")}
    path = gl_out / "gl.json"
    if proc.returncode != 0 or not path.exists():
        res["error"] = (proc.stderr or proc.stdout)[-1500:]
        return res
    d = json.loads(path.read_text())
    conclusion = _find(d, "best_passing_streams")
    res["capacity"] = conclusion.get("best_passing_streams") if conclusion else None
    res["lowest_failing"] = conclusion.get("lowest_failing_streams") if conclusion else None
    res["stop_reason"] = conclusion.get("stop_reason") if conclusion else None
    res["probes"] = [(p["streams"], p["passed"], round(p["attainment"], 3)) for p in (conclusion or {}).get("probes", [])]
    return res


def _find(obj: Any, key: str) -> dict[str, Any] | None:
    """The first dict anywhere in `obj` that holds `key` (guidellm's search trace)."""
    if isinstance(obj, dict):
        if key in obj:
            return obj
        for v in obj.values():
            if (hit := _find(v, key)) is not None:
                return hit
    elif isinstance(obj, list):
        for v in obj:
            if (hit := _find(v, key)) is not None:
                return hit
    return None


def main() -> None:
    if sys.argv[1:2] == ["serve"]:
        sp = argparse.ArgumentParser()
        sp.add_argument("serve")
        sp.add_argument("--port", type=int, required=True)
        sp.add_argument("--script", required=True)
        a = sp.parse_args()
        serve(a.port, a.script)
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--slots", type=int, default=12)
    ap.add_argument("--step-ms", type=float, default=20.0)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--limit-ms", type=float, default=150.0)
    ap.add_argument("--requests", type=int, default=96, help="requests per probe (both tools)")
    ap.add_argument("--blocks", type=int, default=1)
    ap.add_argument("--tools", default="abtest,guidellm")
    ap.add_argument("--out", type=Path, default=Path("/tmp/capacity_peer"))
    ap.add_argument("--write-doc", action="store_true")
    ap.add_argument("--doc-from", type=Path)
    ap.add_argument("--keep", type=Path, help="reuse the abtest result of a saved capacity_peer.json")
    args = ap.parse_args()
    if args.doc_from:
        _write_doc(json.loads(args.doc_from.read_text()))
        return
    n, step, m = args.slots, args.step_ms, args.tokens
    p95 = {c: float(np.percentile(closed_loop_ttft_ms(c, args.requests, n, step, m), 95)) for c in (n, n + 1)}
    truth = n if p95[n] <= args.limit_ms < p95[n + 1] else None
    print(f"truth: {n} slots → TTFT p95 {p95[n]:.1f} ms at c={n}, {p95[n + 1]:.1f} ms at c={n + 1}: capacity {truth}")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs", "load_before": _load(),
        "model": {"slots": n, "step_ms": step, "tokens": m, "requests_per_probe": args.requests,
                  "limit_ms": args.limit_ms, "p95_at_n": p95[n], "p95_at_n1": p95[n + 1], "truth": truth,
                  "truth_rps": n / (m * step / 1000.0)},
        "tools": {},
    }
    kept = json.loads(args.keep.read_text())["tools"] if args.keep else {}
    for tool in args.tools.split(","):
        if tool in kept:
            result["tools"][tool] = kept[tool]
            continue
        result["tools"][tool] = run_abtest(args, out) if tool == "abtest" else run_guidellm(args, out)
        print(tool, json.dumps(result["tools"][tool]))
    result["load_after"] = _load()
    if "guidellm" in result["tools"]:
        r = subprocess.run([str(PEER_VENVS["guidellm"] / "bin" / "python"), "-c",
                            "import importlib.metadata as m; print(m.version('guidellm'))"], capture_output=True, text=True)
        result["guidellm_version"] = r.stdout.strip()
    (out / "capacity_peer.json").write_text(json.dumps(result, indent=2))
    if args.write_doc:
        _write_doc(result)


def _write_doc(r: dict[str, Any]) -> None:
    m = r["model"]
    lines = [BEGIN,
             f"Run {r['when']} on {r['host']}; load average {r['load_before']} before, {r['load_after']} after; "
             f"guidellm {r.get('guidellm_version', '?')} in its own venv. Command: `python benchmarks/capacity_peer.py "
             "--write-doc`.", "",
             f"Server: the scripted slot model, {m['slots']} slots, {m['step_ms']:g} ms a step, {m['tokens']} tokens a "
             f"request; SLO TTFT p95 ≤ {m['limit_ms']:g} ms; {m['requests_per_probe']} requests a probe. Truth "
             f"(the engine replayed): TTFT p95 {m['p95_at_n']:.1f} ms at concurrency {m['slots']}, "
             f"{m['p95_at_n1']:.1f} ms at {m['slots'] + 1}: **capacity concurrency {m['truth']}** "
             f"({m['truth_rps']:.1f} req/s).", "",
             "| tool | capacity (concurrency) | interval / bracket | error vs truth | probes | wall s |",
             "|---|---:|---|---:|---|---:|"]
    for tool, t in r["tools"].items():
        if "error" in t and t.get("capacity") is None:
            lines.append(f"| {tool} | — | {t['error'][:120]!r} | | | |")
            continue
        cap = t.get("capacity")
        err = f"{(cap / m['truth'] - 1) * 100:+.1f} %" if cap is not None and m["truth"] else "—"
        if tool == "abtest":
            br = ", ".join(f"{lo:g}–{hi:g}" for lo, hi, _ in t["sessions"])
            probes = ", ".join(f"{x:g}" for x in t["probes"])
        else:
            br = f"{cap}–{t.get('lowest_failing')} ({t.get('stop_reason')})"
            probes = ", ".join(f"{s}{'✓' if ok else '✗'}" for s, ok, _ in t["probes"])
        lines.append(f"| {tool} | {cap if cap is not None else '—'} | {br} | {err} | {probes} | {t['wall_s']} |")
    lines += ["", *[f"- {tool}: `{t['command']}`" for tool, t in r["tools"].items() if "command" in t], END]
    text = DOC.read_text(encoding="utf-8")
    block = "\n".join(lines)
    if BEGIN in text:
        text = text.split(BEGIN)[0] + block + text.split(END, 1)[1]
    else:
        text = text.rstrip() + "\n\n## Capacity side by side with guidellm\n\n" + block + "\n"
    DOC.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
