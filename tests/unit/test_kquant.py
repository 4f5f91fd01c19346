"""The Q4_K_M rule (abtest/models/kquant.py) against what llama-quantize chose, tensor by tensor.

tests/unit/data/q4_k_m_llama_quantize.json was written by `python scripts/check-q4km.py`: each
reduced preset written at F16, quantized with the pinned llama.cpp's own llama-quantize to
Q4_K_M, and every tensor's type read back from the output (docs/models.md has the summary).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from abtest.models import kquant, synth

RECORD = json.loads((Path(__file__).parent / "data" / "q4_k_m_llama_quantize.json").read_text())


@pytest.mark.parametrize("name", sorted(RECORD["presets"]))
def test_rule_matches_llama_quantize(name: str) -> None:
    p = RECORD["presets"][name]
    tensors = [kquant.TensorIn(n, tuple(shape), src) for n, shape, src, _ in p["tensors"]]
    want = {n: got for n, _, _, got in p["tensors"]}
    assert kquant.q4_k_m_types(tensors, p["n_layer"], p["n_expert"]) == want


def test_the_record_covers_every_branch() -> None:
    chosen = {(kquant.category(n), got) for p in RECORD["presets"].values() for n, _, _, got in p["tensors"]}
    assert {("output", kquant.Q6_K), ("output", kquant.Q8_0), ("token_embd", kquant.Q6_K),  # tied: as output
            ("attn_v", kquant.Q6_K), ("attn_v", kquant.Q8_0), ("attn_k", kquant.Q8_0),
            ("attn_output", kquant.Q5_1),  # 8 experts: Q5_K, which a 128-wide row turns into Q5_1
            ("ffn_down", kquant.Q6_K), ("attn_qkv", kquant.Q6_K),
            ("other", kquant.Q5_0)} <= chosen  # Q4_K -> Q5_0 fallback (deepseek2's 128-wide attn_k_b)


def test_use_more_bits() -> None:
    # llama-quant.cpp: the first and last eighth, and every third layer between
    assert [i for i in range(16) if kquant.use_more_bits(i, 16)] == [0, 1, 4, 7, 10, 13, 14, 15]
    assert [i for i in range(4) if kquant.use_more_bits(i, 4)] == [2, 3]


def test_synth_writes_the_mix() -> None:
    plan = synth.tensor_plan("qwen3-30b-a3b-arch", "q4_k_m")
    ins = [kquant.TensorIn(s.name, s.shape, s.ggml_type) for s in synth.tensor_plan("qwen3-30b-a3b-arch", "f16")]
    assert {s.name: s.ggml_type for s in plan} == kquant.q4_k_m_types(ins, 48, 128)
    types = {s.name: s.ggml_type for s in plan}
    assert types["output.weight"] == kquant.Q6_K and types["token_embd.weight"] == kquant.Q4_K
    assert types["blk.0.ffn_down_exps.weight"] == kquant.Q6_K  # use_more_bits(0, 48)
    assert types["blk.6.ffn_down_exps.weight"] == kquant.Q4_K
    assert types["blk.0.ffn_gate_inp.weight"] == synth.GGML_F32
