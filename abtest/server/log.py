"""The llama-server log read back: memory per device, the placement ``--fit`` chose, the server's warnings.

Lines used (llama.cpp vendored in llama-cpp-python 0.3.36; some need ``-lv 4``):
    load_tensors: offloaded 25/25 layers to GPU
    load_tensors:   CPU_Mapped model buffer size = 11223.61 MiB
    load_tensors:        CUDA0 model buffer size =  1234.00 MiB
    llama_kv_cache:      CUDA0 KV buffer size =    96.00 MiB
    sched_reserve:      CUDA0 compute buffer size =   210.00 MiB
    llama_context:  CUDA_Host  output buffer size =     0.58 MiB
    common_memory_breakdown_print: |   - CUDA0 (H100 80GB HBM3) | 81079 = 79302 + ( 1064 = 661 + 192 + 210) + 712 |

A line is ``<time> <level> <text>`` (common/log.cpp, with timestamps and prefixes on): the level is
one of D, I, W, E; `server_warnings` keeps the W and E lines. `parse_fit_log` reads the lines
``--fit`` prints at verbosity 4 (LOG_TRC in common/fit.cpp) -- see its docstring for each one.
"""

from __future__ import annotations

import re
from typing import Any

from ..records import caused_by_abtest

_BUFFER = re.compile(
    r"(?P<where>load_tensors|llama_kv_cache|sched_reserve|llama_context|graph_reserve)\s*:\s*"
    r"(?P<buf>[A-Za-z0-9_\-]+)\s+(?P<what>model|KV|compute|output|RS)\s+buffer size\s*=\s*(?P<mib>[0-9.]+)\s*MiB"
)
_OFFLOADED = re.compile(r"offloaded\s+(?P<n>\d+)\s*/\s*(?P<m>\d+)\s+layers to GPU")
# | - CUDA0 (H100 80GB HBM3) | 81079 = 79302 + ( 1064 = 661 + 192 + 210) + 712 |
_BREAKDOWN_DEV = re.compile(
    r"\|\s*-\s*(?P<dev>[^|(]+?)\s*(?:\((?P<desc>[^)]*)\))?\s*\|\s*(?P<total>\d+)\s*=\s*(?P<free>\d+)\s*\+\s*"
    r"\(\s*(?P<self>\d+)\s*=\s*(?P<model>\d+)\s*\+\s*(?P<context>\d+)\s*\+\s*(?P<compute>\d+)\s*\)\s*\+\s*(?P<unacc>\d+)\s*\|"
)
# | - Host | 11416 = 11223 + 96 + 97 |
_BREAKDOWN_HOST = re.compile(
    r"\|\s*-\s*(?P<dev>Host)\s*\|\s*(?P<self>\d+)\s*=\s*(?P<model>\d+)\s*\+\s*(?P<context>\d+)\s*\+\s*(?P<compute>\d+)\s*\|"
)

_KIND_KEY = {"model": "model_mib", "KV": "kv_mib", "compute": "compute_mib", "output": "output_mib", "RS": "rs_mib"}


def parse_memory_breakdown(log_text: str) -> dict[str, Any]:
    """Buffers per device (MiB), offloaded layers, and the exit-time breakdown table if printed.

    Returns {"buffers": {device: {"model_mib": .., "kv_mib": .., ...}}, "offloaded_layers": n,
    "total_layers": m, "exit_table": {device: {...}}, "load_mode": "mmap", "fit": {...}
    (`parse_fit_log`)}; keys absent when the log did not say. The exit table is the last one
    printed: --fit prints one per trial allocation before the real load, the server one at exit.
    """
    buffers: dict[str, dict[str, float]] = {}
    out: dict[str, Any] = {}
    for line in log_text.splitlines():
        m = _BUFFER.search(line)
        if m:
            dev = buffers.setdefault(m["buf"], {})
            key = _KIND_KEY[m["what"]]
            dev[key] = round(dev.get(key, 0.0) + float(m["mib"]), 2)
            continue
        m = _LOAD_MODE.search(line)
        if m:
            out["load_mode"] = m["mode"].strip()
            continue
        m = _OFFLOADED.search(line)
        if m:
            out["offloaded_layers"] = int(m["n"])
            out["total_layers"] = int(m["m"])
            continue
        m = _BREAKDOWN_DEV.search(line)
        if m:
            out.setdefault("exit_table", {})[m["dev"].strip()] = {
                "description": (m["desc"] or "").strip(),
                "total_mib": int(m["total"]),
                "free_mib": int(m["free"]),
                "self_mib": int(m["self"]),
                "model_mib": int(m["model"]),
                "context_mib": int(m["context"]),
                "compute_mib": int(m["compute"]),
                "unaccounted_mib": int(m["unacc"]),
            }
            continue
        m = _BREAKDOWN_HOST.search(line)
        if m:
            out.setdefault("exit_table", {})["Host"] = {
                "self_mib": int(m["self"]),
                "model_mib": int(m["model"]),
                "context_mib": int(m["context"]),
                "compute_mib": int(m["compute"]),
            }
    if buffers:
        out["buffers"] = buffers
    fit = parse_fit_log(log_text)
    if fit:
        out["fit"] = fit
    return out


# ----------------------------------------------------------------------------- warnings

# "0.01.025.160 W llama_model_loader: tensor overrides ..." (common/log.cpp: timestamp, then the
# level letter when prefixes are on, as llama-server sets them); a bare "W ..." line also counts.
_LEVEL_LINE = re.compile(r"^\s*(?:\d+(?:\.\d+)*\s+)?(?P<level>[WE])\s+(?P<text>\S.*?)\s*$")
MAX_WARNINGS = 40  # per log: a server that warns on every request must not bloat the evidence


def server_warnings(log_text: str, limit: int = MAX_WARNINGS) -> list[str]:
    """The server's own warning and error lines, in order, each once, without the timestamp:
    ``"W llama_model_loader: tensor overrides to CPU are used with mmap enabled - consider using
    --load-mode none for better performance"`` (src/llama-model-loader.cpp, in the tensor-override
    branch of the weight placement, printed once per process). At most `limit` lines; a last
    line says how many more were left out."""
    seen: dict[str, None] = {}
    more = 0
    for line in log_text.splitlines():
        m = _LEVEL_LINE.match(line)
        if not m:
            continue
        text = f"{m['level']} {m['text']}"
        if text in seen or caused_by_abtest(text):
            continue
        if len(seen) >= limit:
            more += 1
            continue
        seen[text] = None
    out = list(seen)
    if more:
        out.append(f"... and {more} more warning lines (see the server log)")
    return out


# ----------------------------------------------------------------------------- --fit

# The lines common/fit.cpp prints (LOG_TRC, shown at -lv 4; the function name is its __func__):
#   common_params_fit_impl: projected to use 19187 MiB of device memory vs. 24077 MiB of free device memory
#   common_params_fit_impl: will leave 1199 >= 1024 MiB of free device memory, no changes needed
#   common_params_fit_impl: cannot meet free memory target of 1024 MiB, need to reduce device memory by 42444 MiB
#   common_params_fit_impl: context size set by user to 4096 -> no change
#   common_params_fit_impl: context size reduced from 40960 to 4096 -> need 3456 MiB less memory in total
#   common_params_fit_impl: with only dense weights in device memory there is a total surplus of 16164 MiB
#   common_params_fit_impl:   - CUDA0 (NVIDIA H200): 24 layers, 9000 MiB used, 1000 MiB free        (step 3)
#   common_params_fit_impl:   - CUDA0 (NVIDIA H200): 25 layers ( 7 overflowing), 9000 MiB used, 1000 MiB free
#   common_fit_params: successfully fit params to free device memory
#   common_fit_params: failed to fit params to free device memory: n_gpu_layers already set by user to 99, abort   (W)
#   common_fit_params: encountered an error while trying to fit params to free device memory: ...   (E)
#   common_fit_params: fitting params to free memory took 1.15 seconds
# and without a device (a CPU build: common_params_fit_impl with nd == 0):
#   common_params_fit_impl: projected to use 1200 MiB of host memory vs. 64000 MiB of total host memory
#   common_params_fit_impl: will leave 62800 >= 1024 MiB of system memory, no changes needed
# src/llama-model.cpp (load_tensors) then prints what was applied:
#   load_tensors: loading model tensors, this can take a while... (load_mode = mmap)
#   load_tensors: offloaded 25/25 layers to GPU
_FIT_PROJECTED = re.compile(
    r"projected to use (?P<used>\d+) MiB of (?P<what>device|host) memory vs\. (?P<free>\d+) MiB of "
    r"(?:free device|total host) memory")
_FIT_NO_CHANGE = re.compile(r"will leave (?P<left>\d+) >= (?P<margin>\d+) MiB of (?:free device|system) memory, no changes needed")
_FIT_CANNOT = re.compile(r"cannot meet free memory target of (?P<margin>\d+) MiB, need to reduce device memory by (?P<need>\d+) MiB")
_FIT_CTX_USER = re.compile(r"context size set by user to (?P<n>\d+) -> no change")
_FIT_CTX_REDUCED = re.compile(r"context size reduced from (?P<from>\d+) to (?P<to>\d+)")
_FIT_DEVICE = re.compile(
    r"common_params_fit_impl:\s+-\s+(?P<dev>\S+)(?:\s+\((?P<desc>[^)]*)\))?\s*:\s*(?P<layers>\d+) layers"
    r"(?:\s*\(\s*(?P<over>\d+) overflowing\))?,\s*(?P<used>-?\d+) MiB used,\s*(?P<free>-?\d+) MiB free")
_FIT_STATUS = re.compile(
    r"common_fit_params: (?:(?P<ok>successfully fit params).*|failed to fit params to free device memory: (?P<fail>.*)"
    r"|encountered an error while trying to fit params to free device memory: (?P<err>.*))$")
_FIT_TOOK = re.compile(r"fitting params to free memory took (?P<s>[0-9.]+) seconds")
_LOAD_MODE = re.compile(r"load_tensors: loading model tensors, this can take a while\.\.\. \(load_mode = (?P<mode>[^)]+)\)")


def parse_fit_log(log_text: str) -> dict[str, Any]:
    """What ``--fit`` decided, from the server log: {"status": "fitted" | "no change" | "failed" |
    "error", "reason", "projected_mib", "free_mib", "memory" ("device" | "host"), "margin_mib",
    "need_mib", "n_ctx" (set by the user, or the reduced value), "devices": {name: {"layers",
    "overflowing", "used_mib", "free_mib", "description"}} (the last line per device: the final
    placement), "seconds"}. {} when the log has no fit line (fit off, or the log below -lv 4).
    What was then applied (layers offloaded, load mode) is in `parse_memory_breakdown`."""
    out: dict[str, Any] = {}
    devices: dict[str, dict[str, Any]] = {}
    for line in log_text.splitlines():
        if "common_params_fit_impl" not in line and "common_fit_params" not in line:
            continue
        if (m := _FIT_PROJECTED.search(line)):
            # the first projection is of the initial parameters; later ones (the extra model) are not
            out.setdefault("projected_mib", int(m["used"]))
            out.setdefault("free_mib", int(m["free"]))
            out.setdefault("memory", m["what"])
        elif (m := _FIT_NO_CHANGE.search(line)):
            out["status"], out["margin_mib"], out["left_mib"] = "no change", int(m["margin"]), int(m["left"])
        elif (m := _FIT_CANNOT.search(line)):
            out["margin_mib"], out["need_mib"] = int(m["margin"]), int(m["need"])
        elif (m := _FIT_CTX_USER.search(line)):
            out["n_ctx"], out["ctx_by"] = int(m["n"]), "user"
        elif (m := _FIT_CTX_REDUCED.search(line)):
            out["n_ctx"], out["ctx_by"] = int(m["to"]), "fit"
        elif (m := _FIT_DEVICE.search(line)):
            devices[m["dev"]] = {"description": (m["desc"] or "").strip(), "layers": int(m["layers"]),
                                 "overflowing": int(m["over"] or 0), "used_mib": int(m["used"]),
                                 "free_mib": int(m["free"])}
        elif (m := _FIT_STATUS.search(line.rstrip())):
            if m["ok"]:
                out.setdefault("status", "fitted")
            elif m["fail"] is not None:
                out["status"], out["reason"] = "failed", m["fail"].strip()
            else:
                out["status"], out["reason"] = "error", (m["err"] or "").strip()
        elif (m := _FIT_TOOK.search(line)):
            out["seconds"] = float(m["s"])
    if devices:
        out["devices"] = devices
    return out
