#!/usr/bin/env python3
"""Record the ggml-alloc programs abtest/models/galloc.py replays (abtest/data/graphs/<arch>.json).

One-off, run by hand when the pinned llama.cpp changes (CI never builds this). It

1. builds `llama-fit-params` of the pinned llama.cpp in its own directory (default
   <cache>/tools/graphtrace-<version>) with two one-line patches: ggml-alloc.c's AT_PRINTF
   prints the allocator's trace (every allocation with its size and offset, every free, every
   in-place reuse), and fit-params reserves one output row as llama-server does
   (n_outputs_max = -np);
2. for each reduced `*-arch-tiny` preset, writes it at Q8_0 in a dozen variants (the preset, -c
   4096, -ub 256, then one dimension changed at a time: d_model, expert width, experts used,
   experts, heads, KV heads, head size, vocabulary, and the architecture's own: window, dense
   FFN, shared experts, MLA ranks), traces the worst-case prompt graph of each (-c 2048 -ub 512
   -fa on -np 1) and checks that every variant makes the same sequence of allocations and frees;
3. fits every allocation's size as c * prod(dim ** k) with integer k (a joint search over the
   variants, fewest powers first; exact on all of them or the script says which it could not),
   resolves each free to the allocation it releases, and writes the program.

    python scripts/record-graph-programs.py [--build-dir DIR] [--jobs N] [--arch-preset NAME ...]

The recorded programs reproduce the CPU server's compute buffer to the byte on the variants they
were fitted to; tests/integration/test_vram_archs_real.py checks them on the presets at three contexts.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import re
import subprocess
import sys
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _llama_build import build_tool  # noqa: E402  (scripts/, this script's directory)

from abtest.cache import cache_root  # noqa: E402
from abtest.models import presets, synth  # noqa: E402
from abtest.server.builds import LLAMA_CPP_PYTHON_VERSION  # noqa: E402

OUT = ROOT / "abtest" / "data" / "graphs"

VARIANTS: dict[str, list[dict[str, Any]]] = {
    "qwen3-30b-a3b-arch-tiny": [dict(n_embd=320), dict(n_ff_exp=96), dict(n_expert_used=6), dict(n_expert=96),
                                dict(n_head=6), dict(n_head=8, n_head_kv=2), dict(head_dim=64), dict(n_vocab=6144)],
    "gpt-oss-20b-arch-tiny": [dict(n_embd=320), dict(n_ff_exp=192, n_ff=192), dict(n_expert_used=3),
                              dict(n_expert=16), dict(n_head=6), dict(n_head=8, n_head_kv=2), dict(head_dim=96),
                              dict(n_vocab=6144), dict(sliding_window=256)],
    "phi-3.5-moe-arch-tiny": [dict(n_embd=384, n_head=3), dict(n_ff=192, n_ff_exp=192), dict(n_expert_used=3),
                              dict(n_expert=8), dict(n_head=8, head_dim=64, n_rot=64), dict(n_head=4, n_head_kv=2),
                              dict(n_vocab=6144)],
    "deepseek-moe-16b-arch-tiny": [dict(n_embd=384, n_head=3, n_head_kv=3), dict(n_ff_exp=96),
                                   dict(n_expert_used=4), dict(n_expert=32),
                                   dict(n_head=4, n_head_kv=4, head_dim=64, n_rot=64), dict(n_ff=768),
                                   dict(n_expert_shared=3), dict(n_vocab=6144)],
    "deepseek-v2-lite-arch-tiny": [dict(n_embd=320), dict(n_ff_exp=96), dict(n_expert_used=4), dict(n_expert=32),
                                   dict(n_head=3), dict(n_ff=768), dict(n_expert_shared=3), dict(n_vocab=6144),
                                   dict(kv_lora_rank=384, head_dim=448, head_dim_v=384),
                                   dict(n_rot=32, head_dim=544, head_dim_k_mla=160),
                                   dict(head_dim_k_mla=160), dict(head_dim_v_mla=96)],
}
RUNS = [(2048, 512), (4096, 512), (2048, 256)]  # (-c, -ub) of the preset itself; variants at the first

_ALLOC = re.compile(r"allocating (.+?) \((\d+) bytes\) - block (\d+), offset (\d+), chunk (\d+)")
_FREE = re.compile(r"freeing (.+?) at \{chunk=(\d+), offset=(\d+)\} \((\d+) bytes\)")
_REUSE = re.compile(r"^reusing parent (.+?) for (.+)$|^reusing view parent (.+?) \(.*\) for (.+)$")
_EXTRA = re.compile(r"freeing extra (\d+) bytes from parent (.+?) for (.+)$")


def _trace_patches(src: Path) -> None:
    """ggml-alloc.c's AT_PRINTF prints the allocator's trace; fit-params reserves one output row
    per slot as llama-server does (n_outputs_max = -np)."""
    alloc = src / "ggml" / "src" / "ggml-alloc.c"
    alloc.write_text(alloc.read_text().replace("#define AT_PRINTF(...)\n",
                                               "#define AT_PRINTF(...) fprintf(stderr, __VA_ARGS__)\n", 1))
    fit = src / "tools" / "fit-params" / "fit-params.cpp"
    line = "    auto cparams = common_context_params_to_llama(params);\n"
    fit.write_text(fit.read_text().replace(line, line + "    cparams.n_outputs_max = params.n_parallel;\n", 1))


def build_fit_params(build_dir: Path, jobs: int) -> Path:
    return build_tool(build_dir, "llama-fit-params", jobs, patch=_trace_patches)


def _variant(base: str, change: dict[str, Any]) -> presets.Preset:
    p = presets.PRESETS[base]
    if not change:
        return p
    v = dataclasses.replace(p, name=f"{base}-{'-'.join(f'{k}{x}' for k, x in sorted(change.items()))}", **change)
    presets.PRESETS.setdefault(v.name, v)
    return v


def trace(exe: Path, p: presets.Preset, n_ctx: int, ubatch: int, work: Path) -> list[tuple[Any, ...]]:
    """The allocator's events for the worst-case prompt graph, frees resolved to allocation indices."""
    path = work / f"{p.name}.gguf"
    if not path.exists():
        synth.write_synth(path, p.name, "q8_0")
    r = subprocess.run([str(exe), "-m", str(path), "-c", str(n_ctx), "-ub", str(ubatch), "-np", "1", "-fa", "on",
                        "-ngl", "99", "-t", "1"], capture_output=True, text=True, timeout=300, check=True)
    out: list[tuple[Any, ...]] = []
    at: dict[int, int] = {}
    owner: dict[str, int] = {}
    for raw in r.stderr.splitlines():
        if m := _ALLOC.search(raw):
            owner[m.group(1)] = at[int(m.group(4))] = sum(1 for e in out if e[0] == "A")
            out.append(("A", re.sub(r"node_\d+", "node", m.group(1)), int(m.group(2))))
        elif m := _FREE.search(raw):
            out.append(("F", at.pop(int(m.group(3)))))
        elif m := _REUSE.search(raw):
            parent, node = m.group(1) or m.group(3), m.group(2) or m.group(4)
            if parent in owner:
                owner[node] = owner[parent]
        elif m := _EXTRA.search(raw):
            out.append(("X", owner[m.group(2)], int(m.group(1))))
    return out


def dims(p: presets.Preset, n_ctx: int, ubatch: int) -> dict[str, int]:
    """The dimensions of galloc.graph_dims, from a preset (what ModelDesc reads from its file)."""
    t = min(ubatch, n_ctx)
    nkv = -(-n_ctx // 256) * 256
    rope = {"deepseek2": p.n_rot, "phimoe": p.head_dim, "deepseek": p.head_dim}.get(p.arch, 1)
    out = {"T": t, "d": p.n_embd, "H": p.n_head, "Hkv": p.n_head_kv, "hd": p.head_dim, "hdv": p.head_dim_value,
           "F": p.n_ff if p.arch == "phimoe" else p.n_ff_exp, "K": p.n_expert_used, "E": p.n_expert, "nkv": nkv,
           "V": p.n_vocab, "nff": p.n_ff, "S": max(p.n_expert_shared, 1), "rope": rope,
           "rank": max(p.kv_lora_rank, 1), "kmla": max(p.head_dim_k_mla, 1), "vmla": max(p.head_dim_v_mla, 1)}
    if p.arch == "gpt-oss":  # the only one of these whose graph has sliding-window layers
        out["nswa"] = min(nkv, -(-min(nkv, p.sliding_window + t) // 256) * 256)
    return out


def fit(sizes: list[int], dimsets: list[dict[str, int]]) -> dict[str, Any] | None:
    """c and integer powers with size = c * prod(dim ** k) on every variant; fewest powers first."""
    d0 = dimsets[0]
    cands = []
    for s, dd in zip(sizes[1:], dimsets[1:], strict=True):
        changed = [k for k in d0 if dd[k] != d0[k]]
        r = Fraction(s, sizes[0])
        opts = []
        for ks in itertools.product(range(-1, 4), repeat=len(changed)):
            v = Fraction(1)
            for k, e in zip(changed, ks, strict=True):
                v *= Fraction(dd[k], d0[k]) ** e
            if v == r:
                opts.append(dict(zip(changed, ks, strict=True)))
        if not opts:
            return None
        cands.append(sorted(opts, key=lambda o: sum(abs(x) for x in o.values())))
    best: list[tuple[int, dict[str, int]]] = []

    def search(i: int, exp: dict[str, int]) -> None:
        if i == len(cands):
            cost = sum(abs(x) for x in exp.values())
            if not best or cost < best[0][0]:
                best[:] = [(cost, dict(exp))]
            return
        for o in cands[i]:
            if all(exp.get(k, x) == x for k, x in o.items()):
                search(i + 1, {**exp, **o})

    search(0, {})
    if not best:
        return None
    exp = {k: x for k, x in sorted(best[0][1].items()) if x}
    c = Fraction(sizes[0])
    for k, x in exp.items():
        c /= Fraction(d0[k]) ** x
    for s, dd in zip(sizes, dimsets, strict=True):
        v = c
        for k, x in exp.items():
            v *= Fraction(dd[k]) ** x
        if v != s:
            return None
    return {"c": int(c) if c.denominator == 1 else str(c), "exp": exp}


def record(exe: Path, base: str, work: Path) -> dict[str, Any]:
    p0 = presets.PRESETS[base]
    runs = [(p0, c, u) for c, u in RUNS] + [(_variant(base, ch), *RUNS[0]) for ch in VARIANTS[base]]
    traces = [(dims(p, c, u), trace(exe, p, c, u, work)) for p, c, u in runs]
    shape0 = [e[:2] if e[0] != "A" else ("A",) for e in traces[0][1]]
    for (_, ev), (p, c, u) in zip(traces[1:], runs[1:], strict=True):
        if [e[:2] if e[0] != "A" else ("A",) for e in ev] != shape0:
            sys.exit(f"{p.name} -c {c} -ub {u}: a different allocation sequence than {base}'s; pick other variants")
    events: list[list[Any]] = []
    for i, e in enumerate(traces[0][1]):
        if e[0] == "F":
            events.append(["F", e[1]])
            continue
        f = fit([t[1][i][2] for t in traces], [t[0] for t in traces])
        if f is None:
            sys.exit(f"{base}: no c * prod(dim ** k) fits event {i} {e}")
        events.append([e[0], e[1], f["c"], f["exp"]] if e[0] == "A" else ["X", e[1], f["c"], f["exp"]])
    return {"arch": p0.arch, "recorded_on": base, "llama_cpp": f"llama-cpp-python {LLAMA_CPP_PYTHON_VERSION}",
            "graph": "worst-case prompt graph, 4 blocks, flash attention on, 1 output row, CPU backend",
            "events": events}


def _dump(doc: dict[str, Any]) -> str:
    lines = ["{"] + [f'"{k}": {json.dumps(v)},' for k, v in doc.items() if k != "events"] + ['"events": [']
    ev = doc["events"]
    lines += [json.dumps(e) + ("," if i < len(ev) - 1 else "") for i, e in enumerate(ev)]
    return "\n".join([*lines, "]}"]) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build-dir", type=Path, default=cache_root() / "tools" / f"graphtrace-{LLAMA_CPP_PYTHON_VERSION}")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--arch-preset", nargs="*", default=list(VARIANTS))
    args = ap.parse_args()
    exe = build_fit_params(args.build_dir, args.jobs)
    with tempfile.TemporaryDirectory() as tmp:
        for base in args.arch_preset:
            doc = record(exe, base, Path(tmp))
            (OUT / f"{doc['arch']}.json").write_text(_dump(doc))
            print(f"{doc['arch']}: {len(doc['events'])} events from {base}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
