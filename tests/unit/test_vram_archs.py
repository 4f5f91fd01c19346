"""The VRAM model on each seed architecture's own graph: KV caches (sliding window, MLA), the CPU
repack rule, routed vs active parameters. Pure: presets' tensor plans, nothing written.

The cache sizes follow llama.cpp's source (llama-kv-cache-iswa.cpp, llama-kv-cache.cpp of the
pinned llama-cpp-python 0.3.36); tests/integration/test_vram_archs_real.py checks them, and the
compute buffers, against what the CPU llama-server prints for every `*-arch-tiny` preset.
"""

from __future__ import annotations

import pytest

from abtest.models import presets
from abtest.models.desc import preset_model
from abtest.models.vram import ContextParams, is_repacked, kv_cache_bytes, kv_caches, placement

ARCH = [n for n, p in presets.PRESETS.items() if not p.stand_in and not n.endswith("-tiny")]


def test_gpt_oss_swa_layers_get_a_window_sized_cache() -> None:
    d = preset_model("gpt-oss-20b-arch")
    cell = 8 * 64 * 2  # n_head_kv * head_dim * f16, K and V alike
    full, swa = kv_caches(d, ContextParams(n_ctx=4096))
    assert (full.kind, full.n_layer, full.cells, full.n_stream) == ("full", 12, 4096, 1)
    # pad256(min(n_ctx_seq, n_swa + n_ubatch)) = pad256(128 + 512) = 768 cells
    assert (swa.kind, swa.n_layer, swa.cells) == ("swa", 12, 768)
    assert kv_cache_bytes(d, ContextParams(n_ctx=4096)) == 12 * (4096 + 768) * 2 * cell
    # a context under the window + ubatch: the SWA cache is the whole context
    assert kv_caches(d, ContextParams(n_ctx=512))[1].cells == 512
    # -ub 64: 128 + 64 = 192 -> 256 cells
    assert kv_caches(d, ContextParams(n_ctx=4096, n_ubatch=64))[1].cells == 256
    # --swa-full: as large as the full cache
    assert kv_caches(d, ContextParams(n_ctx=4096, swa_full=True))[1].cells == 4096


def test_swa_cache_per_sequence_and_unified() -> None:
    d = preset_model("gpt-oss-20b-arch")
    # -np 4, one stream per sequence: each 1024 cells full, pad256(min(1024, 128 + 512)) = 768 SWA
    full, swa = kv_caches(d, ContextParams(n_ctx=4096, n_parallel=4))
    assert (full.cells, full.n_stream, swa.cells, swa.n_stream) == (1024, 4, 768, 4)
    # --kv-unified: one stream of 4096; the window counts once per sequence: 4 * 128 + 512
    full, swa = kv_caches(d, ContextParams(n_ctx=4096, n_parallel=4, kv_unified=True))
    assert (full.cells, full.n_stream, swa.cells, swa.n_stream) == (4096, 1, 1024, 1)


def test_mla_caches_the_latent_and_rope_part_only() -> None:
    d = preset_model("deepseek-v2-lite-arch")
    (c,) = kv_caches(d, ContextParams(n_ctx=4096))
    assert (c.n_layer, c.cells, c.k_bytes_per_cell, c.v_bytes_per_cell) == (27, 4096, (512 + 64) * 2, 0)
    assert kv_cache_bytes(d, ContextParams(n_ctx=4096)) == 27 * 4096 * 576 * 2
    # with flash attention off too: llama.cpp never allocates V for MLA
    assert kv_cache_bytes(d, ContextParams(n_ctx=4096, flash_attn=False)) == 27 * 4096 * 576 * 2
    # q8_0 K: 576 / 32 blocks of 34 bytes
    assert kv_cache_bytes(d, ContextParams(n_ctx=4096, cache_type_k="q8_0")) == 27 * 4096 * 576 // 32 * 34


@pytest.mark.parametrize("name", ["qwen3-30b-a3b-arch", "phi-3.5-moe-arch", "deepseek-moe-16b-arch"])
def test_plain_attention_has_one_cache(name: str) -> None:
    d = preset_model(name)
    (c,) = kv_caches(d, ContextParams(n_ctx=4096))
    assert c.n_layer == d.n_layer and c.cells == 4096
    assert c.k_bytes_per_cell == c.v_bytes_per_cell == d.n_head_kv * d.head_dim_k * 2


def test_repack_rule() -> None:
    d = preset_model("deepseek-v2-lite-arch-tiny", "q4_0")
    by = {t.name: t for t in d.tensors}
    assert is_repacked(d, by["blk.1.attn_kv_a_mqa.weight"])  # 2-D MUL_MAT weight
    assert is_repacked(d, by["blk.1.ffn_up_exps.weight"])  # 3-D routed expert (MUL_MAT_ID)
    assert is_repacked(d, by["blk.1.ffn_up_shexp.weight"])  # a shared expert is a plain 2-D matmul
    assert not is_repacked(d, by["blk.1.attn_k_b.weight"])  # 3-D but a MUL_MAT: stays mapped
    assert not is_repacked(d, by["token_embd.weight"])  # get_rows
    assert not is_repacked(d, by["blk.1.ffn_gate_inp.weight"])  # F32
    q8 = preset_model("phi-3.5-moe-arch-tiny")  # Q8_0: not repacked on x86
    assert not any(is_repacked(q8, t) for t in q8.tensors)


def test_shared_experts_stay_on_the_gpu_with_cpu_moe() -> None:
    """--cpu-moe / --n-cpu-moe override `blk\\.N\\.ffn_(up|down|gate|gate_up)_(ch|)exps`
    (common/arg.cpp, llm_ffn_exps_block_regex): ffn_*_shexp never matches."""
    d = preset_model("deepseek-moe-16b-arch")
    shexp = sum(t.nbytes for t in d.tensors if "_shexp" in t.name)
    dense = sum(d.layer_other_bytes[:1])
    pl = placement(d, d.n_layer)
    assert pl.host_expert_bytes == sum(d.layer_expert_bytes)
    assert pl.gpu_bytes >= shexp + dense
    assert not any(d.is_expert(t) for t in d.tensors if "_shexp" in t.name or t.name.startswith("blk.0."))


def _routed_closed_form(p: presets.Preset) -> int:
    """Routed-expert parameters from the hyper-parameters alone: 3 matrices of d x F per expert in
    every MoE block (phimoe's experts are n_ff wide), plus gpt-oss's expert biases."""
    f = p.n_ff if p.arch == "phimoe" else p.n_ff_exp
    per_layer = 3 * p.n_embd * f * p.n_expert
    if p.arch == "gpt-oss":
        per_layer += (2 * f + p.n_embd) * p.n_expert
    return (p.n_layer - p.n_layer_dense_lead) * per_layer


@pytest.mark.parametrize("name", ARCH)
def test_active_params_count_everything_but_the_unused_routed_experts(name: str) -> None:
    p, d = presets.PRESETS[name], preset_model(name)
    routed = _routed_closed_form(p)
    assert d.expert_params == routed  # shared experts and dense blocks are not routed
    shared = (p.n_layer - p.n_layer_dense_lead) * 3 * p.n_embd * p.n_ff_shexp
    dense_ffn = p.n_layer_dense_lead * 3 * p.n_embd * p.n_ff
    assert d.active_params == d.total_params - routed + routed * p.n_expert_used // p.n_expert
    # what every token runs includes the shared experts and the dense leading FFN in full
    assert d.active_params - routed * p.n_expert_used // p.n_expert >= shared + dense_ffn


# sched_reserve's "CPU compute buffer size" (MiB) of the CPU llama-server for each reduced preset,
# -ngl 99 --fit off -np 1 -t 1 -fa on -c C (tests/integration/test_vram_archs_real.py re-reads them live;
# the same at every qtype: activations are f32 whatever the weights are)
PRINTED_COMPUTE_MIB = {
    "qwen3-30b-a3b-arch-tiny": (10.01, 11.51, 17.51),
    "gpt-oss-20b-arch-tiny": (9.52, 11.27, 17.27),
    "phi-3.5-moe-arch-tiny": (6.51, 8.01, 14.01),
    "deepseek-moe-16b-arch-tiny": (8.51, 10.01, 16.01),
    "deepseek-v2-lite-arch-tiny": (8.51, 10.01, 16.01),
}


@pytest.mark.parametrize("name", sorted(PRINTED_COMPUTE_MIB))
def test_compute_buffer_replays_ggml_alloc(name: str) -> None:
    from abtest.models.vram import compute_buffer_bytes, compute_parts

    d = preset_model(name)
    got = tuple(round(compute_buffer_bytes(d, ContextParams(n_ctx=c)) / 2**20, 2) for c in (512, 2048, 8192))
    assert got == PRINTED_COMPUTE_MIB[name]
    # without flash attention there is no program: the arithmetic (an upper bound) stands in
    no_fa = ContextParams(n_ctx=2048, flash_attn=False)
    assert compute_buffer_bytes(d, no_fa) == compute_parts(d, no_fa).total


def test_replay_is_ggml_dyn_tallocr() -> None:
    from abtest.models.galloc import replay

    # best fit among the holes (the smallest that fits; the later of equal ones), else the open end
    ev = (("A", "a", 100, {}), ("A", "b", 40, {}), ("A", "c", 100, {}), ("A", "d", 8, {}),
          ("F", 0), ("F", 2), ("A", "e", 64, {}))
    # 32-byte alignment: a@0 (128) b@128 (64) c@192 (128) d@320 (32); e fits a hole: no growth
    assert replay(ev, {}) == 352
    ev2 = (*ev, ("A", "f", 300, {}))  # 320 bytes fit no hole: the open end, 352 + 320
    assert replay(ev2, {}) == 672
    # freed neighbours merge: after a and b go, 160 bytes fit at 0
    ev3 = (("A", "a", 96, {}), ("A", "b", 64, {}), ("A", "c", 32, {}), ("F", 0), ("F", 1), ("A", "e", 160, {"x": 0}))
    assert replay(ev3, {"x": 1}) == 192
