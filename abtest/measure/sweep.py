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
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import __version__
from ..argv import FLAGS, int_flag
from ..config import RunConfig, auto_ctx_size, ready_made_arm
from ..errors import ConfigError
from ..evidence import SWEEP_SIDECAR_SUFFIX, EvidenceWriter, check_writable
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
from .progress import Progress
from .runner import Runner, closing_writer
from .search import Measurement, SearchResult, search

DEFAULT_MARGIN_MIB = 512.0  # skip a setting predicted within this much of the free VRAM


# ----------------------------------------------------------------------------- settings


def arm_name(n: int) -> str:
    return f"ncmoe{n}"


def n_of_arm(name: str) -> int | None:
    return int(name[5:]) if name.startswith("ncmoe") and name[5:].isdigit() else None


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
    """

    def __init__(
        self,
        cfg: RunConfig,
        ncmoe: str | Sequence[int] | None,
        budget_mib: float | None,
        margin_mib: float = DEFAULT_MARGIN_MIB,
        overhead_mib: float = CUDA_OVERHEAD_MIB,
        progress: Progress | None = None,
        argv: Sequence[str] = (),
    ) -> None:
        probe_arm = ready_made_arm("ncmoe0")
        self.runner = Runner(replace(cfg, arms=(probe_arm,), blocks=1), progress, argv)
        self.runner.subscribe(self._observe)
        self.progress = self.runner.progress
        self.ncmoe = ncmoe
        self.settings: list[int] | None = None
        self.budget_mib = budget_mib
        self.margin_mib = margin_mib
        self.overhead_mib = overhead_mib
        self._arm_ends: dict[str, ArmEnd] = {}
        self._records: dict[str, list[RequestRecord]] = {}
        self._result: SearchResult | None = None
        self.trail: list[dict[str, Any]] = []

    def _observe(self, record: Any) -> None:
        if isinstance(record, ArmEnd):
            self._arm_ends[record.arm] = record
        elif isinstance(record, RequestRecord) and not record.warmup:
            self._records.setdefault(record.arm, []).append(record)

    def execute(self) -> SweepResult:
        from ..analysis.metrics import decode_tps
        from ..models.desc import read_model
        from .prompts import load_prompts

        runner = self.runner
        cfg = runner.cfg
        t0 = time.perf_counter()
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
        n_ctx = cfg.ctx_size or auto_ctx_size(
            longest_prompt_estimate(cases), cfg.max_tokens, cfg.server_slots
        )
        ctx = context_params(cfg, n_ctx)
        free = free_vram_mib(runner.nvml)
        budget = self.budget_mib if self.budget_mib is not None else free
        plan = make_plan(layout, model_path, ctx, self.settings, budget, free, self.margin_mib, self.overhead_mib,
                         backend=str(resolved.server.get("backend", "unknown")), offsets=gguf_offsets(model_path))
        candidates = sorted(set(plan.settings) | {0, layout.n_layer})
        arms = tuple(ready_made_arm(arm_name(n)) for n in candidates)
        cfg = replace(cfg, ctx_size=n_ctx, arms=arms, blocks=1, extra={**cfg.extra, "sweep": plan.to_extra()})
        runner.cfg = cfg
        runner.writer = EvidenceWriter(evidence_path(cfg, cfg.model), new=True)
        path = runner.writer.path  # the name taken (unique, see EvidenceWriter)
        sidecar = path.with_name(path.stem + SWEEP_SIDECAR_SUFFIX)

        def measure(n: int) -> Measurement | None:
            free_now = free_vram_mib(runner.nvml)
            reason = plan.skip_reason(n, free_now)
            entry: dict[str, Any] = {"n": n, "arm": arm_name(n), "free_mib_before": free_now,
                                     "predicted_mib": plan.predictions[n].total_mib, "at": _now()}
            if reason:
                entry.update(status="skipped", reason=reason)
                self.trail.append(entry)
                self.progress.note(f"{arm_name(n)}: skipped, {reason}")
                self._write_sidecar(sidecar, plan, entry_only=True)
                return None
            used_before = runner.nvml.device_sample().get("device_used_mib")
            spec = ready_made_arm(arm_name(n))
            arm = ResolvedArm(spec, resolved.server, resolved.model)
            self.progress.note(
                f"{arm_name(n)}: predicted {plan.predictions[n].total_mib / 1024:.2f} GiB"
                + (f", free {free_now / 1024:.2f} GiB" if free_now is not None else "")
            )
            runner.run_arm(arm, cases, n_ctx, path)
            end = self._arm_ends.get(spec.name)
            recs = self._records.get(spec.name, [])
            rates = [v for v in (decode_tps(r) for r in recs) if v is not None]
            tps = statistics.mean(rates) if rates else None
            vram = measured_vram_mib(end, used_before)
            ok = end is not None and end.status == "ok" and bool(rates)
            error = None if end is None else end.error
            if end is not None and end.status == "ok" and not rates:
                from ..analysis.metrics import decode_unmeasurable

                why = next((w for r in recs if (w := decode_unmeasurable(r))), "no successful request")
                error = (f"no request of this setting has a decode rate ({why}; docs/metrics.md) — "
                         "raise --max-tokens (a rate needs 12 tokens read apart) or quiet the machine")
            entry.update(status="measured" if ok else "failed", vram_mib=vram, decode_tps=tps,
                         device_used_before_mib=used_before, error=error)
            self.trail.append(entry)
            self._write_sidecar(sidecar, plan, entry_only=True)
            note = (error or "") if end is not None else "no arm_end"
            return Measurement(ok=ok, vram_mib=vram, decode_tps=tps, note=note if not ok else "")

        with closing_writer(runner.writer):
            runner.write(runner.manifest(path, [resolved.model], arms))

            def pred(n: int) -> float:
                return plan.predictions[n].total_mib

            result = search(layout.n_layer, budget, measure, pred, self.settings)
            runner.write(runner.run_end(t0))
            self._result = result
            self._write_sidecar(sidecar, plan)
        return SweepResult(path, sidecar, plan, result, runner.n_requests, runner.n_failed, runner.arms_failed,
                           time.perf_counter() - t0, self.trail)

    def _write_sidecar(self, sidecar: Path, plan: SweepPlan, entry_only: bool = False) -> None:
        """Rewritten after every probe (a crash keeps the trail so far), atomically."""
        body: dict[str, Any] = {"abtest_version": __version__, "mode": plan.mode, "budget_mib": plan.budget_mib,
                                "free_mib": plan.free_mib, "margin_mib": plan.margin_mib, "trail": self.trail}
        if not entry_only and self._result is not None:
            body["result"] = self._result.to_dict()
        tmp = sidecar.with_name(sidecar.name + ".tmp")
        tmp.write_text(json.dumps(body, indent=1, default=_json_default) + "\n", encoding="utf-8")
        os.replace(tmp, sidecar)


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
    "SweepPlan", "SweepResult", "SweepRunner", "arm_name", "context_params", "make_plan", "measured_vram_mib",
    "n_of_arm", "parse_ncmoe",
]
