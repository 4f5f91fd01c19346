"""What long commands show while they work (a live bar per arm, or only failures with --quiet), and SIGTERM as Ctrl-C."""

from __future__ import annotations

import signal
from types import FrameType
from typing import TYPE_CHECKING

import click

from ..analysis.metrics import decode_tps, decode_unmeasurable
from ..records import RequestRecord

# rich is imported by the live display when it is made, not here: with --quiet (cron, the
# benchmarks) a run never loads it, a part of `abtest run`'s start-up CPU (docs/performance.md).
if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import TaskID


class RichProgress:
    """Live display: arm, bucket, run i/N, the last request's decode tok/s (or why it has none)."""

    def __init__(self, console: Console) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = console
        self.bar = Progress(
            TextColumn("[bold]{task.fields[arm]}[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.tasks: dict[str, TaskID] = {}
        self.failed: dict[str, int] = {}

    def __enter__(self) -> RichProgress:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(None, None, None)

    def arm_begin(self, arm: str, total: int) -> None:
        self.tasks[arm] = self.bar.add_task(arm, total=total, arm=arm, detail="warming up")
        self.failed[arm] = 0

    @staticmethod
    def decode_label(r: RequestRecord) -> str:
        """The request's decode rate as the report defines it (`metrics.decode_tps`), or why it
        is not measurable (`metrics.decode_unmeasurable`); "" for a failed request (counted apart)."""
        rate = decode_tps(r)
        if rate is not None:
            return f"{rate:.1f} tok/s"
        return f"decode n/a ({decode_unmeasurable(r)})" if r.ok else ""

    def request_done(self, r: RequestRecord) -> None:
        task = self.tasks.get(r.arm)
        if task is None:
            return
        if not r.ok:
            self.failed[r.arm] += 1
        rate = self.decode_label(r)
        what = "warm-up" if r.warmup else f"run {r.run_index + 1}"
        fails = f" [red]{self.failed[r.arm]} failed[/]" if self.failed[r.arm] else ""
        self.bar.update(task, advance=1, detail=f"{r.bucket} {what} {rate}{fails}")

    def arm_end(self, arm: str, ok: bool, message: str) -> None:
        from rich.markup import escape

        # Server log lines hold brackets ("[MiB]"): escape them, and keep an error on one line.
        if ok:
            self.console.print(f"[green]{escape(arm)}[/]: {escape(message)}", soft_wrap=True)
        else:
            self.console.print(f"[red]abtest: arm {escape(arm)} failed:[/] {escape(message)}", soft_wrap=True)

    def note(self, message: str) -> None:
        from rich.markup import escape

        self.console.print(f"[dim]{escape(message)}[/]", soft_wrap=True)


class QuietProgress(RichProgress):
    """No live display (cron): only what failed reaches stderr, an arm at its end, failed requests
    in one line at the end of the run (`failure_line`)."""

    def __init__(self) -> None:
        self.n_done = 0
        self.n_failed = 0
        self.first_error: str | None = None

    def __enter__(self) -> QuietProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def arm_begin(self, arm: str, total: int) -> None:
        pass

    def request_done(self, r: RequestRecord) -> None:
        if r.warmup:
            return
        self.n_done += 1
        if not r.ok:
            self.n_failed += 1
            if self.first_error is None:
                self.first_error = f"{r.arm}: {r.error}"

    def arm_end(self, arm: str, ok: bool, message: str) -> None:
        if not ok:
            click.echo(f"abtest: arm {arm} failed: {message}", err=True)

    def failure_line(self) -> str | None:
        """"N of M measured requests failed (first: …)", or None when none did."""
        if not self.n_failed:
            return None
        return f"abtest: {self.n_failed} of {self.n_done} measured requests failed (first: {self.first_error})"

    def note(self, message: str) -> None:
        pass


def sigterm_as_interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM does what Ctrl-C does. Re-raised as SIGINT so that inside asyncio.run, asyncio's own
    SIGINT handler cancels the requests in flight at an await (a KeyboardInterrupt raised from here
    could land anywhere, e.g. inside the HTTP client's connection pool); elsewhere Python's default
    SIGINT handler raises KeyboardInterrupt. Where SIGINT is ignored (a background job), raise it here."""
    if signal.getsignal(signal.SIGINT) in (signal.SIG_IGN, signal.SIG_DFL, None):
        raise KeyboardInterrupt
    signal.raise_signal(signal.SIGINT)
