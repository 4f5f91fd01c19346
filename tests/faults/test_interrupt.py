"""Ctrl-C and SIGTERM during `abtest run` (run as a subprocess, as a user or a CI runner does):
every server stopped (waiting for its slow exit, as llama-server's), evidence flushed and readable,
no run_end (the report shows a partial run), exit code 130, one line on stderr."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from faultkit import assert_no_orphans, only_jsonl, read_ok

from abtest.errors import EXIT_INTERRUPTED

# A slow server: 20 ms between tokens, 1 s to exit after SIGTERM (llama-server takes ~1.5 s).
SLOW = {"schedule": {"itl_ms": 20}, "term_delay_s": 1.0}


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as for a background job of a non-interactive shell


def _default_sigint() -> None:
    # As a terminal's foreground job gets it, whatever this test process inherited: `make test`
    # run with SIGINT ignored (nohup, cron, `cmd &` in a script) passes SIG_IGN on to children,
    # and Python leaves an ignored SIGINT ignored, so the Ctrl-C these tests send would do nothing.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


_STARTED: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def _no_run_left_behind() -> Iterator[None]:
    """A test that fails (a timeout) must not leave its `abtest run` (and so its servers) behind."""
    yield
    while _STARTED:
        proc = _STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)


def _start_run(wrapper: Path, model: Path, prompts: Path, out: Path, background: bool = False) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "abtest", "run", "--model", str(model), "--server-bin", str(wrapper),
         "--arm", "a=-ngl 99", "--arm", "b=-ngl 99", "--runs", "50", "--warmup", "0", "--max-tokens", "20",
         "--prompts", str(prompts), "--out", str(out), "--quiet", "--stall-timeout", "5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=_ignore_sigint if background else _default_sigint,
    )
    _STARTED.append(proc)
    return proc


def _wait_for_requests(out: Path, n: int, proc: subprocess.Popen[str], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        files = list(out.glob("*.jsonl"))
        if files and files[0].read_text().count('"kind":"request"') >= n:
            return
        if proc.poll() is not None:
            pytest.fail(f"abtest exited early ({proc.returncode}): {proc.communicate()[1]}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("no requests recorded in time")


@pytest.mark.parametrize(
    "signals",
    [("SIGINT",), ("SIGTERM",), ("SIGINT", "SIGINT"), ("SIGTERM", "bg")],
    ids=["ctrl-c", "sigterm", "ctrl-c-twice", "sigterm-sigint-ignored"],
)
def test_interrupt_stops_servers_keeps_evidence_exit_130(
    signals: tuple[str, ...], scripted, tiny_moe: Path, prompts: Path, tmp_path: Path
) -> None:
    wrapper = scripted(SLOW)
    out = tmp_path / "evidence"
    proc = _start_run(wrapper, tiny_moe, prompts, out, background="bg" in signals)
    _wait_for_requests(out, 2, proc)
    t0 = time.monotonic()
    for i, name in enumerate(s for s in signals if s != "bg"):
        if i:
            time.sleep(0.3)  # the second Ctrl-C lands while the server takes its time to exit
        proc.send_signal(getattr(signal, name))
    _, stderr = proc.communicate(timeout=30)
    elapsed = time.monotonic() - t0

    assert proc.returncode == EXIT_INTERRUPTED, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("abtest: interrupted — servers stopped; partial evidence kept:"), stderr
    ev = read_ok(only_jsonl(out))
    assert ev.partial and ev.run_end is None
    assert [s.arm for s in ev.arm_starts] == ["a"]  # arm b never started
    (end,) = ev.arm_ends
    assert end.arm == "a" and end.status == "failed" and "interrupted" in (end.error or "")
    assert end.n_requests == len([r for r in ev.requests if not r.warmup]) >= 2
    assert end.stop_ms is not None and end.stop_ms >= 900  # waited for the server's own exit
    assert elapsed < 10, elapsed
    assert_no_orphans([ev.arm_starts[0].pid], marker=tmp_path)


def test_interrupt_while_the_server_loads_leaves_no_server(scripted, tiny_moe: Path, prompts: Path,
                                                           tmp_path: Path) -> None:
    """Ctrl-C before any server is healthy: the loading server is stopped too."""
    wrapper = scripted({"load_s": 30})
    out = tmp_path / "evidence"
    proc = _start_run(wrapper, tiny_moe, prompts, out)
    deadline = time.monotonic() + 20
    while not list(out.glob("*.a.log")) or "load_model" not in list(out.glob("*.a.log"))[0].read_text():
        assert time.monotonic() < deadline, "server never started"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == EXIT_INTERRUPTED, stderr
    ev = read_ok(only_jsonl(out))
    assert ev.partial and ev.arm_starts == [] and ev.requests == []
    assert_no_orphans([], marker=tmp_path)


def test_abtest_killed_by_sigkill_takes_its_servers_along(scripted, tiny_moe: Path, prompts: Path,
                                                          tmp_path: Path) -> None:
    """No handler runs on SIGKILL (OOM killer, a CI timeout): the kernel kills the servers
    (PR_SET_PDEATHSIG), and the evidence so far still reads back, as a partial run."""
    out = tmp_path / "evidence"
    proc = _start_run(scripted(SLOW), tiny_moe, prompts, out)
    _wait_for_requests(out, 2, proc)
    proc.kill()
    proc.communicate(timeout=10)
    from abtest.evidence import read_evidence

    ev = read_evidence(only_jsonl(out))
    assert ev.manifest is not None and ev.partial and len(ev.requests) >= 2
    assert all("truncated last line" in p for p in ev.problems), ev.problems
    assert_no_orphans([ev.arm_starts[0].pid], marker=tmp_path)


@pytest.mark.parametrize("delay_s", [0.0, 0.5, 1.05])
def test_a_storm_of_ctrl_c_during_the_exit_still_ends_with_130(delay_s: float, scripted, tiny_moe: Path,
                                                                prompts: Path, tmp_path: Path) -> None:
    """Ctrl-C, then Ctrl-C every 10 ms until abtest is gone (an impatient user, a supervisor's
    repeated SIGINT): the cleanup still finishes and the exit is 130, never death by the signal
    (-2, which every storm gave before interrupts were ignored once abtest was stopping)."""
    out = tmp_path / "evidence"
    proc = _start_run(scripted(SLOW), tiny_moe, prompts, out)
    _wait_for_requests(out, 2, proc)
    proc.send_signal(signal.SIGINT)
    time.sleep(delay_s)  # before, during and after the server's 1 s exit
    deadline = time.monotonic() + 15
    while proc.poll() is None and time.monotonic() < deadline:
        proc.send_signal(signal.SIGINT)
        time.sleep(0.01)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == EXIT_INTERRUPTED, stderr
    ev = read_ok(only_jsonl(out))
    assert ev.partial and [e.arm for e in ev.arm_ends] == ["a"]
    assert_no_orphans([ev.arm_starts[0].pid], marker=tmp_path)
