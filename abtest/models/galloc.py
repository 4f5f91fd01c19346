"""The compute buffer as ggml-alloc sizes it: an architecture's recorded allocation program replayed on a port of its allocator.

llama.cpp sizes the compute buffer by allocating the worst-case prompt graph (n_ubatch tokens, one
output row) with ggml-alloc's dynamic allocator (ggml/src/ggml-alloc.c, `ggml_dyn_tallocr`): each
node takes the best-fitting free block (the smallest that fits, not counting the open end), else
the open end; freed blocks merge with their neighbours; the buffer is the high-water mark. Holes
left by freed tensors make the peak larger than any sum of live tensors, so no closed formula is
exact across shapes; replaying the allocator is.

A *program* (abtest/data/graphs/<arch>.json) is the sequence that allocator saw for one
architecture's graph, recorded from the pinned llama.cpp with its allocator's trace turned on
(docs/sweep.md says how): ``["A", name, c, {dim: power}]`` allocates a tensor of
``c * prod(dim ** power)`` bytes, ``["F", i]`` frees the i-th allocation, ``["X", i, c, {...}]``
frees that many bytes off the end of the i-th (a node that took over a larger view parent). Each
size was fitted to exact integer powers of the dimensions over a dozen shape variants, one
dimension changed at a time. The programs were recorded on 4-block graphs; every architecture
reached its peak in block 0 there, and a deeper model repeats the middle blocks' pattern, so a
model of any depth replays the 4-block program with its own dimensions (`graph_dims`).

Dimensions: T (tokens of the micro-batch), d, H, Hkv, hd, hdv (head sizes), F (expert FFN width),
K, E (experts used, experts), nkv (cells of the full-attention cache), nswa (cells of the
sliding-window cache), V (vocabulary), nff (dense FFN width), S (shared experts), rope, rank,
kmla, vmla (deepseek2's MLA sizes).
"""

from __future__ import annotations

import json
from fractions import Fraction
from functools import cache
from importlib import resources
from typing import Any

from .desc import ModelDesc

CPU_ALIGNMENT = 32  # ggml-cpu's buffer alignment (TENSOR_ALIGNMENT)
_OPEN_END = 1 << 62  # the last free block of the single chunk a CPU or CUDA compute buffer has


@cache
def program(arch: str) -> tuple[tuple[Any, ...], ...] | None:
    """The recorded allocation program of an architecture; None when abtest has none."""
    try:
        text = resources.files("abtest").joinpath("data").joinpath("graphs").joinpath(f"{arch}.json").read_text()
    except (FileNotFoundError, OSError):
        return None
    return tuple(tuple(e) for e in json.loads(text)["events"])


def has_program(arch: str) -> bool:
    return program(arch) is not None


def graph_dims(model: ModelDesc, n_tokens: int, n_kv: int, n_kv_swa: int) -> dict[str, int]:
    """The dimensions a program's sizes are written in, for this model and micro-batch."""
    if model.arch == "deepseek2":
        rope = model.head_dim_k - model.kv_lora_rank
    elif model.arch in ("phimoe", "deepseek"):
        rope = model.head_dim_k  # both assert n_rot == head_dim
    else:
        rope = 1  # not a dimension of these programs
    return {
        "T": n_tokens, "d": model.n_embd, "H": model.n_head, "Hkv": model.n_head_kv, "hd": model.head_dim_k,
        "hdv": model.head_dim_v, "F": model.n_ff_exp, "K": model.n_expert_used, "E": model.n_expert,
        "nkv": n_kv, "nswa": n_kv_swa, "V": model.n_vocab, "nff": model.n_ff, "S": max(model.n_expert_shared, 1),
        "rope": rope, "rank": max(model.kv_lora_rank, 1), "kmla": max(model.head_dim_k_mla, 1),
        "vmla": max(model.head_dim_v_mla, 1),
    }


def _size(c: int | str, powers: dict[str, int], dims: dict[str, int], alignment: int) -> int:
    v = Fraction(c)
    for k, p in powers.items():
        v *= Fraction(dims[k]) ** p
    n = int(v) if v.denominator == 1 else -(-v.numerator // v.denominator)
    return -(-n // alignment) * alignment


def replay(events: tuple[tuple[Any, ...], ...], dims: dict[str, int], alignment: int = CPU_ALIGNMENT) -> int:
    """Pure: the high-water mark (bytes) of `events` on ggml_dyn_tallocr with these dimensions."""
    free: list[list[int]] = [[0, _OPEN_END]]  # [offset, size], sorted by offset; the last is the open end
    live: list[list[int]] = []  # per allocation: [offset, size]; size 0 once freed
    high = 0

    def release(off: int, size: int) -> None:  # ggml_dyn_tallocr_free_bytes
        for i, b in enumerate(free):
            if b[0] + b[1] == off:
                b[1] += size
                if i + 1 < len(free) and b[0] + b[1] == free[i + 1][0]:
                    b[1] += free[i + 1][1]
                    del free[i + 1]
                return
            if off + size == b[0]:
                b[0], b[1] = off, b[1] + size
                if i > 0 and free[i - 1][0] + free[i - 1][1] == b[0]:
                    free[i - 1][1] += b[1]
                    del free[i]
                return
        pos = 0
        while pos < len(free) and free[pos][0] < off:
            pos += 1
        free.insert(pos, [off, size])

    for e in events:
        if e[0] == "A":
            size = _size(e[2], e[3], dims, alignment)
            best, best_size = len(free) - 1, -1
            for i in range(len(free) - 1):  # best fit, the open end aside (ties: the later block)
                if free[i][1] >= size and (best_size < 0 or free[i][1] <= best_size):
                    best, best_size = i, free[i][1]
            b = free[best]
            off = b[0]
            b[0] += size
            b[1] -= size
            if b[1] == 0:
                del free[best]
            live.append([off, size])
            high = max(high, off + size)
        elif e[0] == "F":
            off, size = live[e[1]]
            release(off, size)
        else:  # "X": the tail of a block a smaller node took over
            extra = _size(e[2], e[3], dims, alignment)
            blk = live[e[1]]
            blk[1] -= extra
            release(blk[0] + blk[1], extra)
    return high
