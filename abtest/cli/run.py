"""`abtest run`: launch the arms, stream the prompts, write evidence."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import click

from ..config import RunConfig, resolve_arms, shipped_profiles
from ..errors import EXIT_INTERRUPTED, EXIT_PARTIAL, ConfigError
from ..interrupts import ignore_interrupts
from .progress import QuietProgress, RichProgress, sigterm_as_interrupt

EPILOG = """\b
Examples:
  abtest run --model tiny-moe --runs 3
  abtest run --model gpt-oss-20b --runs 5 --arm ncmoe12 --arm cpu-moe
  abtest run --model ./m.gguf --arm a="-ngl 99" \\
      --arm b="-ngl 99 --n-cpu-moe 8"
  abtest run --model m.gguf --arms-file llama-server --buckets tok128,tok1024
  abtest run --model m.gguf --arms-file ./my-arms.toml \\
      --prompts ./my-prompts.jsonl
  abtest run --model m.gguf --concurrency 8 --rate 4 --arrivals poisson
  abtest run --model m.gguf --concurrency 1,2,4,8 --runs 2
  abtest run --model m.gguf --rate 0.5,1,2,4 --parallel 8 --runs 4
  abtest run --model m.gguf --rate auto --slo "ttft_p95<=500ms" --parallel 8
  abtest run --model m.gguf --concurrency auto --slo "tpot_p95<=60ms" \\
      --search-max 16
  abtest run --model tiny-moe --blocks 4 --runs 2
  abtest run --model m.gguf --arm old="--cpu-moe" --arm new="--cpu-moe" \\
      --arm-build new=new
  abtest run --model moe.gguf --arm baseline --arm cpu-moe \\
      --arm dense="-ngl 99" --arm-model dense=smollm2-135m

\b
Default arms: baseline (-ngl 99) and cpu-moe (-ngl 99 --cpu-moe); ncmoe<N>
is -ngl 99 --n-cpu-moe N. Every arm gets the same pinned -ngl, --fit off, -c,
-np, -t and -fa unless it sets them. Each arm runs in --blocks server
sessions, in the order A B B A, so time and restarts fall on both arms alike.
Evidence: OUT/<timestamp>-<model>.jsonl plus one server log per arm; read it
with `abtest report`.
"""


AUTO = "auto"


def _levels(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, ...] | str:
    """"4" -> (4,); "1,2,4" -> (1, 2, 4): integers >= 1, each once, in the order given; "auto"."""
    if str(value).strip().lower() == AUTO:
        return AUTO
    try:
        levels = tuple(int(v) for v in str(value).split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected N or a list N,N,... of integers, got {value!r}") from None
    if not levels or any(v < 1 for v in levels):
        raise click.BadParameter(f"every level must be >= 1, got {value!r}")
    if len(set(levels)) != len(levels):
        raise click.BadParameter(f"levels must differ, got {value!r}")
    return levels


def _rates(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[float, ...] | str:
    """None -> (); "4" -> (4.0,); "0.5,1,2" -> (0.5, 1.0, 2.0): requests/s > 0, each once; "auto"."""
    if value is None:
        return ()
    if str(value).strip().lower() == AUTO:
        return AUTO
    try:
        rates = tuple(float(v) for v in str(value).split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected requests/s R or a list R,R,..., got {value!r}") from None
    if not rates or any(not r > 0 or r == float("inf") for r in rates):
        raise click.BadParameter(f"every rate must be > 0 requests/s, got {value!r}")
    if len(set(rates)) != len(rates):
        raise click.BadParameter(f"rates must differ, got {value!r}")
    return rates


def _positive(ctx: click.Context, param: click.Parameter, value: int) -> int:
    if value is not None and value <= 0:
        raise click.BadParameter(f"must be >= 1, got {value}")
    return value


_SECONDS = click.FloatRange(min=0, min_open=True)


@click.command(epilog=EPILOG)
@click.option("--model", "-m", required=True, help="Model name (see `abtest model list`) or path to a GGUF file.")
@click.option("--arm", "arm_flags", multiple=True, metavar='NAME="ARGS"',
              help='An arm: NAME="server args" or a ready-made name (baseline, cpu-moe, ncmoe<N>). Repeatable.')
@click.option("--arms-file", metavar="TOML|NAME",
              help=f"Arm profile: a TOML path, or the name of a shipped profile ({', '.join(shipped_profiles())}),"
                   " e.g. --arms-file llama-server.")
@click.option("--runs", default=3, show_default=True, callback=_positive,
              help="Repetitions of every prompt per arm in each block.")
@click.option("--blocks", default=2, show_default=True, type=click.IntRange(min=1, max=1000),
              help="Server sessions per arm, run A B B A with a restart each: the report compares arms "
                   "across sessions, so 2 or more are needed for a verdict.")
@click.option("--warmup", default=2, show_default=True, type=click.IntRange(min=0),
              help="Warm-up requests per server session and load level (recorded, flagged, left out of statistics).")
@click.option("--max-tokens", default=128, show_default=True, type=click.IntRange(min=2),
              help="Tokens generated per request (ignore_eos: every arm generates exactly this many).")
@click.option("--concurrency", default="1", show_default=True, callback=_levels, metavar="N[,N...]|auto",
              help="Requests in flight at once (closed loop); a list (1,2,4,8) runs each level in turn in every "
                   "session, each with its warm-up, the servers started with -np of the highest; auto (with "
                   "--slo) searches for the highest concurrency within the SLO. With --rate: the server's slots (-np).")
@click.option("--rate", default=None, callback=_rates, metavar="R[,R...]|auto",
              help="Open-loop load: requests/s sent on a fixed schedule (not waiting for responses); a list "
                   "(0.5,1,2,4) offers each rate in turn in every session, each with its warm-up, on one "
                   "server whose slots (-np) are --parallel, else --concurrency; auto (with --slo) searches for "
                   "the highest rate within the SLO.")
@click.option("--slo", metavar="OBJECTIVES",
              help='With --rate auto / --concurrency auto: the objectives each probe is judged by, e.g. '
                   '"ttft_p95<=500ms,tpot_p95<=60ms"; recorded, and the report\'s default --slo.')
@click.option("--search-time-s", default=300.0, show_default=True, type=_SECONDS,
              help="Capacity search: seconds per arm session; no probe starts that would end past it.")
@click.option("--search-max", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Capacity search: the highest load probed (concurrency: default 32, also the -np; rate: none).")
@click.option("--search-start", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Capacity search: the first load probed (default 1: concurrency 1, or 1 req/s); it then "
                   "doubles until the SLO fails or the arm saturates, and bisects.")
@click.option("--parallel", type=click.IntRange(min=1), default=None, metavar="N",
              help="Server slots (-np) of every arm. Default: the highest --concurrency (with --rate: "
                   "--concurrency, default 1). Recorded in every request's load label (server_slots).")
@click.option("--arrivals", type=click.Choice(["uniform", "poisson"]), default="uniform", show_default=True)
@click.option("--schedule", type=click.Choice(["sequential", "interleaved"]), default="sequential", show_default=True,
              help="sequential: one server up at a time; interleaved: all up, requests alternate A B B A.")
@click.option("--endpoint", type=click.Choice(["completion", "chat"]), default="completion", show_default=True)
@click.option("--prompts", type=click.Path(dir_okay=False),
              help="Prompt JSONL (default: the shipped set, abtest/data/prompts/default.jsonl).")
@click.option("--buckets", default="", help="Comma-separated buckets to run (default: all), e.g. tok128,seed004.")
@click.option("--seed", default=42, show_default=True, help="Sampling seed sent with every request.")
@click.option("--temperature", default=0.0, show_default=True)
@click.option("--ctx-size", type=click.IntRange(min=64), default=None,
              help="Server context (-c). Default: longest prompt + max tokens, per slot.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Server threads (-t). Default: all cores.")
@click.option("--flash-attn", type=click.Choice(["on", "off", "auto"]), default="on", show_default=True)
@click.option("--http-client", type=click.Choice(["raw", "httpx"]), default="raw", show_default=True,
              help="HTTP layer of the timed requests: raw asyncio (least client delay, docs/performance.md) or httpx.")
@click.option("--server-bin", type=click.Path(), help="llama-server to use (else $ABTEST_LLAMA_SERVER, PATH, cache).")
@click.option("--arm-server", "arm_servers", multiple=True, metavar="ARM=PATH",
              help="The llama-server of one arm (build A vs build B); the others use --server-bin. Repeatable.")
@click.option("--arm-build", "arm_builds", multiple=True, metavar="ARM=NAME",
              help="One arm runs the cache build of this name (abtest server install --name) or id. Repeatable.")
@click.option("--arm-model", "arm_models", multiple=True, metavar="ARM=MODEL",
              help="One arm runs this model (name or path) instead of --model: MoE vs dense in one run. Repeatable.")
@click.option("--models-dir", type=click.Path(file_okay=False), help="Where model names are looked up first.")
@click.option("--out", "out_dir", default="evidence", show_default=True, type=click.Path(file_okay=False),
              help="Evidence directory.")
@click.option("--health-timeout", default=600.0, show_default=True, type=_SECONDS,
              help="Seconds to wait for /health to answer 200.")
@click.option("--stall-timeout", default=60.0, show_default=True, type=_SECONDS,
              help="Seconds without data mid-stream = failed.")
@click.option("--request-timeout", default=600.0, show_default=True, type=_SECONDS,
              help="Seconds for a whole request.")
@click.option("--margins", is_flag=True,
              help="After each arm's first session, one untimed greedy request per prompt with the top-3 "
                   "logprobs: the report gives the tokens and logit margin where two arms' outputs part.")
@click.option("--quiet", "-q", is_flag=True, help="No live display (for cron); errors still go to stderr.")
def run(model: str, arm_flags: tuple[str, ...], arms_file: str | None, runs: int, blocks: int, warmup: int, max_tokens: int,
        concurrency: tuple[int, ...] | str, rate: tuple[float, ...] | str, parallel: int | None, slo: str | None,
        search_time_s: float, search_max: float | None, search_start: float | None, arrivals: str, schedule: str, endpoint: str, prompts: str | None,
        buckets: str, seed: int, temperature: float, ctx_size: int | None, threads: int | None, flash_attn: str,
        http_client: str, server_bin: str | None, arm_servers: tuple[str, ...], arm_builds: tuple[str, ...],
        arm_models: tuple[str, ...], models_dir: str | None, out_dir: str, health_timeout: float, stall_timeout: float,
        request_timeout: float, margins: bool, quiet: bool) -> None:
    """Measure arms of an inference server on the same prompts; write evidence JSONL."""
    from ..measure.runner import Runner

    try:
        arms = resolve_arms(list(arm_flags), arms_file, servers=arm_servers, builds=arm_builds, models=arm_models)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc
    search = "concurrency" if concurrency == AUTO else "rate" if rate == AUTO else None
    if concurrency == AUTO and rate == AUTO:
        raise click.UsageError("search one of --concurrency auto and --rate auto, not both")
    if search and not slo:
        raise click.UsageError(f"--{search} auto searches for the highest load within an SLO: give --slo, "
                               'e.g. --slo "ttft_p95<=500ms"')
    if slo:
        from ..analysis.slo import parse_slo

        try:
            parse_slo(slo)
        except ConfigError as exc:
            raise click.BadParameter(str(exc), param_hint="'--slo'") from exc
    if search == "concurrency" and rate:
        raise click.UsageError("--concurrency auto is a closed loop: drop --rate")
    concurrency = (1,) if concurrency == AUTO else concurrency
    rate = () if rate == AUTO else rate
    assert not isinstance(concurrency, str) and not isinstance(rate, str)
    if len(concurrency) > 1 and rate:
        raise click.UsageError("--concurrency levels are a closed loop: drop --rate, or give --rate levels and one "
                               "--concurrency (the server's slots; or --parallel)")
    if schedule == "interleaved" and (max(concurrency) > 1 or rate):
        raise click.UsageError("--schedule interleaved runs one request at a time: drop --concurrency/--rate")
    bucket_list = [b for b in buckets.split(",") if b]
    _check_prompts(prompts, bucket_list)
    cfg = RunConfig(
        model=model, arms=arms, runs=runs, blocks=blocks, warmup=warmup, max_tokens=max_tokens, concurrency=concurrency[0],
        concurrency_levels=concurrency if len(concurrency) > 1 else (),
        rate=rate[0] if len(rate) == 1 else None, rate_levels=rate if len(rate) > 1 else (), parallel=parallel,
        search=search, slo=slo, search_time_s=search_time_s, search_max=search_max, search_start=search_start,
        arrivals=arrivals, schedule=schedule, endpoint=endpoint, prompts_path=prompts,
        buckets=tuple(b for b in buckets.split(",") if b), seed=seed, temperature=temperature, ctx_size=ctx_size,
        threads=threads, flash_attn=flash_attn, http_client=http_client, out_dir=out_dir, models_dir=models_dir,
        server_bin=server_bin,
        health_timeout_s=health_timeout, stall_timeout_s=stall_timeout, request_timeout_s=request_timeout,
        margins=margins,
    )
    display: QuietProgress | RichProgress
    if quiet:
        display = QuietProgress()  # rich is never imported: a part of the start-up CPU
    else:
        from rich.console import Console

        display = RichProgress(Console(stderr=True))
    previous = signal.signal(signal.SIGTERM, sigterm_as_interrupt)
    runner = None
    try:
        with display:
            runner = Runner(cfg, display, argv=["abtest", *sys.argv[1:]])
            result = runner.execute()
    except KeyboardInterrupt:
        ignore_interrupts()
        # The runner has stopped every server and flushed what was measured; the file has no
        # run_end record, so `abtest report` shows the run as partial.
        kept = runner.writer.path if runner is not None and runner.writer is not None else None
        where = f"; partial evidence kept: {kept} (abtest report {kept})" if kept else "; nothing was measured"
        click.echo(f"abtest: interrupted — servers stopped{where}", err=True)
        sys.exit(EXIT_INTERRUPTED)
    signal.signal(signal.SIGTERM, previous)  # not on the way out of an interrupt: that ignores it
    click.echo(str(result.evidence_path))
    if not quiet:
        from rich.markup import escape

        display.console.print(
            f"{result.n_requests} requests, {result.n_failed} failed, {result.duration_s:.1f} s; "
            f"report: abtest report {escape(str(result.evidence_path))}",
            soft_wrap=True,  # a command to copy: never wrapped inside the path
        )
    if quiet and isinstance(display, QuietProgress) and (line := display.failure_line()):
        click.echo(f"{line}; abtest report {result.evidence_path}", err=True)
    if result.arms_failed or result.n_failed:
        sys.exit(EXIT_PARTIAL)


def _check_prompts(prompts: str | None, buckets: list[str]) -> None:
    """Read the prompt file now, so a bad one is a usage error before anything is launched."""
    from ..measure.prompts import load_prompts

    try:
        load_prompts(Path(prompts) if prompts else None, buckets or None)
    except ConfigError as exc:
        hint = "'--buckets'" if str(exc).startswith(("no prompts in buckets", "--buckets ")) else "'--prompts'"
        raise click.BadParameter(str(exc), param_hint=hint) from exc
