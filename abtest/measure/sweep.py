"""`abtest sweep`: find the fastest ``--n-cpu-moe N`` that fits a VRAM budget.

    read the GGUF header -> layout -> predict every N's VRAM (vram.py), before launching anything
    free VRAM (NVML) -> settings predicted over it are skipped, never launched (no OOM crash)
    choose the settings: a list (--ncmoe 0,8,16) or auto: both ends, then bisect toward the
        budget boundary, each probe guided by the prediction corrected by the error seen so far
    run each chosen setting as an arm ``ncmoe<N>`` (-ngl 99 --n-cpu-moe N, everything else pinned
        as in `abtest run`), one at a time, into ONE evidence file (same format as `run`)
    after every probe, rewrite <evidence>.sweep.json: the search trail (what was run or skipped,
        why, free VRAM before each launch)

Where the prediction goes: every candidate's prediction is in the run manifest
(``config.extra["sweep"]``), written before the first server starts; the measurement is in each
arm's ``arm_end`` (per-PID NVML peak/steady) as for `run`. `sweep_report` reads both back.

The search (`abtest.measure.search`) is a pure function over two callbacks, tested without servers.

With ``--objective capacity`` every arm runs the config's ``--concurrency`` levels (or the
capacity search) on a server with slots for the highest, and the finalists are the settings that
carry most within the SLO (`highest_level_met`); the report ranks them by capacity.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import __version__
from ..argv import FLAGS, int_flag
from ..config import ArmSpec, RunConfig, auto_ctx_size, ready_made_arm
from ..errors import ConfigError
from ..evidence import EvidenceWriter, check_writable, sweep_sidecar_path
from ..models.desc import ModelDesc
from ..models.vram import (
    CUDA_OVERHEAD_MIB,
    DEFAULT_N_BATCH,
    DEFAULT_N_UBATCH,
    ContextParams,
    VramPrediction,
    cpu_buffers,
    gguf_offsets,
    predict,
)
from ..records import ArmEnd, RequestRecord
from .arms import ResolvedArm, evidence_path, longest_prompt_estimate
from .arms import resolve_arms as resolve_run_arms
from .devsweep import DevicePlan, arm_spec, free_by_device, make_device_plan, run_device_stage
from .finalists import SESSION_RULES, Comparison, SessionResult, next_session
from .progress import Progress
from .runner import Runner, closing_writer
from .search import Measurement, SearchResult, search

DEFAULT_MARGIN_MIB = 512.0  # skip a setting predicted within this much of the free VRAM


# ----------------------------------------------------------------------------- settings


FIT_ARM = "fit"  # llama.cpp's own placement (--fit on), the competitor
LOAD_NONE_SUFFIX = "-lmnone"  # the same setting loaded with --load-mode none (no mmap)
LOAD_MODES = ("mmap", "none", "both")
DEFAULT_FINALIST_SESSIONS = 2
DEFAULT_CTX = 4096  # -c without --ctx-size/--ctx, unless the prompts need more
OBJECTIVES = ("speed", "capacity")
# --objective capacity without --concurrency: the levels every candidate's server runs (docs/sweep.md)
DEFAULT_CAPACITY_LEVELS = (1, 2, 4, 8)
# A setting predicted this far over the budget (after the error seen so far) is not launched: the
# prediction's accuracy bar, max(2 %, 128 MiB) of the budget (docs/sweep.md, "What happens").
FAR_FRACTION, FAR_MIN_MIB = 0.02, 128.0


def arm_name(n: int, ctx_suffix: str = "", load_none: bool = False) -> str:
    """``ncmoe<N>``; ``-lmnone`` when loaded with --load-mode none; ``-c<ctx>`` in a frontier sweep."""
    return f"ncmoe{n}" + (LOAD_NONE_SUFFIX if load_none else "") + ctx_suffix


def n_of_arm(name: str) -> int | None:
    return int(name[5:]) if name.startswith("ncmoe") and name[5:].isdigit() else None


def ctx_suffix(n_ctx: int, frontier: bool) -> str:
    return f"-c{n_ctx}" if frontier else ""


def far_over_budget(predicted_mib: float, bias_mib: float, budget_mib: float | None) -> bool:
    """Whether a setting is predicted so far over the budget that launching it would only confirm it."""
    if budget_mib is None:
        return False
    return predicted_mib + bias_mib > budget_mib + max(FAR_FRACTION * budget_mib, FAR_MIN_MIB)


def parse_ctx_list(text: str | None) -> list[int] | None:
    """'4096,16384,65536' (also 4k, 16k) -> [4096, 16384, 65536]; None/'' -> None."""
    if not text:
        return None
    out: list[int] = []
    for part in text.split(","):
        p = part.strip().lower()
        if not p:
            continue
        mult = 1024 if p.endswith("k") else 1
        try:
            v = int(p[:-1] if mult > 1 else p) * mult
        except ValueError:
            raise ConfigError(f"--ctx {text!r}: {part!r} is not a context size; use e.g. 4096,16384,65536") from None
        if v < 64:
            raise ConfigError(f"--ctx {text!r}: {v} is below 64 tokens")
        out.append(v)
    if not out:
        raise ConfigError(f"--ctx {text!r}: no context sizes; use e.g. 4096,16384,65536")
    return list(dict.fromkeys(out))


def parse_ncmoe(text: str, n_layer: int) -> list[int] | None:
    """'auto' -> None; '0,8,16,24' -> [0, 8, 16, 24] (checked against the model's layer count)."""
    t = (text or "auto").strip().lower()
    if t == "auto":
        return None
    values: list[int] = []
    for part in t.split(","):
        part = part.strip()
        if not part:
            continue
        if part in ("all", "cpu-moe", "l"):
            values.append(n_layer)
            continue
        if "-" in part and part[0] != "-":  # a range: 0-24 or 0-24:4
            rng, _, step = part.partition(":")
            a, b = rng.split("-", 1)
            try:
                values.extend(range(int(a), int(b) + 1, int(step or 1)))
            except ValueError:
                raise ConfigError(f"--ncmoe {text!r}: cannot read range {part!r}; use e.g. 0-24:4") from None
            continue
        try:
            values.append(int(part))
        except ValueError:
            raise ConfigError(f"--ncmoe {text!r}: {part!r} is not a number; use e.g. 0,8,16,24 or auto") from None
    bad = [v for v in values if v < 0 or v > n_layer]
    if bad:
        raise ConfigError(f"--ncmoe {text!r}: {bad} outside 0..{n_layer} (the model has {n_layer} layers)")
    if not values:
        raise ConfigError(f"--ncmoe {text!r}: no settings; use e.g. 0,8,16,24 or auto")
    return list(dict.fromkeys(values))


# ----------------------------------------------------------------------------- the search (pure)


# ----------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class SweepPlan:
    """Everything decided before the first launch; goes into the manifest's config.extra."""

    model_path: str
    layout: dict[str, Any]  # ModelDesc.summary()
    ctx: ContextParams
    mode: str  # "auto" | "list"
    settings: tuple[int, ...]  # the list, or every candidate 0..L for auto
    budget_mib: float | None
    free_mib: float | None  # device free VRAM before the first launch (None without NVML)
    margin_mib: float
    overhead_mib: float
    predictions: dict[int, VramPrediction]
    cpu_build: dict[str, float]  # vram.cpu_buffers: what a CPU build prints (all in host memory)
    backend: str  # the server build's backend ("cpu", "cuda", ...)

    def skip_reason(self, n: int, free_mib: float | None = None) -> str | None:
        """Why setting n must not be launched, or None. Free VRAM unknown: never skip."""
        free = self.free_mib if free_mib is None else free_mib
        if free is None:
            return None
        pred = self.predictions[n].total_mib
        if pred > free - self.margin_mib:
            return (f"predicted {pred / 1024:.2f} GiB > free {free / 1024:.2f} GiB - margin "
                    f"{self.margin_mib / 1024:.2f} GiB")
        return None

    def to_extra(self) -> dict[str, Any]:
        return {
            "version": 1,
            "model_path": self.model_path,
            "layout": self.layout,
            "ctx": asdict(self.ctx),
            "mode": self.mode,
            "settings": list(self.settings),
            "budget_mib": self.budget_mib,
            "free_mib": self.free_mib,
            "margin_mib": self.margin_mib,
            "overhead_mib": self.overhead_mib,
            "predictions": {str(n): p.to_dict() for n, p in self.predictions.items()},
            "skipped_at_start": {str(n): r for n in self.settings if (r := self.skip_reason(n))},
            "cpu_build": self.cpu_build,
            "backend": self.backend,
        }


def context_params(cfg: RunConfig, n_ctx: int, extra_args: Sequence[str] = ()) -> ContextParams:
    """The llama-server context flags the arms will run with (pinned by final_argv)."""

    return ContextParams(
        n_ctx=n_ctx,
        n_parallel=cfg.server_slots,
        n_batch=int_flag(extra_args, FLAGS["batch_size"], DEFAULT_N_BATCH),
        n_ubatch=int_flag(extra_args, FLAGS["ubatch_size"], DEFAULT_N_UBATCH),
        flash_attn=cfg.flash_attn != "off",
    )


def make_plan(
    layout: ModelDesc,
    model_path: str,
    ctx: ContextParams,
    settings: Sequence[int] | None,
    budget_mib: float | None,
    free_mib: float | None,
    margin_mib: float = DEFAULT_MARGIN_MIB,
    overhead_mib: float = CUDA_OVERHEAD_MIB,
    backend: str = "unknown",
    offsets: dict[str, int] | None = None,
) -> SweepPlan:
    cands = tuple(settings) if settings is not None else tuple(range(layout.n_layer + 1))
    preds = {n: predict(layout, n, ctx, overhead_mib) for n in sorted(set(cands) | {0, layout.n_layer})}
    cpu = {k: round(v, 3) for k, v in cpu_buffers(layout, ctx, offsets).to_dict().items()}
    return SweepPlan(
        model_path=model_path, layout=layout.summary(), ctx=ctx, mode="list" if settings is not None else "auto",
        settings=cands, budget_mib=budget_mib, free_mib=free_mib, margin_mib=margin_mib, overhead_mib=overhead_mib,
        predictions=preds, cpu_build=cpu, backend=backend,
    )


# ----------------------------------------------------------------------------- orchestration


@dataclass
class SweepResult:
    evidence_path: Path
    sidecar_path: Path
    plan: SweepPlan
    result: SearchResult
    n_requests: int
    n_failed: int
    arms_failed: list[str]
    duration_s: float
    trail: list[dict[str, Any]] = field(default_factory=list)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def free_vram_mib(nvml: Any) -> float | None:
    """Free memory (total - used, NVML) summed over the devices the server can see
    (CUDA_VISIBLE_DEVICES), None without a GPU."""
    info = nvml.info()
    if not info.available or not info.devices:
        return None
    if any(d.get("memory_total_mib") is None or d.get("memory_used_mib") is None for d in info.devices):
        return None
    return sum(float(d["memory_total_mib"]) - float(d["memory_used_mib"]) for d in info.devices)


class SweepRunner:
    """The sweep: arms chosen one at a time by `search`, run by a `Runner` into one evidence file.

    The Runner does each arm (`Runner.run_arm`: launch, warm-up, measured requests, memory
    sampling, arm_end); this class decides the next arm from the measurements of the previous
    ones, which it reads by subscribing to the records the Runner writes.

    Per context size (one, or each of ``contexts`` for the frontier): the search over N, then the
    fit competitor (`abtest.server.fit`), then the finalists' further server sessions, so that the
    comparisons the advice quotes (pick vs runner-up, pick vs fit) have an interval over sessions.
    """

    def __init__(
        self,
        cfg: RunConfig,
        ncmoe: str | Sequence[int] | None,
        budget_mib: float | Sequence[float] | None,
        margin_mib: float = DEFAULT_MARGIN_MIB,
        overhead_mib: float = CUDA_OVERHEAD_MIB,
        progress: Progress | None = None,
        argv: Sequence[str] = (),
        contexts: Sequence[int] | None = None,
        fit_competitor: str = "auto",
        finalist_sessions: int = DEFAULT_FINALIST_SESSIONS,
        load_mode: str = "mmap",
        objective: str = "speed",
        ts_grid: str | None = None,
        session_rule: str = "sequential",
        cpu_moe_reference: bool = False,
    ) -> None:
        check_objective(cfg, objective, contexts)
        # several budgets: one per GPU, the -ts x --n-cpu-moe search of `measure.devsweep`
        self.device_budgets: tuple[float, ...] | None = None
        if budget_mib is not None and not isinstance(budget_mib, (int, float)):
            budgets = tuple(float(b) for b in budget_mib)
            if len(budgets) > 1:
                self.device_budgets = budgets
            budget_mib = sum(budgets)
        check_devices(self.device_budgets, ts_grid, contexts, objective, load_mode)
        self.ts_grid = ts_grid
        self._device_results: dict[str, SearchResult] = {}
        if fit_competitor not in ("auto", "on", "off"):
            raise ConfigError(f"--fit-competitor {fit_competitor!r}: use auto, on or off")
        if load_mode not in LOAD_MODES:
            raise ConfigError(f"--load-mode {load_mode!r}: use one of {', '.join(LOAD_MODES)}")
        if finalist_sessions < 1:
            raise ConfigError("--finalist-sessions must be at least 1")
        if session_rule not in SESSION_RULES:
            raise ConfigError(f"--session-rule {session_rule!r}: use one of {', '.join(SESSION_RULES)}")
        probe_arm = ready_made_arm("ncmoe0")
        # no token-id backfill: the sweep compares no outputs, and on a slow setting one extra request
        # per prompt costs as much as the measured ones (docs/sweep.md, "Time to advice")
        self.runner = Runner(replace(cfg, arms=(probe_arm,), blocks=1, backfill_token_ids=False), progress, argv)
        self.runner.subscribe(self._observe)
        self.progress = self.runner.progress
        self.ncmoe = ncmoe
        self.settings: list[int] | None = None
        self.budget_mib = budget_mib
        self.margin_mib = margin_mib
        self.overhead_mib = overhead_mib
        self.contexts = list(contexts) if contexts else None
        self.fit_competitor = fit_competitor
        self.finalist_sessions = finalist_sessions
        # capacity: the comparisons are of req/s at the SLO, which the first session's futility check
        # does not read; every finalist runs every session there
        self.session_rule = session_rule if objective == "speed" else "fixed"
        self.cpu_moe_reference = cpu_moe_reference
        self.session_log: list[dict[str, Any]] = []  # the session rule's decisions, into the trail
        self.load_mode = load_mode
        self.objective = objective
        self.slo = self.runner.slo  # parsed by the Runner (ConfigError on a bad one)
        self._capacity: dict[str, float] = {}  # arm -> req/s at the highest level met (first session)
        self._arm_ends: dict[str, ArmEnd] = {}
        self._records: dict[str, list[RequestRecord]] = {}
        self._result: SearchResult | None = None
        self._results: dict[int, dict[str, Any]] = {}
        self.trail: list[dict[str, Any]] = []
        self.t0 = time.perf_counter()
        self.sidecar: Path | None = None
        self._plan: SweepPlan | None = None
        self._used_before: float | None = None
        self.time_to_advice_s: float | None = None

    def _observe(self, record: Any) -> None:
        if isinstance(record, ArmEnd):
            self._arm_ends[record.arm] = record
        elif isinstance(record, RequestRecord) and not record.warmup:
            self._records.setdefault(record.arm, []).append(record)

    def execute(self) -> SweepResult:
        from ..models.desc import read_model
        from ..server.process import help_text, supports_flag
        from .prompts import load_prompts

        runner = self.runner
        cfg = runner.cfg
        self.t0 = t0 = time.perf_counter()
        check_writable(Path(cfg.out_dir))
        cases = load_prompts(Path(cfg.prompts_path) if cfg.prompts_path else None, list(cfg.buckets) or None)
        resolved = resolve_run_arms(cfg, self.progress.note)[0]
        model_path = resolved.model["path"]
        layout = read_model(model_path)
        if layout.n_expert == 0:
            raise ConfigError(f"{model_path}: a dense model (no experts): --n-cpu-moe changes nothing; sweep needs a MoE")
        if isinstance(self.ncmoe, str) or self.ncmoe is None:
            self.settings = parse_ncmoe(self.ncmoe or "auto", layout.n_layer)
        else:
            self.settings = parse_ncmoe(",".join(str(n) for n in self.ncmoe), layout.n_layer)
        # --load-mode none: this llama.cpp's spelling (common/arg.cpp "-lm/--load-mode"); older
        # builds spell the same thing --no-mmap
        self._load_none_args: tuple[str, ...] = ()
        if self.load_mode != "mmap":
            helptext = help_text(resolved.server["path"])
            if supports_flag(helptext, "--load-mode"):
                self._load_none_args = ("--load-mode", "none")
            elif supports_flag(helptext, "--no-mmap"):
                self._load_none_args = ("--no-mmap",)
            else:
                raise ConfigError(f"--load-mode {self.load_mode}: {resolved.server['path']} has neither --load-mode "
                                  "nor --no-mmap; use --load-mode mmap")
        # without --ctx-size / --ctx: the prompts' need, but at least DEFAULT_CTX (advice for a 256-token
        # context, which the sweep's one short bucket would give, is advice for no real deployment)
        auto_ctx = cfg.ctx_size or max(DEFAULT_CTX, auto_ctx_size(longest_prompt_estimate(cases), cfg.max_tokens,
                                                                  cfg.server_slots))
        frontier = self.contexts is not None and len(self.contexts) > 1
        contexts = self.contexts or [auto_ctx]
        free = free_vram_mib(runner.nvml)
        budget = self.budget_mib if self.budget_mib is not None else free
        backend = str(resolved.server.get("backend", "unknown"))
        offsets = gguf_offsets(model_path)
        plans = {c: make_plan(layout, model_path, context_params(cfg, c), self.settings, budget, free, self.margin_mib,
                              self.overhead_mib, backend=backend, offsets=offsets) for c in contexts}
        plan = plans[contexts[0]]
        self._plan = plan
        extra = plan.to_extra()
        dplan: DevicePlan | None = None
        if self.device_budgets is not None:
            dplan = make_device_plan(layout, context_params(cfg, contexts[0]), self.device_budgets,
                                     free_by_device(runner.nvml), self.settings, self.ts_grid, self.margin_mib,
                                     self.overhead_mib)
            extra["devices"] = dplan.to_extra()
        extra.update(fit_competitor=self.fit_competitor, finalist_sessions=self.finalist_sessions,
                     session_rule=self.session_rule, cpu_moe_reference=self.cpu_moe_reference,
                     load_mode=self.load_mode, load_none_args=list(self._load_none_args), objective=self.objective)
        if self.objective == "capacity":
            extra.update(slo=cfg.slo, concurrency_levels=list(cfg.concurrency_levels), search=cfg.search,
                         search_max=cfg.search_max, search_time_s=cfg.search_time_s, server_slots=cfg.server_slots)
        if frontier:
            extra["contexts"] = {str(c): p.to_extra() for c, p in plans.items()}
        arms = tuple(ready_made_arm(arm_name(n)) for n in sorted(set(plan.settings) | {0, layout.n_layer}))
        if dplan is not None:  # the first probe of each -ts (or the list)
            arms = tuple(arm_spec(ts, n) for ts in dplan.grid for n in (self.settings or [layout.n_layer]))
        cfg = replace(cfg, ctx_size=contexts[0], arms=arms, blocks=1, extra={**cfg.extra, "sweep": extra})
        runner.cfg = cfg
        runner.writer = EvidenceWriter(evidence_path(cfg, cfg.model), new=True)
        path = runner.writer.path  # the name taken (unique, see EvidenceWriter)
        sidecar = sweep_sidecar_path(path)
        self.sidecar = sidecar
        sessions: dict[str, int] = {}  # arm -> sessions run so far (the next one's block)

        def launch(spec: ArmSpec, n_ctx: int) -> tuple[ArmEnd | None, list[RequestRecord], float | None, float | None]:
            """One server session of `spec`; (arm_end, its measured requests, VRAM, free before)."""
            free_now = free_vram_mib(runner.nvml)
            used_before = runner.nvml.device_sample().get("device_used_mib")
            self._used_before = used_before
            block = sessions.get(spec.name, 0)
            sessions[spec.name] = block + 1
            self._arm_ends.pop(spec.name, None)
            self._records.pop(spec.name, None)
            runner.run_arm(ResolvedArm(spec, resolved.server, resolved.model), cases, n_ctx, path, block)
            end = self._arm_ends.get(spec.name)
            return end, self._records.get(spec.name, []), measured_vram_mib(end, used_before), free_now

        def outcome(end: ArmEnd | None, recs: list[RequestRecord]) -> tuple[bool, float | None, str | None]:
            from ..analysis.metrics import decode_tps, decode_unmeasurable

            rates = [v for v in (decode_tps(r) for r in recs) if v is not None]
            error = None if end is None else end.error
            if self.objective == "capacity":  # judged on TTFT/TPOT/e2e per level: no decode rate needed
                ok = end is not None and end.status == "ok" and any(r.ok for r in recs)
                if end is not None and end.status == "ok" and not ok:
                    error = "no request of this setting succeeded at any level"
                return ok, (statistics.mean(rates) if rates else None), error
            ok = end is not None and end.status == "ok" and bool(rates)
            if end is not None and end.status == "ok" and not rates:
                why = next((w for r in recs if (w := decode_unmeasurable(r))), "no successful request")
                error = (f"no request of this setting has a decode rate ({why}; docs/metrics.md) — "
                         "raise --max-tokens (a rate needs 12 tokens read apart) or quiet the machine")
            return ok, (statistics.mean(rates) if rates else None), error

        with closing_writer(runner.writer):
            runner.write(runner.manifest(path, [resolved.model], arms))
            if dplan is not None:
                run_device_stage(self, dplan, contexts[0], layout.n_layer, launch, outcome, sidecar,
                                 resolved.server["path"], model_path,
                                 self._load_none_args if self.load_mode == "none" else ())
            for n_ctx in contexts if dplan is None else []:
                self._stage(plans[n_ctx], n_ctx, ctx_suffix(n_ctx, frontier), layout.n_layer, budget, launch,
                            outcome, sidecar, resolved.server["path"], model_path)
            runner.write(runner.run_end(t0))
            self._write_sidecar(sidecar, plan)
        first = self._results.get(contexts[0], {}).get("search")
        if dplan is not None:  # the first -ts's search
            first = next(iter(self._device_results.values()), SearchResult((), None, None, None))
        assert isinstance(first, SearchResult)
        return SweepResult(path, sidecar, plan, first, runner.n_requests, runner.n_failed, runner.arms_failed,
                           time.perf_counter() - t0, self.trail)

    # -- one context size: search, fit, finalists -------------------------------------------
    def _stage(self, plan: SweepPlan, n_ctx: int, suffix: str, n_layer: int, budget: float | None,
               launch: Any, outcome: Any, sidecar: Path, server_bin: str, model_path: str) -> None:
        load_args = self._load_none_args if self.load_mode == "none" else ()

        def spec_of(n: int, load_none: bool = False) -> ArmSpec:
            base = ready_made_arm(f"ncmoe{n}")
            extra = self._load_none_args if load_none else load_args
            return replace(base, name=arm_name(n, suffix, load_none), args=base.args + extra)

        def bias() -> float:
            errs = [t["vram_mib"] - t["predicted_mib"] for t in self.trail
                    if t.get("n_ctx") == n_ctx and t.get("status") == "measured"
                    and isinstance(t.get("vram_mib"), (int, float)) and isinstance(t.get("predicted_mib"), (int, float))]
            return statistics.median(errs) if errs else 0.0

        def measure(n: int) -> Measurement | None:
            free_now = free_vram_mib(self.runner.nvml)
            pred = plan.predictions[n].total_mib
            reason = plan.skip_reason(n, free_now)
            if reason is None and far_over_budget(pred, bias(), budget):
                reason = (f"predicted {pred / 1024:.2f} GiB (+{bias():.0f} MiB error seen) > budget "
                          f"{(budget or 0) / 1024:.2f} GiB + max(2 %, 128 MiB): not launched")
            spec = spec_of(n)
            entry: dict[str, Any] = {"n": n, "arm": spec.name, "n_ctx": n_ctx, "block": 0,
                                     "free_mib_before": free_now, "predicted_mib": pred, "at": _now()}
            if reason:
                entry.update(status="skipped", reason=reason)
                self.trail.append(entry)
                self.progress.note(f"{spec.name}: skipped, {reason}")
                self._write_sidecar(sidecar, plan)
                return None
            self.progress.note(f"{spec.name}: predicted {pred / 1024:.2f} GiB"
                               + (f", free {free_now / 1024:.2f} GiB" if free_now is not None else ""))
            end, recs, vram, _ = launch(spec, n_ctx)
            ok, tps, error = outcome(end, recs)
            entry.update(status="measured" if ok else "failed", vram_mib=vram, decode_tps=tps, error=error,
                         device_used_before_mib=self._used_before)
            if self.objective == "capacity" and ok:
                level, rps = highest_level_met(recs, self.slo)
                self._capacity[spec.name] = rps if level is not None and rps is not None else -1.0
                entry.update(capacity_level=level, capacity_rps=rps)
                self.progress.note(f"{spec.name}: " + (f"meets the SLO up to concurrency {level}, {rps:.2f} req/s"
                                                       if level is not None and rps is not None
                                                       else "meets the SLO at none of the levels"))
            self.trail.append(entry)
            self._write_sidecar(sidecar, plan)
            note = (error or "") if end is not None else "no arm_end"
            return Measurement(ok=ok, vram_mib=vram, decode_tps=tps, note=note if not ok else "")

        def pred(n: int) -> float:
            return plan.predictions[n].total_mib

        # the all-on-CPU end is measured first only for the × column (--cpu-moe-reference); else the
        # search starts at the prediction's boundary and reaches N = L only if nothing smaller fits
        result = search(n_layer, budget, measure, pred, self.settings, top_first=self.cpu_moe_reference)
        stage: dict[str, Any] = {"search": result}
        self._results[n_ctx] = stage
        if self._result is None:
            self._result = result
        # the fit competitor
        fit_spec, fit_ok = self._fit_arm(plan, n_ctx, suffix, budget, launch, outcome, sidecar, server_bin,
                                         model_path, load_args)
        # the finalists: pick, runner-up, fit (when under budget), the pick loaded without mmap
        if self.objective == "capacity":  # ranked by the load each carried within the SLO
            under = sorted((p for p in result.probes if p.under_budget and p.status == "measured"),
                           key=lambda p: (-self._capacity.get(spec_of(p.n).name, -1.0), -p.n))
        else:
            under = sorted((p for p in result.probes if p.under_budget and p.decode_tps is not None),
                           key=lambda p: -(p.decode_tps or 0.0))
        finalists: list[ArmSpec] = [spec_of(p.n) for p in under[:2]]
        if fit_spec is not None and fit_ok:
            finalists.append(fit_spec)
        comparisons: list[Comparison] = []
        if fit_spec is not None and fit_ok and under:
            comparisons.append(Comparison(default=fit_spec.name, challenger=spec_of(under[0].n).name))
        if self.load_mode == "both" and under and under[0].n > 0:
            lm = spec_of(under[0].n, load_none=True)
            end, recs, vram, free_now = launch(lm, n_ctx)
            ok, tps, error = outcome(end, recs)
            self.trail.append({"n": under[0].n, "arm": lm.name, "n_ctx": n_ctx, "block": 0, "status":
                               "measured" if ok else "failed", "vram_mib": vram, "decode_tps": tps, "error": error,
                               "free_mib_before": free_now, "predicted_mib": pred(under[0].n), "role": "load-mode none",
                               "at": _now()})
            self._write_sidecar(sidecar, plan)
            if ok:
                finalists.append(lm)
                comparisons.append(Comparison(default=spec_of(under[0].n).name, challenger=lm.name))

        def record(spec: ArmSpec, s: SessionResult) -> dict[str, Any]:
            return {"n": n_of_arm(spec.name.split("-")[0]), "arm": spec.name, "n_ctx": n_ctx, **s.trail_fields(),
                    "free_mib_before": s.free_mib_before, "role": "finalist", "at": _now()}

        self.run_finalists(finalists, comparisons, n_ctx, launch, outcome, sidecar, record)

    def run_finalists(self, finalists: Sequence[ArmSpec], comparisons: Sequence[Comparison], n_ctx: int,
                      launch: Callable[[ArmSpec, int], tuple[ArmEnd | None, list[RequestRecord], float | None,
                                                             float | None]],
                      outcome: Callable[[ArmEnd | None, list[RequestRecord]], tuple[bool, float | None, str | None]],
                      sidecar: Path, record: Callable[[ArmSpec, SessionResult], dict[str, Any]]) -> None:
        """The finalists' further server sessions, in reverse order of the ones before (A B C, then
        C B A, ...): the comparisons count sessions (analysis.stratified.session_ratio). Before each,
        the session rule (`measure.finalists.next_session`) says which finalists still need one;
        `record` makes each session's trail entry (the single- and the multi-device sweep differ
        there). Used by both."""
        plan = self._plan
        assert plan is not None, "run_finalists runs inside execute(), after the plan is made"
        names = [s.name for s in finalists]
        rates: dict[str, list[float]] = {
            a: [float(t["decode_tps"]) for t in self.trail if t.get("arm") == a and t.get("n_ctx") == n_ctx
                and t.get("status") == "measured" and isinstance(t.get("decode_tps"), (int, float))]
            for a in names}
        order = list(finalists)
        for k in range(1, self.finalist_sessions):
            order.reverse()
            step = next_session(names, comparisons, rates, k, self.finalist_sessions, self.session_rule)
            self.session_log.append({"n_ctx": n_ctx, "session": step.session, "rule": self.session_rule,
                                     "arms": list(step.arms), "stopped": step.stopped, "idle": list(step.idle)})
            for label, why in step.stopped.items():
                self.progress.note(f"{label}: {why}")
            for spec in order:
                if spec.name not in step.arms:
                    continue
                self.progress.note(f"{spec.name}: server session {k + 1} of {self.finalist_sessions} (finalist)")
                end, recs, vram, free_now = launch(spec, n_ctx)
                ok, tps, error = outcome(end, recs)
                self.trail.append(record(spec, SessionResult(k, end, ok, tps, error, vram, free_now)))
                if ok and tps is not None:  # as the first sessions' rates above: measured ones only
                    rates[spec.name].append(tps)
                self._write_sidecar(sidecar, plan)
            if not step.arms:
                self._write_sidecar(sidecar, plan)
                break

    def _fit_arm(self, plan: SweepPlan, n_ctx: int, suffix: str, budget: float | None, launch: Any, outcome: Any,
                 sidecar: Path, server_bin: str, model_path: str,
                 load_args: tuple[str, ...]) -> tuple[ArmSpec | None, bool]:
        """llama.cpp's own placement at the same budget: derive --fit-target, record llama-fit-params'
        plan, measure the arm like any other; (its spec, whether it ran and is under budget)."""
        from ..server.fit import fit_args, fit_params_binary, fit_target_for_budget, run_fit_params

        name = FIT_ARM + suffix
        entry: dict[str, Any] = {"n": None, "arm": name, "n_ctx": n_ctx, "block": 0, "role": "fit", "at": _now()}
        free_now = free_vram_mib(self.runner.nvml)
        target = fit_target_for_budget(free_now, budget)
        entry["fit_target"] = target.to_dict()
        if self.fit_competitor == "off":
            entry.update(status="skipped", reason="--fit-competitor off")
        elif plan.backend == "cpu" and self.fit_competitor == "auto":
            entry.update(status="skipped", reason="a CPU build: --fit has no device to place layers on (common/fit.cpp "
                                                  "fits host memory only), so there is no competitor to measure; "
                                                  "--fit-competitor on runs it anyway")
        elif target.margin_mib is None and self.fit_competitor == "auto":
            entry.update(status="skipped", reason=target.reason)
        if entry.get("status") == "skipped":
            self.trail.append(entry)
            self.progress.note(f"{name}: skipped, {entry['reason']}")
            self._write_sidecar(sidecar, plan)
            return None, False
        spec = ArmSpec(name=name, args=fit_args(target) + load_args)
        ctxp = plan.ctx
        tool = fit_params_binary(server_bin)
        if tool is not None:
            cfg = self.runner.cfg
            tool_args = [*spec.args, "-c", str(n_ctx), "-fa", cfg.flash_attn, "-lv", "4"]
            if ctxp.n_batch != DEFAULT_N_BATCH:
                tool_args += ["-b", str(ctxp.n_batch)]
            if ctxp.n_ubatch != DEFAULT_N_UBATCH:
                tool_args += ["-ub", str(ctxp.n_ubatch)]
            # -np is a server-only flag (common/arg.cpp: set_examples({LLAMA_EXAMPLE_SERVER})):
            # llama-fit-params plans one sequence
            entry["fit_params"] = run_fit_params(tool, model_path, tool_args).to_dict()
        else:
            entry["fit_params"] = {"error": f"no llama-fit-params beside {server_bin}"}
        self.progress.note(f"{name}: --fit on, " + (f"--fit-target {target.margin_mib} ({target.derivation})"
                                                   if target.margin_mib is not None else target.reason))
        end, recs, vram, _ = launch(spec, n_ctx)
        ok, tps, error = outcome(end, recs)
        over = budget is not None and vram is not None and vram > budget
        entry.update(status="measured" if ok else "failed", vram_mib=vram, decode_tps=tps, error=error,
                     free_mib_before=free_now, over_budget=over,
                     placement=(end.breakdown.get("fit", {}) if end is not None else {}))
        self.trail.append(entry)
        self._write_sidecar(sidecar, plan)
        return spec, ok and not over

    def record_time_to_advice(self, seconds: float) -> None:
        """The sweep's start to its advice (the report built), into the trail: the report prints it."""
        self.time_to_advice_s = round(seconds, 2)
        if self.sidecar is not None and self._plan is not None:
            self._write_sidecar(self.sidecar, self._plan)

    def _write_sidecar(self, sidecar: Path, plan: SweepPlan, entry_only: bool = False) -> None:
        """Rewritten after every probe (a crash keeps the trail so far), atomically."""
        body: dict[str, Any] = {"abtest_version": __version__, "mode": plan.mode, "budget_mib": plan.budget_mib,
                                "free_mib": plan.free_mib, "margin_mib": plan.margin_mib, "trail": self.trail,
                                "elapsed_s": round(time.perf_counter() - self.t0, 2)}
        if self.time_to_advice_s is not None:
            body["time_to_advice_s"] = self.time_to_advice_s
        if self.session_log:
            body["next_sessions"] = self.session_log
        if self.device_budgets is not None:
            body["budgets_mib"] = list(self.device_budgets)
        if self._device_results:
            body["results_by_ts"] = {ts: r.to_dict() for ts, r in self._device_results.items()}
        if not entry_only and self._result is not None:
            body["result"] = self._result.to_dict()
            if len(self._results) > 1:
                body["results"] = {str(c): st["search"].to_dict() for c, st in self._results.items()}
        tmp = sidecar.with_name(sidecar.name + ".tmp")
        tmp.write_text(json.dumps(body, indent=1, default=_json_default) + "\n", encoding="utf-8")
        os.replace(tmp, sidecar)


def check_devices(budgets: tuple[float, ...] | None, ts_grid: str | None, contexts: Sequence[int] | None,
                  objective: str, load_mode: str) -> None:
    """What a multi-device sweep (a budget per GPU) does not do, in one line each."""
    if budgets is None:
        if ts_grid is not None:
            raise ConfigError("--ts searches -ts proportions over several GPUs: give a budget per GPU, "
                              "e.g. --vram-budget 24GiB,24GiB")
        return
    if contexts is not None and len(contexts) > 1:
        raise ConfigError("--ctx A,B,C with a budget per GPU: run one multi-device sweep per context (--ctx-size N)")
    if objective != "speed":
        raise ConfigError("--objective capacity with a budget per GPU is not supported: the multi-device search "
                          "ranks by decode tok/s")
    if load_mode == "both":
        raise ConfigError("--load-mode both with a budget per GPU is not supported; use mmap or none")


def check_objective(cfg: RunConfig, objective: str, contexts: Sequence[int] | None = None) -> None:
    """What the sweep maximises, and the load each candidate runs at: "speed" at one concurrency
    (no --slo, no levels); "capacity" with --slo and closed-loop levels (a --concurrency list of
    two or more, or a concurrency search). ConfigError saying which flag is wrong."""
    if objective not in OBJECTIVES:
        raise ConfigError(f"--objective {objective!r}: use speed or capacity")
    if objective == "speed":
        if cfg.slo or cfg.concurrency_levels or cfg.search or cfg.concurrency != 1:
            raise ConfigError("--slo and --concurrency are for --objective capacity (the speed objective "
                              "measures decode at concurrency 1)")
        return
    if not cfg.slo:
        raise ConfigError('--objective capacity ranks settings by the most load within an SLO: give --slo, '
                          'e.g. --slo "ttft_p95<=500ms"')
    if cfg.rate is not None or cfg.rate_levels or cfg.search == "rate":
        raise ConfigError("--objective capacity runs closed-loop --concurrency levels; rate levels are not swept")
    if cfg.search != "concurrency" and len(cfg.concurrency_levels) < 2:
        raise ConfigError("--objective capacity needs two or more --concurrency levels (e.g. 1,2,4,8) or "
                          "--concurrency auto: one level cannot show where the SLO starts to fail")
    if contexts is not None and len(contexts) > 1:
        raise ConfigError("--ctx A,B,C with --objective capacity: the frontier is of decode tok/s per context; "
                          "run one capacity sweep per context (--ctx-size N)")


def highest_level_met(recs: Sequence[RequestRecord], slo: Sequence[Any]) -> tuple[int | None, float | None]:
    """One session's highest concurrency level (walking up from the lowest) whose requests meet
    every objective (`analysis.slo.level_meets`, as the capacity search judges a probe), and the
    req/s carried there; (None, None) when the lowest fails. The sweep orders its finalists by it;
    the report's capacity (`analysis.capacity`) interpolates between levels."""
    from ..analysis.slo import level_meets, level_span

    by: dict[int, list[RequestRecord]] = {}
    for r in recs:
        if not r.warmup:
            by.setdefault(r.concurrency, []).append(r)
    best: tuple[int | None, float | None] = (None, None)
    for c in sorted(by):
        if not level_meets(by[c], slo):
            break
        best = (c, level_span(by[c]).req_per_s)
    return best


def _json_default(o: Any) -> Any:
    if isinstance(o, float) and not math.isfinite(o):
        return None
    raise TypeError(type(o).__name__)


def measured_vram_mib(end: ArmEnd | None, device_used_before_mib: float | None = None) -> float | None:
    """The setting's GPU memory: the per-PID NVML peak; where NVML cannot see the PID (a container
    without --pid=host), the device's peak used memory less what was used before the launch."""
    if end is None or not end.memory:
        return None
    peak = end.memory.get("peak") or {}
    v = peak.get("pid_vram_mib")
    if v is not None:
        return float(v)
    dev = peak.get("device_used_mib")
    if dev is not None and device_used_before_mib is not None:
        return max(0.0, float(dev) - float(device_used_before_mib))
    return None


__all__ = [
    "FIT_ARM", "LOAD_MODES", "SweepPlan", "SweepResult", "SweepRunner", "arm_name", "context_params",
    "far_over_budget", "make_plan", "measured_vram_mib", "n_of_arm", "parse_ctx_list", "parse_ncmoe",
]
