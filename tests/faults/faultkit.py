"""Helpers of the fault tests (fixtures live in conftest.py).

Every check of "no orphan" looks three ways: the PID is gone from /proc, its process group has no
member left (``killpg(pgid, 0)``), and no process anywhere still has this test's marker (its tmp
directory) on its command line, so a server re-parented to init would be found too.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from fakes import SCRIPTED_PY

from abtest.evidence import Evidence, read_evidence
from abtest.server.process import process_group_alive

PY = sys.executable
_n = itertools.count()


def next_id() -> int:
    return next(_n)


def write_wrapper(path: Path, script: dict[str, Any] | None = None, *, exec_: bool = True, prelude: str = "",
                  target: str | None = None) -> Path:
    """An executable `llama-server` stand-in: a shell script that runs the scripted server (or
    `target`, e.g. the real llama-server) with the arguments it was given. `exec_=False` keeps the
    shell as the process-group leader with the server as its child."""
    path.mkdir(parents=True, exist_ok=True)
    wrapper = path / "llama-server"
    if target is None:
        script_file = path / "script.json"
        script_file.write_text(json.dumps(script or {}))
        cmd = f'{PY} {SCRIPTED_PY} --script @{script_file} "$@"'
    else:
        cmd = f'{target} "$@"'
    wrapper.write_text(f"#!/bin/sh\n{prelude}{'exec ' if exec_ else ''}{cmd}\n")
    wrapper.chmod(0o755)
    return wrapper


def processes_mentioning(marker: str) -> list[int]:
    """PIDs of live processes whose command line contains `marker`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmdline = fh.read().replace(b"\0", b" ").decode("utf-8", "replace")
            with open(f"/proc/{entry}/stat") as fh:
                state = fh.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in cmdline and state != "Z":
            found.append(int(entry))
    return found


def assert_no_orphans(pids: list[int], marker: str | Path | None = None, timeout_s: float = 5.0) -> None:
    """Every PID and its process group gone, and no process left whose command line has `marker`."""
    deadline = time.monotonic() + timeout_s
    while True:
        alive = [p for p in pids if process_group_alive(p) or os.path.exists(f"/proc/{p}")]
        stray = processes_mentioning(str(marker)) if marker else []
        if not alive and not stray:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"processes left behind: groups/pids {alive}, by command line {stray}")
        time.sleep(0.05)


def read_ok(path: Path) -> Evidence:
    """The evidence file reads back whole: a manifest, no bad lines."""
    ev = read_evidence(path)
    assert ev.manifest is not None
    assert ev.problems == [], ev.problems
    return ev


def only_jsonl(directory: Path) -> Path:
    files = sorted(directory.glob("*.jsonl"))
    assert len(files) == 1, files
    return files[0]
