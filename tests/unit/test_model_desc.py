"""The model description against outputs pinned from the code before it was made one.

The manifest's `models` entry, `abtest model info` (text and --json) and the sweep's layout
summary of synthesised tiny-moe and dense-small, as the two descriptions it replaced
(gguf.ModelInfo and layout.ModelLayout, at c36df93) wrote them: evidence written before and after
must agree byte for byte for the same file.
"""

from __future__ import annotations

import importlib
import io
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

from abtest.cli import cli
from abtest.models import synth

# json.dumps of the manifest entry (what the evidence writer is given), the path replaced by <path>.
MANIFEST = {
    "tiny-moe": (
        '{"name": "abtest synth tiny-moe", "path": "<path>", "size_bytes": 3572256, '
        '"sha256": "c68a6d8e4382612c3f7165f335069f7b95deed7099a0ed8418a1ea2010a943d4", '
        '"arch": "qwen3moe", "quant": "Q4_0", "n_layer": 6, "n_embd": 128, "n_head": 4, '
        '"n_head_kv": 2, "head_dim": 32, "n_ff": 512, "n_expert": 8, "n_expert_used": 2, '
        '"n_ff_exp": 256, "n_vocab": 4096, "context_length": 4096, "total_params": 6070272, '
        '"expert_params": 4718592, "active_params": 2531328, "file_size_bytes": 3572256, '
        '"tensor_bytes": 3442688, "nonlayer_bytes": 590336, "layer_expert_bytes": [442368, 442368, '
        '442368, 442368, 442368, 442368], "layer_other_bytes": [33024, 33024, 33024, 33024, 33024, '
        '33024], "synth_preset": "tiny-moe"}'
    ),
    "dense-small": (
        '{"name": "abtest synth dense-small", "path": "<path>", "size_bytes": 74992416, '
        '"sha256": "0dbf7cb18153203edb740213ae995579a7554d0f366b7eae5b4902f71df4f92c", '
        '"arch": "gpt2", "quant": "Q4_0", "n_layer": 12, "n_embd": 768, "n_head": 12, '
        '"n_head_kv": 12, "head_dim": 64, "n_ff": 3072, "n_expert": 0, "n_expert_used": 0, '
        '"n_ff_exp": 0, "n_vocab": 50257, "context_length": 1024, "total_params": 124439808, '
        '"expert_params": 0, "active_params": 124439808, "file_size_bytes": 74992416, '
        '"tensor_bytes": 73117872, "nonlayer_bytes": 24862896, "layer_expert_bytes": [0, 0, 0, 0, 0, '
        '0, 0, 0, 0, 0, 0, 0], "layer_other_bytes": [4021248, 4021248, 4021248, 4021248, 4021248, '
        '4021248, 4021248, 4021248, 4021248, 4021248, 4021248, 4021248], '
        '"synth_preset": "dense-small"}'
    ),
}
# ModelDesc.summary() (was ModelLayout's), as the sweep plan records it in the manifest (config.extra.sweep.layout).
SUMMARY = {
    "tiny-moe": (
        '{"name": "abtest synth tiny-moe", "arch": "qwen3moe", "n_layer": 6, "n_embd": 128, '
        '"n_head": 4, "n_head_kv": 2, "head_dim_k": 32, "head_dim_v": 32, "n_ff": 512, '
        '"n_expert": 8, "n_expert_used": 2, "n_ff_exp": 256, "n_vocab": 4096, '
        '"tensor_bytes": 3442688, "layer_expert_bytes": [442368, 442368, 442368, 442368, 442368, '
        '442368]}'
    ),
    "dense-small": (
        '{"name": "abtest synth dense-small", "arch": "gpt2", "n_layer": 12, "n_embd": 768, '
        '"n_head": 12, "n_head_kv": 12, "head_dim_k": 64, "head_dim_v": 64, "n_ff": 3072, '
        '"n_expert": 0, "n_expert_used": 0, "n_ff_exp": 0, "n_vocab": 50257, '
        '"tensor_bytes": 73117872, "layer_expert_bytes": [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]}'
    ),
}
# `abtest model info PATH --n-cpu-moe 2` on a 200-column console, trailing blanks stripped.
INFO_TEXT = {
    "tiny-moe": """\
path           <path>
name           abtest synth tiny-moe  (abtest synth preset tiny-moe)
arch           qwen3moe, mostly Q4_0
layers         6
d_model        128
heads          4 (KV 2), head_dim 32
experts        8, 2 used per token, expert FFN 256
vocab          4,096
context        4,096
params         6.1M total, 2.5M active per token
file           3.6 MB (3,572,256 bytes)
tensor bytes   3.4 MB: experts 2.7 MB, other layer tensors 0.2 MB, outside layers 0.6 MB
per layer      experts 0.4 MB, other 0.0 MB (max over layers)
--n-cpu-moe 2  2.6 MB of weights stay on the GPU (plus KV cache and compute buffers)
""",
    "dense-small": """\
path           <path>
name           abtest synth dense-small  (abtest synth preset dense-small)
arch           gpt2, mostly Q4_0
layers         12
d_model        768
heads          12 (KV 12), head_dim 64
FFN            3072 (dense)
vocab          50,257
context        1,024
params         124.4M total, 124.4M active per token
file           75.0 MB (74,992,416 bytes)
tensor bytes   73.1 MB: experts 0.0 MB, other layer tensors 48.3 MB, outside layers 24.9 MB
per layer      experts 0.0 MB, other 4.0 MB (max over layers)
--n-cpu-moe 2  73.1 MB of weights stay on the GPU (plus KV cache and compute buffers)
""",
}
GPU_WEIGHT_BYTES_NCMOE2 = {"tiny-moe": 2557952, "dense-small": 73117872}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pinned")
    return {name: synth.write_synth(d / f"{name}.gguf", name).path for name in MANIFEST}


@pytest.fixture(autouse=True)
def _cache(isolated_cache: Path) -> Path:
    """Every test here runs on its own cache (tests/conftest.py's isolated_cache)."""
    return isolated_cache


@pytest.mark.parametrize("name", list(MANIFEST))
def test_manifest_model_entry_is_unchanged(files: dict[str, Path], name: str) -> None:
    from abtest.measure.arms import resolve_model

    entry = resolve_model(str(files[name]), None, lambda _: None)
    assert json.dumps(entry).replace(str(files[name].resolve()), "<path>") == MANIFEST[name]


@pytest.mark.parametrize("name", list(MANIFEST))
def test_model_info_json_is_unchanged(files: dict[str, Path], name: str) -> None:
    # ModelDesc.to_dict() (was ModelInfo's): the manifest's fields from "path" on, without the run's size and digest.
    pinned = json.loads(MANIFEST[name])
    want = {"path": "<path>", "name": pinned["name"]}
    want.update((k, v) for k, v in pinned.items() if k not in ("name", "path", "size_bytes", "sha256"))
    want["gpu_weight_bytes"] = GPU_WEIGHT_BYTES_NCMOE2[name]
    res = CliRunner().invoke(cli, ["model", "info", str(files[name]), "--json", "--n-cpu-moe", "2"])
    assert res.exit_code == 0, res.output
    assert res.output.replace(str(files[name].resolve()), "<path>") == json.dumps(want, indent=2) + "\n"


@pytest.mark.parametrize("name", list(MANIFEST))
def test_model_info_text_is_unchanged(files: dict[str, Path], name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    buf = io.StringIO()
    monkeypatch.setattr(importlib.import_module("abtest.cli.model"), "out", Console(width=200, highlight=False, file=buf))
    res = CliRunner().invoke(cli, ["model", "info", str(files[name]), "--n-cpu-moe", "2"])
    assert res.exit_code == 0, res.output
    text = buf.getvalue().replace(str(files[name].resolve()), "<path>")
    assert "".join(line.rstrip() + "\n" for line in text.splitlines()) == INFO_TEXT[name]


@pytest.mark.parametrize("name", list(MANIFEST))
def test_sweep_layout_summary_is_unchanged(files: dict[str, Path], name: str) -> None:
    from abtest.models.desc import read_model

    assert json.dumps(read_model(str(files[name])).summary()) == SUMMARY[name]


def _nameless_gguf(path: Path) -> Path:
    """A minimal model GGUF whose header has no general.name (converters may leave it out)."""
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_embedding_length(8)
    w.add_head_count(2)
    w.add_tensor("token_embd.weight", np.zeros((16, 8), dtype=np.float32))
    w.add_tensor("blk.0.attn_q.weight", np.zeros((8, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_a_header_without_general_name_is_named_by_its_file(tmp_path: Path) -> None:
    # The display name (docs/models.md) is general.name, else the file's stem: what the report
    # already shows for such a file (analysis.arms falls back to the stem of the arm's model path).
    from abtest.measure.arms import resolve_model
    from abtest.models.desc import read_model

    path = _nameless_gguf(tmp_path / "my-model-Q8_0.gguf")
    desc = read_model(path)
    assert desc.name is None and desc.display_name == "my-model-Q8_0"
    assert desc.summary()["name"] == "my-model-Q8_0"  # the sweep's label: the same rule (was "my-model-Q8_0.gguf")
    entry = resolve_model(str(path), None, lambda _: None)
    assert entry["name"] == "my-model-Q8_0"
    assert entry["n_layer"] == 1 and entry["tensor_bytes"] == (16 * 8 + 8 * 8) * 4
