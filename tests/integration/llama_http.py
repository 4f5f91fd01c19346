"""What the integration tests that start llama-server themselves share: a free port, /health's
status while the model loads, and a server started, waited for and stopped (`running_server`)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_status(url: str) -> int | None:
    """The HTTP status of GET url (503 while llama-server loads), None when nothing listens yet."""
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


@contextlib.contextmanager
def running_server(server: Path, model: Path, log_path: Path, args: Sequence[str],
                 health_timeout_s: float = 120.0) -> Iterator[str]:
    """A llama-server on `model` with `args` (host and port added), its output in `log_path`;
    yields its base URL once /health answers 200 and stops its process group afterwards. A server
    that exits or never gets healthy fails the test with the log's tail."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(server), "-m", str(model), "--host", "127.0.0.1", "--port", str(port), *args],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,  # own process group, killed below
        )
        try:
            deadline = time.monotonic() + health_timeout_s
            while get_status(f"{base}/health") != 200:
                if proc.poll() is not None:
                    tail = log_path.read_text(errors="replace")[-3000:]
                    pytest.fail(f"llama-server exited with {proc.returncode} loading {model.name}:\n{tail}")
                if time.monotonic() > deadline:
                    pytest.fail(f"llama-server not healthy after {health_timeout_s}s; log: {log_path}")
                time.sleep(0.1)
            yield base
        finally:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=15)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
