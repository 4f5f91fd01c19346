"""Evidence files under stress: two runs started in the same second, abtest killed by SIGKILL
mid-run, a disk that fills up mid-run. What was measured is kept, nothing is merged, the end is
one line."""

from __future__ import annotations

import errno
import json
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fakes import SCRIPTED_PY
from fakes.scripted import read_chunk_log
from faultkit import assert_no_orphans, read_ok

from abtest.errors import EXIT_USAGE, EvidenceError
from abtest.evidence import FLUSH_INTERVAL_S, read_evidence
from abtest.measure import runner as runner_mod
from abtest.measure.runner import Runner


def test_two_runs_in_the_same_second_write_two_files_and_two_logs(scripted, cfg_for, spawned, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The names have a 1-second stamp: two runs that share it (and --out) must not share a file."""
    out = tmp_path / "evidence"
    same = out / "20261201T000000-tiny.jsonl"
    monkeypatch.setattr(runner_mod, "evidence_path", lambda cfg, model: same)
    cfg = cfg_for(scripted({}), arms=["a"])
    first = Runner(cfg).execute()
    second = Runner(cfg).execute()
    assert first.evidence_path != second.evidence_path
    assert sorted(out.glob("*.jsonl")) == sorted([first.evidence_path, second.evidence_path])
    logs = []
    for result in (first, second):
        ev = read_ok(result.evidence_path)
        assert len(ev.arm_starts) == 1 and len(ev.requests) == result.n_requests == 2  # not merged: n not doubled
        assert ev.manifest is not None and ev.manifest.run_id == result.evidence_path.stem
        logs.append(Path(ev.arm_starts[0].log_path))
    assert logs[0] != logs[1]
    for log in logs:
        assert log.read_text().count("# abtest: starting") == 1, log
    assert_no_orphans(spawned, marker=tmp_path)


def _wrapper_with_chunk_log(tmp_path: Path, script: dict, chunk_log: Path) -> Path:
    """A `llama-server` stand-in that also logs what it sent (tests/fakes/scripted.py --chunk-log)."""
    d = tmp_path / "bin-chunks"
    d.mkdir()
    (d / "script.json").write_text(json.dumps(script))
    wrapper = d / "llama-server"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} {SCRIPTED_PY} --script @{d / "script.json"} '
                       f'--chunk-log {chunk_log} "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


def _abtest_run(wrapper: Path, model: Path, prompts: Path, out: Path, *extra: str,
                preexec: Any = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "abtest", "run", "--model", str(model), "--server-bin", str(wrapper),
         "--arm", "a=-ngl 99", "--runs", "400", "--warmup", "0", "--max-tokens", "8", "--concurrency", "2",
         "--prompts", str(prompts), "--out", str(out), "--quiet", "--stall-timeout", "5", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=preexec,
    )


def test_sigkill_mid_run_loses_no_record_that_ended_a_flush_interval_before(tiny_moe: Path, prompts: Path,
                                                                            tmp_path: Path) -> None:
    """SIGKILL runs no handler: what the writer thread had not written is lost. Every request the
    server finished at least FLUSH_INTERVAL_S before the kill (the client ends it a moment later)
    must be in the file, counted against the server's own log of stream ends."""
    chunks = tmp_path / "chunks.jsonl"
    out = tmp_path / "evidence"
    proc = _abtest_run(_wrapper_with_chunk_log(tmp_path, {"schedule": {"ttft_ms": 2, "itl_ms": 3}}, chunks),
                       tiny_moe, prompts, out)
    deadline = time.monotonic() + 60
    while sum(1 for c in _chunk_log(chunks) if c.kind == "end") < 30:
        if proc.poll() is not None:
            pytest.fail(f"abtest exited early ({proc.returncode}): {proc.communicate()[1]}")
        assert time.monotonic() < deadline, "too few requests in time"
        time.sleep(0.05)
    time.sleep(FLUSH_INTERVAL_S + 0.5)  # more requests end meanwhile, the first 30 are now due
    assert proc.poll() is None, proc.communicate()[1]
    t_kill_ns = time.perf_counter_ns()  # CLOCK_MONOTONIC, the clock of the chunk log
    proc.kill()
    proc.communicate(timeout=10)
    ended = [c for c in _chunk_log(chunks) if c.kind == "end"]
    due = [c for c in ended if c.t_ns <= t_kill_ns - int(FLUSH_INTERVAL_S * 1e9)]
    (path,) = out.glob("*.jsonl")
    ev = read_evidence(path)
    assert ev.manifest is not None and ev.partial
    assert all("truncated last line" in p for p in ev.problems), ev.problems
    assert len(due) >= 20, (len(due), len(ended))
    assert len(due) <= len(ev.requests) <= len(ended), (len(due), len(ev.requests), len(ended))
    assert_no_orphans([ev.arm_starts[0].pid], marker=tmp_path)


def _chunk_log(path: Path) -> list[Any]:
    return read_chunk_log(path) if path.exists() else []


def _file_size_limit(limit_bytes: int) -> Callable[[], None]:
    def preexec() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
    return preexec


def test_a_write_failure_mid_run_stops_the_run_with_one_line_and_exit_2(scripted, tiny_moe: Path, prompts: Path,
                                                                        tmp_path: Path) -> None:
    """A real write failure from the kernel, mid-run: the file may grow to 64 KiB (RLIMIT_FSIZE),
    then write() fails (EFBIG, as ENOSPC on a full disk). The run stops: servers stopped, what was
    written kept, one line naming the file and the cause, exit 2 (docs/cli.md)."""
    out = tmp_path / "evidence"
    proc = _abtest_run(scripted({"schedule": {"ttft_ms": 2, "itl_ms": 1}}), tiny_moe, prompts, out,
                       preexec=_file_size_limit(64 * 1024))
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_USAGE, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    (path,) = out.glob("*.jsonl")
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"abtest: error: writing evidence to {path} failed (File too large)"), lines
    assert path.stat().st_size <= 64 * 1024
    ev = read_evidence(path)
    assert ev.manifest is not None and len(ev.requests) > 10 and ev.partial
    assert len(ev.arm_starts) == 1
    assert_no_orphans([ev.arm_starts[0].pid], marker=tmp_path)


@pytest.mark.parametrize("schedule", ["sequential", "interleaved"])
def test_disk_full_mid_run_stops_every_server_and_keeps_the_records(scripted, cfg_for, spawned, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    schedule: str) -> None:
    """ENOSPC at the writer's os.write seam after 40 writes: Runner.execute raises EvidenceError
    (the CLI's one line, exit 2), every server of every arm is stopped, the lines before are kept."""
    import abtest.evidence as evidence_mod

    real_write = evidence_mod.os.write
    calls = {"n": 0}

    def write(fd: int, data: Any) -> int:
        calls["n"] += 1
        if calls["n"] > 40:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(evidence_mod.os, "write", write)
    cfg = cfg_for(scripted({"schedule": {"itl_ms": 1}}), arms=["a", "b"], runs=200, schedule=schedule)
    with pytest.raises(EvidenceError, match=r"failed \(No space left on device\)") as info:
        Runner(cfg).execute()
    assert "\n" not in str(info.value)
    monkeypatch.undo()
    assert len(spawned) == (2 if schedule == "interleaved" else 1)
    assert_no_orphans(spawned, marker=tmp_path)
    (path,) = (tmp_path / "evidence").glob("*.jsonl")
    ev = read_evidence(path)
    assert ev.manifest is not None and len(ev.requests) >= 10
