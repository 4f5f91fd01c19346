"""Shared fixtures. Integration tests need a real llama-server: they fail (never skip) without one."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def llama_server() -> Path:
    from abtest.errors import BinaryNotFound
    from abtest.server.discover import find_server

    try:
        return Path(find_server().path)
    except BinaryNotFound as exc:
        pytest.fail(f"integration tests need a real llama-server: {exc} (make test builds one)")


@pytest.fixture(scope="session")
def tiny_moe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from abtest.models.synth import write_synth

    out = tmp_path_factory.mktemp("models") / "tiny-moe.gguf"
    write_synth(out, "tiny-moe", "q4_0", seed=0)
    return out


@pytest.fixture
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """abtest's per-user cache in this test's tmp dir (models, hashes, builds), no $ABTEST_MODELS."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("ABTEST_CACHE", str(cache))
    monkeypatch.delenv("ABTEST_MODELS", raising=False)
    return cache
