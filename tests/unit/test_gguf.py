"""abtest.models.gguf and desc: ModelDesc read back from synthetic files; check_gguf's one-line failures."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from abtest.errors import ConfigError, ModelNotFound
from abtest.models import presets, synth
from abtest.models.desc import read_model
from abtest.models.gguf import check_gguf, read_header


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth.write_synth(tmp_path_factory.mktemp("meta") / "tiny.gguf", "tiny-moe").path


def test_tiny_moe_metadata_reads_back_as_the_preset(tiny: Path) -> None:
    p = presets.PRESETS["tiny-moe"]
    i = read_model(tiny)
    assert (i.arch, i.n_layer, i.n_embd, i.n_head, i.n_head_kv, i.head_dim_k) == (
        p.arch, p.n_layer, p.n_embd, p.n_head, p.n_head_kv, p.head_dim,
    )
    assert (i.n_expert, i.n_expert_used, i.n_ff_exp, i.n_vocab, i.context_length) == (
        p.n_expert, p.n_expert_used, p.n_ff_exp, p.n_vocab, p.context_length,
    )
    plan = synth.summarize_plan(p)
    assert (i.total_params, i.expert_params, i.active_params) == (plan.total_params, plan.expert_params, plan.active_params)
    assert i.quant == "Q4_0" and i.synth_preset == "tiny-moe"
    assert i.file_size_bytes == tiny.stat().st_size


def test_per_layer_bytes_add_up_and_drive_n_cpu_moe(tiny: Path) -> None:
    i = read_model(tiny)
    assert len(i.layer_expert_bytes) == len(i.layer_other_bytes) == i.n_layer
    assert sum(i.layer_expert_bytes) + sum(i.layer_other_bytes) + i.nonlayer_bytes == i.tensor_bytes
    # three expert tensors of n_ff_exp x n_embd x n_expert Q4_0 weights per layer
    assert i.layer_expert_bytes[0] == 3 * 256 * 128 * 8 // 32 * 18
    assert i.gpu_weight_bytes(0) == i.tensor_bytes
    assert i.gpu_weight_bytes(2) == i.tensor_bytes - 2 * i.layer_expert_bytes[0]
    assert i.gpu_weight_bytes(99) == i.tensor_bytes - sum(i.layer_expert_bytes)
    assert i.to_dict()["layer_expert_bytes"] == list(i.layer_expert_bytes)


def test_dense_model_has_no_expert_bytes(tmp_path: Path) -> None:
    i = read_model(synth.write_synth(tmp_path / "d.gguf", "dense-small").path)
    assert i.arch == "gpt2" and i.n_expert == 0 and i.n_vocab == 50_257
    assert i.total_params == i.active_params == 124_439_808
    assert sum(i.layer_expert_bytes) == 0


def test_missing_file_is_model_not_found(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound, match="not found"):
        check_gguf(tmp_path / "absent.gguf")


def test_bad_magic(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"<!DOCTYPE html><html>rate limited</html>")
    with pytest.raises(ConfigError, match=r"not a GGUF file \(bad magic"):
        check_gguf(bad)


@pytest.mark.parametrize("keep", [0, 3, 24, 5000])
def test_truncated_inside_the_header(tiny: Path, tmp_path: Path, keep: int) -> None:
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny.read_bytes()[:keep])
    with pytest.raises(ConfigError, match="truncated") as e:
        check_gguf(cut)
    assert "\n" not in str(e.value)


def test_truncated_inside_the_data(tiny: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.gguf"
    data = tiny.read_bytes()
    cut.write_bytes(data[: len(data) - 1000])
    read_header(cut)  # the header alone is fine ...
    with pytest.raises(ConfigError, match=r"truncated \(\d+ bytes, its tensors need \d+\)"):
        check_gguf(cut)  # ... but the tensors do not fit


def test_complete_file_passes_and_directory_fails(tiny: Path, tmp_path: Path) -> None:
    h = check_gguf(tiny)
    assert h.data_end == tiny.stat().st_size
    copy = tmp_path / "copy.gguf"
    shutil.copy(tiny, copy)
    with open(copy, "ab") as f:  # trailing bytes are harmless
        f.write(b"\0" * 100)
    check_gguf(copy)
    with pytest.raises(ConfigError, match="directory"):
        check_gguf(tmp_path)
