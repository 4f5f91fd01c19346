"""Synthetic GGUFs load in the real llama-server and generate varied (noise) tokens.

Needs a llama-server binary, found as a run finds it (the `llama_server` fixture: --server-bin,
$ABTEST_LLAMA_SERVER, PATH, the cache). Without one this fails (never skips): `make test` builds one.
Self-contained on purpose (stdlib HTTP, own process handling): it tests synth, not abtest.server.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from llama_http import running_server

from abtest.models import presets, synth

pytestmark = pytest.mark.integration

HEALTH_TIMEOUT_S = 120.0


def _post_json(url: str, body: dict[str, object], timeout: float = 120) -> dict[str, object]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


@pytest.mark.parametrize("preset", ["tiny-moe", "dense-small"])
def test_synthetic_model_generates_varied_tokens(preset: str, tmp_path: Path, llama_server: Path) -> None:
    server = llama_server
    model = synth.write_synth(tmp_path / f"{preset}.gguf", preset).path
    log_path = tmp_path / "server.log"
    with running_server(server, model, log_path, ("-c", "512", "-ngl", "0", "-t", "2"), HEALTH_TIMEOUT_S) as base:
        res = _post_json(f"{base}/completion", {
            "prompt": "hello", "n_predict": 16, "temperature": 0, "ignore_eos": True,
            "cache_prompt": False, "return_tokens": True,
        })
    assert res["tokens_predicted"] == 16
    tokens = res["tokens"]
    assert isinstance(tokens, list) and len(tokens) == 16
    assert len(set(tokens)) > 1, f"all 16 tokens identical ({tokens[0]}): scales or model numerically degenerate"
    assert all(0 <= t < presets.PRESETS[preset].n_vocab for t in tokens)
