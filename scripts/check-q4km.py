#!/usr/bin/env python3
"""Check abtest's port of llama.cpp's Q4_K_M rule (abtest/models/kquant.py) against llama-quantize.

One-off, run by hand (CI never builds llama-quantize: the cached server build's targets stay as
they are). It

1. builds only the `llama-quantize` target of the pinned llama.cpp (the sdist in abtest's cache,
   `abtest server install` fetches it) in its own build directory (default
   <cache>/tools/quantize-<version>; kept, so a second run only re-runs the comparison);
2. writes reduced presets at F16 (the source llama-quantize starts from), quantizes each to
   Q4_K_M, and reads every tensor's type back from the output GGUF;
3. compares them with `kquant.q4_k_m_types` of the same tensor list, prints a summary table
   (Markdown, for docs/models.md) and writes the per-tensor record to
   tests/unit/data/q4_k_m_llama_quantize.json, which tests/unit/test_kquant.py checks the pure
   rule against. Exits 1 on any difference.

The presets cover every branch the rule has for these architectures: the five `*-arch-tiny`
ones, a 16-layer qwen3moe (use_more_bits over more than 4 layers), tiny-moe (exactly 8 experts:
attn_v/attn_k Q8_0, attn_output Q5_K), dense-small (gpt2: tied embeddings, a fused attn_qkv, a
dense ffn_down counted in file order) and a gpt-oss with the real 2880-wide rows (the
Q4_K -> Q5_0 and Q6_K -> Q8_0 fallbacks, 320-wide experts for ffn_down's).

    python scripts/check-q4km.py [--build-dir DIR] [--jobs N]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import gguf  # noqa: E402
from _llama_build import build_tool  # noqa: E402  (scripts/, this script's directory)

from abtest.cache import cache_root  # noqa: E402
from abtest.models import kquant, presets, synth  # noqa: E402
from abtest.models.gguf import read_header  # noqa: E402
from abtest.server.builds import LLAMA_CPP_PYTHON_VERSION  # noqa: E402

RECORD = ROOT / "tests" / "unit" / "data" / "q4_k_m_llama_quantize.json"


def _variants() -> list[presets.Preset]:
    base = [presets.PRESETS[n] for n in presets.PRESETS if n.endswith("-arch-tiny")]
    q = presets.PRESETS["qwen3-30b-a3b-arch-tiny"]
    g = presets.PRESETS["gpt-oss-20b-arch-tiny"]
    extra = [
        dataclasses.replace(q, name="qwen3moe-16-layers-check", n_layer=16),
        dataclasses.replace(g, name="gpt-oss-2880-rows-check", n_embd=2880, n_head=8, n_head_kv=1, n_layer=2,
                            n_expert=4, n_expert_used=2, n_ff_exp=320, n_ff=320, n_vocab=4096),
        presets.PRESETS["tiny-moe"],
        presets.PRESETS["dense-small"],
    ]
    for p in extra:
        presets.PRESETS.setdefault(p.name, p)
    return base + extra


def build_quantize(build_dir: Path, jobs: int) -> Path:
    return build_tool(build_dir, "llama-quantize", jobs)


def quantized_types(exe: Path, p: presets.Preset, work: Path) -> tuple[list[synth.TensorSpec], dict[str, int]]:
    src = work / f"{p.name}-f16.gguf"
    out = work / f"{p.name}-q4_k_m.gguf"
    synth.write_synth(src, p.name, "f16")
    subprocess.run([str(exe), str(src), str(out), "Q4_K_M", "1"], check=True, capture_output=True, text=True)
    got = {t.name: t.ggml_type for t in read_header(out).tensors}
    src.unlink()
    out.unlink()
    return synth.tensor_plan(p, "f16"), got


def _dump(record: dict[str, object]) -> str:
    """The record as JSON with one tensor per line (reviewable diffs)."""
    lines = ["{", f'"llama_cpp_python": {json.dumps(record["llama_cpp_python"])},', '"presets": {']
    presets_ = record["presets"]
    assert isinstance(presets_, dict)
    for i, (name, p) in enumerate(sorted(presets_.items())):
        lines.append(f'{json.dumps(name)}: {{"n_layer": {p["n_layer"]}, "n_expert": {p["n_expert"]}, "tensors": [')
        lines += [json.dumps(t) + ("," if j < len(p["tensors"]) - 1 else "") for j, t in enumerate(p["tensors"])]
        lines.append("]}" + ("," if i < len(presets_) - 1 else ""))
    return "\n".join([*lines, "}}"]) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build-dir", type=Path, default=cache_root() / "tools" / f"quantize-{LLAMA_CPP_PYTHON_VERSION}")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    exe = build_quantize(args.build_dir, args.jobs)
    record: dict[str, object] = {"llama_cpp_python": LLAMA_CPP_PYTHON_VERSION, "presets": {}}
    rows = []
    bad = 0
    with tempfile.TemporaryDirectory() as tmp:
        for p in _variants():
            plan, got = quantized_types(exe, p, Path(tmp))
            ins = [kquant.TensorIn(s.name, s.shape, s.ggml_type) for s in plan]
            ours = kquant.q4_k_m_types(ins, p.n_layer, p.n_expert)
            diff = sorted(n for n in got if ours.get(n) != got[n])
            bad += len(diff)
            for n in diff:
                print(f"DIFF {p.name} {n}: llama-quantize {gguf.GGMLQuantizationType(got[n]).name}, "
                      f"kquant {gguf.GGMLQuantizationType(ours[n]).name}", file=sys.stderr)
            record["presets"][p.name] = {  # type: ignore[index]
                "n_layer": p.n_layer, "n_expert": p.n_expert,
                "tensors": [[s.name, list(s.shape), s.ggml_type, got[s.name]] for s in plan],
            }
            mix = Counter(gguf.GGMLQuantizationType(t).name for n, t in got.items())
            rows.append((p.name, p.arch, len(got), ", ".join(f"{k} {v}" for k, v in sorted(mix.items())),
                         len(got) - len(diff)))
    RECORD.parent.mkdir(parents=True, exist_ok=True)
    RECORD.write_text(_dump(record))
    print("| preset | arch | tensors | llama-quantize's Q4_K_M mix | kquant agrees |")
    print("|---|---|---:|---|---:|")
    for r in rows:
        print(f"| `{r[0]}` | {r[1]} | {r[2]} | {r[3]} | {r[4]}/{r[2]} |")
    print(f"\nrecord: {RECORD.relative_to(ROOT)}; {bad} differences", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
