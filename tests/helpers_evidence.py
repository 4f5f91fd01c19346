"""Fabricated evidence files for tests, built from the record dataclasses with a controllable seed.

`fabricate(path, seed=...)` writes a complete run (run_start, arm_start, requests, memory samples,
arm_end per arm, run_end) through the real `EvidenceWriter`, so the report reads exactly what a run
would have written. Every knob a report test needs is a keyword: per-arm speeds and VRAM, failures,
divergent outputs, clock and temperature drift, a slow first request, a truncated last line, a
partial run, different host / GPU / driver / model / server build, and server sessions: `blocks=N`
restarts every arm N times in the counterbalanced order of `abtest run --blocks` (A0 B0 B1 A1 …),
each session with its own offset (`Arm.session_sd`, `Arm.block_factors`).

Per-request decode tok/s is drawn as Normal(decode_tps, cv·decode_tps), and token events are laid
out so that the metric, (tokens - 1) / (last token - first token), gives back exactly that draw; the
stream ends `STREAM_END_AFTER_LAST_TOKEN_MS` after the last token, as a real one does.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from abtest.evidence import EvidenceWriter
from abtest.records import ArmEnd, ArmStart, RequestRecord, RunEnd, RunManifest, TokenEvent, VramSample

SHA_A = "a" * 64
STREAM_END_AFTER_LAST_TOKEN_MS = 1.1
SHA_B = "b" * 64


@dataclass
class Arm:
    """How one fabricated arm behaves."""

    name: str
    extra_argv: list[str] = field(default_factory=list)
    decode_tps: float = 80.0  # mean per-request decode tokens/s
    decode_cv: float = 0.03
    ttft_ms: float = 120.0  # mean TTFT (lognormal)
    ttft_cv: float = 0.05
    vram_mib: float | None = 11000.0  # this PID's VRAM after load; None: NVML cannot say
    vram_peak_extra_mib: float = 200.0
    rss_anon_mib: float = 900.0
    rss_file_mib: float = 1200.0
    failed_requests: int = 0  # this many measured requests come back with an error
    diverge_at: int | None = None  # token position where outputs differ from the other arms
    diverge_every: int = 1  # only every k-th request diverges
    failed: bool = False  # the server never became healthy: arm_end status "failed", no requests
    clock_mhz: tuple[int, int] = (1980, 1980)  # SM clock at start and end of the measured window
    temperature_c: tuple[int, int] = (55, 57)
    first_request_factor: float = 1.0  # >1 makes the first measured request that much slower
    breakdown: dict = field(default_factory=lambda: {})
    # server sessions (fabricate(blocks=N)): each session's decode rate is multiplied, and its TTFT
    # divided, by exp(Normal(0, session_sd)) and by block_factors[block] (1 where not given)
    session_sd: float = 0.0
    block_factors: tuple[float, ...] = ()


def default_arms() -> list[Arm]:
    return [
        Arm("baseline", ["-ngl", "99"], decode_tps=80.0, ttft_ms=120.0, vram_mib=11800.0),
        Arm("cpu-moe", ["-ngl", "99", "--cpu-moe"], decode_tps=9.0, ttft_ms=900.0, vram_mib=1450.0),
    ]


def fabricate(
    path: Path | str,
    *,
    seed: int = 0,
    arms: Sequence[Arm] | None = None,
    buckets: Sequence[str] = ("short", "long"),
    prompts_per_bucket: int = 4,
    runs: int = 3,
    warmup: int = 1,
    completion_tokens: int = 64,
    concurrency: int = 1,
    with_token_ids: bool = True,
    host: str = "bench-01",
    gpu_name: str = "NVIDIA H100 80GB HBM3",
    driver: str = "550.54.15",
    gpu_available: bool = True,
    model_name: str = "tiny-moe",
    model_sha256: str = SHA_A,
    model_params: dict | None = None,
    server_build_id: str = "b6000",
    started_at: str = "2026-11-20T01:00:00Z",
    port_base: int = 18080,
    temperature: float | None = 0.0,
    partial: bool = False,
    truncate_last_line: bool = False,
    blocks: int = 1,
    backend: str = "cuda",
) -> Path:
    """Write one fabricated evidence file to `path` and return the path."""
    path = Path(path)
    path.unlink(missing_ok=True)  # the writer appends; a fabricated file starts empty
    rng = np.random.default_rng(seed)
    arms = list(arms) if arms is not None else default_arms()
    params = model_params if model_params is not None else {
        "total_params": 20_900_000_000,
        "active_params": 3_600_000_000,
        "n_expert": 32,
        "n_expert_used": 4,
    }
    model_path = f"/models/{model_name}.gguf"
    manifest = RunManifest(
        run_id=f"run-{seed}",
        abtest_version="0.1.0",
        started_at=started_at,
        argv=["abtest", "run", "--runs", str(runs)],
        host={"hostname": host, "cpu": "AMD EPYC 9654", "cpu_count": 16, "mem_total_mib": 131072},
        gpu={
            "available": gpu_available,
            "reason": None if gpu_available else "no NVIDIA driver",
            "driver": driver if gpu_available else None,
            "devices": [{"index": 0, "name": gpu_name, "memory_total_mib": 81559}] if gpu_available else [],
        },
        models=[{"name": model_name, "path": model_path, "size_bytes": 12_000_000_000, "sha256": model_sha256,
                 "arch": "gpt-oss", **params}],
        config={
            "arms": [{"name": a.name, "args": a.extra_argv} for a in arms],
            "sampling": {"temperature": temperature, "n_predict": completion_tokens},
        },
    )
    prompts = [(b, f"{b}-{i}") for b in buckets for i in range(prompts_per_bucket)]
    vocab = rng.integers(0, 32000, size=(len(prompts), runs, completion_tokens))
    n_req_total = n_fail_total = 0
    arms_failed: list[str] = []
    t_host_ns = 10_000_000_000  # this host's monotonic clock, advanced as requests "run"

    # the sessions in the order they run: every arm once per block, the order reversed every other
    # block (A0 B0 B1 A1 A2 B2 ...), as `abtest run --blocks` counterbalances them
    order = [(j, ai) for j in range(blocks) for ai in (range(len(arms)) if j % 2 == 0 else
                                                         reversed(range(len(arms))))]
    seqs = [0] * len(arms)

    with EvidenceWriter(path, fsync=False) as w:
        w.write(manifest)
        for block, ai in order:
            arm = arms[ai]
            port = port_base + ai + 100 * block
            argv = ["/opt/llama/bin/llama-server", "-m", model_path, "--port", str(port), *arm.extra_argv]
            build = {"version_text": f"version: 6000 ({server_build_id})", "build_id": server_build_id,
                     "backend": backend, "found_via": "cache"}
            log_path = f"/tmp/abtest/{arm.name}.log" if blocks == 1 else f"/tmp/abtest/{arm.name}-b{block}.log"
            if arm.failed:
                if arm.name not in arms_failed:
                    arms_failed.append(arm.name)
                w.write(ArmEnd(arm=arm.name, status="failed", error="llama-server exited (code 1) before /health",
                               exit_code=1, stop_ms=None, n_requests=0, n_failed=0, memory={}, breakdown={},
                               log_path=log_path, log_tail=["CUDA error: out of memory"], block=block))
                continue
            offset = float(np.exp(rng.normal(0.0, arm.session_sd))) if arm.session_sd > 0 else 1.0
            if block < len(arm.block_factors):
                offset *= arm.block_factors[block]
            ready_ms = 4000.0
            after_load = _vram_dict(arm, ready_ms, arm.vram_mib, arm.clock_mhz[0], arm.temperature_c[0], block)
            w.write(ArmStart(arm=arm.name, model_path=model_path, model_sha256=model_sha256,
                             server_bin=argv[0], server_build=build, argv=argv, port=port, pid=4000 + ai + 100 * block,
                             ready_ms=ready_ms, started_at=started_at, log_path=log_path,
                             prompt_tokens={pid: 32 if b == "short" else 512 for b, pid in prompts},
                             memory_after_load=after_load, block=block))
            # requests: warm-up first, then runs x prompts in order
            schedule = [(True, 0, prompts[i % len(prompts)]) for i in range(warmup)]
            schedule += [(False, r, p) for r in range(runs) for p in prompts]
            n_fail = 0
            measured_seen = 0
            t_first_ns = t_host_ns
            records: list[RequestRecord] = []
            for is_warm, run_index, (bucket, prompt_id) in schedule:
                fail = (not is_warm) and measured_seen < arm.failed_requests
                factor = arm.first_request_factor if (not is_warm and measured_seen == 0) else 1.0
                if not is_warm:
                    measured_seen += 1
                pidx = prompts.index((bucket, prompt_id))
                ids = [int(x) for x in vocab[pidx, run_index % runs]]
                if arm.diverge_at is not None and (pidx % arm.diverge_every == 0):
                    ids[arm.diverge_at] = (ids[arm.diverge_at] + 1) % 32000
                rec = _request(rng, arm, bucket, prompt_id, run_index, seqs[ai], is_warm, concurrency, t_host_ns,
                               completion_tokens, ids, with_token_ids, fail, factor, offset, block)
                records.append(rec)
                t_host_ns += int(((rec.e2e_ms or 5.0) + 2.0) * 1e6)
                seqs[ai] += 1
                n_fail += fail
            for rec in records:
                w.write(rec)
            # memory samples every 500 ms from spawn to the end of the arm, clocks/temperature moving
            # linearly across the measured window
            span_ms = (t_host_ns - t_first_ns) / 1e6
            n_samples = max(int((ready_ms + span_ms) / 500.0), 4)
            for k in range(n_samples + 1):
                t_ms = k * 500.0
                frac = min(max((t_ms - ready_ms) / max(span_ms, 1.0), 0.0), 1.0)
                clock = int(arm.clock_mhz[0] + frac * (arm.clock_mhz[1] - arm.clock_mhz[0]))
                temp = int(round(arm.temperature_c[0] + frac * (arm.temperature_c[1] - arm.temperature_c[0])))
                if t_ms < ready_ms:  # loading: idle clocks, VRAM filling up
                    vram = None if arm.vram_mib is None else arm.vram_mib * t_ms / ready_ms
                    clock, temp = 345, arm.temperature_c[0]
                else:
                    vram = None if arm.vram_mib is None else arm.vram_mib + arm.vram_peak_extra_mib * frac
                w.write(VramSample(**_vram_dict(arm, t_ms, vram, clock, temp, block)))
            peak = _vram_dict(arm, ready_ms + span_ms, None if arm.vram_mib is None
                              else arm.vram_mib + arm.vram_peak_extra_mib, arm.clock_mhz[1], arm.temperature_c[1], block)
            w.write(ArmEnd(arm=arm.name, status="ok", error=None, exit_code=0, stop_ms=150.0,
                           n_requests=len(records), n_failed=n_fail,
                           memory={"after_load": after_load, "steady": after_load, "peak": peak},
                           breakdown=arm.breakdown or _breakdown(arm), log_path=log_path, block=block))
            n_req_total += len(records)
            n_fail_total += n_fail
            t_host_ns += 3_000_000_000
        if not partial:
            w.write(RunEnd(finished_at="2026-11-20T01:30:00Z", duration_s=(t_host_ns - 10_000_000_000) / 1e9,
                           n_requests=n_req_total, n_failed=n_fail_total, arms_failed=arms_failed))
    if truncate_last_line:
        text = path.read_text(encoding="utf-8")
        path.write_text(text[: len(text) - 40], encoding="utf-8")  # cut the last record mid-way
    return path


def _vram_dict(arm: Arm, t_ms: float, vram: float | None, clock: int, temp: int, block: int = 0) -> dict:
    return dataclasses.asdict(VramSample(
        arm=arm.name, t_ms=t_ms, pid_vram_mib=vram,
        device_used_mib=None if vram is None else vram + 500.0,
        sm_clock_mhz=clock, temperature_c=temp, power_w=300.0,
        host_rss_anon_mib=arm.rss_anon_mib, host_rss_file_mib=arm.rss_file_mib, block=block,
    ))


def _breakdown(arm: Arm) -> dict:
    gpu_model = (arm.vram_mib or 0.0) - 700.0
    # the shape abtest.serverlog.parse_memory_breakdown returns
    return {
        "buffers": {
            "CUDA0": {"model_mib": max(gpu_model, 0.0), "kv_mib": 192.0, "compute_mib": 398.0},
            "CPU_Mapped": {"model_mib": 11223.6 - max(gpu_model, 0.0)},
        },
        "offloaded_layers": 25,
        "total_layers": 25,
    }


def _request(rng, arm: Arm, bucket: str, prompt_id: str, run_index: int, seq: int, warm: bool, concurrency: int,
             t_send_ns: int, n_tok: int, ids: list[int], with_ids: bool, fail: bool, factor: float,
             offset: float = 1.0, block: int = 0) -> RequestRecord:
    if fail:
        return RequestRecord(arm=arm.name, bucket=bucket, prompt_id=prompt_id, run_index=run_index, seq=seq,
                             warmup=warm, endpoint="completion", concurrency=concurrency, t_send_ns=t_send_ns,
                             client_overhead_ms=0.3, status=500, error="HTTP 500: slot unavailable",
                             ttft_ms=None, e2e_ms=4.0, prompt_tokens=None, completion_tokens=0,
                             server_predicted_n=None, events=[], chunk_times_ns=[], token_ids=None, text="",
                             timings={}, cache_n=None, block=block)
    tps = max(rng.normal(arm.decode_tps, arm.decode_cv * arm.decode_tps), 0.05 * arm.decode_tps) / factor * offset
    s2 = np.log(1 + arm.ttft_cv**2)
    scale = 4.0 if bucket == "long" else 1.0
    ttft = float(rng.lognormal(np.log(arm.ttft_ms * scale) - s2 / 2, np.sqrt(s2))) * factor / offset
    itl_ms = 1000.0 / tps
    t0_ns = int(ttft * 1e6)
    events = [TokenEvent(t0_ns + int(round(k * itl_ms * 1e6)), 1) for k in range(n_tok)]
    # the stream ends after the last token event (the [DONE] / final event: about 1.1 ms later on
    # the committed H100 evidence), so end-to-end and last-token metrics differ, as they do for real
    e2e = events[-1].t_ns / 1e6 + STREAM_END_AFTER_LAST_TOKEN_MS
    return RequestRecord(
        arm=arm.name, bucket=bucket, prompt_id=prompt_id, run_index=run_index, seq=seq, warmup=warm,
        endpoint="completion", concurrency=concurrency, t_send_ns=t_send_ns, client_overhead_ms=0.3,
        status=200, error=None, ttft_ms=ttft, e2e_ms=e2e, prompt_tokens=32 if bucket == "short" else 512,
        completion_tokens=n_tok, server_predicted_n=n_tok, events=events,
        chunk_times_ns=[e.t_ns for e in events], token_ids=ids if with_ids else None,
        text=" ".join(f"t{i}" for i in ids), timings={"predicted_n": n_tok, "cache_n": 0}, cache_n=0,
        headers_ms=ttft * 0.2, sent_at="2026-11-20T01:00:00Z", block=block,
    )


def read_lines(path: Path) -> list[dict]:
    """The JSON objects of an evidence file (for tests that edit one)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def write_lines(path: Path, objs: list[dict]) -> Path:
    Path(path).write_text("".join(json.dumps(o) + "\n" for o in objs))
    return Path(path)
