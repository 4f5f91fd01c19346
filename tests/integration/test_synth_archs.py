"""Every reduced `*-arch-tiny` preset loads in the real CPU llama-server on its own architecture, answers
/completion, and the hyper-parameters and buffers llama-server prints are the ones the preset claims.

What is compared, per preset (its default qtype, -c 2048 -np 1 -fa on -lv 4):

* ``print_info``: arch, file type, n_layer, n_embd, heads, head sizes, n_ff, experts (count, used,
  shared, width), dense leading layers, MLA ranks, sliding window, vocabulary, and llama.cpp's own
  parameter count against `ModelDesc.total_params`;
* ``load_tensors``: the CPU_Mapped and CPU_REPACK model buffers against `vram.cpu_buffers` of the
  description (Q4_0, Q4_K and MXFP4 matrices are repacked by this x86 AVX2 build; Q8_0, Q5_0,
  Q6_K and F16 are not);
* ``llama_kv_cache``: one cache per attention kind, its cells, layers, and K / V sizes from the
  preset: sliding-window layers in their own smaller cache (gpt-oss), MLA's single compressed K
  of kv_lora_rank + n_rot per token and no V (deepseek2).

Needs a llama-server binary (the `llama_server` fixture); without one this fails, never skips.
Self-contained (stdlib HTTP, own process handling), as test_synth_loads.py.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from llama_http import running_server

from abtest.models import presets, synth
from abtest.models.desc import ModelDesc, read_model
from abtest.models.vram import ContextParams, cpu_buffers, gguf_offsets

pytestmark = pytest.mark.integration

TINY = [name for name, p in presets.PRESETS.items() if name.endswith("-arch-tiny")]
N_CTX = 2048
N_UBATCH = 512  # llama.cpp's default -ub
HEALTH_TIMEOUT_S = 60.0
MIB = 1024 * 1024
FILE_TYPE = {"q4_0": "Q4_0", "q8_0": "Q8_0", "f16": "F16", "mxfp4": "MXFP4 MoE",  # as print_info names them
             "q4_k_m": "Q4_K - Medium"}

_INFO = re.compile(r"print_info: (\S+(?: \S+)?)\s*= (.*?)\s*$")
_BUF = re.compile(r"load_tensors:\s+(CPU_Mapped|CPU_REPACK) model buffer size =\s*([0-9.]+) MiB")
_KV = re.compile(r"llama_kv_cache: size =\s*[0-9.]+ MiB \(\s*(\d+) cells,\s*(\d+) layers.*K \(f16\):\s*([0-9.]+) MiB, V \(f16\):\s*([0-9.]+) MiB")


def test_every_arch_has_a_reduced_preset() -> None:
    archs = {p.arch for p in presets.PRESETS.values() if not p.stand_in}
    assert {presets.PRESETS[n].arch for n in TINY} == archs == {"gpt-oss", "qwen3moe", "phimoe", "deepseek", "deepseek2"}


def _complete(base: str, prompt: str) -> list[int]:
    body = {"prompt": prompt, "n_predict": 8, "temperature": 0, "ignore_eos": True, "cache_prompt": False,
            "return_tokens": True}
    req = urllib.request.Request(f"{base}/completion", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        res = json.loads(r.read())
    assert res["tokens_predicted"] == 8
    return [int(t) for t in res["tokens"]]


def _serve(server: Path, model: Path, log_path: Path) -> tuple[list[int], list[int], str]:
    """Launch, wait for /health, two greedy completions, stop; the two token lists and the log."""
    args = ("-c", str(N_CTX), "-np", "1", "-ngl", "0", "-t", "1", "-fa", "on", "-lv", "4")
    with running_server(server, model, log_path, args, HEALTH_TIMEOUT_S) as base:
        a = _complete(base, "the quick brown fox jumps over the lazy dog")
        b = _complete(base, "hello world")
    return a, b, log_path.read_text(errors="replace")


def _expected_info(p: presets.Preset, d: ModelDesc) -> dict[str, str]:
    want = {
        "arch": p.arch, "n_layer": p.n_layer, "n_embd": p.n_embd, "n_head": p.n_head, "n_head_kv": p.n_head_kv,
        "n_embd_head_k": p.head_dim, "n_embd_head_v": p.head_dim_value, "n_ff": p.n_ff,
        "n_expert": p.n_expert, "n_expert_used": p.n_expert_used, "n_vocab": p.n_vocab,
        # phimoe's file carries a window its graph ignores: llama.cpp reports 0, as desc.swa_layers says
        "n_swa": d.n_swa if d.swa_layers else 0,
    }
    if p.arch != "phimoe":  # phimoe's experts are n_ff wide; it has no expert_feed_forward_length
        want["n_ff_exp"] = p.n_ff_exp
    if p.arch in ("deepseek", "deepseek2"):
        want.update(n_layer_dense_lead=p.n_layer_dense_lead, n_expert_shared=p.n_expert_shared)
    if p.arch == "deepseek2":
        want.update(n_lora_q=p.q_lora_rank, n_lora_kv=p.kv_lora_rank, n_embd_head_k_mla=p.head_dim_k_mla,
                    n_embd_head_v_mla=p.head_dim_v_mla, n_rot=p.n_rot)
    return {k: str(v) for k, v in want.items()}


def _expected_kv(p: presets.Preset, d: ModelDesc) -> list[tuple[int, int, float, float]]:
    """(cells, layers, K MiB, V MiB) of each cache, in the order llama.cpp creates them."""
    k_cell = p.n_head_kv * p.head_dim * 2  # f16 bytes per cell and layer
    v_cell = 0 if d.is_mla else p.n_head_kv * p.head_dim_value * 2  # MLA: V is read out of the cached latent K

    def cache(cells: int, layers: int) -> tuple[int, int, float, float]:
        return cells, layers, round(cells * layers * k_cell / MIB, 2), round(cells * layers * v_cell / MIB, 2)

    if not d.swa_layers:
        return [cache(N_CTX, p.n_layer)]
    # llama-kv-cache-iswa.cpp: the SWA cache holds n_swa + n_ubatch cells, padded to 256, at most n_ctx
    swa_cells = min(N_CTX, -(-min(N_CTX, p.sliding_window + N_UBATCH) // 256) * 256)
    return [cache(N_CTX, p.n_layer - len(d.swa_layers)), cache(swa_cells, len(d.swa_layers))]


def _params(text: str) -> float:
    value, unit = text.split()
    return float(value) * {"K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}[unit]


@pytest.mark.parametrize("name", TINY)
def test_reduced_arch_preset_loads_and_prints_what_it_claims(name: str, tmp_path: Path, llama_server: Path) -> None:
    p = presets.PRESETS[name]
    res = synth.write_synth(tmp_path / synth.synth_file_name(name, None), name)
    assert res.size_bytes < 60e6, "a CI preset should stay at tens of MB"
    desc = read_model(res.path)
    a, b, log = _serve(llama_server, res.path, tmp_path / "server.log")

    assert all(0 <= t < p.n_vocab for t in a + b)
    assert a != b, f"two prompts gave the same tokens {a}: the model is numerically dead (NaN or constant logits)"

    info: dict[str, str] = {}
    for line in log.splitlines():
        m = _INFO.search(line)
        if m:
            info.setdefault(m.group(1).strip(), m.group(2))
    want = _expected_info(p, desc)
    assert {k: info.get(k) for k in want} == want
    assert info["file type"] == FILE_TYPE[p.default_qtype]
    # llama.cpp counts every tensor element ("%.2f M"): the same count as ModelDesc.total_params
    assert _params(info["model params"]) == pytest.approx(desc.total_params, abs=0.006e6)

    bufs = {m.group(1): float(m.group(2)) for m in _BUF.finditer(log)}
    # vram.is_repacked: a 2-D MUL_MAT or 3-D MUL_MAT_ID weight of a type this x86 build repacks;
    # deepseek2's per-head attn_k_b / attn_v_b (3-D, MUL_MAT) stay in the mapped file
    pred = cpu_buffers(desc, ContextParams(n_ctx=N_CTX), gguf_offsets(res.path))
    assert (bufs.get("CPU_Mapped", 0.0), bufs.get("CPU_REPACK", 0.0)) == (
        round(pred.model_mapped_mib, 2), round(pred.model_repack_mib, 2))

    kv = [(int(c), int(n), float(k), float(v)) for c, n, k, v in _KV.findall(log)]
    assert kv == _expected_kv(p, desc)
