"""The sweep's fit competitor, comparisons over server sessions, load mode, warnings and frontier:
the fit-target derivation, fit's log lines and llama-fit-params' output (crafted from the format
strings of the pinned llama.cpp: common/fit.cpp, tools/fit-params/fit-params.cpp,
src/llama-model-loader.cpp), and the report built from fabricated evidence."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from abtest.analysis.sweep import (
    build_frontier,
    build_sweep_report,
    frontier_point,
    frontier_sentence,
    parse_sweep_arm,
    predicted_boundary,
)
from abtest.config import ArmSpec, RunConfig, final_argv
from abtest.evidence import EvidenceWriter, read_evidence
from abtest.measure.sweep import arm_name, far_over_budget, make_plan, parse_ctx_list
from abtest.models.desc import preset_model
from abtest.models.vram import ContextParams
from abtest.records import ArmEnd, ArmStart, RequestRecord, RunEnd, RunManifest, TokenEvent
from abtest.render.sweep import frontier_markdown, render_markdown, warning_lines, write_frontier_plot
from abtest.server.fit import fit_args, fit_target_for_budget, parse_fit_params_stdout
from abtest.server.log import parse_fit_log, parse_memory_breakdown, server_warnings


def _req(arm: str, seq: int, tps: float, block: int = 0, ttft: float = 200.0, n: int = 33) -> RequestRecord:
    gap = 1e9 / tps
    t0 = int(ttft * 1e6)
    events = [TokenEvent(t0 + int(i * gap), 1) for i in range(n)]
    return RequestRecord(
        arm=arm, bucket="tok128", prompt_id="tok128-p", run_index=seq, seq=seq, warmup=False, endpoint="completion",
        concurrency=1, t_send_ns=0, client_overhead_ms=0.0, status=200, error=None, ttft_ms=ttft,
        e2e_ms=events[-1].t_ns / 1e6, prompt_tokens=128, completion_tokens=n, server_predicted_n=n, events=events,
        chunk_times_ns=[e.t_ns for e in events], token_ids=None, text="", timings={}, cache_n=0, block=block,
    )

# ----------------------------------------------------------------------------- fit-target


def test_fit_target_is_free_minus_budget() -> None:
    t = fit_target_for_budget(80_000.0, 9 * 1024.0)
    assert t.margin_mib == 80_000 - 9 * 1024 and t.free_mib == 80_000.0 and t.budget_mib == 9216.0
    assert "80000" in t.derivation and "9216" in t.derivation
    assert fit_args(t) == ("--fit", "on", "--fit-target", str(80_000 - 9216))


def test_fit_target_floors_and_never_goes_negative() -> None:
    assert fit_target_for_budget(10_000.7, 9_000.2).margin_mib == 1000
    t = fit_target_for_budget(8_000.0, 9_000.0)
    assert t.margin_mib == 0 and "margin 0" in t.derivation


def test_fit_target_without_a_device_has_no_margin() -> None:
    t = fit_target_for_budget(None, 9_000.0)
    assert t.margin_mib is None and "no GPU" in t.reason
    assert fit_args(t) == ("--fit", "on")


def test_fit_arm_is_not_pinned_to_ngl() -> None:
    """fit aborts when -ngl is set (common/fit.cpp): the fit arm's argv has no -ngl, the others do."""
    cfg = RunConfig(model="m", arms=())
    fit = final_argv(ArmSpec("fit", ("--fit", "on", "--fit-target", "100")), cfg, "srv", "m.gguf", 4096, True)
    assert "-ngl" not in fit and fit.count("--fit") == 1 and "-c" in fit
    other = final_argv(ArmSpec("ncmoe3", ("-ngl", "99", "--n-cpu-moe", "3")), cfg, "srv", "m.gguf", 4096, True)
    assert other[other.index("--fit") + 1] == "off"


# ----------------------------------------------------------------------------- fit's log and plan

# Lines as the server prints them at -lv 4 (common/log.cpp prefix "<time> <level> "), the text
# from the format strings of common/fit.cpp (common_params_fit_impl, common_fit_params).
FIT_LOG = """\
0.00.100.000 I common_params_fit_impl: projected to use 11896 MiB of device memory vs. 80011 MiB of free device memory
0.00.100.001 I common_params_fit_impl: cannot meet free memory target of 70795 MiB, need to reduce device memory by 2680 MiB
0.00.100.002 I common_params_fit_impl: context size set by user to 4096 -> no change
0.00.200.000 I common_params_fit_impl: with only dense weights in device memory there is a total surplus of 7554 MiB
0.00.300.000 I common_params_fit_impl:   - CUDA0 (NVIDIA H200): 25 layers, 1500 MiB used,  78511 MiB free
0.00.400.000 I common_params_fit_impl:   - CUDA0 (NVIDIA H200): 25 layers ( 7 overflowing),   9100 MiB used,  70911 MiB free
0.00.400.100 I common_fit_params: successfully fit params to free device memory
0.00.400.200 I common_fit_params: fitting params to free memory took 1.25 seconds
0.01.024.405 I load_tensors: loading model tensors, this can take a while... (load_mode = mmap)
0.01.025.160 W llama_model_loader: tensor overrides to CPU are used with mmap enabled - consider using --load-mode none for better performance
0.01.090.968 I load_tensors: offloaded 25/25 layers to GPU
0.01.100.000 I load_tensors:        CUDA0 model buffer size =  8000.00 MiB
"""


def test_parse_fit_log_reads_the_placement() -> None:
    fit = parse_fit_log(FIT_LOG)
    assert fit["status"] == "fitted" and fit["projected_mib"] == 11896 and fit["free_mib"] == 80011
    assert fit["margin_mib"] == 70795 and fit["need_mib"] == 2680 and fit["memory"] == "device"
    assert fit["n_ctx"] == 4096 and fit["ctx_by"] == "user" and fit["seconds"] == 1.25
    # the last line per device is the final placement (step 4 after step 3)
    assert fit["devices"]["CUDA0"] == {"description": "NVIDIA H200", "layers": 25, "overflowing": 7,
                                       "used_mib": 9100, "free_mib": 70911}
    bd = parse_memory_breakdown(FIT_LOG)
    assert bd["fit"] == fit and bd["load_mode"] == "mmap" and bd["offloaded_layers"] == 25
    assert bd["buffers"]["CUDA0"]["model_mib"] == 8000.0


def test_parse_fit_log_no_change_and_failure() -> None:
    nochange = parse_fit_log(
        "I common_params_fit_impl: projected to use 1200 MiB of host memory vs. 64000 MiB of total host memory\n"
        "I common_params_fit_impl: will leave 62800 >= 1024 MiB of system memory, no changes needed\n"
        "I common_fit_params: successfully fit params to free device memory\n")
    assert nochange["status"] == "no change" and nochange["memory"] == "host" and nochange["left_mib"] == 62800
    failed = parse_fit_log("0.1 W common_fit_params: failed to fit params to free device memory: "
                           "n_gpu_layers already set by user to 99, abort\n")
    assert failed["status"] == "failed" and failed["reason"] == "n_gpu_layers already set by user to 99, abort"
    assert parse_fit_log("0.1 I load_tensors: offloaded 3/3 layers to GPU\n") == {}


def test_server_warnings_keeps_w_and_e_lines_once() -> None:
    text = FIT_LOG + "0.02 W llama_model_loader: tensor overrides to CPU are used with mmap enabled - consider using " \
                     "--load-mode none for better performance\n0.03 E srv  boom\n# abtest: starting [...]\n" \
                     "0.04 W srv  llama_server: security: no API key is set and CORS allows all origins\n" \
                     "0.05 W srv          stop: cancel task, id_task = 7\n"
    ws = server_warnings(text)
    assert ws == ["W llama_model_loader: tensor overrides to CPU are used with mmap enabled - consider using "
                  "--load-mode none for better performance", "E srv  boom"]
    many = "".join(f"0.1 W warn {i}\n" for i in range(50))
    out = server_warnings(many, limit=5)
    assert len(out) == 6 and out[-1].startswith("... and 45 more")


def test_parse_fit_params_stdout() -> None:
    # printf("-c %u -ngl %d") then " -ot \"" pattern=BUFT,... "\"" (tools/fit-params/fit-params.cpp)
    out = parse_fit_params_stdout(
        "some log line\n"
        '-c 4096 -ngl 25 -ot "blk\\.0\\.ffn_(up|down|gate_up|gate)_(ch|)exps=CPU,'
        'blk\\.1\\.ffn_(up|down|gate_up|gate)_(ch|)exps=CPU,blk\\.2\\.ffn_down.*=CPU"\n')
    assert out["n_ctx"] == 4096 and out["n_gpu_layers"] == 25 and len(out["overrides"]) == 3
    assert out["cpu_expert_layers"] == (0, 1) and out["partial_layers"] == (2,)
    plain = parse_fit_params_stdout("-c 8192 -ngl 49\n")
    assert plain["n_ctx"] == 8192 and plain["overrides"] == () and plain["tensor_split"] is None
    assert parse_fit_params_stdout("nothing")["n_gpu_layers"] is None


# ----------------------------------------------------------------------------- names, parsing


def test_arm_names_round_trip() -> None:
    assert arm_name(6) == "ncmoe6" and arm_name(6, "-c16384", True) == "ncmoe6-lmnone-c16384"
    k = parse_sweep_arm("ncmoe6-lmnone-c16384")
    assert k is not None and (k.n, k.fit, k.load_none, k.n_ctx) == (6, False, True, 16384)
    f = parse_sweep_arm("fit-c4096")
    assert f is not None and f.fit and f.n is None and f.n_ctx == 4096
    assert parse_sweep_arm("baseline") is None


def test_parse_ctx_list() -> None:
    assert parse_ctx_list("4096,16k,64K") == [4096, 16384, 65536]
    assert parse_ctx_list(None) is None
    from abtest.errors import ConfigError
    with pytest.raises(ConfigError, match="not a context size"):
        parse_ctx_list("4096,big")


def test_far_over_budget_uses_the_larger_of_2_percent_and_128_mib() -> None:
    assert not far_over_budget(9300.0, 0.0, 9216.0)  # +84 MiB: within 128 MiB, launch it
    assert far_over_budget(9450.0, 0.0, 9216.0)  # 2 % of 9 GiB = 184 MiB
    assert not far_over_budget(9400.0, -100.0, 9216.0)  # the prediction was high so far
    assert not far_over_budget(1e9, 0.0, None)
    assert not far_over_budget(40_700.0, 0.0, 40_000.0)  # 2 % of 40000 MiB = 800 MiB


# ----------------------------------------------------------------------------- the report


def _write_sweep(path: Path, speeds: dict[str, list[float]], budget_mib: float = 9 * 1024,
                 fit_vram: float | None = 9000.0, contexts: tuple[int, ...] | None = None,
                 fit_trail: dict | None = None) -> Path:
    """A fabricated sweep: arm -> decode speed per server session (6 requests each)."""
    import json

    lay = preset_model("gpt-oss-20b-like")
    plan = make_plan(lay, "/m/g.gguf", ContextParams(n_ctx=4096), None, budget_mib, 80_000.0, backend="cuda")
    extra = plan.to_extra()
    if contexts:
        extra["contexts"] = {str(c): make_plan(lay, "/m/g.gguf", ContextParams(n_ctx=c), None, budget_mib, 80_000.0,
                                               backend="cuda").to_extra() for c in contexts}
    trail = []
    with EvidenceWriter(path, fsync=False) as w:
        w.write(RunManifest("r", "0", "t", ["abtest", "sweep"], {}, {"available": True}, [],
                            {"extra": {"sweep": extra}}))
        for arm, sessions in speeds.items():
            key = parse_sweep_arm(arm)
            assert key is not None
            for b, tps in enumerate(sessions):
                w.write(ArmStart(arm, "/m", "s" * 64, "llama-server", {}, ["llama-server"], 1, 1, 1.0, "t", "x.log",
                                 block=b))
                for i in range(6):
                    w.write(_req(arm, 6 * b + i, tps * (1 + 0.01 * (i - 2.5)), block=b))
                if key.fit:
                    vram = fit_vram
                else:
                    stage = extra["contexts"][str(key.n_ctx)] if key.n_ctx else extra
                    vram = stage["predictions"][str(key.n)]["total_mib"] + 20
                mem = {"peak": {"pid_vram_mib": vram}, "steady": {"pid_vram_mib": vram}}
                bd = parse_memory_breakdown(FIT_LOG) if key.fit else {}
                warn = ["W llama_model_loader: tensor overrides to CPU are used with mmap enabled"] if key.n != 0 else []
                w.write(ArmEnd(arm, "ok", None, 0, 1.0, 6, 0, mem, bd, "x.log", block=b, server_warnings=warn))
            if key.fit:
                trail.append({"n": None, "arm": arm, "block": 0, "status": "measured", "vram_mib": fit_vram,
                              "fit_target": fit_target_for_budget(80_000.0, budget_mib).to_dict(),
                              "fit_params": {"stdout": "-c 4096 -ngl 25", "n_gpu_layers": 25, "overrides": []},
                              **(fit_trail or {})})
        w.write(RunEnd("t", 1.0, 24, 0, []))
    path.with_name(path.stem + ".sweep.json").write_text(json.dumps({"trail": trail, "time_to_advice_s": 42.0}))
    return path


def _report(path: Path, **kw):
    from abtest.analysis.sweep import read_sidecar

    return build_sweep_report(read_evidence(path), read_sidecar(path), kw.pop("n_ctx", None))


def test_pick_beats_fit_with_an_interval_over_sessions(tmp_path: Path) -> None:
    p = _write_sweep(tmp_path / "s.jsonl", {"ncmoe24": [30.0], "ncmoe7": [80.0, 81.0], "ncmoe8": [76.0, 77.0],
                                           "fit": [70.0, 70.5]})
    rep = _report(p)
    assert rep.best == 7 and rep.fit is not None and rep.fit.qualified and rep.fit.sessions == 2
    v = next(v for v in rep.versus if v.base == "fit")
    lo, hi = v.interval()
    assert v.ratio.k_base == 2 and v.ratio.k_other == 2 and 0 < lo < v.ratio.delta < hi
    assert rep.recommend == "pick" and rep.advice.startswith("with 9 GiB, use `--n-cpu-moe 7`")
    md = render_markdown(rep)
    assert "abtest's pick beats it by +" in md and "95 % CI" in md
    assert "--fit-target 70784" in md and "Time to advice: 42 s" in md
    # the runner-up comparison is there too, and the warnings name the arms that printed them
    assert any(v.base == "ncmoe8" for v in rep.versus)
    assert "tensor overrides to CPU are used with mmap enabled" in md and "ncmoe7" in rep.warnings


def test_a_warning_only_some_arms_printed_names_them(tmp_path: Path) -> None:
    """The mmap warning comes with CPU experts only: the all-GPU arm did not print it, so the
    warning names the arms that did instead of saying "every arm"."""
    p = _write_sweep(tmp_path / "s.jsonl", {"ncmoe0": [90.0], "ncmoe7": [80.0, 81.0], "ncmoe8": [76.0, 77.0]})
    rep = _report(p)
    assert set(rep.warnings) == {"ncmoe7", "ncmoe8"} and rep.arms_ended == 3
    line = next(x for x in warning_lines(rep) if "mmap" in x)
    assert line.endswith("(ncmoe7, ncmoe8)") and "every arm" not in line


def test_fit_that_ties_is_the_advice(tmp_path: Path) -> None:
    p = _write_sweep(tmp_path / "s.jsonl", {"ncmoe24": [30.0], "ncmoe7": [80.0, 78.0], "fit": [79.0, 80.5]})
    rep = _report(p)
    assert rep.recommend == "fit"
    assert rep.advice.startswith("with 9 GiB, use `--fit on --fit-target 70784` (llama.cpp's own placement)")
    assert "no difference detected" in render_markdown(rep)


def test_fit_with_one_session_each_is_not_beaten(tmp_path: Path) -> None:
    p = _write_sweep(tmp_path / "s.jsonl", {"ncmoe24": [30.0], "ncmoe7": [80.0], "fit": [60.0]})
    rep = _report(p)
    v = next(v for v in rep.versus if v.base == "fit")
    assert math.isnan(v.interval()[0]) and v.ratio.delta == pytest.approx(80 / 60 - 1, rel=0.01)
    assert rep.recommend == "fit" and "estimate only" in render_markdown(rep)


def test_fit_over_budget_is_disqualified(tmp_path: Path) -> None:
    p = _write_sweep(tmp_path / "s.jsonl", {"ncmoe24": [30.0], "ncmoe7": [80.0, 80.5], "fit": [95.0, 96.0]},
                     fit_vram=9 * 1024 + 300)
    rep = _report(p)
    assert rep.fit is not None and rep.fit.over_budget and not rep.fit.qualified
    assert rep.recommend == "pick" and "disqualified" in render_markdown(rep)
    assert not any(v.base == "fit" for v in rep.versus)


def test_skipped_fit_says_why(tmp_path: Path) -> None:
    import json

    p = _write_sweep(tmp_path / "s.jsonl", {"ncmoe24": [30.0], "ncmoe7": [80.0]})
    side = p.with_name(p.stem + ".sweep.json")
    side.write_text(json.dumps({"trail": [{"n": None, "arm": "fit", "block": 0, "status": "skipped",
                                           "reason": "a CPU build: --fit has no device"}]}))
    rep = _report(p)
    assert rep.fit is not None and rep.fit.status == "skipped" and rep.recommend == "pick"
    assert "--fit was not measured: a CPU build" in render_markdown(rep)


def test_load_mode_none_is_compared_and_advised_when_faster(tmp_path: Path) -> None:
    p = _write_sweep(tmp_path / "s.jsonl", {"ncmoe24": [30.0], "ncmoe7": [80.0, 80.5], "ncmoe7-lmnone": [90.0, 91.0]})
    rep = _report(p)
    assert rep.load_none is not None and rep.load_none.arm == "ncmoe7-lmnone"
    assert "`--n-cpu-moe 7 --load-mode none`" in rep.advice
    assert [r.n for r in rep.rows] == [7, 24]  # the variant is not a row of its own


# ----------------------------------------------------------------------------- the frontier


def test_frontier_point_is_the_fastest_under_budget() -> None:
    preds = {0: 12000.0, 5: 9800.0, 6: 9300.0, 7: 8900.0, 24: 1800.0}
    assert predicted_boundary(preds, 9216.0) == 7 and predicted_boundary(preds, 1000.0) is None
    assert predicted_boundary(preds, None) == 0
    # 6 measured just under the budget although predicted over: measured wins
    p = frontier_point(4096, preds, [(24, 1790.0, 30.0), (7, 8920.0, 80.0), (6, 9200.0, 84.0)], 9216.0)
    assert (p.n, p.decode_tps, p.predicted_n) == (6, 84.0, 7)
    # nothing measured fits
    q = frontier_point(65536, preds, [(24, 9500.0, 20.0)], 9216.0, fit_tps=None)
    assert q.n is None and math.isnan(q.decode_tps)
    # without a measured VRAM the prediction decides
    r = frontier_point(4096, preds, [(6, None, 84.0), (7, None, 80.0)], 9216.0)
    assert r.n == 7


def test_frontier_sentence() -> None:
    from abtest.analysis.sweep import FrontierPoint

    pts = [FrontierPoint(4096, 6, 6, 82.0, 12000.0), FrontierPoint(16384, 9, 9, 61.0, 12100.0),
           FrontierPoint(65536, None, None, math.nan, None)]
    assert frontier_sentence(pts, 12 * 1024.0, 24) == (
        "at 12 GiB: 4k ctx → --n-cpu-moe 6, 82.0 tok/s; 16k → 9, 61.0 tok/s; 64k → nothing fits")


def test_frontier_report_from_a_sweep_at_two_contexts(tmp_path: Path) -> None:
    p = _write_sweep(tmp_path / "s.jsonl", {"ncmoe24-c4096": [30.0], "ncmoe7-c4096": [80.0],
                                           "ncmoe24-c16384": [25.0], "ncmoe10-c16384": [70.0]},
                     contexts=(4096, 16384))
    from abtest.analysis.sweep import read_sidecar

    reps, points = build_frontier(read_evidence(p), read_sidecar(p))
    assert [r.n_ctx for r in reps] == [4096, 16384]
    assert [(pt.n_ctx, pt.n) for pt in points] == [(4096, 7), (16384, 10)]
    md = frontier_markdown(reps, points)
    assert "4k ctx → --n-cpu-moe 7, 80.0 tok/s; 16k → 10, 70.0 tok/s" in md and "## -c 16384" in md
    # the recorded time to advice is the whole sweep's: said once, for both sizes, with every session
    assert md.count("Time to advice") == 1
    assert "Time to advice: 42 s from the sweep's start, for all 2 context sizes (4 server sessions)." in md
    assert md.count("2 server sessions at this size") == 2
    # sweep-report.md holds the first size only, and says so
    first = render_markdown(reps[0])
    assert "one of the sweep's 2 context sizes (4096, 16384)" in first and "sweep-frontier.md" in first
    assert "for all 2 context sizes" in first and "## -c 16384" not in first
    assert write_frontier_plot([(reps[0].budget_mib, points)], tmp_path / "f.png") is not None


def test_a_gzipped_sweep_keeps_its_trail_and_its_report_goes_to_out(tmp_path: Path) -> None:
    """docs/results commits <run>.jsonl.gz beside <run>.sweep.json: the re-made report reads the trail
    (fit's target, the time to advice, the search order), and --report writes where --out says."""
    import gzip

    from click.testing import CliRunner

    from abtest.analysis.sweep import read_sidecar
    from abtest.cli import cli
    from abtest.evidence import sweep_sidecar_path

    ev_dir = tmp_path / "committed"
    ev_dir.mkdir()
    p = _write_sweep(ev_dir / "20261202T000000-m.jsonl", {"ncmoe24": [30.0], "ncmoe7": [80.0, 81.0], "fit": [70.0, 70.5]})
    gz = p.with_name(p.name + ".gz")
    gz.write_bytes(gzip.compress(p.read_bytes()))
    p.unlink()
    assert sweep_sidecar_path(gz) == sweep_sidecar_path(p) == ev_dir / "20261202T000000-m.sweep.json"
    side = read_sidecar(gz)
    assert side is not None and side["time_to_advice_s"] == 42.0
    md = render_markdown(build_sweep_report(read_evidence(gz), side))
    assert "Time to advice: 42 s" in md and "--fit-target 70784" in md and "## Search order" in md
    out = tmp_path / "remade"
    res = CliRunner().invoke(cli, ["sweep", "--report", str(gz), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "Time to advice: 42 s" in (out / "sweep-report.md").read_text()
    assert sorted(f.name for f in ev_dir.iterdir()) == ["20261202T000000-m.jsonl.gz", "20261202T000000-m.sweep.json"]
    # without --out the files go beside the evidence, as before
    res = CliRunner().invoke(cli, ["sweep", "--report", str(gz)])
    assert res.exit_code == 0 and (ev_dir / "sweep-report.md").is_file()


def test_capacity_objective_flags_are_checked_in_one_line() -> None:
    from click.testing import CliRunner

    from abtest.cli import cli

    for args, words in [
        (["--objective", "capacity"], "give --slo"),
        (["--slo", "ttft_p95<=1s"], "for --objective capacity"),
        (["--objective", "capacity", "--slo", "ttft_p95<=1s", "--concurrency", "4"], "two or more different levels"),
        (["--objective", "capacity", "--slo", "ttft<=1s"], "is not METRIC_pQ<=LIMIT"),
    ]:
        res = CliRunner().invoke(cli, ["sweep", "--model", "tiny-moe", *args])
        assert res.exit_code == 2 and words in res.output and "Traceback" not in res.output, (args, res.output)
