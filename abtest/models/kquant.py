"""llama.cpp's per-tensor type rule for the Q4_K_M mix, as a pure function of the tensor list.

Ported from src/llama-quant.cpp of the pinned llama.cpp (llama-cpp-python 0.3.36): which tensors
are quantized at all (`tensor_allows_quantization`), the category of each (`tensor_get_category`),
the Q4_K_M branches of `llama_tensor_get_type_impl`, and the fallback for rows that are not a
multiple of the block (`tensor_type_fallback`). What it decides, for LLAMA_FTYPE_MOSTLY_Q4_K_M
(default type Q4_K):

* output.weight (and token_embd with tied embeddings): Q6_K, or Q8_0 if ne0 % 256;
* attn_v / attn_qkv / attn_kv_b: Q6_K where ``use_more_bits(i, n)`` (the first and last eighth of
  those tensors, and every third between), Q8_0 for every one when the model has exactly 8 experts;
* attn_k: Q8_0 with exactly 8 experts; attn_output: Q5_K with exactly 8 experts;
* ffn_down* (dense, routed and shared): Q6_K in the layers where ``use_more_bits(layer, n_layer)``;
* everything else that may be quantized: Q4_K (token_embd included, when untied);
* then a row length that is not a multiple of 256 falls back: Q4_K -> Q5_0, Q5_K -> Q5_1,
  Q6_K -> Q8_0 (and to F16 if even 32 does not divide it).

Tensors that are not quantized keep their source type: 1-D tensors, names not ending in
"weight", ``*_norm.weight``, the router ``ffn_gate_inp.weight`` and position embeddings.
Counters run in llama-quantize's order (layer number, then name: `weight_name_comparer`).
Left out, as no architecture abtest writes reaches them: the Falcon branch, the 70B attn_v bump
(llama.cpp's LLM_TYPE_70B, llama-family only), --imatrix, --pure and the per-tensor overrides.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

# ggml type ids (ggml.h)
F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 = 0, 1, 2, 3, 6, 7, 8
Q2_K, Q3_K, Q4_K, Q5_K, Q6_K = 10, 11, 12, 13, 14
QK_K = 256
BLOCK_SIZE = {F32: 1, F16: 1, Q4_0: 32, Q4_1: 32, Q5_0: 32, Q5_1: 32, Q8_0: 32, Q4_K: QK_K, Q5_K: QK_K, Q6_K: QK_K}
FTYPE_MOSTLY_Q4_K_M = 15  # llama_ftype (include/llama.h)

_FALLBACK = {Q4_K: Q5_0, Q5_K: Q5_1, Q6_K: Q8_0}
_BLK = re.compile(r"^blk\.(\d+)\.")


@dataclass(frozen=True)
class TensorIn:
    """What the rule reads of a tensor: its name, ggml shape (ne0 first) and source type."""

    name: str
    shape: tuple[int, ...]
    ggml_type: int


def allows_quantization(name: str, shape: tuple[int, ...]) -> bool:
    """`tensor_allows_quantization` for the tensor names abtest's architectures use."""
    n_dims = max((i + 1 for i, x in enumerate(shape) if x > 1), default=1)  # ggml_n_dims: trailing 1s do not count
    if n_dims < 2:
        return False
    if not name.endswith("weight") or "_norm.weight" in name or "ffn_gate_inp.weight" in name:
        return False
    return name not in ("position_embd.weight", "token_types.weight")


def category(name: str) -> str:
    """`tensor_get_category`: the first substring that matches, in llama.cpp's order."""
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    for sub, cat in (("attn_qkv.weight", "attn_qkv"), ("attn_kv_b.weight", "attn_kv_b"), ("attn_v.weight", "attn_v"),
                     ("attn_k.weight", "attn_k"), ("attn_q.weight", "attn_q"),
                     ("attn_output.weight", "attn_output"), ("ffn_up", "ffn_up"), ("ffn_gate", "ffn_gate"),
                     ("ffn_down", "ffn_down")):
        if sub in name:
            return cat
    return "other"


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    """llama-quant.cpp's use_more_bits (C integer division, as the operands are non-negative)."""
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


def _order_key(name: str) -> tuple[int, str]:
    m = _BLK.match(name)
    return (int(m.group(1)) if m else -1, name)


def _fallback(ne0: int, t: int) -> int:
    if ne0 % BLOCK_SIZE[t] == 0:
        return t
    t = _FALLBACK.get(t, t)
    return t if ne0 % BLOCK_SIZE[t] == 0 else F16


def q4_k_m_types(tensors: Sequence[TensorIn], n_layer: int, n_expert: int) -> dict[str, int]:
    """Pure: tensor name -> the ggml type ``llama-quantize IN OUT Q4_K_M`` gives it.

    `n_layer` is the model's block count (n_layer_all: nextn layers included), `n_expert` its
    expert count (0 or 1 for a dense model); only ``n_expert == 8`` changes the mix."""
    ordered = sorted(tensors, key=lambda t: _order_key(t.name))
    cats = {t.name: category(t.name) for t in ordered}
    n_attn_v = sum(1 for c in cats.values() if c in ("attn_v", "attn_qkv", "attn_kv_b"))
    tied = "output" not in cats.values()
    i_attn_v = i_ffn_down = 0
    out: dict[str, int] = {}
    for t in ordered:
        if not allows_quantization(t.name, t.shape):
            out[t.name] = t.ggml_type
            continue
        cat, ne0, new = cats[t.name], t.shape[0], Q4_K
        if cat == "output" or (tied and cat == "token_embd"):
            new = Q8_0 if ne0 % BLOCK_SIZE[Q4_K] else Q6_K
        elif cat == "token_embd":
            pass
        elif cat in ("attn_v", "attn_qkv", "attn_kv_b"):
            if use_more_bits(i_attn_v, n_attn_v):
                new = Q6_K
            if n_expert == 8:
                new = Q8_0
            i_attn_v += 1
        elif cat == "attn_k":
            if n_expert == 8:
                new = Q8_0
        elif cat == "ffn_down":
            if n_expert > 1:
                m = _BLK.match(t.name)
                if m is None:  # llama.cpp throws "Failed to determine layer"
                    raise ValueError(f"cannot tell the layer of {t.name}")
                i_layer = int(m.group(1))
            else:
                i_layer = i_ffn_down
            if use_more_bits(i_layer, n_layer):
                new = Q6_K
            i_ffn_down += 1
        elif cat == "attn_output":
            if n_expert == 8:
                new = Q5_K
        out[t.name] = _fallback(ne0, new)
    return out
