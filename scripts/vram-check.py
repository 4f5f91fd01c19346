#!/usr/bin/env python3
"""VRAM prediction vs measurement for the arms of `abtest run` evidence (issue 15's bar).

For every arm session of an evidence file, the prediction of abtest/models/vram.py for the argv it
ran (-c, -np, -fa, -ub, -b, --n-cpu-moe N or --cpu-moe) beside the per-PID NVML peak the run
measured, and whether the error is within max(2 %, 128 MiB). The model's description comes from
the GGUF (--model) or, for a file `abtest model synth` wrote and the box has since deleted, from
the synth preset's tensor plan (the same file byte for byte: the evidence's tensor_bytes is checked).

usage: scripts/vram-check.py EVIDENCE.jsonl[.gz] [--model FILE.gguf] [--markdown]
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from abtest.argv import FLAGS, flag_value, has_flag, int_flag  # noqa: E402
from abtest.models.desc import ModelDesc, preset_model, read_model  # noqa: E402
from abtest.models.split import Split  # noqa: E402
from abtest.models.vram import DEFAULT_N_BATCH, DEFAULT_N_UBATCH, ContextParams, predict  # noqa: E402

QTYPE_OF_QUANT = {"Q4_0": "q4_0", "Q8_0": "q8_0", "F16": "f16", "MXFP4": "mxfp4", "Q4_K": "q4_k_m"}


def records(path: Path) -> list[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:  # type: ignore[operator]
        return [json.loads(line) for line in f if line.strip()]


def model_of(recs: list[dict[str, Any]], model_path: str | None) -> ModelDesc:
    start = next(r for r in recs if r.get("kind") == "run_start")
    m = start["models"][0]
    if model_path:
        return read_model(model_path)
    preset = m.get("synth_preset")
    if not preset:
        sys.exit(f"vram-check: {m.get('path')} is not an `abtest model synth` file: pass --model FILE.gguf")
    desc = preset_model(preset, QTYPE_OF_QUANT.get(str(m.get("quant"))))
    if desc.tensor_bytes != m.get("tensor_bytes"):
        sys.exit(f"vram-check: preset {preset}'s plan has {desc.tensor_bytes} tensor bytes, the evidence "
                 f"{m.get('tensor_bytes')}: pass --model FILE.gguf")
    return desc


def rows(recs: list[dict[str, Any]], model: ModelDesc) -> list[dict[str, Any]]:
    starts = {(r["arm"], r.get("block", 0)): r for r in recs if r.get("kind") == "arm_start"}
    out = []
    for r in recs:
        if r.get("kind") != "arm_end":
            continue
        key = (r["arm"], (r.get("memory") or {}).get("after_load", {}).get("block", 0))
        st = starts.get(key)
        peak = ((r.get("memory") or {}).get("peak") or {}).get("pid_vram_mib")
        if st is None or peak is None:
            continue
        argv = st["argv"]
        if flag_value(argv, ("--fit", "-fit")) == "on":  # llama.cpp places these itself
            out.append({"arm": r["arm"], "block": key[1], "skipped": "--fit on: llama.cpp's own placement",
                        "peak_mib": peak})
            continue
        n = model.n_layer if has_flag(argv, *FLAGS["cpu_moe"]) else Split.from_argv(argv, 1).n_cpu_moe
        ctx = ContextParams(
            n_ctx=int_flag(argv, FLAGS["ctx_size"], 4096), n_parallel=int_flag(argv, FLAGS["parallel"], 1),
            n_batch=int_flag(argv, FLAGS["batch_size"], DEFAULT_N_BATCH),
            n_ubatch=int_flag(argv, FLAGS["ubatch_size"], DEFAULT_N_UBATCH),
            flash_attn=flag_value(argv, ("-fa", "--flash-attn")) != "off",
        )
        p = predict(model, n, ctx)
        err = p.total_mib - peak
        bar = max(0.02 * peak, 128.0)
        out.append({"arm": r["arm"], "block": key[1], "n_cpu_moe": n, "n_ctx": ctx.n_ctx_total,
                    "pred_weights_mib": p.weights_mib, "pred_kv_mib": p.kv_mib, "pred_compute_mib": p.compute_mib,
                    "pred_total_mib": p.total_mib, "peak_mib": peak, "err_mib": round(err, 1),
                    "err_pct": round(100 * err / peak, 2), "within_bar": abs(err) <= bar})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("evidence", type=Path)
    ap.add_argument("--model", help="the GGUF the evidence measured (default: the synth preset's plan)")
    ap.add_argument("--json", action="store_true", help="one JSON object per arm session")
    a = ap.parse_args()
    recs = records(a.evidence)
    model = model_of(recs, a.model)
    rs = rows(recs, model)
    if a.json:
        for r in rs:
            print(json.dumps(r))
        return 0
    print(f"{model.display_name}: prediction vs per-PID NVML peak, MiB (bar: max(2 %, 128 MiB))")
    print(f"{'arm':<10} {'blk':>3} {'N':>3} {'-c':>6} {'weights':>8} {'kv':>6} {'compute':>8} {'pred':>8}"
          f" {'peak':>8} {'err':>7} {'err%':>6}  ok")
    for r in rs:
        if "skipped" in r:
            print(f"{r['arm']:<10} {r['block']:>3}  not predicted ({r['skipped']}), peak {r['peak_mib']:.0f}")
            continue
        print(f"{r['arm']:<10} {r['block']:>3} {r['n_cpu_moe']:>3} {r['n_ctx']:>6} {r['pred_weights_mib']:>8.0f}"
              f" {r['pred_kv_mib']:>6.0f} {r['pred_compute_mib']:>8.0f} {r['pred_total_mib']:>8.0f}"
              f" {r['peak_mib']:>8.0f} {r['err_mib']:>+7.0f} {r['err_pct']:>+6.2f}  {'yes' if r['within_bar'] else 'NO'}")
    return 0 if all(r.get("within_bar", True) for r in rs) else 1


if __name__ == "__main__":
    sys.exit(main())
