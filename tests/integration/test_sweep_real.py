"""`abtest sweep` against the real llama-server (CPU build) on the tiny MoE model.

Checks: the command runs non-interactively and writes one evidence file with one arm per setting
and the predictions in the manifest (before any arm starts); the sweep report reads it back; and
the buffer arithmetic of abtest.models.vram equals what this llama-server prints (-lv 4) for tiny-moe at
two contexts.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from abtest.analysis.sweep import build_sweep_report, read_sidecar
from abtest.cli import cli
from abtest.evidence import read_evidence
from abtest.models.desc import read_model
from abtest.models.vram import ContextParams, cpu_buffers, gguf_offsets
from abtest.server.log import parse_memory_breakdown
from abtest.server.process import LaunchSpec, ServerProcess

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory, llama_server: Path, tiny_moe: Path) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("sweep")
    res = CliRunner().invoke(
        cli,
        # 256 tokens: tiny-moe writes 64 in ~30 ms, which a client starved on a busy 2-core box
        # reads in one go (no decode rate: the setting "failed"); 256 take long enough to time
        ["sweep", "--model", str(tiny_moe), "--ncmoe", "0,3,6", "--runs", "1", "--max-tokens", "256",
         "--buckets", "seed004", "--server-bin", str(llama_server), "--threads", "1", "--out", str(out), "--quiet",
         "--finalist-sessions", "1"],
        catch_exceptions=False,
    )
    assert res.exit_code == 0, res.output
    return out, res.output


def test_sweep_writes_one_evidence_file_with_an_arm_per_setting(swept: tuple[Path, str]) -> None:
    out, stdout = swept
    files = sorted(out.glob("*.jsonl"))
    assert len(files) == 1 and str(files[0]) in stdout
    ev = read_evidence(files[0])
    assert ev.problems == [] and not ev.partial
    assert [a.arm for a in ev.arm_starts] == ["ncmoe0", "ncmoe3", "ncmoe6"]
    assert [a.status for a in ev.arm_ends] == ["ok", "ok", "ok"]
    for start, n in zip(ev.arm_starts, (0, 3, 6), strict=True):
        i = start.argv.index("--n-cpu-moe")
        assert start.argv[i + 1] == str(n) and "-ngl" in start.argv and "--fit" in start.argv
    measured = [r for r in ev.requests if not r.warmup]
    n_prompts = len(ev.arm_starts[0].prompt_tokens)  # the seed004 bucket, 1 run each
    assert len(measured) == 3 * n_prompts and all(r.ok for r in measured)
    # no token-id backfill in a sweep (one untimed request per prompt, for outputs it never compares)
    assert not any(json.loads(line).get("kind") == "token_ids" for line in files[0].read_text().splitlines())
    # the predictions are in the manifest, i.e. on the first line, before any arm starts
    first = json.loads(files[0].read_text().splitlines()[0])
    assert first["kind"] == "run_start"
    sweep = first["config"]["extra"]["sweep"]
    assert set(sweep["predictions"]) >= {"0", "3", "6"}
    assert sweep["predictions"]["0"]["total_mib"] > sweep["predictions"]["6"]["total_mib"]
    assert sweep["backend"] == "cpu" and sweep["free_mib"] is None  # no GPU here: nothing skipped
    side = read_sidecar(files[0])
    assert side is not None and [t["status"] for t in side["trail"][:3]] == ["measured"] * 3
    # a CPU build: the fit competitor is skipped, with the reason
    assert side["trail"][3]["arm"] == "fit" and side["trail"][3]["status"] == "skipped"
    assert "CPU build" in side["trail"][3]["reason"]


def test_sweep_report_reads_the_evidence(swept: tuple[Path, str]) -> None:
    out, stdout = swept
    ev = read_evidence(next(out.glob("*.jsonl")))
    rep = build_sweep_report(ev, read_sidecar(ev.path))
    assert [r.n for r in rep.rows] == [0, 3, 6]
    n_prompts = len(ev.arm_starts[0].prompt_tokens)
    # a decode rate needs enough separately read tokens (docs/metrics.md); on a busy box a request
    # whose tokens came in a burst has none, and the sweep's mean is over the others
    assert all(r.status == "measured" and 1 <= r.decode.n <= n_prompts for r in rep.rows)
    assert rep.best in (0, 3, 6) and rep.reference == 6
    assert rep.advice.startswith("with no VRAM budget (no GPU seen), use `")
    md = (out / "sweep-report.md").read_text()
    assert rep.advice in md and rep.advice in stdout
    assert "| N | flag | VRAM pred GiB |" in stdout
    assert (out / "sweep-vram-speed.png").stat().st_size > 1000
    page = (out / "sweep-report.html").read_text()
    assert "data:image/png;base64," in page and "<script" not in page
    # the predicted CPU-build buffers equal what each server printed
    for r in rep.rows:
        cpu = r.buffers["CPU"]
        assert round(rep.cpu_build["kv_mib"], 2) == cpu["kv_mib"]
        assert round(rep.cpu_build["compute_mib"], 2) == cpu["compute_mib"]
        model_log = r.buffers["CPU_Mapped"]["model_mib"] + r.buffers["CPU_REPACK"]["model_mib"]
        assert abs(rep.cpu_build["model_mapped_mib"] + rep.cpu_build["model_repack_mib"] - model_log) < 0.02


def test_report_only_mode(swept: tuple[Path, str]) -> None:
    out, _ = swept
    path = next(out.glob("*.jsonl"))
    res = CliRunner().invoke(cli, ["sweep", "--report", str(path)], catch_exceptions=False)
    assert res.exit_code == 0 and "# abtest sweep:" in res.output


@pytest.mark.parametrize("n_ctx", [512, 2048])
def test_buffer_arithmetic_matches_the_server_log(tmp_path: Path, llama_server: Path, tiny_moe: Path,
                                                  n_ctx: int) -> None:
    log = tmp_path / "server.log"
    argv = (str(llama_server), "-m", str(tiny_moe), "-ngl", "99", "--fit", "off", "-c", str(n_ctx), "-np", "1",
            "-t", "1", "-fa", "on", "-lv", "4")
    with ServerProcess(LaunchSpec(name="cal", argv=argv, log_path=log, health_timeout_s=60)).start():
        pass
    printed = parse_memory_breakdown(log.read_text())["buffers"]
    pred = cpu_buffers(read_model(tiny_moe), ContextParams(n_ctx=n_ctx), gguf_offsets(tiny_moe))
    assert round(pred.model_mapped_mib, 2) == printed["CPU_Mapped"]["model_mib"]
    assert round(pred.model_repack_mib, 2) == printed["CPU_REPACK"]["model_mib"]
    assert round(pred.kv_mib, 2) == printed["CPU"]["kv_mib"]
    assert round(pred.compute_mib, 2) == printed["CPU"]["compute_mib"]
    assert round(pred.output_mib, 2) == printed["CPU"]["output_mib"]


def test_fit_competitor_load_mode_and_frontier_on_the_cpu_build(tmp_path: Path, llama_server: Path,
                                                                tiny_moe: Path) -> None:
    """--fit-competitor on runs llama.cpp's --fit arm even here (no device: fit fits host memory);
    --load-mode both measures the pick again with --load-mode none; two contexts make a frontier;
    the finalists get 2 server sessions. Checks the real server's log lines the parsers read."""
    out = tmp_path / "out"
    res = CliRunner().invoke(
        cli,
        # 3,6: the --load-mode none variant is of the fastest setting when it has CPU experts
        # (n > 0); on a CPU build which one is fastest is noise, so neither may be 0
        ["sweep", "--model", str(tiny_moe), "--ncmoe", "3,6", "--runs", "2", "--max-tokens", "128",
         "--buckets", "seed004", "--server-bin", str(llama_server), "--threads", "1", "--out", str(out), "--quiet",
         "--fit-competitor", "on", "--load-mode", "both", "--ctx", "256,1024", "--session-rule", "fixed"],
        catch_exceptions=False,
    )
    assert res.exit_code in (0, 4), res.output
    path = next(out.glob("*.jsonl"))
    ev = read_evidence(path)
    starts = {(a.arm, a.block): a for a in ev.arm_starts}
    fit = starts[("fit-c256", 0)]
    assert "-ngl" not in fit.argv and fit.argv[fit.argv.index("--fit") + 1] == "on"
    assert "--fit-target" not in fit.argv  # no device memory figure: fit's default margin
    lm = next(a for (name, _), a in starts.items() if "-lmnone" in name)
    assert lm.argv[lm.argv.index("--load-mode") + 1] == "none"
    ends = {(e.arm, e.block): e for e in ev.arm_ends}
    fit_end = ends[("fit-c256", 0)]
    assert fit_end.breakdown["fit"]["status"] == "no change" and fit_end.breakdown["fit"]["memory"] == "host"
    assert fit_end.breakdown["load_mode"] == "mmap"
    # every server warns about the API key (left out: abtest's servers listen on 127.0.0.1 by
    # design); an arm with experts overridden to the CPU and mmap on warns about the load mode
    # (src/llama-model-loader.cpp), the --load-mode none arm does not
    assert not any("no API key" in w for e in ev.arm_ends for w in e.server_warnings)
    mmap_warning = "consider using --load-mode none"
    assert any(mmap_warning in w for w in ends[("ncmoe6-c256", 0)].server_warnings)
    assert not any(mmap_warning in w for w in ends[(lm.arm, 0)].server_warnings)
    assert not any(mmap_warning in w for w in ends[("fit-c256", 0)].server_warnings)  # no overrides
    # finalists ran a second session (--session-rule fixed: every finalist, whatever session 1 said)
    assert {a for a, b in starts if b == 1} >= {"fit-c256", "fit-c1024"}
    side = read_sidecar(path)
    assert side is not None and {e["rule"] for e in side["next_sessions"]} == {"fixed"}
    assert side is not None and side["time_to_advice_s"] > 0
    plan = next(t for t in side["trail"] if t["arm"] == "fit-c256")["fit_params"]
    assert plan["exit_code"] == 0 and plan["stdout"].startswith("-c 256 -ngl ")
    md = (out / "sweep-frontier.md").read_text()
    assert "# abtest sweep frontier" in md and "## -c 1024" in md and "The server's own warnings" in md
    assert (out / "sweep-frontier.png").stat().st_size > 1000
