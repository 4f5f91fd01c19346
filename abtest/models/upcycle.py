"""Upcycling: a dense llama-architecture GGUF -> a Mixtral-layout MoE whose experts are copies of its FFN.

Each block's ``ffn_{gate,up,down}.weight`` becomes ``ffn_{gate,up,down}_exps.weight``, the dense
matrix repeated `n_expert` times along a third (outermost) dimension, and a router
``ffn_gate_inp.weight`` (F32, [n_embd, n_expert]) is added with seeded random weights. The header
gets ``llama.expert_count`` / ``llama.expert_used_count`` and the ``abtest.upcycle.*`` keys that
say how the file was made; everything else (attention, norms, embeddings, tokenizer, chat
template) is copied unchanged.

Why exact copies compute the dense function (checked in the vendored llama.cpp of
llama-cpp-python 0.3.36): src/models/llama.cpp calls ``build_moe_ffn(..., LLM_FFN_SILU, true,
hparams.expert_weights_scale, LLAMA_EXPERT_GATING_FUNC_TYPE_SOFTMAX, ...)``; the ``true`` is
``norm_w``, and src/llama-graph.cpp then divides the top-k softmax weights by their sum. With every
expert equal to the dense FFN f, the block computes sum_k w_k f(x) = f(x) (up to float rounding),
whatever the router picks. Nothing is rescaled here; ``expert_weights_scale`` is not written (0:
no scaling).

Why the quantised bytes can be stacked as they are: a ggml tensor is contiguous with
nb[1] = row bytes (blocks run along ne[0] only) and nb[2] = ne[1] * nb[1], so expert e of an
[ne0, ne1, E] tensor is the byte range [e * nbytes(dense), (e + 1) * nbytes(dense)) and holds the
dense matrix's blocks unchanged: no requantisation, for any block type.

`perturb` > 0 scales each quantisation block of each expert by its own factor 1 + perturb * u,
u uniform in [-1, 1) (seeded): for Q4_0 / Q8_0 the block's d, for Q4_1 its d and m (so
w = d * q + m scales as a whole), for F32 / F16 each value. The experts then differ, and the
model no longer computes the dense function exactly. `perturb_experts` limits that to the listed
experts (the rest stay exact copies); each expert's factors are drawn in expert order whether it
is perturbed or not, so expert e has the same bytes in every file made with the same seed and X.
That is how the integration test shows every expert receives tokens: perturbing expert e alone
must change the served probabilities, which it can only do if the router sends a token to e.

The router and the perturbation draw from numpy PCG64 bit-generator streams keyed by (seed,
tensor name), as `abtest.models.synth` does: same input file and options, same bytes.
"""

from __future__ import annotations

import math
import os
import re
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from .gguf import check_gguf
from .hashing import ProgressFn, remember_sha256, sha256_file

UPCYCLE_VERSION = 1
MAX_EXPERTS = 256  # llama.cpp's LLAMA_MAX_EXPERTS is 512; far more than any upcycle here needs

_FFN_RE = re.compile(r"^blk\.(\d+)\.ffn_(gate|up|down)\.(weight|bias)$")
_SKIP_KEYS = {"GGUF.version", "GGUF.tensor_count", "GGUF.kv_count", "general.architecture"}

# GGML type id -> (bytes per block, byte offsets of the fp16 scale fields to perturb); F32/F16 are per value.
GGML_F32, GGML_F16, GGML_Q4_0, GGML_Q4_1, GGML_Q8_0 = 0, 1, 2, 3, 8
_BLOCK_SCALES = {GGML_Q4_0: (18, (0,)), GGML_Q4_1: (20, (0, 2)), GGML_Q8_0: (34, (0,))}


@dataclass(frozen=True)
class UpcycleResult:
    path: Path
    sha256: str
    size_bytes: int
    n_layer: int
    n_expert: int
    n_expert_used: int
    elapsed_s: float


def _bitgen(seed: int, name: str) -> np.random.PCG64:
    return np.random.PCG64(np.random.SeedSequence([seed & 0xFFFFFFFF, seed >> 32, zlib.crc32(name.encode()), 0x0C1C]))


def _uniform_pm1(bitgen: np.random.PCG64, n: int) -> np.ndarray:
    """n float32 uniform in [-1, 1), exact (24-bit integers), from a stable raw stream."""
    u = bitgen.random_raw((n + 1) // 2).view(np.uint32)[:n] >> np.uint32(8)
    return u.astype(np.float32) * np.float32(2.0**-23) - np.float32(1.0)


def router_weights(seed: int, layer: int, n_expert: int, n_embd: int) -> np.ndarray:
    """The router of one block, numpy shape (n_expert, n_embd) = ggml [n_embd, n_expert]: uniform,
    std 1/sqrt(n_embd), so a normalised hidden state gives logits of order 1 and random top-k picks."""
    u = _uniform_pm1(_bitgen(seed, f"blk.{layer}.ffn_gate_inp.weight"), n_expert * n_embd)
    return (u * np.float32(math.sqrt(3.0 / n_embd))).reshape(n_expert, n_embd)


def _perturbed(data: np.ndarray, ggml_type: int, factor_u: np.ndarray, perturb: float) -> np.ndarray:
    """A copy of one expert's raw tensor bytes with each block (or value) scaled by 1 + perturb * u."""
    if ggml_type == GGML_F32:
        return (data.astype(np.float32) * (1 + np.float32(perturb) * factor_u.reshape(data.shape))).astype(np.float32)
    if ggml_type == GGML_F16:
        return (data.astype(np.float32) * (1 + np.float32(perturb) * factor_u.reshape(data.shape))).astype(np.float16)
    bsize, offsets = _BLOCK_SCALES[ggml_type]
    blocks = np.array(data, dtype=np.uint8, copy=True).reshape(-1, bsize)
    c = 1 + np.float32(perturb) * factor_u
    for off in offsets:
        scale = blocks[:, off:off + 2].copy().view(np.float16).reshape(-1)
        blocks[:, off:off + 2] = (scale.astype(np.float32) * c).astype(np.float16).view(np.uint8).reshape(-1, 2)
    return blocks.reshape(data.shape)


def _n_units(t: Any) -> int:
    """Values (F32/F16) or quantisation blocks in tensor t: one perturbation factor each."""
    if int(t.tensor_type) in (GGML_F32, GGML_F16):
        return int(t.n_elements)
    return int(t.n_bytes) // _BLOCK_SCALES[int(t.tensor_type)][0]


def _ranges(ids: Sequence[int]) -> str:
    """[0, 1, 2, 5] -> "0-2, 5": the perturbed experts as the metadata string names them."""
    out: list[str] = []
    for i in ids:
        if out and out[-1].split("-")[-1] == str(i - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{i}"
        else:
            out.append(str(i))
    return ", ".join(out)


def _field_value(field: Any) -> Any:
    return field.contents()


def upcycle(dense: str | os.PathLike[str], out: str | os.PathLike[str], n_expert: int, n_expert_used: int,
            seed: int = 0, perturb: float = 0.0, progress: ProgressFn | None = None,
            perturb_experts: Sequence[int] | None = None) -> UpcycleResult:
    """Write the MoE upcycle of a dense llama GGUF to `out` (temp file + rename); ConfigError on bad input.

    perturb_experts: the experts `perturb` applies to (None: all of them)."""
    import gguf  # deferred: gguf-py's import is slow and only this and synth need it

    t0 = time.perf_counter()
    src, dst = Path(dense), Path(out)
    if not 2 <= n_expert <= MAX_EXPERTS:
        raise ConfigError(f"--experts {n_expert}: give 2 to {MAX_EXPERTS}")
    if not 1 <= n_expert_used <= n_expert:
        raise ConfigError(f"--used {n_expert_used}: give 1 to --experts ({n_expert})")
    if not (0.0 <= perturb < 1.0) or math.isnan(perturb):
        raise ConfigError(f"--perturb {perturb}: give a relative size in [0, 1) (0: exact copies)")
    if perturb_experts is not None:
        bad = sorted({e for e in perturb_experts if not 0 <= e < n_expert})
        if bad:
            raise ConfigError(f"--perturb-expert {bad[0]}: experts are numbered 0 to {n_expert - 1}")
        if not perturb:
            raise ConfigError("--perturb-expert needs --perturb X > 0 (how much to perturb those experts)")
    perturbed = sorted(set(range(n_expert) if perturb_experts is None else perturb_experts)) if perturb else []
    check_gguf(src)
    reader = gguf.GGUFReader(src)
    fields = reader.fields
    arch = _field_value(fields["general.architecture"]) if "general.architecture" in fields else None
    if arch != "llama":
        raise ConfigError(f"{src}: architecture {arch!r}; upcycle reads llama-architecture dense models only")
    if int(_field_value(fields["llama.expert_count"]) if "llama.expert_count" in fields else 0) > 0:
        raise ConfigError(f"{src} is already a MoE (llama.expert_count > 0); give a dense model")
    if "general.alignment" in fields and int(_field_value(fields["general.alignment"])) != gguf.GGUF_DEFAULT_ALIGNMENT:
        raise ConfigError(f"{src}: custom general.alignment is not supported")
    n_layer = int(_field_value(fields["llama.block_count"]))
    n_embd = int(_field_value(fields["llama.embedding_length"]))
    by_name = {t.name: t for t in reader.tensors}
    for name in by_name:
        m = _FFN_RE.match(name)
        if m and m.group(3) == "bias":
            raise ConfigError(f"{src}: {name}: FFN biases have no place in llama's MoE graph; cannot upcycle")
    for il in range(n_layer):
        for w in ("gate", "up", "down"):
            t = by_name.get(f"blk.{il}.ffn_{w}.weight")
            if t is None:
                raise ConfigError(f"{src}: no blk.{il}.ffn_{w}.weight; not a dense llama model")
            if perturb and int(t.tensor_type) not in (GGML_F32, GGML_F16, *_BLOCK_SCALES):
                raise ConfigError(f"{src}: {t.name} is {t.tensor_type.name}; --perturb supports F32, F16, Q4_0, Q4_1, "
                                  "Q8_0 (use --perturb 0)")
    src_sha = sha256_file(src)

    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    writer = gguf.GGUFWriter(tmp, "llama")
    try:
        for key, field in fields.items():
            if key in _SKIP_KEYS:
                continue
            vtype = field.types[0]
            sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
            val = _field_value(field)
            if key == "general.name":
                val = f"{val} upcycled {n_expert}x top-{n_expert_used}"
            writer.add_key_value(key, val, vtype, sub)
        if "general.name" not in fields:
            writer.add_name(f"{src.stem} upcycled {n_expert}x top-{n_expert_used}")
        writer.add_expert_count(n_expert)
        writer.add_expert_used_count(n_expert_used)
        writer.add_uint32("abtest.upcycle.version", UPCYCLE_VERSION)
        writer.add_string("abtest.upcycle.source_sha256", src_sha)
        writer.add_string("abtest.upcycle.source_name", str(_field_value(fields["general.name"])) if "general.name" in fields else src.name)
        writer.add_uint32("abtest.upcycle.experts", n_expert)
        writer.add_uint32("abtest.upcycle.used", n_expert_used)
        writer.add_uint64("abtest.upcycle.seed", seed)
        writer.add_float32("abtest.upcycle.perturb", perturb)
        writer.add_string("abtest.upcycle.perturbed_experts", _ranges(perturbed) or "none")  # gguf-py writes no empty array
        writer.add_string("abtest.upcycle.router", "uniform, std 1/sqrt(n_embd), PCG64 keyed by (seed, tensor name); not trained")
        writer.add_string("abtest.upcycle.experts_from", "every expert = the dense ffn_{gate,up,down} blocks"
                          + (f", each block of experts {_ranges(perturbed)} scaled by 1 + {perturb} * U[-1, 1)"
                             + (", the others copied unchanged" if len(perturbed) < n_expert else "")
                             if perturb else ", copied unchanged"))

        # The tensor list: dense tensors in file order, the FFN of each block turned into its expert
        # tensors, followed by that block's router.
        plan: list[tuple[str, Any, str]] = []  # (out name, source tensor or None, kind)
        for t in reader.tensors:
            m = _FFN_RE.match(t.name)
            if not m:
                plan.append((t.name, t, "copy"))
                continue
            il, w = int(m.group(1)), m.group(2)
            plan.append((f"blk.{il}.ffn_{w}_exps.weight", t, "experts"))
            if all(any(p[0] == f"blk.{il}.ffn_{x}_exps.weight" for p in plan) for x in ("gate", "up", "down")):
                plan.append((f"blk.{il}.ffn_gate_inp.weight", None, f"router:{il}"))
        for name, t, kind in plan:
            if kind == "copy":
                writer.add_tensor_info(name, t.data.shape, t.data.dtype, int(t.n_bytes), raw_dtype=t.tensor_type)
            elif kind == "experts":
                writer.add_tensor_info(name, (n_expert, *t.data.shape), t.data.dtype, int(t.n_bytes) * n_expert,
                                       raw_dtype=t.tensor_type)
            else:
                writer.add_tensor_info(name, (n_expert, n_embd), np.dtype(np.float32), 4 * n_expert * n_embd)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        total = sum(int(t.n_bytes) * (n_expert if k == "experts" else 1) for _, t, k in plan if t is not None)
        done = 0
        for name, t, kind in plan:
            if kind == "copy":
                writer.write_tensor_data(np.asarray(t.data))
                done += int(t.n_bytes)
            elif kind == "experts":
                dense_data = np.asarray(t.data)
                if perturb:
                    bg = _bitgen(seed, name)
                    n = _n_units(t)
                    draws = [_uniform_pm1(bg, n) for _ in range(n_expert)]  # all drawn: expert e's bytes never depend on the others
                    parts = [_perturbed(dense_data, int(t.tensor_type), u, perturb) if e in perturbed else dense_data
                             for e, u in enumerate(draws)]
                    stacked = np.stack(parts)
                else:
                    stacked = np.broadcast_to(dense_data, (n_expert, *dense_data.shape)).copy()
                writer.write_tensor_data(stacked)
                done += int(t.n_bytes) * n_expert
            else:
                writer.write_tensor_data(router_weights(seed, int(kind.split(":")[1]), n_expert, n_embd))
            if progress is not None:
                progress(done, total)
        writer.close()
        os.replace(tmp, dst)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    digest = sha256_file(dst, rehash=True)
    remember_sha256(dst, digest)
    return UpcycleResult(path=dst, sha256=digest, size_bytes=dst.stat().st_size, n_layer=n_layer, n_expert=n_expert,
                         n_expert_used=n_expert_used, elapsed_s=time.perf_counter() - t0)
