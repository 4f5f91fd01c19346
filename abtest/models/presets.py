"""The architectures abtest can imitate with random weights: each preset's shape, as the real model's GGUF has it.

Two families, named so that nobody mistakes one for the other:

* ``*-like`` (and ``tiny-moe``): a stand-in. The tensor *shapes* of a model in the simpler
  qwen3moe graph (gpt-oss-20b-like has no attention sinks, no sliding window, no biases). Kept
  byte for byte as they were: evidence and nightly history were made with them.
* ``*-arch``: the model on **its own llama.cpp architecture** (general.architecture ``gpt-oss``,
  ``qwen3moe``, ``phimoe``, ``deepseek``, ``deepseek2``), with the hyper-parameters of the real
  model and the tensor types its common GGUF ships as the default qtype. ``*-arch-tiny`` keeps
  the architecture (tensor set, routing, shared experts, dense leading layer, MLA ranks, sliding
  window pattern, sinks) at a few tens of MB, small enough for the CPU llama-server in CI.

Where each number comes from is said next to it. Nothing could be downloaded where these were
written: the figures are the models' config.json as published on their Hugging Face pages, as
recalled and cross-checked against the vendored llama.cpp (llama-cpp-python 0.3.36:
src/models/<arch>.cpp for the tensors and keys each architecture reads, conversion/<arch>.py for
how config.json becomes GGUF metadata) and against the published parameter totals, which every
full-size preset reproduces within 1 % (tests/unit/test_arch_presets.py). Figures marked
"unverified" are not implied by those totals.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..errors import ConfigError


@dataclass(frozen=True)
class Preset:
    """The shape of one synthetic architecture. n_expert == 0 means a dense model.

    The fields after tied_embeddings are the architecture extras; their defaults are what the
    stand-in presets were written with, so those files are unchanged.
    """

    name: str
    arch: str  # llama.cpp architecture name: gpt2, qwen3moe, gpt-oss, phimoe, deepseek, deepseek2
    imitates: str  # what it has the shapes of, for `abtest model list`
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int  # attention.key_length (deepseek2 with MLA: kv_lora_rank + n_rot, the cached K width)
    n_ff: int  # dense FFN width (gpt2, the dense leading layers of deepseek*), the expert width (phimoe), or the nominal value llama.cpp reads (qwen3moe)
    n_expert: int
    n_expert_used: int
    n_ff_exp: int  # routed expert FFN width (also each shared expert's)
    n_vocab: int
    context_length: int
    rope_freq_base: float
    tokenizer_pre: str
    tied_embeddings: bool
    norm_eps: float = 1e-6  # rms_norm_eps (gpt2 writes its own layer_norm_eps, 1e-5)
    head_dim_v: int = 0  # attention.value_length; 0 = head_dim (deepseek2 with MLA: kv_lora_rank)
    n_rot: int = 0  # rope.dimension_count, written when non-zero (deepseek2: qk_rope_head_dim)
    n_layer_dense_lead: int = 0  # leading blocks with a dense FFN instead of experts (deepseek, deepseek2)
    n_expert_shared: int = 0  # shared experts, always active, each n_ff_exp wide (deepseek, deepseek2)
    q_lora_rank: int = 0  # deepseek2: 0 = a plain attn_q (V2-Lite has no q compression)
    kv_lora_rank: int = 0  # deepseek2 MLA: width of the compressed KV (what the cache holds, plus n_rot)
    head_dim_k_mla: int = 0  # deepseek2: qk_nope_head_dim + qk_rope_head_dim (per-head K after decompression)
    head_dim_v_mla: int = 0  # deepseek2: v_head_dim
    sliding_window: int = 0  # attention.sliding_window, written when non-zero
    rope_scaling: str = ""  # rope.scaling.type ("yarn", "none"), written when non-empty
    rope_scaling_factor: float = 0.0
    rope_orig_ctx: int = 0  # rope.scaling.original_context_length, written when non-zero
    rope_yarn_log_mul: float = 0.0  # deepseek2: 0.1 * mscale_all_dim, as its converter writes it
    rope_attn_factor: float = 0.0  # phimoe: the longrope attention factor its converter computes
    expert_weights_scale: float = 0.0  # written when non-zero (deepseek: 1.0)
    default_qtype: str = "q4_0"  # the qtype `abtest model synth` and the catalog use unless told
    stand_in: bool = True  # True: shapes in another graph (*-like); False: the model's own graph (*-arch)

    @property
    def head_dim_value(self) -> int:
        return self.head_dim_v or self.head_dim

    @property
    def n_ff_shexp(self) -> int:
        """Width of the shared-expert FFN: n_expert_shared experts of n_ff_exp side by side."""
        return self.n_ff_exp * self.n_expert_shared


def _tiny(p: Preset, **changes: object) -> Preset:
    """The `-tiny` sibling of an `-arch` preset: the same architecture, smaller widths."""
    return dataclasses.replace(
        p, name=p.name + "-tiny", imitates=f"{p.imitates.split(' (')[0]}'s {p.arch} graph, reduced for CI",
        **changes,  # type: ignore[arg-type]
    )


_STAND_INS = (
    Preset(
        name="tiny-moe", arch="qwen3moe", imitates="a few-MB MoE for tests (6 layers, 8 experts)",
        n_layer=6, n_embd=128, n_head=4, n_head_kv=2, head_dim=32, n_ff=512,
        n_expert=8, n_expert_used=2, n_ff_exp=256, n_vocab=4096, context_length=4096,
        rope_freq_base=1_000_000.0, tokenizer_pre="qwen2", tied_embeddings=False,
    ),
    Preset(
        # gpt-oss-20b's shapes (24 layers, d 2880, 64x64 heads, 8 KV, 32 experts top-4,
        # o200k-sized vocab) in the qwen3moe graph: no attention sinks, no sliding window, no
        # biases, no MXFP4 -- same memory and matmul sizes, a simpler graph. See gpt-oss-20b-arch.
        name="gpt-oss-20b-like", arch="qwen3moe", imitates="gpt-oss-20b (shapes only)",
        n_layer=24, n_embd=2880, n_head=64, n_head_kv=8, head_dim=64, n_ff=2880,
        n_expert=32, n_expert_used=4, n_ff_exp=2880, n_vocab=201_088, context_length=131_072,
        rope_freq_base=150_000.0, tokenizer_pre="qwen2", tied_embeddings=False,
    ),
    Preset(
        # Already Qwen3-30B-A3B's own graph (qwen3moe) and shapes; "-like" because it predates the
        # -arch family. qwen3-30b-a3b-arch has the same tensors under its own name.
        name="qwen3-30b-a3b-like", arch="qwen3moe", imitates="Qwen3-30B-A3B (shapes only)",
        n_layer=48, n_embd=2048, n_head=32, n_head_kv=4, head_dim=128, n_ff=6144,
        n_expert=128, n_expert_used=8, n_ff_exp=768, n_vocab=151_936, context_length=40_960,
        rope_freq_base=1_000_000.0, tokenizer_pre="qwen2", tied_embeddings=False,
    ),
    Preset(
        # GPT-2 small, in llama.cpp's gpt2 graph: 124,439,808 parameters with tied embeddings.
        name="dense-small", arch="gpt2", imitates="GPT-2 small (124M, dense)",
        n_layer=12, n_embd=768, n_head=12, n_head_kv=12, head_dim=64, n_ff=3072,
        n_expert=0, n_expert_used=0, n_ff_exp=0, n_vocab=50_257, context_length=1024,
        rope_freq_base=10_000.0, tokenizer_pre="gpt-2", tied_embeddings=True,
    ),
)

# --- the seed's systems on their own graphs ----------------------------------------------------

GPT_OSS_20B = Preset(
    # openai/gpt-oss-20b config.json: num_hidden_layers 24, hidden_size 2880, num_attention_heads
    # 64, num_key_value_heads 8, head_dim 64, intermediate_size 2880, num_local_experts 32,
    # num_experts_per_tok 4, vocab_size 201088, max_position_embeddings 131072, rope_theta 150000,
    # rope_scaling yarn factor 32 over original_max_position_embeddings 4096, sliding_window 128,
    # layer_types alternating sliding/full from layer 0, rms_norm_eps 1e-5, attention_bias true,
    # tie_word_embeddings false. conversion/gpt_oss.py writes intermediate_size as
    # expert_feed_forward_length and the sliding window; src/models/openai-moe.cpp reads the
    # window and fixes the pattern at 2 (SWA on even blocks), creates attn_sinks [n_head],
    # post_attention_norm, q/k/v/o and expert biases, and a router bias. Published totals
    # (OpenAI's model card): 20.91 B parameters, 3.61 B active (embedding table excluded).
    # The ggml-org file (gpt-oss-20b-MXFP4.gguf, 12.1 GB) holds the experts in MXFP4 as OpenAI
    # ships them; that the rest is Q8_0 is inferred from its size (unverified tensor by tensor).
    name="gpt-oss-20b-arch", arch="gpt-oss", imitates="gpt-oss-20b (its own gpt-oss graph)",
    n_layer=24, n_embd=2880, n_head=64, n_head_kv=8, head_dim=64, n_ff=2880,
    n_expert=32, n_expert_used=4, n_ff_exp=2880, n_vocab=201_088, context_length=131_072,
    rope_freq_base=150_000.0, tokenizer_pre="gpt-4o", tied_embeddings=False, norm_eps=1e-5,
    sliding_window=128, rope_scaling="yarn", rope_scaling_factor=32.0, rope_orig_ctx=4096,
    default_qtype="mxfp4", stand_in=False,
)

QWEN3_30B_A3B = Preset(
    # Qwen/Qwen3-30B-A3B config.json: num_hidden_layers 48, hidden_size 2048, num_attention_heads
    # 32, num_key_value_heads 4, head_dim 128, moe_intermediate_size 768, intermediate_size 6144,
    # num_experts 128, num_experts_per_tok 8, vocab_size 151936, max_position_embeddings 40960,
    # rope_theta 1e6, rms_norm_eps 1e-6, tie_word_embeddings false. Model card: 30.5 B total,
    # 3.3 B activated. The same tensors as qwen3-30b-a3b-like (that one already used qwen3moe).
    # Common file: Q4_K_M (Qwen/Qwen3-30B-A3B-GGUF), written with llama-quantize's own per-tensor
    # rule (kquant.py, checked against llama-quantize: docs/models.md).
    name="qwen3-30b-a3b-arch", arch="qwen3moe", imitates="Qwen3-30B-A3B (its own qwen3moe graph)",
    n_layer=48, n_embd=2048, n_head=32, n_head_kv=4, head_dim=128, n_ff=6144,
    n_expert=128, n_expert_used=8, n_ff_exp=768, n_vocab=151_936, context_length=40_960,
    rope_freq_base=1_000_000.0, tokenizer_pre="qwen2", tied_embeddings=False, default_qtype="q4_k_m",
    stand_in=False,
)

PHI_35_MOE = Preset(
    # microsoft/Phi-3.5-MoE-instruct config.json: num_hidden_layers 32, hidden_size 4096,
    # num_attention_heads 32, num_key_value_heads 8, intermediate_size 6400 (per expert),
    # num_local_experts 16, num_experts_per_tok 2, vocab_size 32064, max_position_embeddings
    # 131072, original_max_position_embeddings 4096 (longrope), rope_theta 10000, rms_norm_eps
    # 1e-5, sliding_window 131072, attention_bias true, lm_head_bias true, LayerNorm with bias.
    # conversion/phi.py (PhiMoeModel) writes rope.dimension_count 128, the sliding window (which
    # llama.cpp's phimoe graph ignores), rope.scaling.attn_factor sqrt(1 + ln(32) / ln(4096)) and
    # the rope_factors_long/short tensors (64 each); src/models/phimoe.cpp creates norm, q/k/v/o
    # and output biases. Model card: 41.9 B total, 6.6 B active. The seed measured Q8_0 and F16.
    name="phi-3.5-moe-arch", arch="phimoe", imitates="Phi-3.5-MoE-instruct (its own phimoe graph)",
    n_layer=32, n_embd=4096, n_head=32, n_head_kv=8, head_dim=128, n_ff=6400,
    n_expert=16, n_expert_used=2, n_ff_exp=6400, n_vocab=32_064, context_length=131_072,
    rope_freq_base=10_000.0, tokenizer_pre="gpt-2", tied_embeddings=False, norm_eps=1e-5,
    n_rot=128, sliding_window=131_072, rope_orig_ctx=4096, rope_attn_factor=1.1902380714238083,
    default_qtype="q8_0", stand_in=False,
)

DEEPSEEK_MOE_16B = Preset(
    # deepseek-ai/deepseek-moe-16b-base config.json: num_hidden_layers 28, hidden_size 2048,
    # num_attention_heads 16, num_key_value_heads 16, intermediate_size 10944 (the dense first
    # layer), moe_intermediate_size 1408, n_routed_experts 64, n_shared_experts 2,
    # num_experts_per_tok 6, first_k_dense_replace 1, vocab_size 102400, max_position_embeddings
    # 4096, rope_theta 10000, rms_norm_eps 1e-6, tie_word_embeddings false. conversion/deepseek.py
    # (DeepseekModel) writes rope.dimension_count 128, rope.scaling.type none and
    # expert_weights_scale 1.0; src/models/deepseek.cpp calls n_ff_exp 1408 "16B". DeepSeekMoE
    # paper: 16.4 B total, 2.8 B activated. The seed ran it at F16.
    name="deepseek-moe-16b-arch", arch="deepseek", imitates="DeepSeek-MoE-16B (its own deepseek graph)",
    n_layer=28, n_embd=2048, n_head=16, n_head_kv=16, head_dim=128, n_ff=10_944,
    n_expert=64, n_expert_used=6, n_ff_exp=1408, n_vocab=102_400, context_length=4096,
    rope_freq_base=10_000.0, tokenizer_pre="deepseek-llm", tied_embeddings=False,
    n_rot=128, n_layer_dense_lead=1, n_expert_shared=2, rope_scaling="none", expert_weights_scale=1.0,
    default_qtype="f16", stand_in=False,
)

DEEPSEEK_V2_LITE = Preset(
    # deepseek-ai/DeepSeek-V2-Lite config.json: num_hidden_layers 27, hidden_size 2048,
    # num_attention_heads 16, q_lora_rank null, kv_lora_rank 512, qk_nope_head_dim 128,
    # qk_rope_head_dim 64, v_head_dim 128, intermediate_size 10944, moe_intermediate_size 1408,
    # n_routed_experts 64, n_shared_experts 2, num_experts_per_tok 6, first_k_dense_replace 1,
    # routed_scaling_factor 1.0, vocab_size 102400, max_position_embeddings 163840, rope_theta
    # 10000, rope_scaling yarn factor 40 over 4096 with mscale_all_dim 0.707 (unverified: the
    # totals do not depend on it), rms_norm_eps 1e-6. conversion/deepseek.py (DeepseekV2Model)
    # writes MLA as MQA: head_count_kv 1, key_length kv_lora_rank + qk_rope (576), value_length
    # kv_lora_rank (512), key_length_mla 192, value_length_mla 128, attn_k_b / attn_v_b split from
    # kv_b_proj (older GGUFs, e.g. bartowski's of 2024, hold one attn_kv_b and run without MLA).
    # DeepSeek-V2 paper: 15.7 B total, 2.4 B activated. Common file: Q4_K_M (the default here, by
    # llama-quantize's rule as kquant.py ports it).
    name="deepseek-v2-lite-arch", arch="deepseek2", imitates="DeepSeek-V2-Lite (its own deepseek2 graph, MLA)",
    n_layer=27, n_embd=2048, n_head=16, n_head_kv=1, head_dim=576, n_ff=10_944,
    n_expert=64, n_expert_used=6, n_ff_exp=1408, n_vocab=102_400, context_length=163_840,
    rope_freq_base=10_000.0, tokenizer_pre="deepseek-llm", tied_embeddings=False,
    head_dim_v=512, n_rot=64, n_layer_dense_lead=1, n_expert_shared=2, kv_lora_rank=512,
    head_dim_k_mla=192, head_dim_v_mla=128, rope_scaling="yarn", rope_scaling_factor=40.0,
    rope_orig_ctx=4096, rope_yarn_log_mul=0.1 * 0.707, expert_weights_scale=1.0, default_qtype="q4_k_m",
    stand_in=False,
)

_ARCH = (GPT_OSS_20B, QWEN3_30B_A3B, PHI_35_MOE, DEEPSEEK_MOE_16B, DEEPSEEK_V2_LITE)

# Reduced siblings: 4 blocks, d_model 256 or 512, an 8k vocabulary, narrower experts; the expert
# count and top-k, head_dim, GQA ratio, sliding window and its pattern, dense leading layer,
# shared experts and the MLA ranks stay as the full model has them.
_TINY = (
    _tiny(GPT_OSS_20B, n_layer=4, n_embd=256, n_head=8, n_head_kv=1, n_ff=256, n_ff_exp=256,
          n_vocab=8192),
    _tiny(QWEN3_30B_A3B, n_layer=4, n_embd=256, n_head=8, n_head_kv=1, n_ff=512, n_ff_exp=64,
          n_vocab=8192),
    # phimoe fixes head_dim = n_embd / n_head; 512 / 4 keeps the 128 and the 64-long rope factors.
    _tiny(PHI_35_MOE, n_layer=4, n_embd=512, n_head=4, n_head_kv=1, n_ff=256, n_ff_exp=256,
          n_vocab=8192),
    # deepseek fixes q and o at n_embd x n_embd: 256 / 2 heads keeps head_dim 128.
    _tiny(DEEPSEEK_MOE_16B, n_layer=4, n_embd=256, n_head=2, n_head_kv=2, n_ff=1024, n_ff_exp=128,
          n_vocab=8192),
    _tiny(DEEPSEEK_V2_LITE, n_layer=4, n_embd=256, n_head=2, n_ff=1024, n_ff_exp=128, n_vocab=8192),
)

PRESETS: dict[str, Preset] = {p.name: p for p in (*_STAND_INS, *_ARCH, *_TINY)}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown synth preset {name!r}; choose one of: {', '.join(PRESETS)}") from None
