"""The `abtest` command: a thin click layer over the library.

Each command group lives in its own module (run, report, server, model). Only this package
prints errors or exits: library code raises `AbtestError`s, mapped here to the exit codes of
docs/cli.md.
"""

from __future__ import annotations

import sys
import time
import traceback

import click

from .. import __version__
from ..cache import cache_root
from ..errors import EXIT_INTERNAL, EXIT_INTERRUPTED, AbtestError
from ..interrupts import ignore_interrupts

# Each command's module is imported when that command runs (or `--help` lists them all): the run
# path then pays for its own imports only, part of the start-up CPU docs/performance.md measures.
_COMMANDS = {"run": "run", "report": "report", "server": "server", "model": "model", "sweep": "sweep"}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in _COMMANDS:
            return None
        import importlib

        mod = importlib.import_module(f"{__name__}.{_COMMANDS[cmd_name]}")
        command: click.Command = getattr(mod, cmd_name)
        return command

EPILOG = """\b
Examples:
  # build llama-server (cached in ~/.cache/abtest)
  abtest server install
  abtest model synth tiny.gguf --preset tiny-moe
  # baseline vs --cpu-moe, evidence/*.jsonl
  abtest run --model tiny-moe --runs 3
  # mean ± σ, deltas, significance
  abtest report evidence/*.jsonl
  # the best --n-cpu-moe for a VRAM budget
  abtest sweep --model m.gguf --vram-budget 9GiB

Exit codes: 0 ok, 1 regression found, 2 usage error, 3 missing binary or model,
4 partial run, 5 no evidence tonight (report --history), 70 internal error,
130 interrupted (docs/cli.md).
"""


@click.group(cls=_LazyGroup, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="abtest")
def cli() -> None:
    """abtest: is this inference-server configuration better than that one, on this box?

    Launches llama-server arms (e.g. all weights on the GPU vs MoE experts in system RAM),
    streams the same prompts through each, timestamps every token, samples VRAM, and writes
    evidence that `abtest report` turns into a decision.
    """



def main(argv: list[str] | None = None) -> None:
    """Entry point: run the click group, map AbtestError to one line on stderr and its exit code."""
    try:
        cli.main(args=argv, prog_name="abtest", standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt):
        ignore_interrupts()  # a second Ctrl-C now would end abtest by the signal (-2), not with 130
        click.echo("abtest: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except AbtestError as exc:
        click.echo(f"abtest: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except Exception as exc:  # not SystemExit: a bug, or an OS failure nothing else caught
        where = _save_traceback(exc)
        click.echo(f"abtest: internal error: {type(exc).__name__}: {exc} — a bug in abtest unless the "
                   f"cause is plain (disk full, permissions); traceback: {where}", err=True)
        sys.exit(EXIT_INTERNAL)
    sys.exit(0)


def _save_traceback(exc: BaseException) -> str:
    """The traceback into <cache>/logs/crash-<time>.txt (for a bug report); where it went."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        path = cache_root() / "logs" / f"crash-{time.strftime('%Y%m%dT%H%M%S')}-{id(exc) & 0xffff:04x}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"abtest {__version__}: {' '.join(sys.argv)}\n{text}", encoding="utf-8")
        return str(path)
    except OSError:
        return "not saved (the cache is not writable)"
