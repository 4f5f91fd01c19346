"""abtest.models.synth: deterministic bytes, real shapes, sane quantisation scales."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import gguf
import numpy as np
import pytest

from abtest.errors import ConfigError
from abtest.models import presets, synth
from abtest.models.gguf import read_header

# The SHA256 of `abtest model synth OUT --preset tiny-moe` (q4_0, seed 0) for SYNTH_VERSION 1.
# If this changes, every machine's tiny-moe changes: bump synth.SYNTH_VERSION and update docs/models.md.
TINY_MOE_Q4_0_SEED0_SHA256 = "c68a6d8e4382612c3f7165f335069f7b95deed7099a0ed8418a1ea2010a943d4"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> synth.SynthResult:
    return synth.write_synth(tmp_path_factory.mktemp("synth") / "tiny.gguf", "tiny-moe")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_inputs_give_identical_bytes(tiny: synth.SynthResult, tmp_path: Path) -> None:
    again = synth.write_synth(tmp_path / "again.gguf", "tiny-moe", "q4_0", 0)
    assert again.sha256 == tiny.sha256
    assert (tmp_path / "again.gguf").read_bytes() == tiny.path.read_bytes()


def test_sha256_is_pinned_across_machines(tiny: synth.SynthResult, tmp_path: Path) -> None:
    from abtest.models.catalog import CATALOG

    assert synth.SYNTH_VERSION == 1
    assert tiny.sha256 == TINY_MOE_Q4_0_SEED0_SHA256 == CATALOG["tiny-moe"].sha256
    dense = synth.write_synth(tmp_path / "dense.gguf", "dense-small")
    assert dense.sha256 == CATALOG["dense-small"].sha256


def test_returned_sha256_and_size_match_the_file(tiny: synth.SynthResult) -> None:
    assert tiny.sha256 == _sha(tiny.path)
    assert tiny.size_bytes == tiny.path.stat().st_size


def test_different_seed_gives_different_weights_same_header(tiny: synth.SynthResult, tmp_path: Path) -> None:
    other = synth.write_synth(tmp_path / "seed1.gguf", "tiny-moe", "q4_0", 1)
    assert other.sha256 != tiny.sha256
    assert other.size_bytes == tiny.size_bytes
    a, b = read_header(tiny.path), read_header(other.path)
    assert [t.name for t in a.tensors] == [t.name for t in b.tensors]
    assert b.kv["abtest.synth.seed"] == 1


def test_progress_reports_bytes_up_to_the_file_size(tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    res = synth.write_synth(tmp_path / "p.gguf", "tiny-moe", progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (res.size_bytes, res.size_bytes)
    assert all(d1 <= d2 for (d1, _), (d2, _) in zip(seen, seen[1:], strict=False))


def test_no_temp_file_left_and_bad_out_dir_is_a_config_error(tiny: synth.SynthResult, tmp_path: Path) -> None:
    assert not [p for p in tiny.path.parent.iterdir() if ".tmp-" in p.name]
    with pytest.raises(ConfigError, match="does not exist"):
        synth.write_synth(tmp_path / "nope" / "x.gguf", "tiny-moe")
    with pytest.raises(ConfigError, match="unknown synth preset"):
        synth.write_synth(tmp_path / "x.gguf", "huge-moe")
    with pytest.raises(ConfigError, match="unknown qtype"):
        synth.write_synth(tmp_path / "x.gguf", "tiny-moe", "q2_k")


def _tensor_bytes(path: Path, name: str) -> tuple[np.ndarray, tuple[int, ...], int]:
    h = read_header(path)
    t = next(t for t in h.tensors if t.name == name)
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=h.data_offset + t.offset, shape=(t.nbytes,))
    return np.asarray(data), t.shape, t.ggml_type


@pytest.mark.parametrize("qtype,block_bytes,q_std", [("q4_0", 18, math.sqrt(21.5)), ("q8_0", 34, math.sqrt(5461.5))])
def test_quant_scales_are_finite_nonzero_and_sized_for_fan_in(tmp_path: Path, qtype: str, block_bytes: int, q_std: float) -> None:
    path = synth.write_synth(tmp_path / f"{qtype}.gguf", "tiny-moe", qtype).path
    for name in ("blk.0.ffn_down_exps.weight", "blk.3.attn_q.weight", "token_embd.weight", "output.weight"):
        raw, shape, _ = _tensor_bytes(path, name)
        blocks = raw.reshape(-1, block_bytes)
        d = blocks[:, :2].copy().view(np.float16).astype(np.float64).ravel()
        assert np.isfinite(d).all() and (d != 0).all(), name
        expected = 1.0 / (math.sqrt(shape[0]) * q_std)
        assert 0.74 * expected <= np.abs(d).min() and np.abs(d).max() <= 1.26 * expected, name
        assert 0.3 < (d > 0).mean() < 0.7, f"{name}: scale signs should be mixed"
        if qtype == "q4_0":  # decode a few thousand weights: std ~ 1/sqrt(fan_in), no NaN
            b = blocks[:4096]
            q = np.concatenate([b[:, 2:] & 0x0F, b[:, 2:] >> 4], axis=1).astype(np.float64) - 8
            w = q * blocks[:4096, :2].copy().view(np.float16).astype(np.float64)
            assert np.isfinite(w).all()
            assert abs(w.std() * math.sqrt(shape[0]) - 1.0) < 0.15, name


def test_norms_are_near_one_and_router_is_f32(tiny: synth.SynthResult) -> None:
    raw, shape, ggml_type = _tensor_bytes(tiny.path, "blk.0.attn_norm.weight")
    w = raw.view(np.float32)
    assert ggml_type == gguf.GGMLQuantizationType.F32 and shape == (128,)
    assert np.all((w >= 0.95) & (w <= 1.05))
    raw, shape, ggml_type = _tensor_bytes(tiny.path, "blk.0.ffn_gate_inp.weight")
    assert ggml_type == gguf.GGMLQuantizationType.F32 and shape == (128, 8)
    assert np.isfinite(raw.view(np.float32)).all()


@pytest.mark.parametrize("preset,lo_gb,hi_gb,params_b,active_b", [
    ("gpt-oss-20b-like", 11.0, 13.0, 20.9, 4.19),
    ("qwen3-30b-a3b-like", 16.0, 18.0, 30.5, 3.35),
])
def test_big_presets_have_the_real_sizes_without_writing(preset: str, lo_gb: float, hi_gb: float, params_b: float, active_b: float) -> None:
    s = synth.summarize_plan(preset, "q4_0")
    assert lo_gb * 1e9 < s.tensor_bytes < hi_gb * 1e9
    assert s.total_params == pytest.approx(params_b * 1e9, rel=0.01)
    assert s.active_params == pytest.approx(active_b * 1e9, rel=0.01)
    q8 = synth.summarize_plan(preset, "q8_0")
    assert q8.tensor_bytes > 1.8 * s.tensor_bytes


def test_gpt_oss_like_shapes() -> None:
    p = presets.PRESETS["gpt-oss-20b-like"]
    plan = {s.name: s for s in synth.tensor_plan(p)}
    assert plan["token_embd.weight"].shape == (2880, 201_088)
    assert plan["blk.0.attn_q.weight"].shape == (2880, 64 * 64)
    assert plan["blk.0.attn_k.weight"].shape == (2880, 8 * 64)
    assert plan["blk.23.ffn_gate_exps.weight"].shape == (2880, 2880, 32)
    assert plan["blk.23.ffn_down_exps.weight"].shape == (2880, 2880, 32)
    assert sum(1 for n in plan if n.startswith("blk.")) == 24 * 12


def test_dense_small_is_gpt2_small() -> None:
    s = synth.summarize_plan("dense-small")
    assert s.total_params == 124_439_808  # GPT-2 small with tied embeddings
    assert s.expert_params == 0 and s.active_params == s.total_params


@pytest.mark.parametrize("arch,preset", [(gguf.MODEL_ARCH.QWEN3MOE, "tiny-moe"), (gguf.MODEL_ARCH.GPT2, "dense-small")])
def test_tensor_names_are_known_to_gguf(arch: gguf.MODEL_ARCH, preset: str) -> None:
    known = {gguf.TENSOR_NAMES[t] for t in gguf.MODEL_TENSORS[arch]}
    for s in synth.tensor_plan(preset):
        base = s.name.rsplit(".", 1)[0]
        generic = base.split(".", 2)[-1] if base.startswith("blk.") else base
        assert (f"blk.{{bid}}.{generic}" if base.startswith("blk.") else generic) in known, s.name
    assert gguf.MODEL_ARCH_NAMES[arch] == presets.PRESETS[preset].arch


def test_every_block_row_is_a_multiple_of_32() -> None:
    for name in presets.PRESETS:
        for s in synth.tensor_plan(name):
            if s.fill == "quant":
                assert s.shape[0] % 32 == 0, (name, s.name)


def test_vocab_is_byte_level_bpe_with_consistent_merges() -> None:
    v = synth.build_vocab(4096)
    assert len(v.tokens) == len(v.token_types) == 4096
    assert len(set(v.tokens)) == 4096
    alphabet = synth.bytes_to_unicode()
    assert v.tokens[:256] == alphabet and len(set(alphabet)) == 256
    assert alphabet[:3] == ["!", '"', "#"] and "Ġ" in alphabet and "Ċ" in alphabet  # space, newline
    for i, m in enumerate(v.merges):
        left, right = m.split(" ")
        assert left + right == v.tokens[256 + i]
    assert v.tokens[v.eos_id] == "<|endoftext|>" and v.token_types[v.eos_id] == 3
    assert synth.build_vocab(4096) == v  # deterministic


def test_written_header_matches_gguf_reader(tiny: synth.SynthResult) -> None:
    """Our header parser and gguf-py's reader agree on the synthetic file (cross-check of both)."""
    ours = read_header(tiny.path)
    ref = gguf.GGUFReader(tiny.path)
    assert ours.data_offset == ref.data_offset
    assert [(t.name, t.shape, t.nbytes) for t in ours.tensors] == [
        (t.name, tuple(int(x) for x in t.shape), int(t.n_bytes)) for t in ref.tensors
    ]
    assert [ours.data_offset + t.offset for t in ours.tensors] == [int(t.data_offset) for t in ref.tensors]
    assert ours.data_end == tiny.size_bytes
