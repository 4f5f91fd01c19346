"""The llama-server log: memory breakdown per device, parsed from the lines it prints at load and exit.

Lines used (llama.cpp vendored in llama-cpp-python 0.3.36; some need ``-lv 4``):
    load_tensors: offloaded 25/25 layers to GPU
    load_tensors:   CPU_Mapped model buffer size = 11223.61 MiB
    load_tensors:        CUDA0 model buffer size =  1234.00 MiB
    llama_kv_cache:      CUDA0 KV buffer size =    96.00 MiB
    sched_reserve:      CUDA0 compute buffer size =   210.00 MiB
    llama_context:  CUDA_Host  output buffer size =     0.58 MiB
    common_memory_breakdown_print: |   - CUDA0 (H100 80GB HBM3) | 81079 = 79302 + ( 1064 = 661 + 192 + 210) + 712 |
"""

from __future__ import annotations

import re
from typing import Any

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
    "total_layers": m, "exit_table": {device: {...}}}; keys absent when the log did not say.
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
    return out
