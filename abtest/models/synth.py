"""Random-weight GGUF files with the real tensor shapes and metadata of known architectures.

A synthetic model costs the same memory and compute as the model it imitates, so it is a fair
stand-in for speed and VRAM measurements; its text is noise. The file is a pure function of
(preset, qtype, seed, SYNTH_VERSION): every random number comes from numpy *bit generators*
(``PCG64.random_raw``), whose streams numpy guarantees stable across versions and machines, and
all float maths is IEEE float32 rounded once to float16. Same inputs, same bytes, same SHA256.

Quantised blocks are generated directly, never quantised from floats (fast, and no NaN/Inf can
come out of random bytes):

    Q4_0 block (18 bytes): fp16 d, 16 bytes of nibbles q;  w = (q - 8) * d
    Q8_0 block (34 bytes): fp16 d, 32 int8 q;              w = q * d
    MXFP4 block (17 bytes): u8 e, 16 bytes of nibbles q;   w = kvalues_mxfp4[q] * 2**(e - 128)
    Q5_0 block (22 bytes): fp16 d, 4 + 16 bytes of 5-bit q; w = (q - 16) * d
    Q5_1 block (24 bytes): fp16 d, fp16 m = -15.5 d, q;     w = q * d + m
    Q4_K block (144 bytes, 256 weights): fp16 d, fp16 dmin = 7.5 d, 12 bytes of 6-bit scales
        sc_j and mins m_j = sc_j (j = 0..7, one per 32 weights), 128 bytes of nibbles;
        w = d * sc_j * q - dmin * m_j = d * sc_j * (q - 7.5)
    Q5_K block (176 bytes): as Q4_K with 5-bit q (32 bytes of high bits) and dmin = 15.5 d
    Q6_K block (210 bytes): 128 + 64 bytes of 6-bit q, 16 int8 scales s_j (one per 16 weights),
        fp16 d;  w = d * s_j * (q - 32)

q is uniform random, so std(q - 8) = sqrt(21.5) and std(int8) = sqrt(5461.5); d is chosen so the
weights of a row have std ~ 1/sqrt(fan_in) (activations keep their scale through a layer), with a
random sign (the -0.5 mean of q - 8 would otherwise be a bias shared by every row) and a +-25 %
magnitude jitter. |d| is far inside fp16's normal range, so every scale is finite and non-zero.
MXFP4's scale is a power of two: e is the nearest one, the same for every block of a tensor (the
e2m1 values are symmetric, so there is no bias to cancel). The K-quant sub-block scales are
uniform in 8..15 (Q6_K's with a random sign, which cancels the -0.5 mean of q - 32; Q4_K and
Q5_K centre q with their mins instead), well inside their 6- and 8-bit ranges. F16 matrices are
uniform floats with the same std.

Each architecture's tensor list (`tensor_plan`) follows what its src/models/<arch>.cpp in the
vendored llama.cpp creates; `qtype` picks the type of the weight matrices (`QTYPES`).

Data is written tensor by tensor in chunks of `CHUNK_BLOCKS` blocks: peak memory is a few tens of
MB whatever the preset (the 17 GB qwen3-30b-a3b-like included).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from ..errors import ConfigError
from .gguf import EXPERT_TENSOR_RE
from .presets import Preset, get_preset

# numpy is imported by the functions that make tensor data, not here: the catalog imports this
# module for its tensor plans (sizes), and so does `abtest run`, whose start-up CPU numpy's import
# would be a third of (docs/performance.md).
if TYPE_CHECKING:
    import numpy as np

# Bump when the bytes a given (preset, qtype, seed) produce change; it is stored in the file.
SYNTH_VERSION = 1

# Blocks generated per chunk: 2**20 Q4_0 blocks = 18 MiB of output, ~40 MiB of scratch.
CHUNK_BLOCKS = 1 << 20
# F32 values generated per chunk.
CHUNK_F32 = 1 << 22

# The type of the weight matrices: every matrix the same (q4_0, q8_0, f16), or mxfp4: the routed
# experts in MXFP4 and the other matrices Q8_0, as ggml-org's gpt-oss GGUF ships them (llama.cpp
# calls the mix MXFP4_MOE), or q4_k_m: llama-quantize's Q4_K_M mix, tensor by tensor
# (`kquant.q4_k_m_types`). Norms, biases, the router, sinks and rope factors are F32 in every
# case, as conversion/base.py keeps them.
QTYPES = ("q4_0", "q8_0", "f16", "mxfp4", "q4_k_m")
ALIGNMENT = 32  # GGUF default data alignment (gguf.GGUF_DEFAULT_ALIGNMENT)

# GGML type ids and (elements per block, bytes per block), as in ggml.h / gguf-py constants.
GGML_F32 = 0
GGML_F16 = 1
GGML_Q4_0 = 2
GGML_Q8_0 = 8
GGML_MXFP4 = 39
GGML_Q5_0, GGML_Q5_1, GGML_Q4_K, GGML_Q5_K, GGML_Q6_K = 6, 7, 12, 13, 14
_BLOCK = {GGML_F32: (1, 4), GGML_F16: (1, 2), GGML_Q4_0: (32, 18), GGML_Q8_0: (32, 34), GGML_MXFP4: (32, 17),
          GGML_Q5_0: (32, 22), GGML_Q5_1: (32, 24), GGML_Q4_K: (256, 144), GGML_Q5_K: (256, 176),
          GGML_Q6_K: (256, 210)}
# qtype -> (type of the routed experts, type of every other matrix)
_QTYPE_IDS = {
    "q4_0": (GGML_Q4_0, GGML_Q4_0), "q8_0": (GGML_Q8_0, GGML_Q8_0), "f16": (GGML_F16, GGML_F16),
    "mxfp4": (GGML_MXFP4, GGML_Q8_0),
    "q4_k_m": (GGML_F16, GGML_F16),  # the source llama-quantize starts from; kquant picks each type
}
# llama_ftype (include/llama.h): MOSTLY_Q4_0, MOSTLY_Q8_0, MOSTLY_F16, MOSTLY_MXFP4_MOE, MOSTLY_Q4_K_M
_FILE_TYPE = {"q4_0": 2, "q8_0": 7, "f16": 1, "mxfp4": 38, "q4_k_m": 15}
# std of the integer part of a weight with uniform random q: sqrt(E[(q-8)^2]) and sqrt(E[q^2]);
# MXFP4: the doubled e2m1 values of ggml's kvalues_mxfp4, sqrt(mean(v^2)) = sqrt(34.25).
_Q_STD = {GGML_Q4_0: math.sqrt(21.5), GGML_Q8_0: math.sqrt(5461.5), GGML_MXFP4: math.sqrt(34.25),
          GGML_Q5_0: math.sqrt(85.5), GGML_Q5_1: math.sqrt(85.25)}
# K-quants: E[sc^2] of sub-block scales uniform in 8..15, times E[(q - centre)^2]
_K_SCALE_LO, _K_SCALE_N = 8, 8
_K_SC2 = sum(x * x for x in range(_K_SCALE_LO, _K_SCALE_LO + _K_SCALE_N)) / _K_SCALE_N  # 137.5
_K_STD = {GGML_Q4_K: math.sqrt(_K_SC2 * 21.25), GGML_Q5_K: math.sqrt(_K_SC2 * 85.25),
          GGML_Q6_K: math.sqrt(_K_SC2 * 341.5)}

# Token types (llama_token_type): NORMAL and CONTROL.
_TOKEN_NORMAL = 1
_TOKEN_CONTROL = 3
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# llama-vocab.cpp sets token attributes by general.name: a name containing "phi-3" must have
# these (Phi-3's SentencePiece vocabulary has them as ids 0-2), or the vocabulary fails to load
# with "unordered_map::at".
PHI3_SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")


def special_tokens(p: Preset) -> tuple[str, ...]:
    """The CONTROL tokens at the end of a preset's vocabulary; the first is bos = eos = pad."""
    name = header_name(p).lower()
    return SPECIAL_TOKENS + PHI3_SPECIAL_TOKENS if "phi-3" in name or "phi3" in name else SPECIAL_TOKENS


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of a plan. shape is in ggml order (ne0 = row length first), as llama.cpp prints it."""

    name: str
    shape: tuple[int, ...]
    ggml_type: int  # a ggml type id (GGML_F32 ... GGML_Q6_K)
    fill: str  # "quant" (a weight matrix: random blocks, or uniform F16), "ones" (near-1 norm weights), "uniform" (F32, std ~ 1/sqrt(ne0)), "small"

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        per_block, block_bytes = _BLOCK[self.ggml_type]
        return self.n_elements // per_block * block_bytes

    @property
    def is_expert(self) -> bool:
        return EXPERT_TENSOR_RE.search(self.name) is not None


@dataclass(frozen=True)
class SynthResult:
    """What `write_synth` wrote."""

    path: Path
    preset: str
    qtype: str
    seed: int
    size_bytes: int
    sha256: str
    n_tensors: int
    elapsed_s: float


def _check_qtype(qtype: str) -> tuple[int, int]:
    if qtype not in _QTYPE_IDS:
        raise ConfigError(f"unknown qtype {qtype!r}; choose one of: {', '.join(QTYPES)}")
    return _QTYPE_IDS[qtype]


def resolve_qtype(preset: str | Preset, qtype: str | None) -> str:
    """qtype, or the preset's own default (the tensor types the real model's common file ships)."""
    p = get_preset(preset) if isinstance(preset, str) else preset
    return p.default_qtype if qtype is None else qtype


def tensor_plan(preset: str | Preset, qtype: str | None = None) -> list[TensorSpec]:
    """Every tensor of the preset, in file order: (name, ggml shape, type). Writes nothing.

    qtype None means the preset's default (`Preset.default_qtype`)."""
    p = get_preset(preset) if isinstance(preset, str) else preset
    resolved = resolve_qtype(p, qtype)
    q_exp, q = _check_qtype(resolved)
    d, v = p.n_embd, p.n_vocab
    specs: list[TensorSpec] = []

    def add(name: str, shape: tuple[int, ...], ggml_type: int, fill: str) -> None:
        specs.append(TensorSpec(name, shape, ggml_type, fill))

    def mat(name: str, shape: tuple[int, ...]) -> None:
        add(name, shape, q_exp if EXPERT_TENSOR_RE.search(name) else q, "quant")

    mat("token_embd.weight", (d, v))
    if p.arch == "gpt2":
        add("position_embd.weight", (d, p.context_length), GGML_F32, "uniform")
    add("output_norm.weight", (d,), GGML_F32, "ones")
    if p.arch in ("gpt2", "phimoe"):
        add("output_norm.bias", (d,), GGML_F32, "small")
    if not p.tied_embeddings:
        mat("output.weight", (d, v))
    if p.arch == "phimoe":
        add("output.bias", (v,), GGML_F32, "small")
        # one pair for all blocks (llama.cpp duplicates block 0's); rope_dims / 2 long
        add("rope_factors_long.weight", (p.n_rot // 2,), GGML_F32, "ones")
        add("rope_factors_short.weight", (p.n_rot // 2,), GGML_F32, "ones")

    layer = _LAYER_PLANS.get(p.arch)
    if layer is None:  # pragma: no cover - presets are defined in presets.py
        raise ConfigError(f"preset {p.name!r} has unsupported arch {p.arch!r}")
    for i in range(p.n_layer):
        layer(p, i, f"blk.{i}.", add, mat)
    if resolved == "q4_k_m":  # the F16 plan, typed as llama-quantize would type it
        from .kquant import TensorIn, q4_k_m_types

        types = q4_k_m_types([TensorIn(s.name, s.shape, s.ggml_type) for s in specs], p.n_layer, p.n_expert)
        specs = [dataclasses.replace(s, ggml_type=types[s.name]) for s in specs]
    return specs


_Add = Callable[[str, tuple[int, ...], int, str], None]
_Mat = Callable[[str, tuple[int, ...]], None]


def _qwen3moe_layer(p: Preset, i: int, b: str, add: _Add, mat: _Mat) -> None:
    d = p.n_embd
    q_dim, kv_dim = p.n_head * p.head_dim, p.n_head_kv * p.head_dim
    add(b + "attn_norm.weight", (d,), GGML_F32, "ones")
    mat(b + "attn_q.weight", (d, q_dim))
    mat(b + "attn_k.weight", (d, kv_dim))
    mat(b + "attn_v.weight", (d, kv_dim))
    mat(b + "attn_output.weight", (q_dim, d))
    add(b + "attn_q_norm.weight", (p.head_dim,), GGML_F32, "ones")
    add(b + "attn_k_norm.weight", (p.head_dim,), GGML_F32, "ones")
    add(b + "ffn_norm.weight", (d,), GGML_F32, "ones")
    add(b + "ffn_gate_inp.weight", (d, p.n_expert), GGML_F32, "uniform")
    mat(b + "ffn_gate_exps.weight", (d, p.n_ff_exp, p.n_expert))
    mat(b + "ffn_down_exps.weight", (p.n_ff_exp, d, p.n_expert))
    mat(b + "ffn_up_exps.weight", (d, p.n_ff_exp, p.n_expert))


def _gpt2_layer(p: Preset, i: int, b: str, add: _Add, mat: _Mat) -> None:
    d = p.n_embd
    q_dim, kv_dim = p.n_head * p.head_dim, p.n_head_kv * p.head_dim
    add(b + "attn_norm.weight", (d,), GGML_F32, "ones")
    add(b + "attn_norm.bias", (d,), GGML_F32, "small")
    mat(b + "attn_qkv.weight", (d, q_dim + 2 * kv_dim))
    add(b + "attn_qkv.bias", (q_dim + 2 * kv_dim,), GGML_F32, "small")
    mat(b + "attn_output.weight", (q_dim, d))
    add(b + "attn_output.bias", (d,), GGML_F32, "small")
    add(b + "ffn_norm.weight", (d,), GGML_F32, "ones")
    add(b + "ffn_norm.bias", (d,), GGML_F32, "small")
    mat(b + "ffn_up.weight", (d, p.n_ff))
    add(b + "ffn_up.bias", (p.n_ff,), GGML_F32, "small")
    mat(b + "ffn_down.weight", (p.n_ff, d))
    add(b + "ffn_down.bias", (d,), GGML_F32, "small")


def _gpt_oss_layer(p: Preset, i: int, b: str, add: _Add, mat: _Mat) -> None:
    """src/models/openai-moe.cpp: q/k/v/o with biases, sinks, post-attention norm, biased router and experts."""
    d, e, f = p.n_embd, p.n_expert, p.n_ff_exp
    q_dim, kv_dim = p.n_head * p.head_dim, p.n_head_kv * p.head_dim
    add(b + "attn_norm.weight", (d,), GGML_F32, "ones")
    mat(b + "attn_q.weight", (d, q_dim))
    add(b + "attn_q.bias", (q_dim,), GGML_F32, "small")
    mat(b + "attn_k.weight", (d, kv_dim))
    add(b + "attn_k.bias", (kv_dim,), GGML_F32, "small")
    mat(b + "attn_v.weight", (d, kv_dim))
    add(b + "attn_v.bias", (kv_dim,), GGML_F32, "small")
    mat(b + "attn_output.weight", (q_dim, d))
    add(b + "attn_output.bias", (d,), GGML_F32, "small")
    add(b + "attn_sinks.weight", (p.n_head,), GGML_F32, "small")
    add(b + "post_attention_norm.weight", (d,), GGML_F32, "ones")
    add(b + "ffn_gate_inp.weight", (d, e), GGML_F32, "uniform")
    add(b + "ffn_gate_inp.bias", (e,), GGML_F32, "small")
    mat(b + "ffn_gate_exps.weight", (d, f, e))
    add(b + "ffn_gate_exps.bias", (f, e), GGML_F32, "small")
    mat(b + "ffn_down_exps.weight", (f, d, e))
    add(b + "ffn_down_exps.bias", (d, e), GGML_F32, "small")
    mat(b + "ffn_up_exps.weight", (d, f, e))
    add(b + "ffn_up_exps.bias", (f, e), GGML_F32, "small")


def _phimoe_layer(p: Preset, i: int, b: str, add: _Add, mat: _Mat) -> None:
    """src/models/phimoe.cpp: biased norms and attention, experts n_ff wide, no shared expert."""
    d, e, f = p.n_embd, p.n_expert, p.n_ff
    kv_dim = p.n_head_kv * (d // p.n_head)
    add(b + "attn_norm.weight", (d,), GGML_F32, "ones")
    add(b + "attn_norm.bias", (d,), GGML_F32, "small")
    mat(b + "attn_q.weight", (d, d))
    add(b + "attn_q.bias", (d,), GGML_F32, "small")
    mat(b + "attn_k.weight", (d, kv_dim))
    add(b + "attn_k.bias", (kv_dim,), GGML_F32, "small")
    mat(b + "attn_v.weight", (d, kv_dim))
    add(b + "attn_v.bias", (kv_dim,), GGML_F32, "small")
    mat(b + "attn_output.weight", (d, d))
    add(b + "attn_output.bias", (d,), GGML_F32, "small")
    add(b + "ffn_norm.weight", (d,), GGML_F32, "ones")
    add(b + "ffn_norm.bias", (d,), GGML_F32, "small")
    add(b + "ffn_gate_inp.weight", (d, e), GGML_F32, "uniform")
    mat(b + "ffn_gate_exps.weight", (d, f, e))
    mat(b + "ffn_down_exps.weight", (f, d, e))
    mat(b + "ffn_up_exps.weight", (d, f, e))


def _deepseek_ffn(p: Preset, i: int, b: str, add: _Add, mat: _Mat) -> None:
    """The FFN of deepseek and deepseek2: dense in the leading blocks, else routed + shared experts."""
    d, e, f = p.n_embd, p.n_expert, p.n_ff_exp
    add(b + "ffn_norm.weight", (d,), GGML_F32, "ones")
    if i < p.n_layer_dense_lead:
        mat(b + "ffn_gate.weight", (d, p.n_ff))
        mat(b + "ffn_down.weight", (p.n_ff, d))
        mat(b + "ffn_up.weight", (d, p.n_ff))
        return
    add(b + "ffn_gate_inp.weight", (d, e), GGML_F32, "uniform")
    mat(b + "ffn_gate_exps.weight", (d, f, e))
    mat(b + "ffn_down_exps.weight", (f, d, e))
    mat(b + "ffn_up_exps.weight", (d, f, e))
    mat(b + "ffn_gate_shexp.weight", (d, p.n_ff_shexp))
    mat(b + "ffn_down_shexp.weight", (p.n_ff_shexp, d))
    mat(b + "ffn_up_shexp.weight", (d, p.n_ff_shexp))


def _deepseek_layer(p: Preset, i: int, b: str, add: _Add, mat: _Mat) -> None:
    """src/models/deepseek.cpp: plain MHA (q and o are n_embd x n_embd)."""
    d = p.n_embd
    kv_dim = p.n_head_kv * (d // p.n_head)
    add(b + "attn_norm.weight", (d,), GGML_F32, "ones")
    mat(b + "attn_q.weight", (d, d))
    mat(b + "attn_k.weight", (d, kv_dim))
    mat(b + "attn_v.weight", (d, kv_dim))
    mat(b + "attn_output.weight", (d, d))
    _deepseek_ffn(p, i, b, add, mat)


def _deepseek2_layer(p: Preset, i: int, b: str, add: _Add, mat: _Mat) -> None:
    """src/models/deepseek2.cpp with MLA (key_length_mla set) and no q compression (V2-Lite):
    attn_q, the joint KV down-projection attn_kv_a_mqa (kv_lora_rank + rope dims), its norm, and
    the per-head up-projections attn_k_b / attn_v_b."""
    d, h, rope = p.n_embd, p.n_head, p.n_rot
    nope = p.head_dim_k_mla - rope
    add(b + "attn_norm.weight", (d,), GGML_F32, "ones")
    if p.q_lora_rank:
        add(b + "attn_q_a_norm.weight", (p.q_lora_rank,), GGML_F32, "ones")
        mat(b + "attn_q_a.weight", (d, p.q_lora_rank))
        mat(b + "attn_q_b.weight", (p.q_lora_rank, h * p.head_dim_k_mla))
    else:
        mat(b + "attn_q.weight", (d, h * p.head_dim_k_mla))
    add(b + "attn_kv_a_norm.weight", (p.kv_lora_rank,), GGML_F32, "ones")
    mat(b + "attn_kv_a_mqa.weight", (d, p.kv_lora_rank + rope))
    mat(b + "attn_k_b.weight", (nope, p.kv_lora_rank, h))
    mat(b + "attn_v_b.weight", (p.kv_lora_rank, p.head_dim_v_mla, h))
    mat(b + "attn_output.weight", (h * p.head_dim_v_mla, d))
    _deepseek_ffn(p, i, b, add, mat)


_LAYER_PLANS: dict[str, Callable[[Preset, int, str, _Add, _Mat], None]] = {
    "qwen3moe": _qwen3moe_layer, "gpt2": _gpt2_layer, "gpt-oss": _gpt_oss_layer, "phimoe": _phimoe_layer,
    "deepseek": _deepseek_layer, "deepseek2": _deepseek2_layer,
}


@dataclass(frozen=True)
class PlanSummary:
    """Sizes computed from a plan, without writing anything."""

    total_params: int
    expert_params: int
    active_params: int  # non-expert (shared experts and dense layers included) + n_expert_used / n_expert of the routed-expert params
    tensor_bytes: int  # sum of tensor data, without alignment padding


def summarize_plan(preset: str | Preset, qtype: str | None = None) -> PlanSummary:
    p = get_preset(preset) if isinstance(preset, str) else preset
    specs = tensor_plan(p, qtype)
    total = sum(s.n_elements for s in specs)
    expert = sum(s.n_elements for s in specs if s.is_expert)
    active = total - expert + (expert * p.n_expert_used // p.n_expert if p.n_expert else 0)
    return PlanSummary(total, expert, active, sum(s.nbytes for s in specs))


# --- vocabulary -------------------------------------------------------------------------------


def bytes_to_unicode() -> list[str]:
    """GPT-2's byte-level alphabet: the character for byte b, in GPT-2's vocabulary order.

    Printable bytes map to themselves; the rest to U+0100 onwards (space -> 'Ġ', newline -> 'Ċ').
    Returned in GPT-2 token-id order: printable bytes first, then the remapped ones.
    """
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


@dataclass(frozen=True)
class Vocab:
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    eos_id: int


def build_vocab(n_vocab: int, specials: tuple[str, ...] = SPECIAL_TOKENS) -> Vocab:
    """A byte-level BPE vocabulary of exactly n_vocab tokens that llama.cpp's "gpt2" tokenizer accepts.

    Tokens 0..255 are the byte alphabet; each merged token k is an earlier token followed by one
    byte character (mostly lowercase letters or 'Ġ'), so lengths grow like log(k) rather than k;
    the merge list holds "A B" for each in order; the last tokens are `specials` (CONTROL).
    Texts are unique (llama.cpp asserts it). Depends only on n_vocab.
    """
    import numpy as np
    base = bytes_to_unicode()
    n_merges = n_vocab - len(base) - len(specials)
    if n_merges < 0:
        raise ConfigError(f"n_vocab {n_vocab} is too small; it must be at least {len(base) + len(specials)}")
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + ["Ġ"]
    bitgen = np.random.PCG64(np.random.SeedSequence([0x70CAB, n_vocab]))
    tokens = list(base)
    seen = set(tokens)
    merges: list[str] = []
    # Draw in batches of raw 64-bit numbers (stable stream); retry on duplicate texts.
    raw: Iterator[int] = iter(())
    while len(merges) < n_merges:
        try:
            r = next(raw)
        except StopIteration:
            raw = iter(bitgen.random_raw(max(1024, 2 * (n_merges - len(merges)))).tolist())
            continue
        left = tokens[(r & 0xFFFFFFFF) % len(tokens)]
        pick = (r >> 32) & 0xFFFF
        right = letters[pick % len(letters)] if (r >> 48) % 4 else base[pick % 256]
        text = left + right
        if text in seen:
            continue
        seen.add(text)
        tokens.append(text)
        merges.append(f"{left} {right}")
    tokens.extend(specials)
    types = [_TOKEN_NORMAL] * (n_vocab - len(specials)) + [_TOKEN_CONTROL] * len(specials)
    return Vocab(tokens=tokens, token_types=types, merges=merges, eos_id=n_vocab - len(specials))


# --- random data ------------------------------------------------------------------------------


def _tensor_bitgens(seed: int, name: str) -> tuple[np.random.PCG64, np.random.PCG64]:
    """Two independent streams per tensor (payload, scales), keyed by the seed and the tensor name."""
    import numpy as np
    ss = np.random.SeedSequence([seed & 0xFFFFFFFF, seed >> 32, zlib.crc32(name.encode())])
    a, b = ss.spawn(2)
    return np.random.PCG64(a), np.random.PCG64(b)


def _raw_bytes(bitgen: np.random.PCG64, n: int) -> np.ndarray:
    import numpy as np
    return bitgen.random_raw((n + 7) // 8).view(np.uint8)[:n]


def _unit_f32(bitgen: np.random.PCG64, n: int) -> np.ndarray:
    """n float32 values uniform in [0, 1), exact (24-bit integers times 2**-24)."""
    import numpy as np
    u = bitgen.random_raw((n + 1) // 2).view(np.uint32)[:n] >> np.uint32(8)
    return u.astype(np.float32) * np.float32(2.0**-24)


def scale_for(spec: TensorSpec) -> float:
    """|d| at the centre of its jitter: weights of a row get std ~ 1/sqrt(fan_in), fan_in = ne0."""
    return 1.0 / (math.sqrt(spec.shape[0]) * _Q_STD[spec.ggml_type])


def _quant_chunks(spec: TensorSpec, seed: int) -> Iterator[np.ndarray]:
    import numpy as np
    per_block, block_bytes = _BLOCK[spec.ggml_type]
    qbytes = block_bytes - 2
    n_blocks = spec.n_elements // per_block
    d_base = np.float32(scale_for(spec))
    payload, scales = _tensor_bitgens(seed, spec.name)
    for start in range(0, n_blocks, CHUNK_BLOCKS):
        m = min(CHUNK_BLOCKS, n_blocks - start)
        u = scales.random_raw((m + 3) // 4).view(np.uint16)[:m]
        # magnitude in [0.75, 1.25) * d_base; sign from the low bit.
        mag = d_base * (np.float32(0.75) + u.astype(np.float32) * np.float32(0.5 / 65536))
        d = np.where((u & 1).astype(bool), -mag, mag).astype(np.float16)
        out = np.empty((m, block_bytes), dtype=np.uint8)
        out[:, :2] = d.view(np.uint8).reshape(m, 2)
        out[:, 2:] = _raw_bytes(payload, m * qbytes).reshape(m, qbytes)
        yield out


def _f32_chunks(spec: TensorSpec, seed: int) -> Iterator[np.ndarray]:
    import numpy as np
    payload, _ = _tensor_bitgens(seed, spec.name)
    n = spec.n_elements
    # uniform on [-a, a] has std a/sqrt(3)
    if spec.fill == "ones":
        lo, width = 0.95, 0.1
    elif spec.fill == "small":
        lo, width = -0.02, 0.04
    else:
        a = math.sqrt(3.0 / spec.shape[0])
        lo, width = -a, 2 * a
    for start in range(0, n, CHUNK_F32):
        m = min(CHUNK_F32, n - start)
        yield np.float32(lo) + _unit_f32(payload, m) * np.float32(width)


def mxfp4_exponent(spec: TensorSpec) -> int:
    """The E8M0 byte of every block of an MXFP4 tensor: ggml reads a weight as
    kvalues_mxfp4[q] * 2**(e - 128) (ggml_e8m0_to_fp32_half), so e is the power of two nearest
    to the scale that gives a row std ~ 1/sqrt(fan_in). No jitter: the scale is a power of two,
    and the e2m1 values are symmetric, so no sign is needed either."""
    return 128 + round(math.log2(1.0 / (math.sqrt(spec.shape[0]) * _Q_STD[GGML_MXFP4])))


def _mxfp4_chunks(spec: TensorSpec, seed: int) -> Iterator[np.ndarray]:
    """MXFP4 block (17 bytes): u8 E8M0 exponent e, 16 bytes of e2m1 nibbles (ggml-common.h block_mxfp4)."""
    import numpy as np
    n_blocks = spec.n_elements // 32
    e = np.uint8(mxfp4_exponent(spec))
    payload, _ = _tensor_bitgens(seed, spec.name)
    for start in range(0, n_blocks, CHUNK_BLOCKS):
        m = min(CHUNK_BLOCKS, n_blocks - start)
        out = np.empty((m, 17), dtype=np.uint8)
        out[:, 0] = e
        out[:, 1:] = _raw_bytes(payload, m * 16).reshape(m, 16)
        yield out


def _q5_1_chunks(spec: TensorSpec, seed: int) -> Iterator[np.ndarray]:
    """Q5_1 block (24 bytes): fp16 d, fp16 m = -15.5 d (centres the 5-bit q), 20 bytes of q."""
    import numpy as np
    n_blocks = spec.n_elements // 32
    d_base = np.float32(scale_for(spec))
    payload, scales = _tensor_bitgens(seed, spec.name)
    for start in range(0, n_blocks, CHUNK_BLOCKS):
        m = min(CHUNK_BLOCKS, n_blocks - start)
        u = scales.random_raw((m + 3) // 4).view(np.uint16)[:m]
        d = d_base * (np.float32(0.75) + u.astype(np.float32) * np.float32(0.5 / 65536))
        out = np.empty((m, 24), dtype=np.uint8)
        out[:, :2] = d.astype(np.float16).view(np.uint8).reshape(m, 2)
        out[:, 2:4] = (d * np.float32(-15.5)).astype(np.float16).view(np.uint8).reshape(m, 2)
        out[:, 4:] = _raw_bytes(payload, m * 20).reshape(m, 20)
        yield out


def k_scale_base(spec: TensorSpec) -> float:
    """|d| of a K-quant super-block at the centre of its jitter: row std ~ 1/sqrt(fan_in)."""
    return 1.0 / (math.sqrt(spec.shape[0]) * _K_STD[spec.ggml_type])


def _k_scales(scales: np.random.PCG64, m: int, n: int) -> np.ndarray:
    """m x n sub-block scales, uniform in _K_SCALE_LO .. _K_SCALE_LO + 7."""
    import numpy as np
    return (_raw_bytes(scales, m * n).reshape(m, n) & np.uint8(_K_SCALE_N - 1)) + np.uint8(_K_SCALE_LO)


def _kquant_chunks(spec: TensorSpec, seed: int) -> Iterator[np.ndarray]:
    """Q4_K, Q5_K and Q6_K super-blocks of 256 weights (ggml-common.h layouts, see the module doc)."""
    import numpy as np
    t = spec.ggml_type
    _, block_bytes = _BLOCK[t]
    n_blocks = spec.n_elements // 256
    d_base = np.float32(k_scale_base(spec))
    payload, scales = _tensor_bitgens(seed, spec.name)
    for start in range(0, n_blocks, CHUNK_BLOCKS // 8):
        m = min(CHUNK_BLOCKS // 8, n_blocks - start)
        u = scales.random_raw((m + 3) // 4).view(np.uint16)[:m]
        d = d_base * (np.float32(0.75) + u.astype(np.float32) * np.float32(0.5 / 65536))
        d16 = d.astype(np.float16).view(np.uint8).reshape(m, 2)
        out = np.empty((m, block_bytes), dtype=np.uint8)
        if t == GGML_Q6_K:
            sc = _k_scales(scales, m, 16).astype(np.int8)
            sign = (_raw_bytes(scales, m * 16).reshape(m, 16) & np.uint8(1)).astype(bool)
            out[:, :192] = _raw_bytes(payload, m * 192).reshape(m, 192)  # ql[128], qh[64]
            out[:, 192:208] = np.where(sign, -sc, sc).astype(np.int8).view(np.uint8)
            out[:, 208:210] = d16
        else:
            # scales[12] (get_scale_min_k4): bytes 0-3 sc_0..3, 4-7 m_0..3, 8-11 sc_j | m_j << 4 for
            # j = 4..7; every value < 16, so the two high bits of bytes 0-7 stay zero. m_j = sc_j.
            sc = _k_scales(scales, m, 8)
            centre = np.float32(7.5 if t == GGML_Q4_K else 15.5)
            out[:, 0:2] = d16
            out[:, 2:4] = (d * centre).astype(np.float16).view(np.uint8).reshape(m, 2)
            out[:, 4:8] = sc[:, :4]
            out[:, 8:12] = sc[:, :4]
            out[:, 12:16] = sc[:, 4:] | (sc[:, 4:] << np.uint8(4))
            out[:, 16:] = _raw_bytes(payload, m * (block_bytes - 16)).reshape(m, block_bytes - 16)
        yield out


def _f16_chunks(spec: TensorSpec, seed: int) -> Iterator[np.ndarray]:
    """An F16 weight matrix: uniform on [-a, a], std 1/sqrt(fan_in), computed in float32, rounded once."""
    import numpy as np
    payload, _ = _tensor_bitgens(seed, spec.name)
    a = math.sqrt(3.0 / spec.shape[0])
    n = spec.n_elements
    for start in range(0, n, CHUNK_F32):
        m = min(CHUNK_F32, n - start)
        yield (np.float32(-a) + _unit_f32(payload, m) * np.float32(2 * a)).astype(np.float16)


def tensor_chunks(spec: TensorSpec, seed: int) -> Iterator[np.ndarray]:
    """The tensor's bytes, in order, as arrays of at most a few tens of MB."""
    if spec.fill == "quant":
        if spec.ggml_type == GGML_MXFP4:
            return _mxfp4_chunks(spec, seed)
        if spec.ggml_type == GGML_F16:
            return _f16_chunks(spec, seed)
        if spec.ggml_type in _K_STD:
            return _kquant_chunks(spec, seed)
        if spec.ggml_type == GGML_Q5_1:
            return _q5_1_chunks(spec, seed)
        return _quant_chunks(spec, seed)
    return _f32_chunks(spec, seed)


# --- writing ----------------------------------------------------------------------------------


def synth_file_name(preset: str, qtype: str | None = "q4_0", seed: int = 0) -> str:
    """The file name the catalog caches a synthetic model under (qtype None: the preset's default)."""
    return f"{preset}-{qtype if qtype is not None else get_preset(preset).default_qtype}-seed{seed}.gguf"


def header_name(p: Preset) -> str:
    """The general.name written into a preset's file."""
    return f"abtest synth {p.name}"


def _add_metadata(writer: object, p: Preset, qtype: str, seed: int, vocab: Vocab) -> None:
    import gguf

    w: gguf.GGUFWriter = writer  # type: ignore[assignment]
    w.add_string("general.type", "model")
    w.add_name(header_name(p))
    w.add_description(
        f"Random weights with the shapes of {p.imitates}; output is noise. "
        f"abtest synth v{SYNTH_VERSION}, preset {p.name}, qtype {qtype}, seed {seed}."
    )
    w.add_string("abtest.synth.preset", p.name)
    w.add_uint32("abtest.synth.version", SYNTH_VERSION)
    w.add_uint64("abtest.synth.seed", seed)
    w.add_context_length(p.context_length)
    w.add_embedding_length(p.n_embd)
    w.add_block_count(p.n_layer)
    w.add_feed_forward_length(p.n_ff)
    w.add_head_count(p.n_head)
    w.add_head_count_kv(p.n_head_kv)
    if p.arch == "gpt2":
        w.add_layer_norm_eps(1e-5)
    else:
        w.add_key_length(p.head_dim)
        w.add_value_length(p.head_dim_value)
        w.add_rope_freq_base(p.rope_freq_base)
        w.add_layer_norm_rms_eps(p.norm_eps)
    if p.n_expert:
        w.add_expert_count(p.n_expert)
        w.add_expert_used_count(p.n_expert_used)
        if p.arch != "phimoe":  # phimoe's experts are feed_forward_length wide; conversion/phi.py writes no such key
            w.add_expert_feed_forward_length(p.n_ff_exp)
    _add_arch_metadata(w, p)
    w.add_file_type(_FILE_TYPE[qtype])
    w.add_quantization_version(2)  # GGML_QNT_VERSION
    w.add_vocab_size(p.n_vocab)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(p.tokenizer_pre)
    w.add_token_list(vocab.tokens)
    w.add_token_types(vocab.token_types)
    w.add_token_merges(vocab.merges)
    w.add_bos_token_id(vocab.eos_id)
    w.add_eos_token_id(vocab.eos_id)
    w.add_pad_token_id(vocab.eos_id)
    w.add_add_bos_token(False)


def _add_arch_metadata(w: object, p: Preset) -> None:
    """The keys only some architectures read (all absent for the stand-in presets, whose files
    are unchanged): as the vendored conversion/<arch>.py writes them, read by src/models/<arch>.cpp."""
    import gguf

    assert isinstance(w, gguf.GGUFWriter)
    if p.n_rot:
        w.add_rope_dimension_count(p.n_rot)
    if p.rope_scaling:
        w.add_rope_scaling_type(gguf.RopeScalingType(p.rope_scaling))
    if p.rope_scaling_factor:
        w.add_rope_scaling_factor(p.rope_scaling_factor)
    if p.rope_orig_ctx:
        w.add_rope_scaling_orig_ctx_len(p.rope_orig_ctx)
    if p.rope_yarn_log_mul:
        w.add_rope_scaling_yarn_log_mul(p.rope_yarn_log_mul)
    if p.rope_attn_factor:
        w.add_rope_scaling_attn_factors(p.rope_attn_factor)
    if p.sliding_window:
        w.add_sliding_window(p.sliding_window)
    if p.arch in ("deepseek", "deepseek2"):
        # both read expert_shared_count as required; leading_dense_block_count defaults to 0
        w.add_leading_dense_block_count(p.n_layer_dense_lead)
        w.add_expert_shared_count(p.n_expert_shared)
    if p.expert_weights_scale:
        w.add_expert_weights_scale(p.expert_weights_scale)
    if p.arch == "deepseek2":
        # deepseek2.cpp requires q_lora_rank unless n_layer is 26 or 27 ("lite"): the reduced
        # preset has to say 0 (a plain attn_q) where the real V2-Lite file says nothing.
        if p.q_lora_rank or p.n_layer not in (26, 27):
            w.add_q_lora_rank(p.q_lora_rank)
        w.add_kv_lora_rank(p.kv_lora_rank)
        w.add_key_length_mla(p.head_dim_k_mla)
        w.add_value_length_mla(p.head_dim_v_mla)


def _pad(n: int) -> int:
    return -n % ALIGNMENT


def write_synth(
    out: str | os.PathLike[str],
    preset: str,
    qtype: str | None = None,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> SynthResult:
    """Write the preset's random-weight GGUF to `out` (atomically: a temp file, then rename).

    qtype None means the preset's default. progress(bytes_written, bytes_total) is called after
    each chunk. Returns the size and the SHA256, computed while writing (no second read).
    """
    import gguf
    import numpy as np

    p = get_preset(preset)
    qtype = resolve_qtype(p, qtype)
    _check_qtype(qtype)
    if seed < 0 or seed >= 2**64:
        raise ConfigError(f"seed {seed} out of range; use 0 <= seed < 2**64")
    specs = tensor_plan(p, qtype)
    vocab = build_vocab(p.n_vocab, special_tokens(p))
    path = Path(out)
    if path.is_dir():
        raise ConfigError(f"{path} is a directory; give a file name, e.g. {path / synth_file_name(preset, qtype, seed)}")
    if not path.parent.exists():
        raise ConfigError(f"directory {path.parent} does not exist; create it first (mkdir -p {path.parent})")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    t0 = time.perf_counter_ns()

    writer = gguf.GGUFWriter(tmp, p.arch)
    try:
        _add_metadata(writer, p, qtype, seed, vocab)
        for s in specs:
            # numpy order is the reverse of ggml order; dtype float32 + raw_dtype keeps the shape as given.
            writer.add_tensor_info(
                s.name, tuple(reversed(s.shape)), np.dtype(np.float32), s.nbytes, raw_dtype=gguf.GGMLQuantizationType(s.ggml_type)
            )
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        assert writer.fout is not None
        fout: BinaryIO = writer.fout[0]
        fout.flush()
        header_len = fout.tell()
        hasher = hashlib.sha256()
        with open(tmp, "rb") as f:
            hasher.update(f.read(header_len))

        def put(b: bytes | memoryview) -> None:
            fout.write(b)
            hasher.update(b)

        put(b"\0" * _pad(header_len))
        total = header_len + _pad(header_len) + sum(s.nbytes + _pad(s.nbytes) for s in specs)
        done = header_len + _pad(header_len)
        for s in specs:
            for chunk in tensor_chunks(s, seed):
                mv = memoryview(np.ascontiguousarray(chunk)).cast("B")  # type: ignore[arg-type]
                put(mv)
                done += mv.nbytes
                if progress is not None:
                    progress(done, total)
            put(b"\0" * _pad(s.nbytes))
            done += _pad(s.nbytes)
        writer.close()
        os.replace(tmp, path)
    except OSError as exc:
        writer.close()
        tmp.unlink(missing_ok=True)
        need = sum(s.nbytes for s in specs) / 1e9
        raise ConfigError(
            f"writing {path} failed ({exc.strerror or exc}); it needs {need:.2f} GB free: free space or choose another OUT"
        ) from None
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    if progress is not None:
        progress(total, total)
    return SynthResult(
        path=path, preset=p.name, qtype=qtype, seed=seed, size_bytes=path.stat().st_size,
        sha256=hasher.hexdigest(), n_tensors=len(specs), elapsed_s=(time.perf_counter_ns() - t0) / 1e9,
    )
