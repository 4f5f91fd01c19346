"""`ServerProcess`: one inference server on a free loopback port, in its own process group.

Lifecycle: choose a free port -> spawn (argv list, never a shell; output to a log file beside the
evidence) -> poll ``/health`` (503 while the model loads is normal; 200 is ready, once a process of
our group is seen listening on the port) -> measure -> stop: SIGTERM to the process group, wait
(llama-server takes a few seconds to exit), then SIGKILL the group. Every live server is also
registered so that an interrupted run stops them all: no orphan processes. On Linux the kernel also
kills a server whose abtest died (PR_SET_PDEATHSIG): note that this fires when the *thread* that
started the server exits, so start servers from a thread that outlives them (the runner uses the
main thread).
"""

from __future__ import annotations

import atexit
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import LaunchError
from .api import ApiClient, ApiError

# Log lines that mean "the port was taken between choosing and binding": retry on another port.
_BIND_FAILURES = ("couldn't bind", "could not bind", "address already in use", "failed to bind")

# What a server's own log says when it fails to start, most telling first, with the next step.
# The first line of the attempt's log matching a pattern is quoted in the LaunchError.
_LAUNCH_HINTS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("out of memory", "insufficient memory", "failed to allocate", "unable to allocate", "cudamalloc failed",
      "cannot allocate memory", "bad_alloc"),
     "not enough memory for this arm: free memory, lower --ctx-size, or keep MoE experts in system RAM "
     "(--arm cpu-moe, ncmoe<N>)"),
    (("unknown model architecture",),
     "this llama-server does not know the model's architecture: update it (abtest server install) or check --model"),
    (("error loading model", "failed to load model", "failed to create_context", "gguf_init"),
     "the model did not load: check --model (a complete, uncorrupted GGUF this llama-server supports)"),
    (("invalid argument", "unknown argument", "error while handling argument"),
     "the server refused an argument: check the arm's flags (--arm / --arms-file)"),
    (_BIND_FAILURES, "every port tried was taken by another process: free some ports or retry"),
)
_LOG_STAMP = re.compile(r"^\d+(?:\.\d+)+ (?:[IWEDT] )?")

_live: set[ServerProcess] = set()

# Set by `raise_client_priority`: the niceness servers are started with (the original one).
SERVER_NICE: int | None = None


def raise_client_priority(boost: int = 5) -> int | None:
    """Make the measuring client win the CPU against the servers it measures.

    On a box with few cores, llama-server's busy threads can keep the client off the CPU for tens
    of milliseconds, and every token that arrives meanwhile is stamped late and in a bunch. abtest
    therefore lowers its own niceness by `boost` where permitted (root or CAP_SYS_NICE) and starts
    servers at the original niceness, so the server is not slowed, only pre-empted by the client's
    brief wake-ups. Returns the client's new niceness, or None where it was not permitted.
    """
    global SERVER_NICE
    if SERVER_NICE is not None:  # once per process: a second Runner must not boost again
        return os.getpriority(os.PRIO_PROCESS, 0)
    original = os.getpriority(os.PRIO_PROCESS, 0)
    try:
        os.setpriority(os.PRIO_PROCESS, 0, original - boost)
    except OSError:
        return None
    SERVER_NICE = original
    return original - boost


_live_lock = threading.Lock()


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS says is free now (another process may still take it before we bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def log_tail(path: Path, n: int = 8) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    return [ln for ln in lines if ln.strip()][-n:]


@dataclass(frozen=True)
class LaunchSpec:
    """What to start: argv without host/port (they are added per attempt), where to log."""

    name: str
    argv: tuple[str, ...]
    log_path: Path
    host: str = "127.0.0.1"
    health_timeout_s: float = 600.0
    stop_timeout_s: float = 15.0
    env: tuple[tuple[str, str], ...] = ()
    # How this server kind is told where to listen; {host} and {port} are filled per attempt.
    listen_args: tuple[str, ...] = ("--host", "{host}", "--port", "{port}")


class ServerProcess:
    """A running server. Use `start()`; always `stop()` (or use it as a context manager)."""

    def __init__(self, spec: LaunchSpec) -> None:
        self.spec = spec
        self.port = 0
        self.argv: list[str] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self.t_spawn_ns = 0
        self.ready_ms: float | None = None
        self.exit_code: int | None = None
        self.stop_ms: float | None = None
        self._log_offset = 0  # where this attempt's output starts in the (shared) log file

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else 0

    @property
    def base_url(self) -> str:
        return f"http://{self.spec.host}:{self.port}"

    def start(self, attempts: int = 3) -> ServerProcess:
        """Spawn and wait for health; retry on another port if the chosen one was taken."""
        for attempt in range(1, attempts + 1):
            self._spawn()
            try:
                self._wait_healthy()
                return self
            except LaunchError as exc:
                self.stop()
                if attempt < attempts and self._bind_failed():
                    continue
                raise exc
            except BaseException:
                # Ctrl-C / SIGTERM while the model loads: no server is left behind.
                self.stop()
                raise
        raise AssertionError("unreachable")

    def _spawn(self) -> None:
        self.port = free_port(self.spec.host)
        listen = [a.format(host=self.spec.host, port=self.port) for a in self.spec.listen_args]
        self.argv = [*self.spec.argv, *listen]
        self.spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.spec.log_path, "ab")
        self._log_offset = log.tell()
        log.write(f"# abtest: starting {self.argv!r}\n".encode())
        log.flush()
        env = {**os.environ, **dict(self.spec.env)}
        server_nice = SERVER_NICE
        prctl = _prctl()  # looked up here: the child, between fork and exec, must not import

        def in_child() -> None:
            # The server runs at the niceness abtest had before it raised its own priority.
            if server_nice is not None:
                os.setpriority(os.PRIO_PROCESS, 0, server_nice)
            # The kernel SIGKILLs the server if abtest dies, even by SIGKILL (Linux PR_SET_PDEATHSIG).
            if prctl is not None:
                prctl(1, signal.SIGKILL, 0, 0, 0)

        try:
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: stop() can signal the whole group
                env=env,
                preexec_fn=in_child,
            )
        except OSError as exc:
            raise LaunchError(
                f"arm '{self.spec.name}': cannot execute {self.argv[0]} ({exc.strerror}) — check --server-bin"
            ) from exc
        finally:
            log.close()
        self.t_spawn_ns = time.perf_counter_ns()
        self.exit_code = None
        with _live_lock:
            _live.add(self)

    def _wait_healthy(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.spec.health_timeout_s
        with ApiClient(self.base_url, timeout_s=2.0) as client:
            while True:
                code = self.proc.poll()
                if code is not None:
                    self.exit_code = code
                    raise LaunchError(self._explain(f"{describe_exit(code)} before /health was ready"))
                try:
                    # A 200 from a process outside our group is someone else's server on the port we
                    # chose (taken before ours could bind): ours will exit with a bind error, retried.
                    if client.status("/health") == 200 and group_listens_on(self.pid, self.port) is not False:
                        self.ready_ms = (time.perf_counter_ns() - self.t_spawn_ns) / 1e6
                        return
                except ApiError:
                    pass  # not listening yet
                if time.monotonic() > deadline:
                    raise LaunchError(
                        self._explain(
                            f"did not become healthy within {self.spec.health_timeout_s:g} s (--health-timeout)",
                            "still loading or hung: raise --health-timeout for a big model on a slow disk, "
                            "or see the log for where it stopped",
                        )
                    )
                time.sleep(0.1)

    def attempt_log(self) -> list[str]:
        """The non-empty log lines of the latest launch attempt (the log file is shared by attempts)."""
        try:
            with open(self.spec.log_path, "rb") as fh:
                fh.seek(self._log_offset)
                text = fh.read().decode("utf-8", "replace")
        except OSError:
            return []
        return [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("# abtest:")]

    def _bind_failed(self) -> bool:
        text = " ".join(self.attempt_log()[-20:]).lower()
        return any(marker in text for marker in _BIND_FAILURES)

    def _explain(self, what: str, default_hint: str | None = None) -> str:
        """One line: what happened, the server's own words for why, the next step, the log."""
        cause, hint = explain_log(self.attempt_log(), default_hint)
        return (
            f"server for arm '{self.spec.name}' on port {self.port} {what}: {cause} — {hint}; "
            f"server log: {self.spec.log_path}"
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int | None:
        """SIGTERM the process group, wait up to stop_timeout_s, then SIGKILL it. Idempotent."""
        proc = self.proc
        if proc is None:
            return self.exit_code
        t0 = time.perf_counter_ns()
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=self.spec.stop_timeout_s)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
            self.stop_ms = (time.perf_counter_ns() - t0) / 1e6
        # Children that outlived the leader (none expected for llama-server) go too.
        _signal_group(proc.pid, signal.SIGKILL)
        self.exit_code = proc.returncode
        with _live_lock:
            _live.discard(self)
        return self.exit_code

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _prctl() -> Callable[..., int] | None:
    """libc's prctl (Linux), for PR_SET_PDEATHSIG; None elsewhere (atexit and the signal handlers
    still stop servers there, but not after abtest itself is SIGKILLed)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


def group_listens_on(pgid: int, port: int) -> bool | None:
    """Whether a process of group `pgid` holds the TCP socket listening on `port` (from /proc);
    None where /proc cannot say."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as fh:
                rows = fh.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            f = row.split()
            if len(f) > 9 and f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:  # 0A = LISTEN
                inodes.add(f[9])
    if not inodes:
        return None
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return None
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                if int(fh.read().rsplit(")", 1)[1].split()[2]) != pgid:
                    continue
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    return True
        except (OSError, ValueError, IndexError):
            continue
    return False


def explain_log(lines: Sequence[str], default_hint: str | None = None) -> tuple[str, str]:
    """(the server's most telling log line, the next step) for a server that failed or died."""
    for patterns, hint in _LAUNCH_HINTS:
        for line in lines:
            if any(p in line.lower() for p in patterns):
                return _LOG_STAMP.sub("", line.strip()), hint
    # Otherwise its last words, without the per-request lines (/health polls) that bury them.
    quiet = [ln for ln in lines if "log_server_r" not in ln]
    last = " | ".join(_LOG_STAMP.sub("", ln.strip()) for ln in quiet[-3:]) if quiet else "(no output)"
    return f"last log lines: {last}", default_hint or "check the model path, the arm's flags and free memory"


def describe_exit(code: int) -> str:
    """'exited (code 1)' or 'was killed by SIGKILL' for a Popen returncode."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited (code {code})"


def stop_all() -> None:
    """Stop every server this process started (atexit and signal handlers call this)."""
    with _live_lock:
        servers = list(_live)
    for srv in servers:
        srv.stop()


atexit.register(stop_all)


def version_text(binary: str | os.PathLike[str], timeout_s: float = 20.0) -> str:
    """What `BINARY --version` prints (llama-server prints it on stderr)."""
    try:
        out = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    text = (out.stdout + out.stderr).strip()
    lines = [ln for ln in text.splitlines() if "version" in ln.lower()]
    return (lines[0] if lines else text.splitlines()[0] if text else "unknown").strip()


def help_text(binary: str | os.PathLike[str], timeout_s: float = 20.0) -> str:
    try:
        out = subprocess.run([str(binary), "--help"], capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout + out.stderr


def supports_flag(help_output: str, flag: str) -> bool:
    """Whether `flag` appears as an option in a --help text (e.g. --fit only in newer builds)."""
    return any(tok.strip(",") == flag for line in help_output.splitlines() for tok in line.split())


def process_group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def wait_gone(pids: Sequence[int], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not any(process_group_alive(p) for p in pids):
            return True
        time.sleep(0.05)
    return False
