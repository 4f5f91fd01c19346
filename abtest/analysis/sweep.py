"""The sweep analysis: VRAM vs speed per ``--n-cpu-moe N``, against ``--fit``, per context; one line of advice.

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
  and over server sessions (`stratified.session_ratio`: no interval with one session a side).
* Comparisons the advice rests on (`Versus`): the pick against its runner-up, against llama.cpp's
  ``--fit`` arm (`FitRow`) and against itself loaded with ``--load-mode none``, over sessions;
  `recommend` says whose flags the advice gives. A frontier sweep (``--ctx``) has one report per
  context and a `FrontierPoint` each (`build_frontier`).
* TTFT ms = `metrics.ttft_ms`, per prompt bucket.
* Capacity (``--objective capacity``, the SLO in the manifest): per server session the highest
  concurrency within the SLO and the req/s carried there (`capacity.capacity_from_levels`),
  over sessions with an interval; the objective's score (`OBJECTIVES`) ranks the settings, none
  met last, at-least ones by their lower bound; the comparisons are of capacity (`capacity_ratio`).
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
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..evidence import Evidence, read_evidence, sweep_sidecar_path
from ..fmt import fmt_fixed, fmt_gib
from ..records import GIB, MIB, ArmEnd, RequestRecord, arm_warnings
from . import stratified
from .capacity import (
    AT_LEAST,
    BRACKETED,
    NO_DATA,
    NONE_MET,
    ArmCapacity,
    capacity_clause,
    capacity_over_sessions,
    load_text,
)
from .loadpoint import RATE, is_level_run, load_point
from .metrics import decode_tps, ttft_ms
from .slo import Objective, parse_slo
from .stratified import MeanCI, SessionRatio, mean_ci, mean_ci_stratified, session_ratio

CONFIDENCE = 0.95


# ncmoe<N> | fit, then -lmnone (loaded with --load-mode none), then -c<ctx> (a frontier sweep)
_ARM = re.compile(r"^(?:ncmoe(?P<n>\d+)|(?P<fit>fit))(?P<lm>-lmnone)?(?:-c(?P<ctx>\d+))?$")


@dataclass(frozen=True)
class ArmKey:
    """What a sweep arm's name says: the setting (None for fit), fit, --load-mode none, the context."""

    n: int | None
    fit: bool
    load_none: bool
    n_ctx: int | None  # None: the sweep's only context


def parse_sweep_arm(name: str) -> ArmKey | None:
    m = _ARM.match(name)
    if not m:
        return None
    return ArmKey(int(m["n"]) if m["n"] else None, bool(m["fit"]), bool(m["lm"]),
                  int(m["ctx"]) if m["ctx"] else None)


def _arm_n(name: str) -> int | None:
    k = parse_sweep_arm(name)
    return k.n if k is not None and not k.fit and not k.load_none and k.n_ctx is None else None


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
    speedup: SessionRatio | None = None  # vs the reference setting, over server sessions
    sessions: int = 0  # server sessions with measured requests
    on_frontier: bool = False
    gpu_bytes_per_token: float = math.nan
    host_bytes_per_token: float = math.nan
    pcie_bytes_prefill: float = math.nan  # for the longest bucket's prompt
    capacity: ArmCapacity | None = None  # --objective capacity: the most load within the SLO, per session

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
    fit: FitRow | None = None  # llama.cpp's --fit at the same budget (None: not in this sweep)
    load_none: SettingRow | None = None  # the pick loaded with --load-mode none, when measured
    versus: list[Versus] = field(default_factory=list)  # the comparisons the advice rests on
    recommend: str = "pick"  # "pick" | "fit" | "none"
    warnings: dict[str, list[str]] = field(default_factory=dict)  # arm -> the server's own warnings
    arms_ended: int = 0  # arms with a server session that ended (those `warnings` can name)
    time_to_advice_s: float | None = None  # the whole sweep's, every context size of it
    n_sessions: int = 0  # server sessions started (every arm, every session) at this context size
    contexts: tuple[int, ...] = ()  # the sweep's context sizes, when it has several (--ctx A,B)
    sweep_sessions: int = 0  # server sessions at every context size (with `contexts`)
    objective: str = "speed"  # what the pick maximises: "speed" (decode tok/s) | "capacity" (load within the SLO)
    slo: tuple[Objective, ...] = ()  # --objective capacity: the objectives every level is judged by
    session_log: list[dict[str, Any]] = field(default_factory=list)  # the session rule's decisions (trail)

    def row(self, n: int) -> SettingRow | None:
        return next((r for r in self.rows if r.n == n), None)


@dataclass
class FitRow:
    """The fit competitor: its target, fit's placement (server log) and plan (llama-fit-params), measured."""

    arm: str
    status: str  # "measured" | "failed" | "skipped" | "not run"
    reason: str
    target: dict[str, Any]  # server.fit.FitTarget as a dict: margin_mib, free_mib, budget_mib, derivation
    placement: dict[str, Any]  # server.log.parse_fit_log of its server log (+ offloaded layers)
    plan: dict[str, Any]  # server.fit.FitPlan as a dict (llama-fit-params' output)
    vram_peak_mib: float | None
    decode: MeanCI
    sessions: int
    over_budget: bool
    capacity: ArmCapacity | None = None  # --objective capacity

    @property
    def qualified(self) -> bool:
        return self.status == "measured" and not self.over_budget


@dataclass(frozen=True)
class Versus:
    """One comparison over server sessions, Δ = other / base − 1: of decode tok/s, or (metric
    "capacity") of the capacity at the SLO, one value per session (`capacity_ratio`)."""

    base: str  # arm
    other: str
    ratio: SessionRatio
    metric: str = "decode"  # "decode" | "capacity"

    def interval(self) -> tuple[float, float]:
        return self.ratio.interval(CONFIDENCE)


# ----------------------------------------------------------------------------- building


def read_sidecar(evidence_path: Path) -> dict[str, Any] | None:
    side = sweep_sidecar_path(evidence_path)
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


def build_sweep_report(ev: Evidence, sidecar: dict[str, Any] | None = None, n_ctx: int | None = None) -> SweepReport:
    """Everything the sweep report shows, from one evidence file (and its trail, if given).

    A frontier sweep (``--ctx A,B,C``) holds one stage per context: `n_ctx` picks one (default
    the first); `build_frontier` reads them all."""
    from ..errors import ConfigError, EvidenceError

    if ev.manifest is None:
        raise EvidenceError(f"{ev.path}: no run_start record; not a complete evidence file")
    top = (ev.manifest.config.get("extra") or {}).get("sweep")
    if not isinstance(top, dict):
        raise EvidenceError(f"{ev.path}: not a sweep (no config.extra.sweep in the manifest); use `abtest report`")
    contexts = top.get("contexts") if isinstance(top.get("contexts"), dict) else None
    sweep = top
    stage_ctx: int | None = None  # the -c<ctx> arm suffix of this stage (None: no suffix)
    if contexts:
        keys = [int(k) for k in contexts]
        stage_ctx = n_ctx if n_ctx is not None else keys[0]
        if str(stage_ctx) not in contexts:
            raise EvidenceError(f"{ev.path}: no stage at -c {stage_ctx}; the sweep ran {keys}")
        sweep = contexts[str(stage_ctx)]
    objective = str(top.get("objective") or "speed")
    if objective not in OBJECTIVES:
        raise EvidenceError(f"{ev.path}: sweep objective {objective!r} is not one of {', '.join(OBJECTIVES)}")
    try:
        slo = parse_slo(str(top["slo"])) if top.get("slo") else ()
    except ConfigError as exc:
        raise EvidenceError(f"{ev.path}: the sweep's SLO does not parse: {exc}") from None
    if objective == "capacity" and not slo:
        raise EvidenceError(f"{ev.path}: a capacity sweep without an SLO in its manifest")
    layout = sweep.get("layout", {})
    n_layer = int(layout.get("n_layer", 0))
    preds: dict[int, dict[str, Any]] = {int(k): v for k, v in sweep.get("predictions", {}).items()}
    backend = str(sweep.get("backend", "unknown"))
    trail_all = list((sidecar or {}).get("trail", []))
    keyed = {a: k for a in {e.arm for e in ev.arm_ends} | {s.arm for s in ev.arm_starts} | {r.arm for r in ev.requests}
             | {str(t.get("arm")) for t in trail_all} if (k := parse_sweep_arm(a)) is not None and k.n_ctx == stage_ctx}
    trail = [t for t in trail_all if str(t.get("arm")) in keyed]
    trail_first = {str(t["arm"]): t for t in reversed(trail) if int(t.get("block") or 0) == 0}
    ends: dict[str, list[ArmEnd]] = {}
    for e in ev.arm_ends:
        if e.arm in keyed:
            ends.setdefault(e.arm, []).append(e)
    started = {s.arm for s in ev.arm_starts if s.arm in keyed}
    reqs: dict[str, list[RequestRecord]] = {}
    every: dict[str, list[RequestRecord]] = {}  # failed ones too: a capacity counts them as misses
    for r in ev.requests:
        if not r.warmup and r.arm in keyed:
            every.setdefault(r.arm, []).append(r)
            if r.ok:
                reqs.setdefault(r.arm, []).append(r)

    def capacity_of(arm: str) -> ArmCapacity | None:
        return arm_capacity_of(arm, every.get(arm, []), slo) if objective == "capacity" else None
    buckets = sorted({r.bucket for rs in reqs.values() for r in rs})
    # each bucket's share of the plan (the ok measured requests of every setting): decode rates of
    # a setting are compared within buckets and combined, as the report's "all" row is
    counts = {b: sum(1 for rs in reqs.values() for r in rs if r.bucket == b) for b in buckets}
    weights = {b: c / sum(counts.values()) for b, c in counts.items()}
    mean_prompt = {
        b: float(np.mean([r.prompt_tokens or 0 for rs in reqs.values() for r in rs if r.bucket == b])) for b in buckets
    }
    long_bucket = max(buckets, key=lambda b: mean_prompt[b]) if buckets else None
    settings = {a: k.n for a, k in keyed.items() if not k.fit and not k.load_none and k.n is not None}
    by_n = {n: a for a, n in settings.items()}

    ran = sorted({settings[a] for a in set(ends) | started if a in settings})
    listed = [int(n) for n in sweep.get("settings", [])] if sweep.get("mode") == "list" else []
    skipped_trail = {int(t["n"]) for t in trail if t.get("status") == "skipped" and t.get("n") is not None
                     and str(t.get("arm")) in settings}
    shown = sorted(set(ran) | set(listed) | skipped_trail)
    skipped_start = {int(k): v for k, v in (sweep.get("skipped_at_start") or {}).items()}
    suffix = f"-c{stage_ctx}" if stage_ctx is not None else ""

    def make_row(n: int, arm: str) -> SettingRow:
        es = ends.get(arm, [])
        rs = reqs.get(arm, [])
        t = trail_first.get(arm, {})
        ok_ends = [e for e in es if e.status == "ok"]
        if ok_ends and rs:
            status, reason = "measured", ""
        elif es:
            bad = next((e for e in es if e.status != "ok"), es[-1])
            status, reason = "failed", bad.error or f"{bad.n_failed} of {bad.n_requests} requests failed"
        elif t.get("status") == "skipped" or (n in skipped_start and arm == by_n.get(n)):
            status, reason = "skipped", t.get("reason") or skipped_start.get(n, "")
        else:
            status, reason = "not run", "interrupted before this setting"
        peak = steady = None
        basis = "predicted"
        pks = [float(v) for e in es if e.memory and (v := (e.memory.get("peak") or {}).get("pid_vram_mib")) is not None]
        sds = [float(v) for e in es if e.memory and (v := (e.memory.get("steady") or {}).get("pid_vram_mib")) is not None]
        if pks:  # held against the budget: the largest peak over the setting's sessions
            peak, steady, basis = max(pks), (float(np.median(sds)) if sds else None), "nvml per-PID"
        elif t.get("vram_mib") is not None:
            peak, basis = float(t["vram_mib"]), "device used delta"
        depth = float(np.mean([(r.prompt_tokens or 0) + r.completion_tokens / 2 for r in rs])) if rs else math.nan
        row = SettingRow(
            n=n, arm=arm, status=status, reason=reason, predicted=preds.get(n, {}), vram_peak_mib=peak,
            vram_steady_mib=steady, vram_basis=basis, buffers=_buffers(ok_ends[-1] if ok_ends else (es[-1] if es else None)),
            decode=mean_ci_stratified(*_rates(rs)[:2], weights),
            ttft={b: mean_ci([v for r in rs if r.bucket == b and (v := ttft_ms(r)) is not None]) for b in buckets},
            prompt_tokens={b: float(np.mean([r.prompt_tokens or 0 for r in rs if r.bucket == b]))
                           for b in buckets if any(r.bucket == b for r in rs)},
            depth_tokens=depth, sessions=len({r.block for r in rs}), capacity=capacity_of(arm),
        )
        _traffic(row, backend, long_bucket)
        return row

    rows = [make_row(n, by_n.get(n, f"ncmoe{n}{suffix}")) for n in shown]

    def decode_versus(base: str, other: str) -> SessionRatio:
        bv, bs, bb = _rates(reqs.get(base, []))
        ov, os_, ob = _rates(reqs.get(other, []))
        return session_ratio(bv, bb, ov, ob, bs, os_, weights=weights)

    def versus(base: str, other: str) -> Versus:
        """The comparison the objective is about: decode tok/s, or capacity at the SLO."""
        if objective == "capacity":
            return Versus(base, other, capacity_ratio(capacity_of(base), capacity_of(other)), "capacity")
        return Versus(base, other, decode_versus(base, other))

    measured = [r for r in rows if r.status == "measured" and r.decode.n > 0]
    reference = reference_setting([r.n for r in measured], n_layer, str(sweep.get("mode", "auto")))
    if reference is not None:
        ref_arm = next(r.arm for r in measured if r.n == reference)
        for row in measured:
            row.speedup = decode_versus(ref_arm, row.arm)
    _mark_frontier(measured)

    budget = sweep.get("budget_mib")
    budget = float(budget) if budget is not None else None
    best = pick_best(rows, budget, objective)
    rep = SweepReport(
        evidence_path=ev.path, model=str(layout.get("name", sweep.get("model_path", "?"))), backend=backend,
        n_layer=n_layer, n_ctx=int((sweep.get("ctx") or {}).get("n_ctx", 0)), budget_mib=budget,
        free_mib=sweep.get("free_mib"), overhead_mib=float(sweep.get("overhead_mib", math.nan)), rows=rows,
        reference=reference, best=best, advice="", long_bucket=long_bucket, trail=trail,
        cpu_build=dict(sweep.get("cpu_build") or {}),
        time_to_advice_s=(sidecar or {}).get("time_to_advice_s"),
        n_sessions=sum(len(v) for v in ends.values()), objective=objective, slo=slo,
    )
    # the pick's runner-up, fit, and the pick without mmap: the comparisons over sessions
    if best is not None:
        pick = rep.row(best)
        assert pick is not None
        others = [r for r in ranked(rows, budget, objective) if r.n != best]
        if others:
            rep.versus.append(versus(others[0].arm, pick.arm))
        lm_arm = next((a for a, k in keyed.items() if k.load_none and k.n == best), None)
        if lm_arm is not None:
            rep.load_none = make_row(best, lm_arm)
            if rep.load_none.status == "measured":
                rep.versus.append(versus(pick.arm, lm_arm))
    fit_arm = next((a for a, k in keyed.items() if k.fit), None)
    if fit_arm is not None:
        rep.fit = _fit_row(fit_arm, ends.get(fit_arm, []), reqs.get(fit_arm, []), trail_first.get(fit_arm, {}),
                           weights, budget)
        if objective == "capacity":
            rep.fit = replace(rep.fit, capacity=capacity_of(fit_arm))
        if rep.fit.qualified and best is not None:
            pick_arm = next(r.arm for r in rows if r.n == best)
            rep.versus.append(versus(fit_arm, pick_arm))
    rep.recommend = recommend(rep)
    rep.session_log = [e for e in (sidecar or {}).get("next_sessions", [])
                       if isinstance(e, dict) and e.get("n_ctx") == rep.n_ctx]
    per_arm = {a: list(dict.fromkeys(w for e in es for w in arm_warnings(e))) for a, es in ends.items()}
    rep.warnings = {a: ws for a, ws in per_arm.items() if ws}
    rep.arms_ended = len(ends)
    rep.advice = advice_line(rep)
    rep.explanation = explain(rep)
    rep.notes = _notes(rep, ev)
    return rep


def _fit_row(arm: str, es: list[ArmEnd], rs: list[RequestRecord], t: dict[str, Any], weights: dict[str, float],
             budget: float | None) -> FitRow:
    ok_ends = [e for e in es if e.status == "ok"]
    if ok_ends and rs:
        status, reason = "measured", ""
    elif es:
        status, reason = "failed", next((e.error for e in es if e.error), "") or "requests failed"
    elif t.get("status") == "skipped":
        status, reason = "skipped", str(t.get("reason", ""))
    else:
        status, reason = "not run", "interrupted before the fit arm"
    pks = [float(v) for e in es if e.memory and (v := (e.memory.get("peak") or {}).get("pid_vram_mib")) is not None]
    peak = max(pks) if pks else (float(t["vram_mib"]) if t.get("vram_mib") is not None else None)
    end = ok_ends[0] if ok_ends else (es[0] if es else None)
    placement = dict((end.breakdown or {}).get("fit") or {}) if end is not None else dict(t.get("placement") or {})
    if end is not None:
        for k in ("offloaded_layers", "total_layers", "load_mode"):
            if k in (end.breakdown or {}):
                placement[k] = end.breakdown[k]
        gpu = {k: v for k, v in ((end.breakdown or {}).get("buffers") or {}).items()
               if isinstance(v, dict) and not k.startswith("CPU") and not k.endswith("_Host")}
        if gpu:
            placement["gpu_buffers"] = gpu
    return FitRow(arm=arm, status=status, reason=reason, target=dict(t.get("fit_target") or {}), placement=placement,
                  plan=dict(t.get("fit_params") or {}), vram_peak_mib=peak,
                  decode=mean_ci_stratified(*_rates(rs)[:2], weights), sessions=len(set(_rates(rs)[2].tolist())),
                  over_budget=budget is not None and peak is not None and peak > budget)


def reference_setting(measured: Sequence[int], n_layer: int, mode: str) -> int | None:
    """The setting the × column is relative to: the all-on-CPU end (N = n_layer) when it was
    measured; in a list sweep the largest N measured; in an auto sweep that did not measure the
    all-on-CPU end (it does only with --cpu-moe-reference or when nothing smaller fits), none."""
    if n_layer in measured:
        return n_layer
    if mode == "list" and measured:
        return max(measured)
    return None


def recommend(rep: SweepReport) -> str:
    """"pick" when abtest's pick is shown faster than fit (its interval over sessions above 0) or
    fit is out (skipped, failed, over budget); "fit" when fit is under budget and wins, ties, or
    the difference has no interval (one session each: the pick is not shown to beat it); "none"
    when nothing fits."""
    fit_ok = rep.fit is not None and rep.fit.qualified
    if rep.best is None:
        return "fit" if fit_ok else "none"
    if not fit_ok:
        return "pick"
    v = next((v for v in rep.versus if rep.fit is not None and v.base == rep.fit.arm), None)
    if v is None:
        return "fit"
    lo, _ = v.interval()
    return "pick" if math.isfinite(lo) and lo > 0 else "fit"


def _rates(rs: list[RequestRecord]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The decode rates that can be measured, each one's bucket, and its server session (block)."""
    trip = [(v, r.bucket, r.block) for r in rs if (v := decode_tps(r)) is not None]
    return (np.array([v for v, _, _ in trip], dtype=float), np.array([b for _, b, _ in trip]),
            np.array([k for _, _, k in trip], dtype=int))


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


def decode_score(row: SettingRow) -> float:
    """The "speed" objective: the setting's stratified mean decode tok/s."""
    return row.decode.mean


def capacity_score(row: SettingRow) -> float:
    """The "capacity" objective: the setting's capacity at the SLO, the mean over its server
    sessions of what `capacity.capacity_from_levels` gives each (req/s carried at the highest
    concurrency within the SLO; the rate offered, for rate levels). An at-least capacity (every
    level met) scores its lower bound; none met scores −∞ (ranked last, never the pick); no level
    records: nan (not ranked)."""
    c = row.capacity
    if c is None or c.status == NO_DATA:
        return math.nan
    if c.status == NONE_MET:
        return -math.inf
    v = c.headline.mean
    return v if math.isfinite(v) else -math.inf


# What "best" means: a score per setting row, the higher the better; `pick_best` takes the
# highest finite one under budget. "capacity" needs level records (the measure side runs every
# candidate at --concurrency levels) and the SLO in the manifest.
OBJECTIVES: dict[str, Callable[[SettingRow], float]] = {"speed": decode_score, "capacity": capacity_score}


def ranked(rows: Sequence[SettingRow], budget_mib: float | None, objective: str = "speed") -> list[SettingRow]:
    """The measured settings under budget (VRAM measured peak, else predicted), best first by the
    objective's score; ties go to the larger N (fewer experts on the GPU). Scores of −∞ (a
    capacity none of whose levels met the SLO) come last; unscored (nan) rows are left out."""
    score = OBJECTIVES[objective]
    ok = [r for r in rows if r.status == "measured" and not math.isnan(score(r)) and r.vram_mib is not None
          and (budget_mib is None or r.vram_mib <= budget_mib)]
    return sorted(ok, key=lambda r: (score(r), -r.n), reverse=True)


def pick_best(rows: list[SettingRow], budget_mib: float | None, objective: str = "speed") -> int | None:
    """The best measured setting (the fastest, for "speed"; the most load within the SLO, for
    "capacity") whose VRAM (measured peak, else predicted) is under budget; None when no such
    setting has a finite score (nothing fits, or no setting met the SLO at any level)."""
    score = OBJECTIVES[objective]
    top = next(iter(ranked(rows, budget_mib, objective)), None)
    return top.n if top is not None and math.isfinite(score(top)) else None


CENSORED = "censored"  # SessionRatio.reason: a capacity beyond (or below) the levels run has no value
# why a comparison has no interval (SessionRatio.reason), in the sweep's words
NO_INTERVAL_TEXT = {stratified.ONE_SESSION: "one server session on a side", stratified.NO_DATA: "no common bucket",
                    stratified.NO_VARIANCE: "nothing varies", stratified.NOT_POSITIVE: "a mean ≤ 0",
                    CENSORED: "a capacity beyond/below the levels run"}


def arm_capacity_of(arm: str, requests: Sequence[RequestRecord], slo: Sequence[Objective]) -> ArmCapacity | None:
    """One sweep arm's capacity at the SLO from its measured requests (failed ones included: a
    miss), per server session (block) as `capacity.capacity_over_sessions` computes it; None when
    none of them ran at load levels."""
    lv = [r for r in requests if not r.warmup and is_level_run(r)]
    if not lv or not slo:
        return None
    kind = load_point(lv[0]).kind
    by: dict[int, dict[float, list[RequestRecord]]] = {}
    for r in lv:
        p = load_point(r)
        if p.kind == kind:
            by.setdefault(r.block, {}).setdefault(p.value, []).append(r)
    sessions = [(f"session {b + 1}", levels) for b, levels in sorted(by.items())]
    return capacity_over_sessions(arm, kind, sessions, slo)


def capacity_values(c: ArmCapacity | None) -> list[float]:
    """Each bracketed session's headline capacity (a censored one has no value to compare)."""
    if c is None:
        return []
    return [v for s in c.sessions if s.status == BRACKETED
            for v in [s.load if c.kind == RATE else s.req_per_s] if v is not None and v > 0]


def capacity_ratio(base: ArmCapacity | None, other: ArmCapacity | None) -> SessionRatio:
    """other's capacity over base's, one value per server session (`stratified.session_ratio`, as
    `capacity.capacity_delta` compares report arms). Only bracketed sessions have a value: without
    one on a side the ratio is nan (reason "censored"); with one session a side, an estimate and no
    interval (`session_ratio`'s ONE_SESSION)."""
    b, a = capacity_values(base), capacity_values(other)
    nan = math.nan
    if not a or not b:
        return SessionRatio(nan, nan, nan, nan, nan, len(b), len(a), CENSORED)
    return session_ratio(b, list(range(len(b))), a, list(range(len(a))))


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


def capacity_text(c: ArmCapacity | None) -> str:
    """The sweep's words for a setting's capacity: `capacity.capacity_clause` ("carries 3.10 req/s
    (2.80–3.40) at concurrency 4", "meets the SLO at none of the levels run (lowest concurrency
    1)"), the report's wording; the notes say what a lower bound asks for."""
    if c is None or c.status == NO_DATA:
        return "has no load-level requests to judge"
    return capacity_clause(c, "the SLO")


def slo_label(rep: SweepReport) -> str:
    return ", ".join(map(str, rep.slo))


def _pct_ci(v: Versus) -> str:
    """'+12 % (95 % CI +4 % … +20 %, 2 vs 2 server sessions)', or the estimate and why there is no interval."""
    d = v.ratio.delta
    lo, hi = v.interval()
    sess = f"{v.ratio.k_base} vs {v.ratio.k_other} server sessions"
    if not math.isfinite(d):
        if v.ratio.reason == CENSORED:
            return ("not comparable (a capacity beyond or below the levels run has no value: widen "
                    "--concurrency)")
        return "not comparable (no common bucket with decode rates)"
    if math.isfinite(lo):
        return f"{d * 100:+.1f} % (95 % CI {lo * 100:+.1f} % … {hi * 100:+.1f} %, {sess})"
    if v.ratio.reason == stratified.ONE_SESSION:
        return (f"{d * 100:+.1f} % (estimate only: {sess}, no interval — a side with one session; "
                "--session-rule fixed runs every finalist --finalist-sessions times)")
    why = NO_INTERVAL_TEXT.get(v.ratio.reason, v.ratio.reason)
    return f"{d * 100:+.1f} % (estimate only: {sess}, no interval: {why})"


def fit_flags(fit: FitRow) -> str:
    m = fit.target.get("margin_mib")
    return "--fit on" + (f" --fit-target {m}" if m is not None else "")


def fit_placement_text(fit: FitRow) -> str:
    """'25/25 layers on the GPU, 7 with experts on the CPU (CUDA0), -c 4096 (user), fit took 1.2 s'."""
    p = fit.placement
    bits = []
    if "offloaded_layers" in p:
        bits.append(f"{p['offloaded_layers']}/{p.get('total_layers', '?')} layers on the GPU")
    for dev, d in (p.get("devices") or {}).items():
        bits.append(f"{dev}: {d.get('layers')} layers, {d.get('overflowing', 0)} with experts on the CPU, "
                    f"fit projected {d.get('used_mib')} MiB used / {d.get('free_mib')} MiB left free")
    if p.get("status") == "no change":
        bits.append(f"fit changed nothing (would leave {p.get('left_mib')} ≥ {p.get('margin_mib')} MiB free)")
    elif p.get("status") in ("failed", "error"):
        bits.append(f"fit {p['status']}: {p.get('reason', '')}")
    if "n_ctx" in p:
        bits.append(f"-c {p['n_ctx']} ({'set by the sweep' if p.get('ctx_by') == 'user' else 'chosen by fit'})")
    if "load_mode" in p:
        bits.append(f"load_mode {p['load_mode']}")
    plan = fit.plan
    if plan.get("stdout"):
        ot = plan.get("overrides") or []
        bits.append(f"llama-fit-params: -ngl {plan.get('n_gpu_layers')}, {len(ot)} tensor override(s)"
                    + (f" (experts of layers {_ranges(plan.get('cpu_expert_layers') or [])} on the CPU"
                       + (f", part of layer {_ranges(plan.get('partial_layers') or [])}" if plan.get("partial_layers") else "")
                       + ")" if ot else ""))
    elif plan.get("error"):
        bits.append(f"llama-fit-params: {plan['error']}")
    return "; ".join(bits) if bits else "no fit lines in the server log (it needs -lv 4)"


def _ranges(ns: Sequence[int]) -> str:
    xs = sorted(set(int(n) for n in ns))
    out, i = [], 0
    while i < len(xs):
        j = i
        while j + 1 < len(xs) and xs[j + 1] == xs[j] + 1:
            j += 1
        out.append(f"{xs[i]}" if i == j else f"{xs[i]}–{xs[j]}")
        i = j + 1
    return ", ".join(out)


def fit_sentence(rep: SweepReport) -> str:
    """How abtest's pick stands against llama.cpp's --fit at the same budget, in one sentence."""
    fit = rep.fit
    if fit is None:
        return ""
    if fit.status == "skipped":
        return f"llama.cpp's --fit was not measured: {fit.reason}"
    if fit.status != "measured":
        return f"llama.cpp's `{fit_flags(fit)}` failed: {fit.reason}"
    vram = f"{fmt_gib(fit.vram_peak_mib, 2)} GiB" if fit.vram_peak_mib is not None else "VRAM not measured"
    if fit.over_budget and rep.budget_mib is not None:
        return (f"llama.cpp's `{fit_flags(fit)}` used {vram} > the {budget_label(rep.budget_mib)} budget: "
                f"disqualified ({fmt_fixed(fit.decode.mean)} tok/s)")
    head = f"llama.cpp's `{fit_flags(fit)}`: {vram}, " + (
        capacity_text(fit.capacity) if rep.objective == "capacity" else f"{fmt_fixed(fit.decode.mean)} tok/s")
    v = next((v for v in rep.versus if v.base == fit.arm), None)
    if v is None or rep.best is None:
        return head
    lo, hi = v.interval()
    if math.isfinite(lo) and lo > 0:
        verdict = "abtest's pick beats it by"
    elif math.isfinite(hi) and hi < 0:
        verdict = "fit beats abtest's pick: the pick's Δ is"
    elif math.isfinite(lo):
        verdict = "no difference detected — use fit (no tuning); the pick's Δ is"
    else:
        verdict = "the pick is not shown to beat it — use fit; the pick's Δ is"
    return f"{head}; {verdict} {_pct_ci(v)}"


def advice_line(rep: SweepReport) -> str:
    """'with 9 GiB, use `--n-cpu-moe N`: X GiB, Y ± σ tok/s (Z× the speed of --cpu-moe)'; or fit's
    flags when fit is under budget and abtest's pick is not shown to beat it."""
    head = f"with {budget_label(rep.budget_mib)}" if rep.budget_mib is not None else "with no VRAM budget (no GPU seen)"
    if rep.objective == "capacity":
        return _capacity_advice(rep, head)
    if rep.recommend == "fit" and rep.fit is not None:
        fit = rep.fit
        vram = f"{fmt_gib(fit.vram_peak_mib, 1)} GiB" if fit.vram_peak_mib is not None else "VRAM not measured"
        why = "nothing abtest tried fits" if rep.best is None else (
            f"abtest's pick `{flag_of(rep.best, rep.n_layer)}` is not shown faster")
        return (f"{head}, use `{fit_flags(fit)}` (llama.cpp's own placement): {vram}, "
                f"{fmt_fixed(fit.decode.mean)} ± {fmt_fixed(fit.decode.std)} tok/s; {why}")
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
    flags = flag_of(row.n, rep.n_layer)
    lm = next((v for v in rep.versus if rep.load_none is not None and v.other == rep.load_none.arm), None)
    if lm is not None:
        lo, _ = lm.interval()
        if math.isfinite(lo) and lo > 0:
            flags += " --load-mode none"
    return f"{head}, use `{flags}`: {vram}, {speed}{ref}"


def _capacity_advice(rep: SweepReport, head: str) -> str:
    """'for 9 GiB within TTFT p95 ≤ 500 ms use `--n-cpu-moe 7`: 8.8 GiB, carries 3.10 req/s
    (2.80–3.40) at concurrency 4'; fit's flags when fit wins or ties, as for speed."""
    head = f"{head} within {slo_label(rep)}"
    if rep.recommend == "fit" and rep.fit is not None:
        fit = rep.fit
        vram = f"{fmt_gib(fit.vram_peak_mib, 1)} GiB" if fit.vram_peak_mib is not None else "VRAM not measured"
        why = "no setting abtest tried fits and meets the SLO" if rep.best is None else (
            f"abtest's pick `{flag_of(rep.best, rep.n_layer)}` is not shown to carry more")
        return f"{head}, use `{fit_flags(fit)}` (llama.cpp's own placement): {vram}, {capacity_text(fit.capacity)}; {why}"
    if rep.best is None:
        fits = [r for r in rep.rows if r.status == "measured" and r.vram_mib is not None
                and (rep.budget_mib is None or r.vram_mib <= rep.budget_mib)]
        if not fits:
            return advice_line(replace(rep, objective="speed"))  # nothing measured or nothing fits
        lowest = min((s.high for r in fits if r.capacity for s in r.capacity.sessions if s.high is not None),
                     default=math.nan)
        if all(capacity_score(r) == -math.inf for r in fits):
            return (f"{head}: no setting meets the SLO, even at the lowest level run (concurrency "
                    f"{load_text(lowest)}): relax the SLO or lower --concurrency")
        return f"{head}: no setting has load-level requests to judge; see the notes"
    row = rep.row(rep.best)
    assert row is not None
    vram = f"{fmt_gib(row.vram_mib, 1)} GiB" + ("" if row.vram_peak_mib is not None else " predicted")
    return f"{head}, use `{flag_of(row.n, rep.n_layer)}`: {vram}, {capacity_text(row.capacity)}"


def load_mode_sentence(rep: SweepReport) -> str:
    v = next((v for v in rep.versus if rep.load_none is not None and v.other == rep.load_none.arm), None)
    if v is None or rep.best is None:
        return ""
    what = "capacity" if v.metric == "capacity" else "decode"
    return (f"`{flag_of(rep.best, rep.n_layer)} --load-mode none` against the default mmap load: {what} "
            f"{_pct_ci(v)}")


# ----------------------------------------------------------------------------- the frontier


@dataclass(frozen=True)
class FrontierPoint:
    """One context size of a frontier sweep: the fastest setting measured under the budget."""

    n_ctx: int
    predicted_n: int | None  # the smallest N predicted to fit (most weights on the GPU)
    n: int | None  # the fastest measured setting under budget; None: nothing fits
    decode_tps: float
    vram_mib: float | None
    fit_decode_tps: float | None = None  # llama.cpp's --fit at this context, when measured under budget


def predicted_boundary(predictions: Mapping[int, float], budget_mib: float | None) -> int | None:
    """The smallest N whose predicted total fits the budget (None: none does; no budget: 0)."""
    if budget_mib is None:
        return min(predictions, default=None)
    fits = [n for n, v in predictions.items() if v <= budget_mib]
    return min(fits) if fits else None


def frontier_point(n_ctx: int, predictions: Mapping[int, float],
                   measured: Sequence[tuple[int, float | None, float]], budget_mib: float | None,
                   fit_tps: float | None = None) -> FrontierPoint:
    """Pure: `measured` is (N, VRAM MiB or None, decode tok/s) per setting run at this context; the
    point is the fastest whose VRAM (measured, else predicted) is within the budget."""
    ok = []
    for n, vram, tps in measured:
        v = vram if vram is not None else predictions.get(n)
        if v is not None and math.isfinite(tps) and (budget_mib is None or v <= budget_mib):
            ok.append((tps, -n, n, v))
    pb = predicted_boundary(predictions, budget_mib)
    if not ok:
        return FrontierPoint(n_ctx, pb, None, math.nan, None, fit_tps)
    tps, _, n, v = max(ok)
    return FrontierPoint(n_ctx, pb, n, tps, v, fit_tps)


def build_frontier(ev: Evidence, sidecar: dict[str, Any] | None = None) -> tuple[list[SweepReport], list[FrontierPoint]]:
    """Every stage of a sweep (one per --ctx) and the frontier point of each."""
    top = ((ev.manifest.config.get("extra") or {}).get("sweep") if ev.manifest else None) or {}
    ctxs: list[int | None] = [int(k) for k in (top.get("contexts") or {})] or [None]
    reps = [build_sweep_report(ev, sidecar, c) for c in ctxs]
    if len(reps) > 1:  # the time to advice is the whole sweep's: each stage says so
        total = sum(r.n_sessions for r in reps)
        for r in reps:
            r.contexts, r.sweep_sessions = tuple(x.n_ctx for x in reps), total
    points = []
    for rep in reps:
        preds = {r.n: float(r.predicted["total_mib"]) for r in rep.rows if r.predicted}
        stage = (top.get("contexts") or {}).get(str(rep.n_ctx)) or top
        preds.update({int(k): float(v["total_mib"]) for k, v in (stage.get("predictions") or {}).items()})
        meas = [(r.n, r.vram_peak_mib, r.decode.mean) for r in rep.rows if r.status == "measured"]
        fit = rep.fit.decode.mean if rep.fit is not None and rep.fit.qualified else None
        points.append(frontier_point(rep.n_ctx, preds, meas, rep.budget_mib, fit))
    return reps, points


def _k(n_ctx: int) -> str:
    return f"{n_ctx // 1024}k" if n_ctx % 1024 == 0 else str(n_ctx)


def frontier_sentence(points: Sequence[FrontierPoint], budget_mib: float | None, n_layer: int) -> str:
    """'at 12 GiB: 4k ctx → --n-cpu-moe 6, 82 tok/s; 16k → 9, 61 tok/s; 64k → nothing fits'."""
    head = f"at {budget_label(budget_mib)}" if budget_mib is not None else "with no budget"
    parts = []
    for i, p in enumerate(points):
        c = _k(p.n_ctx) + (" ctx" if i == 0 else "")
        if p.n is None:
            parts.append(f"{c} → nothing fits")
        else:
            flag = flag_of(p.n, n_layer) if i == 0 else (str(p.n) if 0 < p.n < n_layer else flag_of(p.n, n_layer))
            parts.append(f"{c} → {flag}, {fmt_fixed(p.decode_tps)} tok/s")
    return f"{head}: " + "; ".join(parts)


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
    singles = [r.arm for r in rep.rows if r.status == "measured" and r.sessions == 1]
    if rep.fit is not None and rep.fit.qualified and rep.fit.sessions == 1:
        singles.append(rep.fit.arm)
    if singles:
        notes.append("one server session each for " + ", ".join(singles) + ": their × and Δ are estimates, "
                     "without an interval (the unit of inference is the server session, docs/report.md "
                     "\"Inference\"); a further session runs only for a comparison the advice rests on "
                     "(docs/sweep.md, \"The session rule\")")
    if rep.reference is None and any(r.status == "measured" for r in rep.rows):
        notes.append("× --cpu-moe: not measured — the search did not need the all-on-CPU setting "
                     "(--cpu-moe-reference measures it: one server session more)")
    for e in rep.session_log:
        k = e.get("session")
        for label, why in (e.get("stopped") or {}).items():
            notes.append(f"session {k}, {label}: {why}")
        if e.get("arms"):
            notes.append(f"session {k} ({e.get('rule')} rule): " + ", ".join(map(str, e["arms"])))
        idle = [a for a in e.get("idle") or [] if a]
        if idle and e.get("rule") == "sequential":
            notes.append(f"session {k}: none for " + ", ".join(map(str, idle))
                         + " (in no comparison the advice still rests on)")
    if rep.objective == "capacity":
        notes += capacity_notes(rep)
    if rep.fit is not None and rep.fit.target.get("derivation"):
        notes.append(f"{rep.fit.arm}: --fit-target derived as {rep.fit.target['derivation']}")
    return notes


def capacity_notes(rep: SweepReport) -> list[str]:
    """What a capacity sweep's ranking rests on: settings with no level within the SLO (ranked
    last), lower bounds (every level met), and the runner-up comparison."""
    out = [f"objective: capacity within {slo_label(rep)} (per server session: the highest load whose "
           "requests meet every objective, interpolated between the last level met and the first "
           "failed; docs/sweep.md \"Capacity objective\"); decode tok/s is over every level's requests"]
    none = [r for r in rep.rows if r.status == "measured" and capacity_score(r) == -math.inf]
    if none:
        out.append(", ".join(f"`{flag_of(r.n, rep.n_layer)}`" for r in none)
                   + ": meets the SLO at none of the levels run: ranked last, never the pick")
    low = [r for r in rep.rows if r.capacity is not None and r.capacity.status in (AT_LEAST, "mixed")]
    if low:
        out.append(", ".join(f"`{flag_of(r.n, rep.n_layer)}`" for r in low)
                   + ": every level run met the SLO in some session: the capacity shown is a lower bound "
                   "(ranked by it); add a higher --concurrency level to bracket it")
    v = next((v for v in rep.versus if v.metric == "capacity" and rep.best is not None
              and v.other == (rep.row(rep.best) or rep.rows[0]).arm and (rep.fit is None or v.base != rep.fit.arm)),
             None)
    if v is not None:
        out.append(f"the pick against its runner-up `{v.base}`: capacity {_pct_ci(v)}")
    return out


def report_from_file(path: Path | str, n_ctx: int | None = None) -> SweepReport:
    p = Path(path)
    return build_sweep_report(read_evidence(p), read_sidecar(p), n_ctx)


def frontier_from_file(path: Path | str) -> tuple[list[SweepReport], list[FrontierPoint]]:
    p = Path(path)
    return build_frontier(read_evidence(p), read_sidecar(p))
