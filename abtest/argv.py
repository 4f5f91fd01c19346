"""The llama-server command line as data: which flags an argv sets, their values, its masked form.

One place knows llama-server's flag spellings (`FLAGS`) and how an argv is read: a flag is set as
``--flag value`` or ``--flag=value``; its value is the text after ``=`` or the next argument.
`config` pins flags an arm leaves unset, the sweep reads the batch sizes the arms will run with,
and the report compares arms' argvs with the run-to-run values masked (`normalize`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

# Canonical name -> every spelling llama-server accepts.
FLAGS: dict[str, tuple[str, ...]] = {
    "gpu_layers": ("-ngl", "--gpu-layers", "--n-gpu-layers"),
    "fit": ("--fit", "-fit"),
    "ctx_size": ("-c", "--ctx-size"),
    "parallel": ("-np", "--parallel"),
    "threads": ("-t", "--threads"),
    "flash_attn": ("-fa", "--flash-attn"),
    "verbosity": ("-lv", "--verbosity", "--log-verbosity"),
    "batch_size": ("-b", "--batch-size"),
    "ubatch_size": ("-ub", "--ubatch-size"),
    # where the weights go over several GPUs (common/arg.cpp; `gpu_placement` reads them)
    "tensor_split": ("-ts", "--tensor-split"),
    "split_mode": ("-sm", "--split-mode"),
    "main_gpu": ("-mg", "--main-gpu"),
    "override_tensor": ("-ot", "--override-tensor"),
    "n_cpu_moe": ("-ncmoe", "--n-cpu-moe"),
    "cpu_moe": ("-cmoe", "--cpu-moe"),
    "device": ("-dev", "--device"),
}
# Flags that only say where weights, KV cache and ops live (host or a GPU), with whether they
# take a value: on a server with no GPU backend they change nothing (the report's recogniser of
# arms that cannot differ, `abtest.analysis.equivalence.cannot_differ`).
OFFLOAD: dict[str, bool] = {
    "-ngl": True, "--gpu-layers": True, "--n-gpu-layers": True,
    "-cmoe": False, "--cpu-moe": False, "-ncmoe": True, "--n-cpu-moe": True,
    "-ot": True, "--override-tensor": True, "-ts": True, "--tensor-split": True,
    "-mg": True, "--main-gpu": True, "-sm": True, "--split-mode": True, "-dev": True, "--device": True,
    "-nkvo": False, "--no-kv-offload": False, "-kvo": False, "--kv-offload": False,
    "--op-offload": False, "--no-op-offload": False,
}
# Options whose value differs run to run without changing what is measured, and their mask.
MASKED: dict[str, str] = {"--port": "<port>", "-m": "<model>", "--model": "<model>", "--log-file": "<log>"}


def has_flag(args: Sequence[str], *names: str) -> bool:
    """Whether an argv sets any of the given flags (as `--flag v` or `--flag=v`)."""
    return any(a in names or a.split("=", 1)[0] in names for a in args)


def flag_value(args: Sequence[str], names: Sequence[str]) -> str | None:
    """The value of the first of `names` the argv sets (after `=` or the next argument), else None."""
    for i, a in enumerate(args):
        key, eq, val = a.partition("=")
        if key in names:
            if eq:
                return val
            return args[i + 1] if i + 1 < len(args) else None
    return None


def int_flag(args: Sequence[str], names: Sequence[str], default: int) -> int:
    """An integer flag's value; `default` when it is unset or not an integer."""
    val = flag_value(args, names)
    try:
        return int(val) if val else default
    except ValueError:
        return default


def flag_values(args: Sequence[str], names: Sequence[str]) -> list[str]:
    """Every value of a flag that may be repeated (``-ot A -ot B``), in argv order."""
    out: list[str] = []
    for i, a in enumerate(args):
        key, eq, val = a.partition("=")
        if key in names:
            if eq:
                out.append(val)
            elif i + 1 < len(args):
                out.append(args[i + 1])
    return out


def gpu_placement(args: Sequence[str]) -> dict[str, object]:
    """What an argv says about placing the model on several GPUs, as llama-server reads it
    (common/arg.cpp): ``split_mode`` (-sm: none, layer, row, tensor; default layer),
    ``tensor_split`` (-ts "3,1" or "3/1": proportions per device in CUDA order; [] = by free memory),
    ``main_gpu`` (-mg, default 0: the one GPU of -sm none), ``overrides`` (every -ot
    ``PATTERN=BUFFER`` in argv order, -cmoe and -ncmoe N at their place: [PATTERN, BUFFER] pairs;
    the first match wins, src/llama-model-loader.cpp), ``n_cpu_moe`` and ``devices`` (-dev), each
    as given; a value that is not a number stays text (the server rejects it, not abtest)."""
    out: dict[str, object] = {"split_mode": flag_value(args, FLAGS["split_mode"]) or "layer"}
    ts = flag_value(args, FLAGS["tensor_split"])
    out["tensor_split"] = _numbers(ts) if ts is not None else []
    mg = flag_value(args, FLAGS["main_gpu"])
    out["main_gpu"] = int(mg) if mg is not None and mg.lstrip("-").isdigit() else (mg if mg is not None else 0)
    overrides: list[list[str]] = []
    n_cpu_moe: int | str | None = None
    it = iter(range(len(args)))
    for i in it:
        key, eq, val = args[i].partition("=")
        value = val if eq else (args[i + 1] if i + 1 < len(args) else "")
        if key in FLAGS["override_tensor"]:
            for item in value.split(","):
                pattern, _, buft = item.rpartition("=")
                if item:
                    overrides.append([pattern, buft] if pattern else [item, ""])
        elif key in FLAGS["cpu_moe"]:
            overrides.append([EXPERT_REGEX, "CPU"])
        elif key in FLAGS["n_cpu_moe"]:
            n_cpu_moe = int(value) if value.isdigit() else value
            if isinstance(n_cpu_moe, int):
                overrides += [[f"blk\\.{k}{EXPERT_REGEX}", "CPU"] for k in range(n_cpu_moe)]
        else:
            continue
        if not eq and key not in FLAGS["cpu_moe"]:
            next(it, None)
    out["overrides"] = overrides
    out["n_cpu_moe"] = n_cpu_moe
    dev = flag_value(args, FLAGS["device"])
    out["devices"] = [d for d in dev.split(",") if d] if dev else []
    return out


# common/common.h LLM_FFN_EXPS_REGEX: the routed-expert tensors -cmoe and -ncmoe keep on the CPU
EXPERT_REGEX = "\\.ffn_(up|down|gate|gate_up)_(ch|)exps"


def _numbers(text: str) -> list[float | str]:
    """'3,1' or '3/1' (common/arg.cpp splits -ts on , and /) -> [3.0, 1.0]; text kept where not a number."""
    out: list[float | str] = []
    for part in re.split(r"[,/]+", text):
        try:
            out.append(float(part))
        except ValueError:
            out.append(part)
    return out


def normalize(argv: Sequence[str]) -> tuple[str, ...]:
    """argv with the values that do not change the measurement masked: --port, the model path
    (compared by SHA256 instead), --log-file; the binary reduced to its file name."""
    out: list[str] = []
    it = iter(enumerate(argv))
    for i, arg in it:
        if i == 0:
            out.append(Path(arg).name)
            continue
        key, eq, _ = arg.partition("=")
        if key in MASKED:
            out.append(key)
            out.append(MASKED[key])
            if not eq:
                next(it, None)
            continue
        out.append(arg)
    return tuple(out)


def split_offload(argv: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(argv without the `OFFLOAD` flags and their values, those flags with their values)."""
    rest: list[str] = []
    offload: list[str] = []
    it = iter(argv)
    for arg in it:
        key, eq, _ = arg.partition("=")
        if key in OFFLOAD:
            offload.append(arg)
            if OFFLOAD[key] and not eq:
                value = next(it, None)
                if value is not None:
                    offload.append(value)
            continue
        rest.append(arg)
    return tuple(rest), tuple(offload)
