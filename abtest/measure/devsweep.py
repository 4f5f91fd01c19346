"""`abtest sweep --vram-budget A,B,...`: the ``-ts`` × ``--n-cpu-moe`` search over several GPUs, a budget per device.

    predict every (ts, N) per device (models.split) before anything is launched
    per -ts of the grid: the search over N of `measure.search`, judged on the worst device's
        excess over its budget (max over devices of used - budget: fits when <= 0), so the
        bisection and its prediction guidance work unchanged; a setting predicted over any
        device's free memory (less --margin), or far over any device's budget, is skipped
    the fit competitor: --fit on --fit-target M0,M1,... with M_i = free_i - budget_i (fit takes
        one margin per device, common/arg.cpp "-fitt"), and no -ts (fit sets it, and aborts when
        the user did: common/fit.cpp "tensor_split already set by user")
    the finalists (the two fastest that fit every device, and fit if it did) in more sessions

Each setting runs as arm ``ncmoe<N>-ts<a>-<b>`` (-ngl 99 -ts a,b --n-cpu-moe N). A setting's measured
per-PID peak on each device (``arm_end.memory.peak_by_gpu``, by UUID, mapped to CUDA order by the
visible devices' UUIDs) is held against that device's budget. With one budget the sweep is the
single-device one (`measure.sweep`), unchanged.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..config import ArmSpec
from ..errors import ConfigError
from ..models.desc import ModelDesc
from ..models.split import Split, SplitPrediction, parse_tensor_split_grid, predict_devices
from ..models.vram import ContextParams
from ..records import ArmEnd
from .finalists import Comparison, SessionResult
from .search import Measurement, SearchResult, search

FAR_FRACTION, FAR_MIN_MIB = 0.02, 128.0  # as measure.sweep: the prediction's accuracy bar per device
_ARM = re.compile(r"^ncmoe(?P<n>\d+)-ts(?P<ts>\d+(?:\.\d+)?(?:-\d+(?:\.\d+)?)+)$")


def parse_budgets(text: str) -> list[float]:
    """'24GiB,24GiB' -> [24576.0, 24576.0] (MiB); one size -> one budget."""
    from ..models.vram import parse_size_mib

    parts = [p for p in (text or "").split(",")]
    if not parts or any(not p.strip() for p in parts):
        raise ConfigError(f"--vram-budget {text!r}: one size per GPU separated by commas, e.g. 24GiB,24GiB")
    return [parse_size_mib(p) for p in parts]


def ts_text(ts: Sequence[float]) -> str:
    return ",".join(f"{x:g}" for x in ts)


def arm_name(ts: Sequence[float], n: int) -> str:
    """``ncmoe12-ts3-2``: the setting -ts 3,2 --n-cpu-moe 12."""
    return f"ncmoe{n}-ts" + "-".join(f"{x:g}" for x in ts)


def parse_arm(name: str) -> tuple[tuple[float, ...], int] | None:
    m = _ARM.match(name)
    if not m:
        return None
    return tuple(float(x) for x in m["ts"].split("-")), int(m["n"])


def arm_spec(ts: Sequence[float], n: int, extra: tuple[str, ...] = ()) -> ArmSpec:
    return ArmSpec(name=arm_name(ts, n), args=("-ngl", "99", "-ts", ts_text(ts), "--n-cpu-moe", str(n), *extra))


def free_by_device(nvml: Any) -> list[float] | None:
    """Free memory (total - used) of each visible device, in CUDA order; None without a GPU."""
    info = nvml.info()
    if not info.available or not info.devices:
        return None
    if any(d.get("memory_total_mib") is None or d.get("memory_used_mib") is None for d in info.devices):
        return None
    return [float(d["memory_total_mib"]) - float(d["memory_used_mib"]) for d in info.devices]


def device_uuids(nvml: Any) -> list[str | None]:
    info = nvml.info()
    return [d.get("uuid") for d in info.devices] if info.available else []


def measured_by_device(end: ArmEnd | None, uuids: Sequence[str | None], n_devices: int) -> list[float] | None:
    """The PID's own peak on each device in CUDA order (0 where it held none), from
    ``arm_end.memory.peak_by_gpu``; None when the arm has no per-device figures or the devices'
    UUIDs are unknown."""
    if end is None or not end.memory or len(uuids) != n_devices or None in uuids:
        return None
    by = end.memory.get("peak_by_gpu")
    if not isinstance(by, dict) or not by:
        return None
    return [float(by.get(u, 0.0)) for u in uuids]


@dataclass(frozen=True)
class DevicePlan:
    """What the multi-device sweep decided before the first launch; goes into config.extra.sweep.devices."""

    budgets_mib: tuple[float, ...]
    free_mib: tuple[float, ...] | None  # per device before the first launch (None without NVML)
    margin_mib: float
    grid: tuple[tuple[float, ...], ...]  # the -ts proportions searched
    settings: tuple[int, ...]  # the Ns (a list, or 0..n_layer for auto)
    mode: str  # "auto" | "list"
    predictions: dict[str, SplitPrediction]  # arm name -> per-device prediction

    @property
    def n_devices(self) -> int:
        return len(self.budgets_mib)

    def prediction(self, ts: Sequence[float], n: int) -> SplitPrediction:
        return self.predictions[arm_name(ts, n)]

    def predicted(self, ts: Sequence[float], n: int) -> list[float]:
        return self.prediction(ts, n).per_device_mib(self.n_devices)

    def excess(self, ts: Sequence[float], n: int, bias: Sequence[float] = ()) -> float:
        """The worst device's predicted use over its budget (<= 0: fits every device)."""
        b = list(bias) or [0.0] * self.n_devices
        return max(p + e - budget for p, e, budget in zip(self.predicted(ts, n), b, self.budgets_mib, strict=True))

    def skip_reason(self, ts: Sequence[float], n: int, free_now: Sequence[float] | None = None,
                    bias: Sequence[float] = ()) -> str | None:
        """Why (ts, n) must not be launched: predicted over a device's free memory less the margin
        (it would not load), or far over a device's budget (it could only confirm that); None."""
        free = self.free_mib if free_now is None else free_now
        pred = self.predicted(ts, n)
        b = list(bias) or [0.0] * self.n_devices
        for i, p in enumerate(pred):
            if free is not None and i < len(free) and p > free[i] - self.margin_mib:
                return (f"GPU {i}: predicted {p / 1024:.2f} GiB > free {free[i] / 1024:.2f} GiB - margin "
                        f"{self.margin_mib / 1024:.2f} GiB")
            budget = self.budgets_mib[i]
            if p + b[i] > budget + max(FAR_FRACTION * budget, FAR_MIN_MIB):
                return (f"GPU {i}: predicted {p / 1024:.2f} GiB ({b[i]:+.0f} MiB error seen) > budget "
                        f"{budget / 1024:.2f} GiB + max(2 %, 128 MiB): not launched")
        return None

    def to_extra(self) -> dict[str, Any]:
        return {
            "budgets_mib": list(self.budgets_mib), "free_mib": list(self.free_mib) if self.free_mib else None,
            "margin_mib": self.margin_mib, "grid": [list(ts) for ts in self.grid], "settings": list(self.settings),
            "mode": self.mode, "predictions": {a: p.to_dict() for a, p in self.predictions.items()},
            "skipped_at_start": {arm_name(ts, n): r for ts in self.grid for n in self.settings
                                 if (r := self.skip_reason(ts, n))},
        }


def make_device_plan(layout: ModelDesc, ctx: ContextParams, budgets_mib: Sequence[float],
                     free_mib: Sequence[float] | None, settings: Sequence[int] | None, grid_text: str | None,
                     margin_mib: float, overhead_mib: float) -> DevicePlan:
    """Every (ts, N) of the grid predicted per device (a pure function of the header and the flags)."""
    nd = len(budgets_mib)
    if nd < 2:
        raise ConfigError("a multi-device sweep needs a budget per GPU: --vram-budget 24GiB,24GiB")
    if free_mib is not None and len(free_mib) != nd:
        raise ConfigError(f"--vram-budget gives {nd} budgets but the server sees {len(free_mib)} GPUs: give one "
                          "budget per visible device, or set CUDA_VISIBLE_DEVICES to the ones to use")
    grid = tuple(parse_tensor_split_grid(grid_text, nd))
    cands = tuple(settings) if settings is not None else tuple(range(layout.n_layer + 1))
    preds = {arm_name(ts, n): predict_devices(layout, Split.of(nd, ts, n), ctx, overhead_mib)
             for ts in grid for n in sorted(set(cands) | {0, layout.n_layer})}
    return DevicePlan(tuple(float(b) for b in budgets_mib), tuple(free_mib) if free_mib is not None else None,
                      margin_mib, grid, cands, "list" if settings is not None else "auto", preds)


Launch = Callable[[ArmSpec, int], tuple[ArmEnd | None, list[Any], float | None, float | None]]
Outcome = Callable[[ArmEnd | None, list[Any]], tuple[bool, float | None, str | None]]


def run_device_stage(sweeper: Any, plan: DevicePlan, n_ctx: int, n_layer: int, launch: Launch, outcome: Outcome,
                     sidecar: Any, server_bin: str, model_path: str, load_args: tuple[str, ...] = ()) -> dict[str, Any]:
    """The search over N for each -ts of the grid, the fit competitor, the finalists' sessions.
    `sweeper` is the `SweepRunner` (its trail, progress, NVML, sidecar writer); returns
    {"by_ts": {ts: SearchResult}, "best": arm or None}."""
    nd = plan.n_devices
    nvml = sweeper.runner.nvml

    def bias() -> list[float]:
        errs: list[list[float]] = [[] for _ in range(nd)]
        for t in sweeper.trail:
            m, p = t.get("vram_by_device_mib"), t.get("predicted_by_device_mib")
            if t.get("status") == "measured" and isinstance(m, list) and isinstance(p, list) and t.get("role") is None:
                for i in range(min(nd, len(m), len(p))):
                    errs[i].append(float(m[i]) - float(p[i]))
        return [statistics.median(e) if e else 0.0 for e in errs]

    def free_now() -> list[float] | None:
        return free_by_device(nvml)

    by_ts: dict[str, SearchResult] = {}
    measured: dict[str, float] = {}  # arm -> decode tok/s, the settings that fit every device
    for ts in plan.grid:
        def measure(n: int, ts: tuple[float, ...] = ts) -> Measurement | None:
            free = free_now()
            spec = arm_spec(ts, n, load_args)
            pred = plan.predicted(ts, n)
            entry: dict[str, Any] = {"n": n, "ts": list(ts), "arm": spec.name, "n_ctx": n_ctx, "block": 0,
                                     "free_by_device_mib": free, "predicted_by_device_mib": pred,
                                     "predicted_mib": round(sum(pred), 1), "budget_by_device_mib": list(plan.budgets_mib),
                                     "at": _now()}
            reason = plan.skip_reason(ts, n, free, bias())
            if reason:
                entry.update(status="skipped", reason=reason)
                sweeper.trail.append(entry)
                sweeper.progress.note(f"{spec.name}: skipped, {reason}")
                sweeper._write_sidecar(sidecar, sweeper._plan)
                return None
            sweeper.progress.note(f"{spec.name}: predicted " + " + ".join(f"{p / 1024:.2f}" for p in pred) + " GiB")
            end, recs, vram, _ = launch(spec, n_ctx)
            ok, tps, error = outcome(end, recs)
            per = measured_by_device(end, device_uuids(nvml), nd)
            over = [i for i, (v, b) in enumerate(zip(per, plan.budgets_mib, strict=True)) if v > b] if per else []
            entry.update(status="measured" if ok else "failed", vram_mib=vram, vram_by_device_mib=per,
                         over_budget_devices=over, decode_tps=tps, error=error)
            sweeper.trail.append(entry)
            sweeper._write_sidecar(sidecar, sweeper._plan)
            excess = max(v - b for v, b in zip(per, plan.budgets_mib, strict=True)) if per else None
            if ok and tps is not None and (per is not None and not over or per is None and plan.excess(ts, n) <= 0):
                measured[spec.name] = tps
            note = (error or "") if end is not None else "no arm_end"
            return Measurement(ok=ok, vram_mib=excess, decode_tps=tps, note=note if not ok else "")

        def pred_excess(n: int, ts: tuple[float, ...] = ts) -> float:
            return plan.excess(ts, n)

        result = search(n_layer, 0.0, measure, pred_excess, list(plan.settings) if plan.mode == "list" else None)
        by_ts[ts_text(ts)] = result
        sweeper._device_results = by_ts
    fit_spec, fit_ok = _fit_arm(sweeper, plan, n_ctx, launch, outcome, sidecar, server_bin, model_path, load_args)
    ranked = sorted(measured, key=lambda a: -measured[a])
    finalists: list[ArmSpec] = []
    for a in ranked[:2]:
        parsed = parse_arm(a)
        assert parsed is not None
        finalists.append(arm_spec(parsed[0], parsed[1], load_args))
    comparisons: list[Comparison] = []
    if fit_spec is not None and fit_ok:
        finalists.append(fit_spec)
        if ranked:
            comparisons.append(Comparison(default=fit_spec.name, challenger=finalists[0].name))

    def record(spec: ArmSpec, s: SessionResult) -> dict[str, Any]:
        return {"arm": spec.name, "n_ctx": n_ctx, "role": "finalist", **s.trail_fields(),
                "vram_by_device_mib": measured_by_device(s.end, device_uuids(nvml), nd), "at": _now()}

    sweeper.run_finalists(finalists, comparisons, n_ctx, launch, outcome, sidecar, record)
    return {"by_ts": by_ts, "best": ranked[0] if ranked else None}


def fit_targets(free_mib: Sequence[float] | None, budgets_mib: Sequence[float]) -> tuple[list[int] | None, str]:
    """--fit-target per device: floor(free_i - budget_i), at least 0 (fit keeps free - used >= margin
    on each device, so used <= budget); (None, why) when the free memory is not known."""
    if free_mib is None or len(free_mib) != len(budgets_mib) or not all(math.isfinite(f) for f in free_mib):
        return None, "no per-device free memory (no GPU seen by NVML): no margins can be derived"
    margins = [max(0, math.floor(f - b)) for f, b in zip(free_mib, budgets_mib, strict=True)]
    how = "; ".join(f"GPU {i}: free {f:.0f} − budget {b:.0f} = {m} MiB"
                    for i, (f, b, m) in enumerate(zip(free_mib, budgets_mib, margins, strict=True)))
    return margins, how


def _fit_arm(sweeper: Any, plan: DevicePlan, n_ctx: int, launch: Launch, outcome: Outcome, sidecar: Any,
             server_bin: str, model_path: str, load_args: tuple[str, ...]) -> tuple[ArmSpec | None, bool]:
    from ..server.fit import fit_params_binary, run_fit_params

    name = "fit"
    entry: dict[str, Any] = {"n": None, "arm": name, "n_ctx": n_ctx, "block": 0, "role": "fit", "at": _now()}
    free = free_by_device(sweeper.runner.nvml)
    margins, how = fit_targets(free, plan.budgets_mib)
    entry["fit_target"] = {"margins_mib": margins, "free_by_device_mib": free, "budgets_mib": list(plan.budgets_mib),
                           "derivation": how}
    backend = getattr(sweeper._plan, "backend", "unknown")
    if sweeper.fit_competitor == "off":
        entry.update(status="skipped", reason="--fit-competitor off")
    elif backend == "cpu" and sweeper.fit_competitor == "auto":
        entry.update(status="skipped", reason="a CPU build: --fit has no device to place layers on; "
                                              "--fit-competitor on runs it anyway")
    elif margins is None and sweeper.fit_competitor == "auto":
        entry.update(status="skipped", reason=how)
    if entry.get("status") == "skipped":
        sweeper.trail.append(entry)
        sweeper.progress.note(f"{name}: skipped, {entry['reason']}")
        sweeper._write_sidecar(sidecar, sweeper._plan)
        return None, False
    args: tuple[str, ...] = ("--fit", "on")
    if margins is not None:
        args += ("--fit-target", ",".join(str(m) for m in margins))
    spec = ArmSpec(name=name, args=args + load_args)
    tool = fit_params_binary(server_bin)
    if tool is not None:
        cfg = sweeper.runner.cfg
        entry["fit_params"] = run_fit_params(tool, model_path, [*spec.args, "-c", str(n_ctx), "-fa", cfg.flash_attn,
                                                                "-lv", "4"]).to_dict()
    else:
        entry["fit_params"] = {"error": f"no llama-fit-params beside {server_bin}"}
    sweeper.progress.note(f"{name}: --fit on" + (f", --fit-target {','.join(map(str, margins))}" if margins else ""))
    end, recs, vram, _ = launch(spec, n_ctx)
    ok, tps, error = outcome(end, recs)
    per = measured_by_device(end, device_uuids(sweeper.runner.nvml), plan.n_devices)
    over = [i for i, (v, b) in enumerate(zip(per, plan.budgets_mib, strict=True)) if v > b] if per else []
    entry.update(status="measured" if ok else "failed", vram_mib=vram, vram_by_device_mib=per, over_budget_devices=over,
                 over_budget=bool(over), decode_tps=tps, error=error, free_by_device_mib=free,
                 placement=(end.breakdown.get("fit", {}) if end is not None else {}))
    sweeper.trail.append(entry)
    sweeper._write_sidecar(sidecar, sweeper._plan)
    return spec, ok and not over


def _now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="seconds")


__all__ = [
    "DevicePlan", "arm_name", "arm_spec", "device_uuids", "fit_targets", "free_by_device", "make_device_plan",
    "measured_by_device", "parse_arm", "parse_budgets", "run_device_stage", "ts_text",
]
