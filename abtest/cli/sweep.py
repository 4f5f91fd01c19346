"""`abtest sweep`: one arm per --n-cpu-moe N, predicted before launch, measured, advised."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource
from rich.console import Console

from ..config import RunConfig
from ..errors import EXIT_PARTIAL, ConfigError
from .progress import QuietProgress, RichProgress, sigterm_as_interrupt

DEFAULT_BUCKETS = "tok128"  # the sweep's prompts without --buckets/--prompts (docs/sweep.md, "Time to advice")

EPILOG = """\b
Examples:
  # auto: ends, then bisect
  abtest sweep --model gpt-oss-20b --vram-budget 9GiB
  abtest sweep --model m.gguf --ncmoe 0,8,16,24 --runs 5
  abtest sweep --model m.gguf --vram-budget 12GiB --quiet --out out/sweep
  # re-make the report only
  abtest sweep --report out/sweep/20250101T000000-m.jsonl
  # the frontier
  abtest sweep --model m.gguf --vram-budget 12GiB --ctx 4096,16384,65536
  abtest sweep --model m.gguf --vram-budget 9GiB --load-mode both \\
      --finalist-sessions 3
  abtest sweep -m m.gguf --objective capacity --slo "ttft_p95<=500ms" \\
      --concurrency 1,2,4,8
  abtest sweep -m m.gguf --objective capacity --slo "tpot_p95<=60ms" \\
      --concurrency auto
  # two GPUs, a budget each: -ts x --n-cpu-moe
  abtest sweep -m m.gguf --vram-budget 24GiB,24GiB
  abtest sweep -m m.gguf --vram-budget 24GiB,20GiB --ts "1,1;3,2;2,1"

\b
Each setting N runs as arm ncmoe<N> (-ngl 99 --n-cpu-moe N; -c, -np, -t,
-fa, --fit off pinned as in `abtest run`) into one evidence file. Before
anything is launched, every setting's VRAM is predicted from the GGUF's
tensor sizes and written into the manifest; a setting predicted over the free
VRAM (less --margin) is skipped, never launched. At the end: the advice line
and a Markdown table on stdout, OUT/sweep-report.md and
OUT/sweep-vram-speed.png.

\b
Beside the settings: llama.cpp's own placement at the same budget (arm "fit":
--fit on, --fit-target = free VRAM - budget, no -ngl; skipped on a CPU build),
and the finalists (the pick, its runner-up, fit) in --finalist-sessions server
sessions each, so that "pick vs fit" has an interval over sessions. If fit is
under budget and the pick is not shown faster, the advice is fit's flags.
With --ctx A,B,C: each context size in turn, and the frontier (fastest
setting that fits per context) in OUT/sweep-frontier.md and .png.

\b
--objective capacity --slo S: every setting's server (-np = the highest level)
runs each --concurrency level in turn (default 1,2,4,8; auto = the capacity
search of `abtest run --concurrency auto`), and the pick is the setting that
carries the most req/s within the SLO, per server session as `abtest report`
computes capacity; the pick and its runner-up are compared over sessions.
A setting that meets the SLO at no level is ranked last; one that meets it at
every level is a lower bound ("at least"). Not with --ctx A,B,C.

\b
--vram-budget A,B (a budget per GPU, CUDA order): each -ts of the grid
(--ts) is searched over --n-cpu-moe as above, every setting predicted per
GPU first (abtest/models/split.py) and skipped when over any GPU's free
memory or far over its budget; arms ncmoe<N>-ts<a>-<b>. A setting fits when
its per-PID peak on every GPU is within that GPU's budget. The fit arm gets
--fit-target M0,M1 (free - budget per GPU). Report: OUT/sweep-report.md.
"""


def _budgets(ctx: click.Context, param: click.Parameter, value: str | None) -> float | tuple[float, ...] | None:
    """One size (the single-GPU sweep), or one per GPU in CUDA order (24GiB,24GiB)."""
    if value is None:
        return None
    from ..measure.devsweep import parse_budgets

    try:
        budgets = parse_budgets(value)
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from exc
    return budgets[0] if len(budgets) == 1 else tuple(budgets)


def _size(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    from ..models.vram import parse_size_mib

    try:
        return parse_size_mib(value)
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from exc


@click.command(epilog=EPILOG)
@click.option("--model", "-m", help="Model name (see `abtest model list`) or path to a MoE GGUF file.")
@click.option("--vram-budget", callback=_budgets, default=None, metavar="SIZE[,SIZE...]",
              help="GPU memory the server may use, e.g. 9GiB, 12000MiB; one per GPU (24GiB,24GiB, CUDA order) "
                   "searches -ts x --n-cpu-moe. Default: the free VRAM at start.")
@click.option("--ts", "ts_grid", default=None, metavar="auto|A,B;C,D",
              help="With a budget per GPU: the -ts proportions searched (auto: even, 3:2 and 2:1 each way).")
@click.option("--ncmoe", default="auto", show_default=True, metavar="auto|N,N,...",
              help="Settings to run: a list (0,8,16,24; ranges 0-24:4; 'all' = every layer) or auto.")
@click.option("--margin", callback=_size, default="512MiB", show_default=True, metavar="SIZE",
              help="Skip a setting predicted within this much of the free VRAM.")
@click.option("--cuda-overhead", type=click.FloatRange(min=0), default=None, metavar="MIB",
              help="Per-process CUDA memory beyond llama.cpp's buffers (default: abtest.vram.CUDA_OVERHEAD_MIB).")
@click.option("--runs", default=2, show_default=True, type=click.IntRange(min=1),
              help="Repetitions of every prompt per server session.")
@click.option("--warmup", default=1, show_default=True, type=click.IntRange(min=0), help="Warm-up requests per setting.")
@click.option("--max-tokens", default=64, show_default=True, type=click.IntRange(min=2),
              help="Tokens generated per request.")
@click.option("--prompts", type=click.Path(dir_okay=False),
              help="Prompt JSONL (default: the shipped set, abtest/data/prompts/default.jsonl).")
@click.option("--buckets", default=None,
              help=f"Comma-separated buckets to run, e.g. seed004,tok128 (default: {DEFAULT_BUCKETS} of the "
                   "built-in prompts; every bucket of --prompts FILE).")
@click.option("--seed", default=42, show_default=True, help="Sampling seed sent with every request.")
@click.option("--ctx-size", type=click.IntRange(min=64), default=None,
              help="Server context (-c). Default: longest prompt + max tokens.")
@click.option("--ctx", "ctx_list", default=None, metavar="N,N,...",
              help="Context sizes for the frontier, e.g. 4096,16384,65536 (or 4k,16k,64k); one sweep per size.")
@click.option("--fit-competitor", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
              help="Measure llama.cpp's --fit at the same budget: auto = when a GPU is seen; on = also on a CPU build.")
@click.option("--session-rule", type=click.Choice(["sequential", "fixed"]), default="sequential", show_default=True,
              help="sequential: a further finalist session only while the comparison the advice rests on is "
                   "undecided (pick vs fit, --load-mode none vs mmap) and its estimate favours the challenger; "
                   "fixed: every finalist --finalist-sessions times.")
@click.option("--cpu-moe-reference", is_flag=True,
              help="Also measure the all-on-CPU setting (--cpu-moe) for the × column; without it, the search "
                   "measures it only when nothing smaller fits.")
@click.option("--finalist-sessions", type=click.IntRange(min=1), default=2, show_default=True,
              help="Server sessions for the pick, its runner-up and fit (1: estimates, no intervals).")
@click.option("--load-mode", type=click.Choice(["mmap", "none", "both"]), default="mmap", show_default=True,
              help="How weights load: mmap (the server's default), none (--load-mode none for every arm), "
                   "both (the pick measured again with --load-mode none).")
@click.option("--objective", type=click.Choice(["speed", "capacity"]), default="speed", show_default=True,
              help="What the pick maximises: speed = decode tok/s at concurrency 1; capacity = the req/s "
                   "carried within --slo over --concurrency levels.")
@click.option("--slo", default=None, metavar="OBJECTIVES",
              help='For --objective capacity: what every level is judged by, e.g. '
                   '"ttft_p95<=500ms,tpot_p95<=60ms,e2e_p99<=10s".')
@click.option("--concurrency", "concurrency", default=None, metavar="N,N,...|auto",
              help="For --objective capacity: the closed-loop levels each setting runs (default 1,2,4,8), "
                   "or auto (a capacity search per server session, up to --search-max).")
@click.option("--search-time-s", default=120.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="With --concurrency auto: seconds per server session of the capacity search.")
@click.option("--search-max", default=16, show_default=True, type=click.IntRange(min=2),
              help="With --concurrency auto: the highest concurrency probed (also every server's -np).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Server threads (-t). Default: all cores but one.")
@click.option("--flash-attn", type=click.Choice(["on", "off", "auto"]), default="on", show_default=True)
@click.option("--server-bin", type=click.Path(), help="llama-server to use (else $ABTEST_LLAMA_SERVER, PATH, cache).")
@click.option("--models-dir", type=click.Path(file_okay=False), help="Where model names are looked up first.")
@click.option("--out", "out_dir", default="evidence", show_default=True, type=click.Path(file_okay=False),
              help="Evidence directory; the report files go here too (with --report: beside the evidence unless given).")
@click.option("--health-timeout", default=600.0, show_default=True, help="Seconds to wait for /health to answer 200.")
@click.option("--stall-timeout", default=60.0, show_default=True, help="Seconds without data mid-stream = failed.")
@click.option("--request-timeout", default=600.0, show_default=True, help="Seconds for a whole request.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Only re-make the report from this sweep evidence file (nothing is launched).")
@click.option("--quiet", "-q", is_flag=True, help="No live display; errors still go to stderr.")
def sweep(model: str | None, vram_budget: float | tuple[float, ...] | None, ts_grid: str | None, ncmoe: str, margin: float, cuda_overhead: float | None,
          runs: int, warmup: int, max_tokens: int, prompts: str | None, buckets: str, seed: int, ctx_size: int | None,
          threads: int | None, flash_attn: str, server_bin: str | None, models_dir: str | None, out_dir: str,
          health_timeout: float, stall_timeout: float, request_timeout: float, report_path: str | None,
          quiet: bool, ctx_list: str | None, fit_competitor: str, finalist_sessions: int, load_mode: str,
          objective: str, slo: str | None, concurrency: str | None, search_time_s: float,
          search_max: int, session_rule: str, cpu_moe_reference: bool) -> None:
    """Find the fastest --n-cpu-moe N for a VRAM budget: predict, skip what cannot fit, measure, advise."""
    from ..analysis.sweep import report_from_file

    if report_path:  # into --out when it is given, else beside the evidence
        given = click.get_current_context().get_parameter_source("out_dir") is not ParameterSource.DEFAULT
        click.echo(_outputs(report_path, Path(out_dir) if given else Path(report_path).parent), nl=False)
        return
    if not model:
        raise click.UsageError("--model is required (or --report FILE to re-make a report)")
    load = _load_options(objective, slo, concurrency, search_time_s, search_max)

    from ..measure.sweep import SweepRunner, parse_ctx_list, parse_ncmoe
    from ..models.vram import CUDA_OVERHEAD_MIB

    try:
        parse_ncmoe(ncmoe, 10**6)  # syntax only here; the model's layer count is checked once it is read
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--ncmoe") from exc
    try:
        contexts = parse_ctx_list(ctx_list)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--ctx") from exc
    if contexts and ctx_size is not None and len(contexts) == 1:
        raise click.UsageError("give the context once: --ctx-size N or --ctx N,N,...")
    if contexts and len(contexts) == 1:
        ctx_size, contexts = contexts[0], None
    cfg = RunConfig(
        model=model, arms=(), runs=runs, blocks=1, warmup=warmup, max_tokens=max_tokens, prompts_path=prompts,
        buckets=_buckets(buckets, prompts), seed=seed, ctx_size=ctx_size, threads=threads,
        flash_attn=flash_attn, out_dir=out_dir, models_dir=models_dir, server_bin=server_bin,
        health_timeout_s=health_timeout, stall_timeout_s=stall_timeout, request_timeout_s=request_timeout, **load,
    )
    console = Console(stderr=True)
    display = QuietProgress() if quiet else RichProgress(console)
    previous = signal.signal(signal.SIGTERM, sigterm_as_interrupt)
    try:
        with display:
            runner = SweepRunner(cfg, ncmoe, vram_budget, margin if margin is not None else 512.0,
                                 CUDA_OVERHEAD_MIB if cuda_overhead is None else cuda_overhead, display,
                                 argv=["abtest", *sys.argv[1:]], contexts=contexts, fit_competitor=fit_competitor,
                                 finalist_sessions=finalist_sessions, load_mode=load_mode, objective=objective,
                                 ts_grid=ts_grid, session_rule=session_rule, cpu_moe_reference=cpu_moe_reference)
            result = runner.execute()
    finally:
        signal.signal(signal.SIGTERM, previous)
    # time to advice: the sweep's start to the advice built from the evidence (printed, and kept in
    # the trail so that a re-made report shows it too)
    if runner.device_budgets is not None:
        from ..analysis.devsweep import device_report_from_file

        device_report_from_file(result.evidence_path)
    else:
        report_from_file(result.evidence_path)
    runner.record_time_to_advice(time.perf_counter() - runner.t0)
    click.echo(str(result.evidence_path))
    click.echo(_outputs(result.evidence_path, Path(out_dir), console=None if quiet else console), nl=False)
    if result.arms_failed or result.n_failed:
        sys.exit(EXIT_PARTIAL)


def _buckets(text: str | None, prompts: str | None) -> tuple[str, ...]:
    """--buckets as given; without it the sweep's default (one 128-token bucket of the built-in
    prompts: the speed objective is decode at one depth, docs/sweep.md "Time to advice"), or every
    bucket of a --prompts file."""
    if text is None:
        return () if prompts else tuple(DEFAULT_BUCKETS.split(","))
    return tuple(b for b in text.split(",") if b)


def _load_options(objective: str, slo: str | None, concurrency: str | None, search_time_s: float,
                  search_max: int) -> dict[str, Any]:
    """The RunConfig fields of the load each setting runs at; UsageError/BadParameter in one line."""
    if objective != "capacity":
        if slo or concurrency:
            raise click.UsageError("--slo and --concurrency are for --objective capacity (the speed objective "
                                   "measures decode at concurrency 1)")
        return {}
    if not slo:
        raise click.UsageError('--objective capacity ranks settings by the most load within an SLO: give --slo, '
                               'e.g. --slo "ttft_p95<=500ms"')
    from ..analysis.slo import parse_slo
    from ..measure.sweep import DEFAULT_CAPACITY_LEVELS

    try:
        parse_slo(slo)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="'--slo'") from exc
    text = (concurrency or "").strip().lower()
    if text == "auto":
        return dict(slo=slo, search="concurrency", search_time_s=search_time_s, search_max=float(search_max))
    try:
        levels = tuple(int(v) for v in text.split(",") if v.strip()) if text else DEFAULT_CAPACITY_LEVELS
    except ValueError:
        raise click.BadParameter(f"{concurrency!r}: use a list such as 1,2,4,8 or auto",
                                 param_hint="'--concurrency'") from None
    if any(v < 1 for v in levels) or len(set(levels)) != len(levels) or len(levels) < 2:
        raise click.BadParameter(f"{concurrency!r}: two or more different levels >= 1, e.g. 1,2,4,8 (or auto)",
                                 param_hint="'--concurrency'")
    return dict(slo=slo, concurrency_levels=tuple(sorted(levels)))


def _outputs(evidence: str | Path, out_dir: Path, console: Console | None = None) -> str:
    """Write the report files (and, for a frontier sweep, the frontier's); return the Markdown to print."""
    from ..analysis.devsweep import build_device_sweep, is_device_sweep
    from ..analysis.sweep import frontier_from_file, read_sidecar
    from ..evidence import read_evidence
    from ..render.sweep import frontier_markdown, render_markdown, write_frontier_plot, write_outputs

    ev = read_evidence(Path(evidence))
    if is_device_sweep(ev):  # a budget per GPU: the -ts x --n-cpu-moe report
        from ..render.devsweep import render_device_markdown, write_device_outputs

        drep = build_device_sweep(ev, read_sidecar(Path(evidence)))
        dmd = write_device_outputs(drep, out_dir)
        text = render_device_markdown(drep)
        dpage = _html_page(out_dir / "sweep-report.html", text, f"abtest sweep: {drep.model}", None)
        if console is not None:
            console.print(f"report: {dmd}, {dpage}")
        return text
    reps, points = frontier_from_file(evidence)
    md, png = write_outputs(reps[0], out_dir)
    page = _html_page(out_dir / "sweep-report.html", render_markdown(reps[0]), f"abtest sweep: {reps[0].model}", png)
    if len(reps) == 1:
        if console is not None:
            console.print(f"report: {md}, {page}" + (f", plot: {png}" if png else ""))
        return render_markdown(reps[0])
    text = frontier_markdown(reps, points)
    fmd = out_dir / "sweep-frontier.md"
    fmd.write_text(text, encoding="utf-8")
    fpng = write_frontier_plot([(reps[0].budget_mib, points)], out_dir / "sweep-frontier.png", reps[0].model)
    fpage = _html_page(out_dir / "sweep-frontier.html", text, f"abtest sweep frontier: {reps[0].model}", fpng)
    if console is not None:
        console.print(f"report: {fmd}, {fpage}" + (f", plot: {fpng}" if fpng else ""))
    return text


def _html_page(path: Path, markdown: str, title: str, png: Path | None) -> Path:
    """The Markdown report beside it as one self-contained page, its plot inline."""
    from ..render.html import render_sweep_html

    path.write_text(render_sweep_html(markdown, title, png.read_bytes() if png else None), encoding="utf-8")
    return path
