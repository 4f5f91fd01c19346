"""abtest.models.upcycle: dense llama GGUF -> Mixtral-layout MoE; stacked expert bytes, router, metadata, errors."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from abtest.errors import ConfigError
from abtest.models import upcycle
from abtest.models.desc import read_model

N_EMBD, N_FF, N_LAYER, N_VOCAB = 64, 128, 2, 32
Q4_1 = gguf.GGMLQuantizationType.Q4_1


@pytest.fixture(autouse=True)
def _cache(isolated_cache: Path) -> Path:
    """Every test here runs on its own cache (tests/conftest.py's isolated_cache)."""
    return isolated_cache


def _q4_1(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """Raw Q4_1 bytes of a [cols, rows] ggml matrix: finite fp16 d and m, random nibbles."""
    nb = cols // 32
    blocks = rng.integers(0, 256, size=(rows * nb, 20), dtype=np.uint8)
    blocks[:, 0:2] = rng.uniform(0.01, 0.02, rows * nb).astype(np.float16).view(np.uint8).reshape(-1, 2)
    blocks[:, 2:4] = rng.uniform(-0.1, 0.0, rows * nb).astype(np.float16).view(np.uint8).reshape(-1, 2)
    return blocks.reshape(rows, nb * 20)


def write_dense(path: Path, arch: str = "llama", ffn_bias: bool = False, n_expert: int = 0) -> Path:
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(path, arch)
    w.add_name("tiny dense")
    w.add_block_count(N_LAYER)
    w.add_embedding_length(N_EMBD)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(2)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_array("tokenizer.ggml.tokens", [f"t{i}" for i in range(N_VOCAB)])
    if n_expert:
        w.add_expert_count(n_expert)
    w.add_tensor("token_embd.weight", rng.standard_normal((N_VOCAB, N_EMBD), dtype=np.float32))
    for il in range(N_LAYER):
        w.add_tensor(f"blk.{il}.attn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            w.add_tensor(f"blk.{il}.{name}.weight", _q4_1(rng, N_EMBD, N_EMBD), raw_dtype=Q4_1)
        w.add_tensor(f"blk.{il}.ffn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        w.add_tensor(f"blk.{il}.ffn_gate.weight", _q4_1(rng, N_FF, N_EMBD), raw_dtype=Q4_1)
        w.add_tensor(f"blk.{il}.ffn_up.weight", _q4_1(rng, N_FF, N_EMBD), raw_dtype=Q4_1)
        w.add_tensor(f"blk.{il}.ffn_down.weight", _q4_1(rng, N_EMBD, N_FF), raw_dtype=Q4_1)
        if ffn_bias:
            w.add_tensor(f"blk.{il}.ffn_up.bias", np.zeros(N_FF, dtype=np.float32))
    w.add_tensor("output_norm.weight", np.ones(N_EMBD, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture
def dense(tmp_path: Path) -> Path:
    return write_dense(tmp_path / "dense.gguf")


def _tensors(path: Path) -> dict[str, gguf.ReaderTensor]:
    return {t.name: t for t in gguf.GGUFReader(path).tensors}


def test_experts_are_the_dense_blocks_stacked(dense: Path, tmp_path: Path) -> None:
    res = upcycle.upcycle(dense, tmp_path / "moe.gguf", 4, 2, seed=3)
    src, out = _tensors(dense), _tensors(res.path)
    for il in range(N_LAYER):
        assert f"blk.{il}.ffn_gate.weight" not in out
        for w, ne in (("gate", [N_EMBD, N_FF]), ("up", [N_EMBD, N_FF]), ("down", [N_FF, N_EMBD])):
            d, e = src[f"blk.{il}.ffn_{w}.weight"], out[f"blk.{il}.ffn_{w}_exps.weight"]
            assert e.tensor_type == Q4_1 and list(e.shape) == [*ne, 4]  # ggml order: [ne0, ne1, n_expert]
            assert e.n_bytes == 4 * d.n_bytes
            raw = np.asarray(e.data).reshape(4, -1)
            for x in range(4):  # expert x is byte range [x * nbytes(dense), (x + 1) * nbytes(dense))
                assert np.array_equal(raw[x], np.asarray(d.data).reshape(-1))
        r = out[f"blk.{il}.ffn_gate_inp.weight"]
        assert r.tensor_type == gguf.GGMLQuantizationType.F32 and list(r.shape) == [N_EMBD, 4]
        assert np.allclose(np.asarray(r.data), upcycle.router_weights(3, il, 4, N_EMBD))
    for name in ("token_embd.weight", "blk.1.attn_q.weight", "output_norm.weight"):
        assert np.array_equal(np.asarray(src[name].data), np.asarray(out[name].data))


def test_metadata_says_what_was_built(dense: Path, tmp_path: Path) -> None:
    res = upcycle.upcycle(dense, tmp_path / "moe.gguf", 8, 2, seed=5)
    f = gguf.GGUFReader(res.path).fields
    assert f["general.architecture"].contents() == "llama"
    assert f["llama.expert_count"].contents() == 8 and f["llama.expert_used_count"].contents() == 2
    assert f["general.name"].contents() == "tiny dense upcycled 8x top-2"
    assert f["abtest.upcycle.seed"].contents() == 5 and f["abtest.upcycle.perturb"].contents() == 0.0
    from abtest.models.hashing import sha256_file
    assert f["abtest.upcycle.source_sha256"].contents() == sha256_file(dense)
    assert f["tokenizer.ggml.tokens"].contents() == [f"t{i}" for i in range(N_VOCAB)]
    desc = read_model(res.path)  # abtest's own header walk agrees
    assert desc.n_expert == 8 and desc.n_expert_used == 2 and desc.n_layer == N_LAYER


def test_same_inputs_same_bytes_other_seed_other_router(dense: Path, tmp_path: Path) -> None:
    a = upcycle.upcycle(dense, tmp_path / "a.gguf", 4, 2, seed=1)
    b = upcycle.upcycle(dense, tmp_path / "b.gguf", 4, 2, seed=1)
    c = upcycle.upcycle(dense, tmp_path / "c.gguf", 4, 2, seed=2)
    assert a.sha256 == b.sha256 != c.sha256


def test_the_router_spreads_tokens_over_every_expert() -> None:
    """Random hidden states of unit RMS: each expert is in some token's top-k, none takes them all."""
    x = np.random.default_rng(0).standard_normal((256, 576)).astype(np.float32)
    for n_expert, k in ((4, 2), (8, 2), (32, 4)):
        top = np.argsort(-(x @ upcycle.router_weights(0, 0, n_expert, 576).T), axis=1)[:, :k]
        counts = np.bincount(top.reshape(-1), minlength=n_expert)
        assert (counts > 0).all() and counts.max() < 256, (n_expert, counts)


def test_perturb_scales_blocks_and_keeps_quants(dense: Path, tmp_path: Path) -> None:
    res = upcycle.upcycle(dense, tmp_path / "p.gguf", 3, 1, seed=0, perturb=0.1)
    d = np.asarray(_tensors(dense)["blk.0.ffn_up.weight"].data).reshape(-1, 20)
    e = np.asarray(_tensors(res.path)["blk.0.ffn_up_exps.weight"].data).reshape(3, -1, 20)
    d_scale = d[:, 0:2].copy().view(np.float16).astype(np.float32).reshape(-1)
    ratios = []
    for x in range(3):
        assert np.array_equal(e[x][:, 4:], d[:, 4:])  # the nibbles are the dense model's
        s = e[x][:, 0:2].copy().view(np.float16).astype(np.float32).reshape(-1)
        m = e[x][:, 2:4].copy().view(np.float16).astype(np.float32).reshape(-1)
        dm = d[:, 2:4].copy().view(np.float16).astype(np.float32).reshape(-1)
        r = s / d_scale
        assert (np.abs(r - 1) <= 0.1 + 2e-3).all() and np.abs(r - 1).max() > 0.05
        assert np.allclose(m, dm * r, rtol=2e-3, atol=1e-6)  # d and m scale together: the block as a whole
        ratios.append(r)
    assert not np.allclose(ratios[0], ratios[1])  # experts now differ
    assert gguf.GGUFReader(res.path).fields["abtest.upcycle.perturb"].contents() == pytest.approx(0.1)


def test_perturb_one_expert_leaves_the_others_exact(dense: Path, tmp_path: Path) -> None:
    every = upcycle.upcycle(dense, tmp_path / "all.gguf", 3, 1, seed=0, perturb=0.1)
    one = upcycle.upcycle(dense, tmp_path / "one.gguf", 3, 1, seed=0, perturb=0.1, perturb_experts=[1])
    d = np.asarray(_tensors(dense)["blk.1.ffn_down.weight"].data).reshape(-1)
    for name in ("blk.0.ffn_gate_exps.weight", "blk.1.ffn_down_exps.weight"):
        a = np.asarray(_tensors(every.path)[name].data).reshape(3, -1)
        o = np.asarray(_tensors(one.path)[name].data).reshape(3, -1)
        assert np.array_equal(o[1], a[1])  # expert 1: the same bytes as in the all-perturbed file
        assert not np.array_equal(o[1], o[0])
    o = np.asarray(_tensors(one.path)["blk.1.ffn_down_exps.weight"].data).reshape(3, -1)
    assert np.array_equal(o[0], d) and np.array_equal(o[2], d)  # experts 0 and 2: exact copies
    f = gguf.GGUFReader(one.path).fields
    assert f["abtest.upcycle.perturbed_experts"].contents() == "1"
    assert "experts 1 scaled" in f["abtest.upcycle.experts_from"].contents()
    assert gguf.GGUFReader(every.path).fields["abtest.upcycle.perturbed_experts"].contents() == "0-2"
    exact = upcycle.upcycle(dense, tmp_path / "exact.gguf", 3, 1, seed=0)
    assert gguf.GGUFReader(exact.path).fields["abtest.upcycle.perturbed_experts"].contents() == "none"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"n_expert": 1, "n_expert_used": 1}, "--experts 1"),
    ({"n_expert": 4, "n_expert_used": 5}, "--used 5"),
    ({"n_expert": 4, "n_expert_used": 0}, "--used 0"),
    ({"n_expert": 4, "n_expert_used": 2, "perturb": 1.5}, "--perturb"),
    ({"n_expert": 4, "n_expert_used": 2, "perturb": 0.1, "perturb_experts": [4]}, "--perturb-expert 4: experts are numbered 0 to 3"),
    ({"n_expert": 4, "n_expert_used": 2, "perturb_experts": [1]}, "--perturb-expert needs --perturb"),
])
def test_bad_options(dense: Path, tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        upcycle.upcycle(dense, tmp_path / "x.gguf", **kwargs)
    assert not (tmp_path / "x.gguf").exists()


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="architecture 'qwen3'"):
        upcycle.upcycle(write_dense(tmp_path / "q.gguf", arch="qwen3"), tmp_path / "o.gguf", 4, 2)
    with pytest.raises(ConfigError, match="already a MoE"):
        upcycle.upcycle(write_dense(tmp_path / "m.gguf", n_expert=4), tmp_path / "o.gguf", 4, 2)
    with pytest.raises(ConfigError, match="FFN biases"):
        upcycle.upcycle(write_dense(tmp_path / "b.gguf", ffn_bias=True), tmp_path / "o.gguf", 4, 2)
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"nope")
    with pytest.raises(ConfigError):
        upcycle.upcycle(junk, tmp_path / "o.gguf", 4, 2)
    assert not (tmp_path / "o.gguf").exists() and not list(tmp_path.glob(".o.gguf.tmp-*"))


def test_cli_upcycle(dense: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from abtest import cli

    out = tmp_path / "moe.gguf"
    with pytest.raises(SystemExit) as ei:
        cli.main(["model", "upcycle", str(dense), str(out), "--experts", "4", "--used", "2"])
    assert ei.value.code in (0, None)
    digest, path = capsys.readouterr().out.split()
    assert Path(path) == out and len(digest) == 64
    with pytest.raises(SystemExit) as ei:
        cli.main(["model", "upcycle", str(dense), str(out), "--experts", "4", "--used", "2"])
    assert ei.value.code == 2 and "exists" in capsys.readouterr().err
