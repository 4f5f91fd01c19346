"""The architectures abtest can imitate with random weights: each preset's shape, as the real model's GGUF has it."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError


@dataclass(frozen=True)
class Preset:
    """The shape of one synthetic architecture. n_expert == 0 means a dense model."""

    name: str
    arch: str  # llama.cpp architecture name: "qwen3moe" or "gpt2"
    imitates: str  # what it has the shapes of, for `abtest model list`
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int  # dense FFN width (gpt2), or the nominal value llama.cpp reads (qwen3moe)
    n_expert: int
    n_expert_used: int
    n_ff_exp: int
    n_vocab: int
    context_length: int
    rope_freq_base: float
    tokenizer_pre: str
    tied_embeddings: bool


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            name="tiny-moe", arch="qwen3moe", imitates="a few-MB MoE for tests (6 layers, 8 experts)",
            n_layer=6, n_embd=128, n_head=4, n_head_kv=2, head_dim=32, n_ff=512,
            n_expert=8, n_expert_used=2, n_ff_exp=256, n_vocab=4096, context_length=4096,
            rope_freq_base=1_000_000.0, tokenizer_pre="qwen2", tied_embeddings=False,
        ),
        Preset(
            # gpt-oss-20b's shapes (24 layers, d 2880, 64x64 heads, 8 KV, 32 experts top-4,
            # o200k-sized vocab) in the qwen3moe graph: no attention sinks, no sliding window, no
            # biases, no MXFP4 -- same memory and matmul sizes, a simpler graph.
            name="gpt-oss-20b-like", arch="qwen3moe", imitates="gpt-oss-20b (shapes only)",
            n_layer=24, n_embd=2880, n_head=64, n_head_kv=8, head_dim=64, n_ff=2880,
            n_expert=32, n_expert_used=4, n_ff_exp=2880, n_vocab=201_088, context_length=131_072,
            rope_freq_base=150_000.0, tokenizer_pre="qwen2", tied_embeddings=False,
        ),
        Preset(
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
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown synth preset {name!r}; choose one of: {', '.join(PRESETS)}") from None
