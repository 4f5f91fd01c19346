"""How abtest takes Ctrl-C and SIGTERM: held during cleanup, ignored once it is stopping.

One interrupt stops a run: every server is stopped, the evidence flushed, exit 130. A user who
presses Ctrl-C again (or a supervisor that sends SIGTERM twice) must not cut that cleanup short,
nor turn the exit into a death by signal (status -2) before the one line and code 130 are out.
Only the main thread can set handlers; elsewhere (a test driving the runner from a thread) these
do nothing.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def ignore_interrupts() -> None:
    """From now on SIGINT and SIGTERM do nothing: abtest is already stopping. (SIGKILL still ends
    it; the servers go with it, PR_SET_PDEATHSIG.)"""
    if threading.current_thread() is threading.main_thread():
        for sig in _SIGNALS:
            signal.signal(sig, signal.SIG_IGN)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM during cleanup; raise KeyboardInterrupt after it if one came.

    A user who presses Ctrl-C while llama-server takes its few seconds to exit would otherwise
    interrupt the wait and leave the arm's record unwritten.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []

    def hold(signum: int, frame: object) -> None:
        caught.append(signum)

    previous = {sig: signal.signal(sig, hold) for sig in _SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
    if caught:
        raise KeyboardInterrupt
