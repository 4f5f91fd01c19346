"""The VRAM model against the real CPU llama-server on every seed architecture's own graph.

For each `*-arch-tiny` preset (its default qtype) at three context sizes, llama-server -ngl 99
--fit off -np 1 -t 1 -fa on -lv 4 prints its buffers (abtest.server.log parses them); the
prediction of `vram.cpu_buffers` from the file's header must equal them to the printed 0.01 MiB:
the CPU_Mapped and CPU_REPACK model buffers, the KV cache (sliding-window layers in their own
cache, MLA's latent K only), the compute buffer (the arithmetic of `vram.compute_parts` per
architecture) and the output buffer. The contexts: 512 (the micro-batch and gpt-oss's window cache
both shrink to the context), 2048 and 8192.

Needs a llama-server binary (the `llama_server` fixture); without one this fails, never skips.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from llama_http import running_server

from abtest.models import presets, synth
from abtest.models.desc import read_model
from abtest.models.vram import ContextParams, cpu_buffers, gguf_offsets
from abtest.server.log import parse_memory_breakdown

pytestmark = pytest.mark.integration

TINY = [name for name, p in presets.PRESETS.items() if name.endswith("-arch-tiny")]
CONTEXTS = (512, 2048, 8192)
# the presets whose default is a K-quant mix also run in Q4_0 (the qtype the repack rule and the
# compute arithmetic were first checked with), and gpt-oss-tiny in Q4_K_M too (Q4_K is repacked)
EXTRA = [("gpt-oss-20b-arch-tiny", "q4_k_m"), ("qwen3-30b-a3b-arch-tiny", "q4_0"), ("deepseek-v2-lite-arch-tiny", "q4_0")]
CASES = [(n, None) for n in TINY] + EXTRA


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str | None], Path]:
    d = tmp_path_factory.mktemp("vram-archs")
    return {(n, q): synth.write_synth(d / synth.synth_file_name(n, q), n, q).path for n, q in CASES}


@pytest.mark.parametrize("n_ctx", CONTEXTS)
@pytest.mark.parametrize(("name", "qtype"), CASES)
def test_cpu_buffers_equal_what_llama_server_prints(files: dict[tuple[str, str | None], Path], name: str,
                                                    qtype: str | None, n_ctx: int, tmp_path: Path,
                                                    llama_server: Path) -> None:
    path = files[(name, qtype)]
    log = tmp_path / "server.log"
    args = ("-ngl", "99", "--fit", "off", "-c", str(n_ctx), "-np", "1", "-t", "1", "-fa", "on", "-lv", "4")
    with running_server(llama_server, path, log, args, 60.0):
        pass
    printed = parse_memory_breakdown(log.read_text(errors="replace"))["buffers"]
    pred = cpu_buffers(read_model(path), ContextParams(n_ctx=n_ctx), gguf_offsets(path))
    got = {
        "mapped": printed["CPU_Mapped"]["model_mib"],
        "repack": printed.get("CPU_REPACK", {}).get("model_mib", 0.0),
        "kv": printed["CPU"]["kv_mib"],
        "compute": printed["CPU"]["compute_mib"],
        "output": printed["CPU"]["output_mib"],
    }
    want = {
        "mapped": round(pred.model_mapped_mib, 2), "repack": round(pred.model_repack_mib, 2),
        "kv": round(pred.kv_mib, 2), "compute": round(pred.compute_mib, 2), "output": round(pred.output_mib, 2),
    }
    assert got == want
