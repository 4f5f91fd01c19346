"""`abtest report`: evidence files in, tables, verdict and plots out; `--history` for the nightly gate."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click
from rich.console import Console

from ..analysis.arms import load_evidence
from ..analysis.cost import DEFAULT_GPU_HOUR_COST
from ..analysis.gate import HistoryResult, Thresholds, evaluate_history, raise_for_outcome
from ..analysis.nights import load_history
from ..analysis.report import build_report
from ..errors import ConfigError
from ..render.history import history_markdown, history_terminal, render_history
from ..render.html import render_history_html, render_html
from ..render.report import render, render_csv, render_markdown, terminal_renderable

EPILOG = """\b
Examples:
  abtest report evidence/run-2026-11-20.jsonl
  abtest report evidence/ --baseline baseline --format markdown > report.md
  abtest report evidence/*.jsonl --out out/ --gpu-hour-cost 2.10
  abtest report evidence/*.jsonl --format html > report.html
  abtest report --history evidence/nightly --format markdown --out out/trends
  abtest report --history evidence/nightly --html evidence/nightly/index.html

\b
With --history DIR, DIR holds YYYY-MM-DD/ sub-directories of evidence files;
tonight (--night, else the newest folder) is gated per (model, arm) against
the median of the nights before it of the same configuration. Exits 1 on a
regression, 5 when tonight (or a model/arm of the trailing nights) has no
evidence, 0 otherwise: also with too few nights, where it says "no verdict
yet".
"""

FORMATS = ["terminal", "markdown", "csv", "json", "html"]


@click.command(epilog=EPILOG)
@click.argument("files", nargs=-1, type=click.Path(path_type=Path))
@click.option("--history", "history_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Nightly mode: a directory of YYYY-MM-DD/ evidence folders; exits 1 on a regression, "
                   "5 without evidence tonight.")
@click.option("--night", metavar="YYYY-MM-DD",
              help="History: the night to gate (default: the newest YYYY-MM-DD folder); exits 5 when it "
                   "holds no evidence.")
@click.option("--baseline", metavar="NAME",
              help="Arm the others are compared with (default: an arm named baseline, else the config's first).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="terminal", show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Also write report.md, report.json, report.csv, report.html (one self-contained page) "
                   "and PNG plots to this directory, and name them.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the page as one self-contained HTML file here (with --history: the nightly "
                   "index, trends per model and arm and links to each night's report/report.html).")
@click.option("--gpu-hour-cost", type=click.FloatRange(min=0), default=DEFAULT_GPU_HOUR_COST, show_default=True,
              help="USD per GPU-hour for the cost columns.")
@click.option("--slo", metavar="OBJECTIVES",
              help='Judge load levels (run --concurrency 1,2,4): e.g. "ttft_p95<=500ms,tpot_p95<=60ms,e2e_p99<=10s"; '
                   "adds goodput and each arm's capacity within them, with intervals over sessions. "
                   "Default: the --slo the run searched with (run --rate auto), if any.")
@click.option("--allow-mixed-models", is_flag=True,
              help="Show files whose model SHA256 differs for one model name side by side instead of refusing.")
@click.option("--no-recognise-identical", "no_recognise", is_flag=True,
              help="Rank arms even when they cannot differ (the same effective command line, or only offload "
                   "flags on a server without a GPU): what an A/A calibration needs.")
@click.option("--decode-threshold", type=click.FloatRange(min=0, max=100, max_open=True), default=Thresholds.decode_pct,
              show_default=True, help="History: % decode tok/s drop that counts as a regression (below 100: a rate "
                                      "cannot drop by more, so 100 would never trigger).")
@click.option("--ttft-threshold", type=click.FloatRange(min=0), default=Thresholds.ttft_pct,
              show_default=True, help="History: % TTFT rise that counts as a regression.")
@click.option("--vram-threshold", type=click.FloatRange(min=0), default=Thresholds.vram_pct,
              show_default=True, help="History: % VRAM rise that counts (together with --vram-floor-mib).")
@click.option("--vram-floor-mib", type=click.FloatRange(min=0), default=Thresholds.vram_mib,
              show_default=True, help="History: VRAM rise in MiB that must also be exceeded.")
@click.option("--alpha", type=click.FloatRange(min=0, max=0.5, min_open=True), default=Thresholds.alpha,
              show_default=True, help="History: one-sided significance level of the gate's tests.")
@click.option("--window", type=click.IntRange(min=2), default=Thresholds.window, show_default=True,
              help="History: trailing nights in the reference median.")
@click.option("--min-nights", type=click.IntRange(min=2), default=Thresholds.min_nights, show_default=True,
              help="History: fewer trailing nights than this give no verdict.")
def report(
    files: tuple[Path, ...],
    history_dir: Path | None,
    night: str | None,
    baseline: str | None,
    fmt: str,
    out_dir: Path | None,
    html_path: Path | None,
    gpu_hour_cost: float,
    slo: str | None,
    allow_mixed_models: bool,
    no_recognise: bool,
    decode_threshold: float,
    ttft_threshold: float,
    vram_threshold: float,
    vram_floor_mib: float,
    alpha: float,
    window: int,
    min_nights: int,
) -> None:
    """Turn evidence files into tables, a verdict and plots (or gate tonight with --history).

    FILES are evidence JSONL files or directories of them. Per bucket and arm: mean ± σ, median
    and p95 of TTFT, ITL, decode tok/s and end-to-end time; deltas against the baseline with 95 %
    confidence intervals and p-values; VRAM and host memory; output equivalence; cost per 1M tokens.
    """
    # Piped or in CI there is no terminal to size from: use a width the tables fit in (COLUMNS wins).
    sized = sys.stdout.isatty() or os.environ.get("COLUMNS", "").isdigit()
    out = Console(highlight=False, soft_wrap=False, width=None if sized else 160)
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    if history_dir is not None:
        if files:
            raise click.UsageError("pass evidence FILES or --history DIR, not both")
        th = Thresholds(decode_pct=decode_threshold, ttft_pct=ttft_threshold, vram_pct=vram_threshold,
                             vram_mib=vram_floor_mib, alpha=alpha, window=window, min_nights=min_nights)
        result = evaluate_history(load_history(history_dir, night=night), th)
        if out_dir is not None:
            from ..render import plots

            written = [_write(out_dir / "history.md", history_markdown(result)),
                       _write(out_dir / "history.json", render_history(result, "json")),
                       *plots.write_history_plots(result, out_dir)]
            _say_written(err, out_dir, written)
        if html_path is not None:
            _say_written(err, html_path.parent, [_write(html_path, _history_page(result, history_dir, html_path))])
        if fmt == "terminal":
            out.print(history_terminal(result))
        elif fmt == "html":
            click.echo(_history_page(result, history_dir, Path("index.html")), nl=False)
        else:
            click.echo(render_history(result, fmt), nl=False)
        raise_for_outcome(result)
        return
    if not files:
        raise click.UsageError("no evidence given: pass FILES (e.g. evidence/*.jsonl) or --history DIR")
    if night is not None:
        raise click.UsageError("--night needs --history DIR")
    from ..analysis.slo import parse_slo

    evidences = load_evidence(files)
    if not slo:  # a capacity search's run recorded the SLO it searched with: judge by it again
        slo = next((ev.manifest.config.get("slo") for ev in evidences if ev.manifest is not None
                    and isinstance(ev.manifest.config.get("slo"), str)), None)
    try:
        objectives = parse_slo(slo) if slo else ()
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="'--slo'") from exc
    data = build_report(evidences, baseline=baseline, gpu_hour_cost=gpu_hour_cost,
                        allow_mixed_models=allow_mixed_models, recognise_identical=not no_recognise,
                        slo=objectives)
    if out_dir is not None:
        from ..render import plots

        written = [_write(out_dir / "report.md", render_markdown(data)),
                   _write(out_dir / "report.json", render(data, "json")),
                   _write(out_dir / "report.csv", render_csv(data)),
                   *plots.write_report_plots(data, out_dir)]
        written.append(_write(out_dir / "report.html", render_html(data, plots.report_svgs(data))))
        _say_written(err, out_dir, written)
    if html_path is not None:
        from ..render import plots

        _say_written(err, html_path.parent, [_write(html_path, render_html(data, plots.report_svgs(data)))])
    if fmt == "terminal":
        out.print(terminal_renderable(data, width=out.width))
    elif fmt == "html":
        from ..render import plots

        click.echo(render_html(data, plots.report_svgs(data)), nl=False)
    else:
        click.echo(render(data, fmt), nl=False)


def _write(path: Path, text: str) -> Path:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write {path} ({exc.strerror}) — pass another --out") from exc
    return path


def _history_page(result: HistoryResult, history_dir: Path, page: Path) -> str:
    """The nightly index, linking each night's report page (DIR/NIGHT/report/report.html, as
    scripts/nightly.sh writes it) where it exists, relative to where the page is written."""
    from ..render import plots

    links = {}
    for night in result.nights:
        target = history_dir / night / "report" / "report.html"
        if target.is_file():
            links[night] = Path(os.path.relpath(target, page.parent)).as_posix()
    return render_history_html(result, plots.history_svgs(result), links)


def _say_written(err: Console, out_dir: Path, written: list[Path]) -> None:
    """Name the files `--out` wrote (on stderr: stdout may be the report itself)."""
    names = ", ".join(p.name for p in written)
    err.print(f"wrote {len(written)} file{'s' if len(written) != 1 else ''} to {out_dir}/: {names}")
