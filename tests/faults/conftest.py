"""Fixtures for the fault tests: a scripted server behind a llama-server-shaped wrapper, tiny prompt
files, a RunConfig with short timeouts, and the PIDs of every server spawned (see faultkit.py for
the "no process left behind" checks)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from faultkit import next_id, write_wrapper

from abtest.config import RunConfig, resolve_arms
from abtest.server.process import ServerProcess


@pytest.fixture
def scripted(tmp_path: Path) -> Callable[..., Path]:
    """make(script_dict, exec_=True) -> path of a wrapper that starts the scripted server."""

    def make(script: dict[str, Any] | None = None, *, exec_: bool = True) -> Path:
        return write_wrapper(tmp_path / f"bin{next_id()}", script, exec_=exec_)

    return make


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    p = tmp_path / "prompts.jsonl"
    p.write_text(
        '{"id": "p1", "bucket": "b", "text": "Hello there, scripted server.", "target_tokens": null}\n'
        '{"id": "p2", "bucket": "b", "text": "A second prompt.", "target_tokens": null}\n'
    )
    return p


@pytest.fixture
def one_prompt(tmp_path: Path) -> Path:
    p = tmp_path / "one-prompt.jsonl"
    p.write_text('{"id": "p1", "bucket": "b", "text": "Hello.", "target_tokens": null}\n')
    return p


@pytest.fixture
def cfg_for(tmp_path: Path, tiny_moe: Path, prompts: Path) -> Callable[..., RunConfig]:
    """cfg_for(server_bin, arms=["a"], **overrides): a RunConfig with fault-test timeouts."""

    def make(server_bin: Path | str, arms: list[str] | None = None, **kw: Any) -> RunConfig:
        base: dict[str, Any] = dict(
            model=str(tiny_moe), arms=resolve_arms([f"{a}=-ngl 99" if "=" not in a else a for a in arms or ["a"]], None),
            runs=1, blocks=1, warmup=0, max_tokens=8, prompts_path=str(prompts), out_dir=str(tmp_path / "evidence"),
            server_bin=str(server_bin), threads=1, health_timeout_s=10.0, stall_timeout_s=0.5,
            request_timeout_s=5.0,
        )
        base.update(kw)
        return RunConfig(**base)

    return make


@pytest.fixture
def spawned(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """PIDs (= process groups) of every server ServerProcess spawns during the test."""
    pids: list[int] = []
    original = ServerProcess._spawn

    def spawn(self: ServerProcess) -> None:
        original(self)
        pids.append(self.pid)

    monkeypatch.setattr(ServerProcess, "_spawn", spawn)
    yield pids


