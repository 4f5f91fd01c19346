"""VRAM prediction for ``llama-server -ngl 99 --n-cpu-moe N``, from a GGUF's tensor sizes alone.

A setting's GPU memory, as NVML counts it for the server's PID, is predicted as

    total = weights on the GPU + KV cache + compute buffer + CUDA overhead

and each term is a pure function of the tensor list, a few hyper-parameters and the context
(docs/sweep.md shows the arithmetic on gpt-oss-20b-like). Placement, as llama.cpp does it with
``-ngl 99`` (src/llama-model.cpp, common/arg.cpp of the vendored llama.cpp):

* ``token_embd.weight`` stays in host memory: the input layer is always on the CPU (its one op
  is a get_rows, cheap anywhere).
* ``output.weight`` and ``output_norm`` go to the GPU (the output layer counts as layer n_layer,
  offloaded when -ngl > n_layer). A model with tied embeddings and no ``output.weight`` gets a
  GPU copy of ``token_embd`` for its output matmul.
* ``--n-cpu-moe N`` keeps the routed-expert tensors (``blk.i.ffn_{up,gate,down,gate_up}_exps``,
  `EXPERT_TENSOR_RE`) of layers 0..N-1 in host memory; every other layer tensor goes to the GPU.

Buffers, checked against what the CPU build of llama-server prints with ``-lv 4``
(tests/unit/test_vram.py and tests/unit/test_vram_archs.py hold those figures;
tests/integration/test_vram_archs_real.py re-reads them live for every ``*-arch-tiny`` preset):

* KV cache (`kv_caches`): one cache per attention kind. Full-attention layers: ``n_ctx_seq`` cells
  (n_ctx padded to 256; per sequence, times -np, unless unified) of ``n_head_kv * (head_dim_k +
  head_dim_v)`` values. Sliding-window layers (gpt-oss: every even block) have their own cache of
  ``pad256(min(n_ctx_seq, n_swa * (n_seq if unified else 1) + n_ubatch))`` cells (``--swa-full``:
  n_ctx_seq). MLA (deepseek2): K only, kv_lora_rank + n_rot per token, no V.
* Compute buffer (`graph_bytes`): the high-water mark of ggml-alloc over the worst-case prompt
  graph of one micro-batch of T = min(n_ubatch, n_ctx) tokens and one output row. With flash
  attention, the architecture's recorded allocation program is replayed on a port of ggml's
  allocator (`galloc`; qwen3moe, gpt-oss, phimoe, deepseek, deepseek2): exact to the byte on
  every shape checked, because fragmentation is modelled, not summed. Otherwise (gpt2, or flash
  attention off) the arithmetic of `compute_parts`: for a MoE layer
  ``T * 4 * (3 * n_ff_exp * n_expert_used + 3 * n_embd + n_head * head_dim) + n_kv * T * 2``, for
  a dense one ``T * 4 * (n_ff + 4 * n_embd)``; without flash attention the f32 KQ matrix and
  mask, ``n_kv * T * (4 * n_head + 4)``, are added (an upper bound: 6-10 % over for tiny-moe).
  That arithmetic misses the routed experts' down-projection output [n_embd, n_expert_used, T],
  which dominates when n_embd > n_ff_exp (Qwen3-30B-A3B: 90 MiB replayed, 58 by the formula,
  88 printed by the H100's CUDA build at -c 4096).
* On the GPU, when some experts stay in host memory, a prompt batch of >= 32 tokens is computed
  on the GPU anyway ("op offload"): ggml's scheduler copies the CPU-resident expert tensor into
  the GPU compute buffer, one tensor per split, so the GPU compute buffer grows by the largest
  such tensor, less one expert activation and one residual activation that are not alive while
  the copy is (calibrated on the only CUDA figure we have: 210 MiB for gpt-oss-20b-like
  ``--cpu-moe`` at -c 4096, predicted 210.6).
* CUDA overhead (`CUDA_OVERHEAD_MIB`): what NVML counts for the PID beyond llama.cpp's own
  buffers -- the CUDA context and its kernels, cuBLAS handles, the CUDA memory pool that
  matmuls take scratch from, CUDA graphs. A constant, to be calibrated on the GPU: see its
  comment for the reference points it was set from.

Host side (not VRAM, reported to explain speeds): the CPU-resident expert tensors and
token_embd; per decoded token the CPU reads n_expert_used / n_expert of each CPU layer's expert
bytes, the GPU the same fraction of its layers' expert bytes plus every other GPU tensor.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ..records import GIB, MIB
from . import galloc
from .desc import ModelDesc, Tensor
from .gguf import gguf_constants

# ---------------------------------------------------------------------------------- constants

# Per-process GPU memory NVML counts beyond the model, KV and compute buffers that llama.cpp
# prints: CUDA context, cuBLAS handles and workspace, the CUDA pool (matmul scratch, grows to the
# largest prompt batch), CUDA graphs. Measured on an H100 (driver 580.159.04) with the
# gpt-oss-20b-like Q4_0 at -c 4096 -fa on, NVML per-PID peak minus the buffers llama-server
# reports at exit ("self" in its memory breakdown), docs/results/README.md:
#   -ngl 99      11896 - 11195 = 701 MiB   (after load: 11784 - 11195 = 589)
#   ncmoe12       6898 -  6189 = 709 MiB   (after load:  6778 -  6189 = 589)
#   --cpu-moe     1782 -  1064 = 718 MiB   (after load:  1654 -  1064 = 590)
# and qwen3-30b-a3b-like: 17426 - 16725 = 701, 1978 - 1257 = 721. The overhead is constant across
# offload settings (it was guessed at 680-885 before the measurement): 712 is their mean at peak.
CUDA_OVERHEAD_MIB = 712.0

# ggml-cuda offloads an op whose weights sit in host memory to the GPU when its batch has at
# least this many tokens (ggml-cuda.cu, op_offload_min_batch_size; env GGML_OP_OFFLOAD_MIN_BATCH).
OP_OFFLOAD_MIN_BATCH = 32

# llama.cpp defaults (common/common.h): -b 2048, -ub 512; the context is padded to 256 cells.
DEFAULT_N_BATCH = 2048
DEFAULT_N_UBATCH = 512
CTX_PAD = 256
# CUDA: quantized rows are padded to a multiple of 512 elements (MATRIX_ROW_PADDING), one row's
# worth per tensor, and tensors are aligned to 128 bytes.
CUDA_ROW_PADDING = 512
CUDA_ALIGNMENT = 128
# Small compute-graph inputs (positions, ids, output ids), seen as +0.01 MiB on every shape.
GRAPH_INPUTS_BYTES = 10 * 1024

# ggml type ids and (elements per block, bytes per block) for the types we size here; anything
# else falls back to the gguf package's table.
GGML_F32, GGML_F16, GGML_Q4_0, GGML_Q8_0 = 0, 1, 2, 8
GGML_Q4_K, GGML_IQ4_NL, GGML_MXFP4 = 12, 20, 39
# Types the CPU build repacks into interleaved layouts (CPU_REPACK buffer) on x86 with AVX2
# (ggml-cpu/repack.cpp, ggml_repack_get_optimal_repack_type): Q4_0, Q4_K, IQ4_NL and MXFP4, each
# when ne1 % 8 == 0. Q8_0, Q5_K and Q6_K are repacked on ARM only; Q2_K needs AVX-512.
CPU_REPACK_TYPES = frozenset({GGML_Q4_0, GGML_Q4_K, GGML_IQ4_NL, GGML_MXFP4})
_KV_BYTES = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32, "q4_1": 20 / 32,
             "q5_0": 22 / 32, "q5_1": 24 / 32, "iq4_nl": 18 / 32}


# ---------------------------------------------------------------------------------- placement


def _row_bytes(t: Tensor, n_elements: int) -> int:
    if t.ggml_type == GGML_F32:
        return 4 * n_elements
    if t.ggml_type == GGML_F16:
        return 2 * n_elements
    c = gguf_constants()
    block, size = c.GGML_QUANT_SIZES[c.GGMLQuantizationType(t.ggml_type)]
    return n_elements // block * size


def cuda_alloc_bytes(t: Tensor) -> int:
    """Bytes a tensor takes in a CUDA buffer: one row of padding to 512 elements for quantized
    types (ggml_backend_cuda_buffer_type_get_alloc_size), rounded up to the 128-byte alignment."""
    size = t.nbytes
    if t.ggml_type not in (GGML_F32, GGML_F16) and t.shape and t.shape[0] % CUDA_ROW_PADDING:
        size += _row_bytes(t, CUDA_ROW_PADDING - t.shape[0] % CUDA_ROW_PADDING)
    return -(-size // CUDA_ALIGNMENT) * CUDA_ALIGNMENT


@dataclass(frozen=True)
class Placement:
    """Where each weight byte lives with -ngl 99 --n-cpu-moe N, and what a token reads where."""

    n_cpu_moe: int
    gpu_bytes: int  # CUDA model buffer (with CUDA padding)
    host_bytes: int  # tensors left in host memory
    gpu_expert_bytes: int
    host_expert_bytes: int
    max_host_expert_tensor: int  # the largest CPU-resident expert tensor (op-offload copy size)
    gpu_read_per_token: int  # bytes one decoded token reads from GPU memory (weights only)
    host_read_per_token: int  # bytes one decoded token reads from host memory (weights only)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def placement(model: ModelDesc, n_cpu_moe: int) -> Placement:
    """Pure: the GPU/host split of the weights for ``-ngl 99 --n-cpu-moe n_cpu_moe``."""
    n = max(0, min(int(n_cpu_moe), model.n_layer))
    frac = model.expert_fraction
    gpu = host = gpu_exp = host_exp = max_host = 0
    gpu_read = host_read = 0.0
    for t in model.tensors:
        layer = model.layer_of(t)
        expert = model.is_expert(t)
        if t.name == "token_embd.weight":
            host += t.nbytes
            host_read += t.nbytes / max(model.n_vocab, 1)  # one row per token (get_rows)
            if not model.has_output():  # tied embeddings: the output matmul gets a GPU copy
                gpu += cuda_alloc_bytes(t)
                gpu_read += t.nbytes
            continue
        if expert and layer is not None and layer < n:
            host += t.nbytes
            host_exp += t.nbytes
            max_host = max(max_host, t.nbytes)
            host_read += t.nbytes * frac
            continue
        gpu += cuda_alloc_bytes(t)
        if expert:
            gpu_exp += t.nbytes
            gpu_read += t.nbytes * frac
        else:
            gpu_read += t.nbytes
    return Placement(n, gpu, host, gpu_exp, host_exp, max_host, round(gpu_read), round(host_read))


# ---------------------------------------------------------------------------------- buffers


@dataclass(frozen=True)
class ContextParams:
    """The llama-server flags that size the KV cache and the compute buffer."""

    n_ctx: int
    n_parallel: int = 1
    n_batch: int = DEFAULT_N_BATCH
    n_ubatch: int = DEFAULT_N_UBATCH
    flash_attn: bool = True
    kv_unified: bool = False
    cache_type_k: str = "f16"
    cache_type_v: str = "f16"
    swa_full: bool = False  # --swa-full: the sliding-window layers get a full-size cache

    @property
    def n_ctx_seq(self) -> int:
        """Cells per sequence, as llama_context pads them."""
        if self.kv_unified:
            return _pad(self.n_ctx, CTX_PAD)
        return _pad(max(self.n_ctx // max(self.n_parallel, 1), 1), CTX_PAD)

    @property
    def n_ctx_total(self) -> int:
        return self.n_ctx_seq if self.kv_unified else self.n_ctx_seq * max(self.n_parallel, 1)

    @property
    def n_tokens_reserve(self) -> int:
        """T of the worst-case graph: min(n_ctx, n_ubatch, n_batch), rounded to a multiple of -np."""
        n_batch = min(self.n_ctx, self.n_batch)
        t = min(self.n_ctx, n_batch, self.n_ubatch)
        s = max(self.n_parallel, 1)
        return -(-t // s) * s


def _pad(x: int, to: int) -> int:
    return -(-x // to) * to


@dataclass(frozen=True)
class KvCache:
    """One of llama.cpp's KV caches: the layers it holds, cells per stream, bytes per cell and layer."""

    kind: str  # "full" (every non-SWA layer) or "swa" (the sliding-window layers)
    n_layer: int
    cells: int  # per stream (the n_kv of the worst-case graph's mask)
    n_stream: int  # -np when the cache is not unified, else 1
    k_bytes_per_cell: float  # one layer's K row: n_head_kv * head_dim_k in the K type
    v_bytes_per_cell: float  # 0 for MLA: V is read out of the cached latent

    @property
    def nbytes(self) -> int:
        return round(self.n_layer * self.cells * self.n_stream * (self.k_bytes_per_cell + self.v_bytes_per_cell))


def _kv_bytes(cache_type: str) -> float:
    try:
        return _KV_BYTES[cache_type]
    except KeyError:
        from ..errors import ConfigError

        raise ConfigError(f"unknown KV cache type {cache_type!r}; known: {', '.join(_KV_BYTES)}") from None


def kv_caches(model: ModelDesc, ctx: ContextParams) -> tuple[KvCache, ...]:
    """The caches llama.cpp creates (llama-kv-cache.cpp, llama-kv-cache-iswa.cpp), in its order.

    * Non-SWA layers: n_ctx_seq cells per stream (n_ctx padded to 256; per sequence unless the
      cache is unified), K and V of n_head_kv * head_dim each.
    * Sliding-window layers (gpt-oss: every even block): their own cache of
      ``pad256(min(n_ctx_seq, n_swa * (n_seq if unified else 1) + n_ubatch))`` cells per stream,
      or n_ctx_seq with --swa-full.
    * MLA (deepseek2 with key_length_mla): K only, one "head" of kv_lora_rank + n_rot per token
      (the latent and the rope part); no V tensor, with or without flash attention.
    """
    bk, bv = _kv_bytes(ctx.cache_type_k), _kv_bytes(ctx.cache_type_v)
    n_stream = 1 if ctx.kv_unified else max(ctx.n_parallel, 1)
    k_cell = model.n_head_kv * model.head_dim_k * bk
    v_cell = 0.0 if model.is_mla else model.n_head_kv * model.head_dim_v * bv
    n_swa_layers = len(model.swa_layers)
    out = [KvCache("full", model.n_layer - n_swa_layers, ctx.n_ctx_seq, n_stream, k_cell, v_cell)]
    if n_swa_layers:
        if ctx.swa_full:
            cells = ctx.n_ctx_seq
        else:
            n_seq = max(ctx.n_parallel, 1) if ctx.kv_unified else 1
            ubatch = min(ctx.n_ctx, ctx.n_batch, ctx.n_ubatch)  # cparams.n_ubatch (llama-context.cpp)
            cells = _pad(min(ctx.n_ctx_seq, model.n_swa * n_seq + ubatch), CTX_PAD)
        out.append(KvCache("swa", n_swa_layers, cells, n_stream, k_cell, v_cell))
    return tuple(c for c in out if c.n_layer)


def kv_cache_bytes(model: ModelDesc, ctx: ContextParams) -> int:
    """All KV caches: sum over `kv_caches` of layers * cells * streams * (K + V bytes per cell)."""
    return sum(c.nbytes for c in kv_caches(model, ctx))


@dataclass(frozen=True)
class ComputeParts:
    activations: int  # the FFN/attention peak for T tokens
    mask: int  # the KQ mask (and KQ itself without flash attention)
    expert_act: int  # one [n_ff_exp, n_used, T] f32 activation (0 for dense)
    residual_act: int  # one [n_embd, T] f32 activation

    @property
    def total(self) -> int:
        return self.activations + self.mask + GRAPH_INPUTS_BYTES


def compute_parts(model: ModelDesc, ctx: ContextParams) -> ComputeParts:
    t = ctx.n_tokens_reserve
    residual = t * 4 * model.n_embd
    attn_out = t * 4 * model.n_head * model.head_dim_v
    if model.n_expert:
        expert = t * 4 * model.n_ff_exp * model.n_expert_used
        act = 3 * expert + 3 * residual + attn_out
    else:
        expert = 0
        act = t * 4 * (model.n_ff + 4 * model.n_embd)
    n_kv = ctx.n_ctx_seq
    if ctx.flash_attn:
        mask = n_kv * t * 2
    else:
        mask = n_kv * t * (4 * model.n_head + 4)
    return ComputeParts(act, mask, expert, residual)


def graph_bytes(model: ModelDesc, ctx: ContextParams, alignment: int = galloc.CPU_ALIGNMENT) -> int:
    """The worst-case prompt graph's buffer: with flash attention, the architecture's recorded
    ggml-alloc program replayed (`galloc`: exact on every shape it was checked on, the CPU
    server's own figure); otherwise, or for an architecture without a program (gpt2), the
    arithmetic of `compute_parts`."""
    events = galloc.program(model.arch) if ctx.flash_attn else None
    if events is None:
        return compute_parts(model, ctx).total
    caches = kv_caches(model, ctx)
    n_kv = caches[0].cells if caches[0].kind == "full" else ctx.n_ctx_seq
    n_kv_swa = next((c.cells for c in caches if c.kind == "swa"), n_kv)
    return galloc.replay(events, galloc.graph_dims(model, ctx.n_tokens_reserve, n_kv, n_kv_swa), alignment)


def compute_buffer_bytes(model: ModelDesc, ctx: ContextParams, offload_copy_bytes: int = 0,
                         alignment: int = galloc.CPU_ALIGNMENT) -> int:
    """The compute buffer of the backend running the layers (`graph_bytes`); `offload_copy_bytes`
    is the largest host-resident weight the GPU copies in for a prompt batch (0 on the CPU, or
    all on the GPU), which takes the place of one expert and one residual activation."""
    base = graph_bytes(model, ctx, alignment)
    if offload_copy_bytes and ctx.n_tokens_reserve >= OP_OFFLOAD_MIN_BATCH:
        p = compute_parts(model, ctx)
        return max(base, base - p.expert_act - p.residual_act + offload_copy_bytes)
    return base


# ---------------------------------------------------------------------------------- prediction


@dataclass(frozen=True)
class VramPrediction:
    """One setting's predicted GPU memory (MiB) and per-token traffic, before it is launched."""

    n_cpu_moe: int
    n_ctx: int
    n_parallel: int
    n_ubatch: int
    flash_attn: bool
    weights_mib: float  # CUDA model buffer
    kv_mib: float
    compute_mib: float
    overhead_mib: float  # CUDA context, pool, handles (CUDA_OVERHEAD_MIB unless overridden)
    total_mib: float  # what NVML should count for the server's PID
    host_weights_mib: float  # weights left in host memory (token_embd + CPU experts)
    gpu_read_per_token: int  # bytes a decoded token reads from GPU memory (weights)
    host_read_per_token: int  # bytes a decoded token reads from host memory (CPU experts)
    kv_read_per_token_per_cell: int  # KV bytes read per decoded token per context cell in use
    pcie_bytes_per_ubatch: int  # host expert bytes copied to the GPU per prompt micro-batch

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def predict(
    model: ModelDesc,
    n_cpu_moe: int,
    ctx: ContextParams,
    overhead_mib: float = CUDA_OVERHEAD_MIB,
) -> VramPrediction:
    """Pure: the GPU memory of ``llama-server -ngl 99 --n-cpu-moe n_cpu_moe`` with `ctx`."""
    pl = placement(model, n_cpu_moe)
    kv = kv_cache_bytes(model, ctx)
    compute = compute_buffer_bytes(model, ctx, pl.max_host_expert_tensor, CUDA_ALIGNMENT)
    weights_mib = pl.gpu_bytes / MIB
    kv_mib = kv / MIB
    compute_mib = compute / MIB
    t = ctx.n_tokens_reserve
    # A prompt micro-batch of T tokens touches each expert with probability 1 - (1 - k/E)^T
    # (uniform routing); the scheduler copies only the experts used (ggml-backend.cpp).
    used = 1.0 - (1.0 - model.expert_fraction) ** t if model.n_expert else 0.0
    pcie = round(pl.host_expert_bytes * used) if t >= OP_OFFLOAD_MIN_BATCH else 0
    kv_cell = round(kv / max(ctx.n_ctx_total, 1))
    return VramPrediction(
        n_cpu_moe=pl.n_cpu_moe, n_ctx=ctx.n_ctx_total, n_parallel=ctx.n_parallel, n_ubatch=t,
        flash_attn=ctx.flash_attn, weights_mib=round(weights_mib, 2), kv_mib=round(kv_mib, 2),
        compute_mib=round(compute_mib, 2), overhead_mib=round(overhead_mib, 2),
        total_mib=round(weights_mib + kv_mib + compute_mib + overhead_mib, 1),
        host_weights_mib=round(pl.host_bytes / MIB, 2), gpu_read_per_token=pl.gpu_read_per_token,
        host_read_per_token=pl.host_read_per_token, kv_read_per_token_per_cell=kv_cell,
        pcie_bytes_per_ubatch=pcie,
    )


def predict_all(
    model: ModelDesc, settings: Sequence[int], ctx: ContextParams, overhead_mib: float = CUDA_OVERHEAD_MIB
) -> dict[int, VramPrediction]:
    return {n: predict(model, n, ctx, overhead_mib) for n in settings}


def smallest_fitting(predictions: dict[int, VramPrediction], limit_mib: float) -> int | None:
    """The smallest N (most on the GPU) predicted to fit under `limit_mib`; None if none does."""
    fits = [n for n, p in predictions.items() if p.total_mib <= limit_mib]
    return min(fits) if fits else None


# ---------------------------------------------------------------------------------- CPU build


@dataclass(frozen=True)
class CpuBuffers:
    """The buffers the CPU build of llama-server prints (MiB) with -ngl 99 (nothing is offloaded)."""

    model_mapped_mib: float  # CPU_Mapped: the mmapped file range of the tensors not repacked
    model_repack_mib: float  # CPU_REPACK: repacked copies of the matmul weights
    kv_mib: float
    compute_mib: float
    output_mib: float  # logits + embeddings staging for one output per sequence

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cpu_buffers(
    model: ModelDesc, ctx: ContextParams, offsets: dict[str, int] | None = None,
    repack_types: frozenset[int] = CPU_REPACK_TYPES,
) -> CpuBuffers:
    """What the CPU build prints for this model and context: the same KV and compute arithmetic
    as the GPU, and the model split into a repacked part and the mmapped range of the rest.

    `offsets`: tensor name -> offset in the data section (from the GGUF header), for the mapped
    range; without them the mapped size is the sum of the non-repacked tensors (a lower bound).
    Repacked (`is_repacked`): a weight of a repack type with ne1 % 8 == 0 that feeds a 2-D
    MUL_MAT or, as a routed expert, a 3-D MUL_MAT_ID; never token_embd (a get_rows) nor another
    3-D weight (deepseek2's per-head attn_k_b / attn_v_b stay in the mapped file).
    """
    repacked = [t for t in model.tensors if is_repacked(model, t, repack_types)]
    names = {t.name for t in repacked}
    rest = [t for t in model.tensors if t.name not in names]
    if offsets and rest:
        mapped = max(offsets[t.name] + t.nbytes for t in rest) - min(offsets[t.name] for t in rest)
    else:
        mapped = sum(t.nbytes for t in rest)
    out_rows = max(ctx.n_parallel, 1)
    return CpuBuffers(
        model_mapped_mib=mapped / MIB,
        model_repack_mib=sum(t.nbytes for t in repacked) / MIB,
        kv_mib=kv_cache_bytes(model, ctx) / MIB,
        compute_mib=compute_buffer_bytes(model, ctx) / MIB,
        output_mib=out_rows * model.n_vocab * 4 / MIB,
    )


def is_repacked(model: ModelDesc, t: Tensor, repack_types: frozenset[int] = CPU_REPACK_TYPES) -> bool:
    """Whether the CPU backend moves `t` into its CPU_REPACK buffer (ggml-cpu/repack.cpp
    extra_buffer_type::supports_op: MUL_MAT with a 2-D weight, MUL_MAT_ID with a 3-D one)."""
    if t.ggml_type not in repack_types or t.name == "token_embd.weight" or len(t.shape) < 2:
        return False
    if t.shape[1] % 8:
        return False
    return len(t.shape) == 2 or (len(t.shape) == 3 and model.is_expert(t))


def gguf_offsets(path: str | os.PathLike[str]) -> dict[str, int]:
    from .gguf import read_header

    return {t.name: t.offset for t in read_header(path).tensors}


# ---------------------------------------------------------------------------------- sizes


_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {"": GIB, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "ki": 1024, "m": 1000**2, "mb": 1000**2,
          "mib": MIB, "mi": MIB, "g": 1000**3, "gb": 1000**3, "gib": GIB, "gi": GIB, "t": 1000**4, "tb": 1000**4,
          "tib": 1024 * GIB, "ti": 1024 * GIB}


def parse_size_mib(text: str) -> float:
    """'9GiB', '9 GB', '9000MiB', '9' (GiB) -> MiB. Decimal units (GB) are 10^9 bytes."""
    from ..errors import ConfigError

    m = _SIZE.match(text or "")
    unit = (m.group(2) or "").lower() if m else ""
    if not m or unit not in _UNITS:
        raise ConfigError(f"cannot read size {text!r}: use a number with a unit, e.g. 9GiB, 9000MiB or 9.5GB")
    value = float(m.group(1)) * _UNITS[unit] / MIB
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"size {text!r} must be positive")
    return value
