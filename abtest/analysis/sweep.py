"""The sweep analysis: VRAM vs speed per ``--n-cpu-moe N``, the frontier, one line of advice.

Reads evidence only: the JSONL a sweep wrote (predictions in the manifest's
``config.extra["sweep"]``, measurements in ``arm_end`` and the request records) and, when it lies
beside it, the ``.sweep.json`` search trail, and builds the numbers and the advice as data
(`abtest.render.sweep` draws them). Like all of `abtest.analysis` it never reaches a server, a
socket or the GPU (tests/unit/test_import_boundaries.py), so it can be re-made anywhere.

Numbers, per setting:

* VRAM: measured = per-PID NVML peak over the arm (``arm_end.memory.peak.pid_vram_mib``; the
  steady value is the median sample); predicted = `vram.predict` as written before launch;
  error = measured - predicted.
* decode tok/s = `metrics.decode_tps` per request (tokens after the first read over first->last
  token read; requests it cannot measure left out); the buckets' means weighted by their share of the requests, σ within buckets and a
  stratified t-interval (`stratified.mean_ci_stratified`: the spread between buckets is not
  noise); × reference = the ratio to the all-experts-on-CPU setting, compared within buckets
  (`stratified.ratio_ci_stratified`).
* TTFT ms = `metrics.ttft_ms`, per prompt bucket.
* Bytes per decoded token: from GPU memory, every GPU weight a token touches (all non-expert GPU
  tensors, n_expert_used / n_expert of each GPU layer's experts) plus the KV cache up to the mean
  depth (prompt + half the output); from host memory, the same fraction of the CPU layers'
  experts. Effective bandwidth = bytes per token × decode tok/s: what each side would have to
  sustain if it had the whole token time. The slope of time per token against host bytes per
  token, across settings, gives the marginal cost of host-resident experts.
* Prefill: a prompt micro-batch of >= 32 tokens makes the GPU copy the host-resident experts it
  uses over PCIe; bytes copied / TTFT is the PCIe rate the prompt implies (a lower bound).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..evidence import SWEEP_SIDECAR_SUFFIX, Evidence, read_evidence
from ..fmt import fmt_fixed, fmt_gib
from ..records import GIB, MIB, ArmEnd, RequestRecord
from . import stats
from .metrics import decode_tps, ttft_ms
from .stratified import MeanCI, mean_ci, mean_ci_stratified, ratio_ci_stratified

CONFIDENCE = 0.95


def _arm_n(name: str) -> int | None:
    return int(name[5:]) if name.startswith("ncmoe") and name[5:].isdigit() else None


@dataclass
class SettingRow:
    n: int
    arm: str
    status: str  # "measured" | "failed" | "skipped" | "not run"
    reason: str
    predicted: dict[str, Any]  # VramPrediction as a dict
    vram_peak_mib: float | None
    vram_steady_mib: float | None
    vram_basis: str  # "nvml per-PID" | "device used delta" | "predicted"
    buffers: dict[str, dict[str, float]]  # from the server log, per buffer name
    decode: MeanCI
    ttft: dict[str, MeanCI]  # per bucket
    prompt_tokens: dict[str, float]  # per bucket, mean
    depth_tokens: float  # mean context depth during decode
    speedup: stats.RatioCI | None = None  # vs the reference setting
    on_frontier: bool = False
    gpu_bytes_per_token: float = math.nan
    host_bytes_per_token: float = math.nan
    pcie_bytes_prefill: float = math.nan  # for the longest bucket's prompt

    @property
    def vram_mib(self) -> float | None:
        """The figure the budget is judged on: measured peak, else the prediction."""
        if self.vram_peak_mib is not None:
            return self.vram_peak_mib
        return self.predicted.get("total_mib") if self.status != "skipped" else None

    @property
    def error_mib(self) -> float | None:
        if self.vram_peak_mib is None or not self.predicted:
            return None
        return self.vram_peak_mib - float(self.predicted["total_mib"])

    @property
    def gpu_bw(self) -> float:
        return self.gpu_bytes_per_token * self.decode.mean

    @property
    def host_bw(self) -> float:
        return self.host_bytes_per_token * self.decode.mean


@dataclass
class SweepReport:
    evidence_path: Path
    model: str
    backend: str
    n_layer: int
    n_ctx: int
    budget_mib: float | None
    free_mib: float | None
    overhead_mib: float
    rows: list[SettingRow]
    reference: int | None  # the setting speedups are relative to
    best: int | None
    advice: str
    long_bucket: str | None
    explanation: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    trail: list[dict[str, Any]] = field(default_factory=list)
    cpu_build: dict[str, float] = field(default_factory=dict)  # vram.cpu_buffers as predicted

    def row(self, n: int) -> SettingRow | None:
        return next((r for r in self.rows if r.n == n), None)


# ----------------------------------------------------------------------------- building


def read_sidecar(evidence_path: Path) -> dict[str, Any] | None:
    p = Path(evidence_path)
    side = p.with_name(p.stem + SWEEP_SIDECAR_SUFFIX)
    try:
        data = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _buffers(end: ArmEnd | None) -> dict[str, dict[str, float]]:
    if end is None:
        return {}
    b = (end.breakdown or {}).get("buffers") or {}
    return {k: dict(v) for k, v in b.items() if isinstance(v, dict)}


def build_sweep_report(ev: Evidence, sidecar: dict[str, Any] | None = None) -> SweepReport:
    """Everything the sweep report shows, from one evidence file (and its trail, if given)."""
    from ..errors import EvidenceError

    if ev.manifest is None:
        raise EvidenceError(f"{ev.path}: no run_start record; not a complete evidence file")
    sweep = (ev.manifest.config.get("extra") or {}).get("sweep")
    if not isinstance(sweep, dict):
        raise EvidenceError(f"{ev.path}: not a sweep (no config.extra.sweep in the manifest); use `abtest report`")
    layout = sweep.get("layout", {})
    n_layer = int(layout.get("n_layer", 0))
    preds: dict[int, dict[str, Any]] = {int(k): v for k, v in sweep.get("predictions", {}).items()}
    backend = str(sweep.get("backend", "unknown"))
    trail = list((sidecar or {}).get("trail", []))
    trail_by_n = {int(t["n"]): t for t in trail if "n" in t}
    ends = {e.arm: e for e in ev.arm_ends}
    started = {s.arm for s in ev.arm_starts}
    reqs: dict[str, list[RequestRecord]] = {}
    for r in ev.requests:
        if not r.warmup and r.ok:
            reqs.setdefault(r.arm, []).append(r)
    buckets = sorted({r.bucket for rs in reqs.values() for r in rs})
    # each bucket's share of the plan (the ok measured requests of every setting): decode rates of
    # a setting are compared within buckets and combined, as the report's "all" row is
    counts = {b: sum(1 for rs in reqs.values() for r in rs if r.bucket == b) for b in buckets}
    weights = {b: c / sum(counts.values()) for b, c in counts.items()}
    mean_prompt = {
        b: float(np.mean([r.prompt_tokens or 0 for rs in reqs.values() for r in rs if r.bucket == b])) for b in buckets
    }
    long_bucket = max(buckets, key=lambda b: mean_prompt[b]) if buckets else None

    ran = sorted({n for a in set(ends) | started if (n := _arm_n(a)) is not None})
    listed = [int(n) for n in sweep.get("settings", [])] if sweep.get("mode") == "list" else []
    shown = sorted(set(ran) | set(listed) | {n for n, t in trail_by_n.items() if t.get("status") == "skipped"})
    skipped_start = {int(k): v for k, v in (sweep.get("skipped_at_start") or {}).items()}

    rows: list[SettingRow] = []
    for n in shown:
        arm = f"ncmoe{n}"
        end = ends.get(arm)
        rs = reqs.get(arm, [])
        t = trail_by_n.get(n, {})
        if end is not None and end.status == "ok" and rs:
            status, reason = "measured", ""
        elif end is not None:
            status, reason = "failed", end.error or f"{end.n_failed} of {end.n_requests} requests failed"
        elif t.get("status") == "skipped" or n in skipped_start:
            status, reason = "skipped", t.get("reason") or skipped_start.get(n, "")
        else:
            status, reason = "not run", "interrupted before this setting"
        peak = steady = None
        basis = "predicted"
        if end is not None and end.memory:
            pk = (end.memory.get("peak") or {}).get("pid_vram_mib")
            sd = (end.memory.get("steady") or {}).get("pid_vram_mib")
            if pk is not None:
                peak, steady, basis = float(pk), (float(sd) if sd is not None else None), "nvml per-PID"
            elif t.get("vram_mib") is not None:
                peak, basis = float(t["vram_mib"]), "device used delta"
        depth = float(np.mean([(r.prompt_tokens or 0) + r.completion_tokens / 2 for r in rs])) if rs else math.nan
        row = SettingRow(
            n=n, arm=arm, status=status, reason=reason, predicted=preds.get(n, {}), vram_peak_mib=peak,
            vram_steady_mib=steady, vram_basis=basis, buffers=_buffers(end),
            decode=mean_ci_stratified(*_rates(rs), weights),
            ttft={b: mean_ci([v for r in rs if r.bucket == b and (v := ttft_ms(r)) is not None]) for b in buckets},
            prompt_tokens={b: float(np.mean([r.prompt_tokens or 0 for r in rs if r.bucket == b]))
                           for b in buckets if any(r.bucket == b for r in rs)},
            depth_tokens=depth,
        )
        _traffic(row, backend, long_bucket)
        rows.append(row)

    measured = [r for r in rows if r.status == "measured" and r.decode.n > 0]
    reference = max((r.n for r in measured), default=None)
    if reference is not None:
        ref_vals, ref_strata = _rates(reqs.get(f"ncmoe{reference}", []))
        for row in measured:
            vals, strata = _rates(reqs.get(row.arm, []))
            row.speedup = ratio_ci_stratified(ref_vals, ref_strata, vals, strata, weights=weights)
    _mark_frontier(measured)

    budget = sweep.get("budget_mib")
    budget = float(budget) if budget is not None else None
    best = pick_best(rows, budget)
    rep = SweepReport(
        evidence_path=ev.path, model=str(layout.get("name", sweep.get("model_path", "?"))), backend=backend,
        n_layer=n_layer, n_ctx=int((sweep.get("ctx") or {}).get("n_ctx", 0)), budget_mib=budget,
        free_mib=sweep.get("free_mib"), overhead_mib=float(sweep.get("overhead_mib", math.nan)), rows=rows,
        reference=reference, best=best, advice="", long_bucket=long_bucket, trail=trail,
        cpu_build=dict(sweep.get("cpu_build") or {}),
    )
    rep.advice = advice_line(rep)
    rep.explanation = explain(rep)
    rep.notes = _notes(rep, ev)
    return rep


def _rates(rs: list[RequestRecord]) -> tuple[np.ndarray, np.ndarray]:
    """The decode rates that can be measured, and each one's bucket."""
    pairs = [(v, r.bucket) for r in rs if (v := decode_tps(r)) is not None]
    return np.array([v for v, _ in pairs], dtype=float), np.array([b for _, b in pairs])


def _traffic(row: SettingRow, backend: str, long_bucket: str | None) -> None:
    p = row.predicted
    if not p:
        return
    kv = float(p.get("kv_read_per_token_per_cell", 0)) * (row.depth_tokens if math.isfinite(row.depth_tokens) else 0)
    gpu = float(p.get("gpu_read_per_token", 0)) + kv
    host = float(p.get("host_read_per_token", 0))
    if backend == "cpu":  # a CPU build: every byte comes from host memory, nothing crosses PCIe
        row.gpu_bytes_per_token, row.host_bytes_per_token, row.pcie_bytes_prefill = 0.0, gpu + host, 0.0
        return
    row.gpu_bytes_per_token, row.host_bytes_per_token = gpu, host
    if long_bucket and long_bucket in row.prompt_tokens:
        ptoks = row.prompt_tokens[long_bucket]
        ub = max(int(p.get("n_ubatch", 512)), 1)
        row.pcie_bytes_prefill = float(p.get("pcie_bytes_per_ubatch", 0)) * math.ceil(ptoks / ub) if ptoks >= 32 else 0.0


def _mark_frontier(rows: list[SettingRow]) -> None:
    """Pareto frontier: no other setting uses no more VRAM and decodes faster."""
    pts = [(r, r.vram_mib, r.decode.mean) for r in rows if r.vram_mib is not None and math.isfinite(r.decode.mean)]
    for r, v, s in pts:
        r.on_frontier = not any((v2 <= v and s2 > s) or (v2 < v and s2 >= s) for r2, v2, s2 in pts if r2 is not r)


def pick_best(rows: list[SettingRow], budget_mib: float | None) -> int | None:
    """The fastest measured setting whose VRAM (measured peak, else predicted) is under budget."""
    ok = [r for r in rows if r.status == "measured" and math.isfinite(r.decode.mean) and r.vram_mib is not None
          and (budget_mib is None or r.vram_mib <= budget_mib)]
    if not ok:
        return None
    return max(ok, key=lambda r: (r.decode.mean, -r.n)).n


# ----------------------------------------------------------------------------- words


def budget_label(mib: float) -> str:
    g = mib / 1024
    return f"{g:.0f} GiB" if abs(g - round(g)) < 0.005 else f"{g:.2f} GiB"


def flag_of(n: int, n_layer: int) -> str:
    if n == 0:
        return "--n-cpu-moe 0"
    if n >= n_layer:
        return "--cpu-moe"
    return f"--n-cpu-moe {n}"


def advice_line(rep: SweepReport) -> str:
    """'with 9 GiB, use `--n-cpu-moe N`: X GiB, Y ± σ tok/s (Z× the speed of --cpu-moe)'."""
    head = f"with {budget_label(rep.budget_mib)}" if rep.budget_mib is not None else "with no VRAM budget (no GPU seen)"
    if rep.best is None:
        measured = [r for r in rep.rows if r.vram_mib is not None and r.status == "measured"]
        if not measured:
            return f"{head}: no setting was measured; see the notes"
        least = min(measured, key=lambda r: r.vram_mib or math.inf)
        return (f"{head}, no setting fits: the smallest, `{flag_of(least.n, rep.n_layer)}`, "
                f"needs {fmt_gib(least.vram_mib, 1)} GiB")
    row = rep.row(rep.best)
    assert row is not None
    vram = f"{fmt_gib(row.vram_mib, 1)} GiB" + ("" if row.vram_peak_mib is not None else " predicted")
    speed = f"{fmt_fixed(row.decode.mean)} ± {fmt_fixed(row.decode.std)} tok/s"
    ref = ""
    if row.speedup is not None and rep.reference is not None and math.isfinite(row.speedup.delta):
        ref = f" ({1 + row.speedup.delta:.1f}× the speed of {flag_of(rep.reference, rep.n_layer)})"
    return f"{head}, use `{flag_of(row.n, rep.n_layer)}`: {vram}, {speed}{ref}"


def explain(rep: SweepReport) -> list[str]:
    """What limits decode and prefill, in a few sentences from the numbers."""
    out: list[str] = []
    rows = [r for r in rep.rows if r.status == "measured" and math.isfinite(r.decode.mean) and r.decode.mean > 0]
    if rep.backend == "cpu":
        out.append("CPU build: every weight is read from host memory and nothing crosses PCIe, so the "
                   "setting only moves where llama.cpp *would* put experts; speeds should not differ "
                   "beyond noise, and the GPU/PCIe columns do not apply.")
    if len(rows) >= 2 and rep.backend != "cpu":
        x = np.array([r.host_bytes_per_token for r in rows])
        y = np.array([1.0 / r.decode.mean for r in rows])
        if np.ptp(x) > 0:
            slope, intercept = np.polyfit(x, y, 1)
            if slope > 0:
                out.append(
                    f"decode: each GiB of experts a token reads from host memory adds {slope * GIB * 1e3:.1f} ms per "
                    f"token, i.e. the CPU side streams experts at ~{1 / slope / 1e9:.1f} GB/s effective (host memory "
                    f"bandwidth and CPU matmul speed together); with no experts on the CPU a token takes "
                    f"{intercept * 1e3:.1f} ms."
                )
        top = min(rows, key=lambda r: r.n)
        if math.isfinite(top.gpu_bw):
            out.append(f"at --n-cpu-moe {top.n} the GPU side reads {top.gpu_bytes_per_token / MIB:.0f} MiB per token "
                       f"= {top.gpu_bw / 1e9:.0f} GB/s effective (the rest of the token time is launch/sync overhead "
                       f"and, with experts on the CPU, the CPU's share).")
    if rep.long_bucket and rep.backend != "cpu":
        parts = []
        for r in rows:
            t = r.ttft.get(rep.long_bucket)
            if t is None or not math.isfinite(t.mean) or not math.isfinite(r.pcie_bytes_prefill):
                continue
            if r.pcie_bytes_prefill > 0:
                parts.append(f"N={r.n}: {r.pcie_bytes_prefill / GIB:.2f} GiB in {t.mean:.0f} ms, "
                             f">= {r.pcie_bytes_prefill / (t.mean / 1e3) / 1e9:.1f} GB/s")
        if parts:
            ptoks = max((r.prompt_tokens.get(rep.long_bucket, 0) for r in rows), default=0)
            out.append(
                f"prefill ({rep.long_bucket}, {ptoks:.0f} tokens): a prompt batch of >= 32 tokens runs on the GPU, "
                f"which copies the host-resident experts it uses over PCIe first, so TTFT grows with N; experts "
                f"copied per prompt and the host-to-GPU rate TTFT implies: " + "; ".join(parts) + "."
            )
    return out


def _notes(rep: SweepReport, ev: Evidence) -> list[str]:
    notes = list(ev.problems)
    if ev.partial:
        notes.append("partial evidence: the sweep was interrupted (no run_end)")
    if all(r.vram_peak_mib is None for r in rep.rows):
        gpu = ev.manifest.gpu if ev.manifest else {}
        why = gpu.get("reason") or gpu.get("pid_note") or "NVML listed no memory for the server's PID"
        notes.append(f"no measured VRAM ({why}): VRAM columns and the advice use the prediction")
    errs = [r.error_mib for r in rep.rows if r.error_mib is not None]
    if errs:
        notes.append(f"prediction error (measured - predicted): mean {np.mean(errs):+.0f} MiB, "
                     f"max |err| {max(abs(e) for e in errs):.0f} MiB over {len(errs)} settings; "
                     f"CUDA overhead constant {rep.overhead_mib:.0f} MiB (--cuda-overhead)")
    for r in rep.rows:
        if r.status in ("failed", "skipped", "not run"):
            notes.append(f"{r.arm}: {r.status}" + (f" — {r.reason}" if r.reason else ""))
    return notes


def report_from_file(path: Path | str) -> SweepReport:
    p = Path(path)
    return build_sweep_report(read_evidence(p), read_sidecar(p))
