"""llama.cpp's own placement (``--fit``) as a competitor: the fit-target for a budget, and the plan of llama-fit-params.

What ``--fit on`` does (common/fit.cpp, `common_params_fit_impl`, pinned llama.cpp 0.3.36 / 0c1e570):
it loads the model without allocating (`no_alloc`) to project the memory of the *unset* arguments,
then keeps, per device, ``free - projected >= margin``, where ``free`` is the device's free memory
as the backend reports it inside the server's process (`ggml_backend_dev_memory`, i.e.
cudaMemGetInfo after this process's CUDA context exists) and ``margin`` is ``--fit-target`` MiB
(common/arg.cpp: "-fitt/--fit-target", default 1024, one value broadcast to every device). It
gives up ("n_gpu_layers already set by user ..., abort") when ``-ngl`` or ``-ot`` is set, so the fit
arm has neither; it leaves a user-set ``-c`` alone ("context size set by user to N -> no change"),
so the fit arm runs at the sweep's context like every other arm.

A budget B is a cap on the server's per-PID memory; fit's knob is a margin of free memory. The
derivation (`fit_target_for_budget`): margin = free − B, with free = the device's free memory from
NVML right before the launch, so that fit's own rule ``used <= free − margin`` reads ``used <= B``.
Fit counts only llama.cpp's buffers as "used" (model + context + compute, the projection) and its
``free`` is read after its CUDA context exists, so what it does not count (cuBLAS, the CUDA pool,
graphs: part of `vram.CUDA_OVERHEAD_MIB`) can carry its per-PID peak over B: the sweep holds the
measured peak against B as for every candidate, and an arm over it is disqualified. Both inputs and
the margin go into the evidence.

`llama-fit-params` (tools/fit-params/fit-params.cpp, `llama_fit_params`) runs the same
`common_fit_params` and prints the arguments it would set to stdout:
``-c 4096 -ngl 25 -ot "blk\\.3\\.ffn_(up|down|gate_up|gate)_(ch|)exps=CPU,..."`` (``-ts`` with several
devices); its stderr has the same log lines as the server's (`server.log.parse_fit_log`).
"""

from __future__ import annotations

import math
import os
import re
import shlex
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .builds import FIT_PARAMS_NAME
from .log import parse_fit_log

FIT_DEFAULT_TARGET_MIB = 1024  # common/common.h: fit_params_target default, 1024 MiB per device
FIT_PARAMS_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class FitTarget:
    """The ``--fit-target`` that makes fit aim at a budget, and what it was derived from."""

    margin_mib: int | None  # the --fit-target value; None: fit cannot aim at the budget (see reason)
    free_mib: float | None  # the device's free memory (NVML) right before the launch
    budget_mib: float | None
    derivation: str
    reason: str = ""  # why there is no margin ("" when there is one)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fit_target_for_budget(free_mib: float | None, budget_mib: float | None) -> FitTarget:
    """margin = floor(free − budget) MiB: fit keeps ``free − used >= margin``, i.e. ``used <= budget``.

    No free memory known (no GPU, no NVML): no margin, with the reason. A budget at or above the
    free memory: margin 0 (fit may use everything free; the budget cannot be reached anyway).
    """
    if free_mib is None or not math.isfinite(free_mib):
        return FitTarget(None, free_mib, budget_mib, "", "no device memory figure (no GPU seen by NVML): "
                         "--fit has no device to fit and no margin can be derived")
    if budget_mib is None:
        return FitTarget(FIT_DEFAULT_TARGET_MIB, free_mib, None,
                         f"no budget: fit's default margin {FIT_DEFAULT_TARGET_MIB} MiB")
    margin = max(0, math.floor(free_mib - budget_mib))
    how = (f"free {free_mib:.0f} MiB (NVML, before launch) − budget {budget_mib:.0f} MiB = {margin} MiB to leave free"
           if free_mib > budget_mib else
           f"budget {budget_mib:.0f} MiB ≥ free {free_mib:.0f} MiB: margin 0 (fit may use all free memory)")
    return FitTarget(margin, free_mib, budget_mib, how)


def fit_args(target: FitTarget) -> tuple[str, ...]:
    """The fit arm's placement flags: ``--fit on`` and the margin, never ``-ngl`` (fit aborts then)."""
    args: tuple[str, ...] = ("--fit", "on")
    if target.margin_mib is not None:
        args += ("--fit-target", str(target.margin_mib))
    return args


# ----------------------------------------------------------------------------- llama-fit-params


@dataclass(frozen=True)
class FitPlan:
    """What llama-fit-params printed for the fit arm's arguments, parsed."""

    argv: tuple[str, ...]
    exit_code: int | None
    seconds: float
    stdout: str  # the fitted CLI arguments, one line
    n_ctx: int | None = None
    n_gpu_layers: int | None = None
    tensor_split: str | None = None
    overrides: tuple[str, ...] = ()  # "pattern=BUFT" as printed
    cpu_expert_layers: tuple[int, ...] = ()  # layers whose whole expert tensors go to the CPU
    partial_layers: tuple[int, ...] = ()  # layers with only some FFN tensors on the CPU
    log: dict[str, Any] = field(default_factory=dict)  # parse_fit_log of its stderr
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["argv"] = list(self.argv)
        return d


_LAYER_OF = re.compile(r"blk\\\.(\d+)\\\.")


def parse_fit_params_stdout(text: str) -> dict[str, Any]:
    """``-c 4096 -ngl 25 [-ts 1,2] [-ot "p1=CPU,p2=CPU"]`` -> n_ctx, n_gpu_layers, tensor_split,
    overrides, and the layers the overrides name (whole experts vs part of a layer), as
    tools/fit-params/fit-params.cpp prints them (printf("-c %u -ngl %d"), " -ts ", " -ot \\"...\\"")."""
    line = next((ln.strip() for ln in reversed(text.splitlines()) if ln.strip().startswith("-c ")), "")
    out: dict[str, Any] = {"n_ctx": None, "n_gpu_layers": None, "tensor_split": None, "overrides": (),
                           "cpu_expert_layers": (), "partial_layers": ()}
    if not line:
        return out
    try:
        toks = shlex.split(line)
    except ValueError:
        toks = line.split()
    for i, t in enumerate(toks[:-1]):
        v = toks[i + 1]
        if t == "-c" and v.isdigit():
            out["n_ctx"] = int(v)
        elif t == "-ngl" and v.lstrip("-").isdigit():
            out["n_gpu_layers"] = int(v)
        elif t == "-ts":
            out["tensor_split"] = v
        elif t == "-ot":
            out["overrides"] = tuple(p for p in v.split(",") if p)
    whole: list[int] = []
    part: list[int] = []
    for o in out["overrides"]:
        m = _LAYER_OF.search(o)
        if not m:
            continue
        # LAYER_FRACTION_MOE: "blk\.N\.ffn_(up|down|gate_up|gate)_(ch|)exps" (common/fit.cpp,
        # get_overflow_pattern); the other fractions (ATTN/UP/GATE) move part of one layer
        (whole if "exps" in o.split("=", 1)[0] else part).append(int(m.group(1)))
    out["cpu_expert_layers"], out["partial_layers"] = tuple(whole), tuple(part)
    return out


def fit_params_binary(server_bin: str | os.PathLike[str]) -> Path | None:
    """llama-fit-params beside the llama-server (the cache build installs both), else None."""
    p = Path(server_bin).with_name(FIT_PARAMS_NAME)
    return p if p.is_file() and os.access(p, os.X_OK) else None


def run_fit_params(binary: Path, model_path: str, args: Sequence[str],
                   timeout_s: float = FIT_PARAMS_TIMEOUT_S) -> FitPlan:
    """Run llama-fit-params with the fit arm's arguments (the model, the fit flags, -c, -np, -fa,
    ...) and parse its plan. Never raises for the tool's own failure: the plan records it."""
    argv = (str(binary), "-m", model_path, *args)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return FitPlan(argv, None, time.perf_counter() - t0, "", error=f"llama-fit-params did not run: {exc}")
    secs = time.perf_counter() - t0
    parsed = parse_fit_params_stdout(proc.stdout)
    log = parse_fit_log(proc.stderr + "\n" + proc.stdout)
    err = ""
    if proc.returncode != 0:
        tail = [ln for ln in proc.stderr.splitlines() if ln.strip()][-1:] or ["no output"]
        err = f"llama-fit-params exited {proc.returncode}: {tail[0].strip()}"
    stdout_line = next((ln.strip() for ln in reversed(proc.stdout.splitlines()) if ln.strip().startswith("-c ")), "")
    return FitPlan(argv, proc.returncode, round(secs, 3), stdout_line, log=log, error=err, **parsed)


__all__ = [
    "FIT_DEFAULT_TARGET_MIB", "FitPlan", "FitTarget", "fit_args", "fit_params_binary", "fit_target_for_budget",
    "parse_fit_params_stdout", "run_fit_params",
]
