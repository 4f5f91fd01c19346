"""Sweep planning and search (pure, over fake measure/predict callbacks), and the sweep report
built from a fabricated evidence file."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from abtest.analysis.stratified import mean_ci
from abtest.analysis.sweep import advice_line, build_sweep_report
from abtest.errors import ConfigError, EvidenceError
from abtest.evidence import EvidenceWriter, read_evidence
from abtest.measure.search import Measurement, judge, next_probe, search
from abtest.measure.sweep import make_plan, measured_vram_mib, parse_ncmoe
from abtest.models.desc import preset_model
from abtest.models.vram import ContextParams
from abtest.records import ArmEnd, ArmStart, RequestRecord, RunEnd, RunManifest, TokenEvent
from abtest.render.sweep import render_markdown, write_plot

L = 24


def linear_vram(n: int) -> float:
    """A gpt-oss-20b-like shape: ~12 GiB all on the GPU, ~430 MiB less per layer of experts moved."""
    return 12000.0 - 430.0 * n


def linear_speed(n: int) -> float:
    return 160.0 - 5.0 * n


class FakeBench:
    """measure(n) with a record of what was launched; `skip` is the set predicted over free VRAM."""

    def __init__(self, vram: Callable[[int], float] = linear_vram, speed: Callable[[int], float] = linear_speed,
                 skip: frozenset[int] = frozenset(), fail: frozenset[int] = frozenset(), nvml: bool = True) -> None:
        self.vram, self.speed, self.skip, self.fail, self.nvml = vram, speed, skip, fail, nvml
        self.launched: list[int] = []
        self.asked: list[int] = []

    def __call__(self, n: int) -> Measurement | None:
        self.asked.append(n)
        if n in self.skip:
            return None
        self.launched.append(n)
        if n in self.fail:
            return Measurement(ok=False, note="exited (code 1) before /health: out of memory")
        return Measurement(ok=True, vram_mib=self.vram(n) if self.nvml else None, decode_tps=self.speed(n))


# ----------------------------------------------------------------------------- settings


def test_parse_ncmoe() -> None:
    assert parse_ncmoe("auto", 24) is None
    assert parse_ncmoe("", 24) is None
    assert parse_ncmoe("0,8,16,24", 24) == [0, 8, 16, 24]
    assert parse_ncmoe("0-24:8", 24) == [0, 8, 16, 24]
    assert parse_ncmoe("0, 3,3, all", 6) == [0, 3, 6]
    for bad in ("0,25", "x", "1-", ",", "-1"):
        with pytest.raises(ConfigError):
            parse_ncmoe(bad, 24)


# ----------------------------------------------------------------------------- search


@pytest.mark.parametrize("budget_gib", [9.0, 6.0, 11.0, 2.5, 8.3])
@pytest.mark.parametrize("bias", [0.0, 300.0, -300.0, 2000.0, -2000.0])
def test_auto_finds_the_boundary(budget_gib: float, bias: float) -> None:
    budget = budget_gib * 1024
    bench = FakeBench()
    res = search(L, budget, bench, predict_mib=lambda n: linear_vram(n) + bias)
    boundary = min(n for n in range(L + 1) if linear_vram(n) <= budget)
    # picks the largest-speed setting whose measured VRAM is under budget ...
    assert res.best == res.boundary == boundary
    # ... and its neighbour one step toward the GPU was measured over budget
    assert res.over_neighbour == boundary - 1
    assert boundary - 1 in bench.launched and linear_vram(boundary - 1) > budget
    # both ends first, then a handful of probes (guided; bisection when the guess was wrong)
    assert bench.launched[:2] == [L, 0]
    assert len(bench.launched) <= 2 + 2 * math.ceil(math.log2(L)) + 1
    if bias == 0.0:
        assert len(bench.launched) <= 4  # a right prediction: ends, the boundary, its neighbour


def test_auto_without_prediction_bisects() -> None:
    bench = FakeBench()
    res = search(L, 9 * 1024, bench, predict_mib=None)
    assert res.best == 7 and res.over_neighbour == 6
    assert len(bench.launched) <= 2 + math.ceil(math.log2(L))


def test_all_on_the_gpu_fits() -> None:
    bench = FakeBench()
    res = search(L, 20 * 1024, bench, predict_mib=linear_vram)
    assert res.best == 0 and res.over_neighbour is None
    assert bench.launched == [L, 0]


def test_nothing_fits() -> None:
    bench = FakeBench()
    res = search(L, 1024, bench, predict_mib=linear_vram)
    assert res.best is None and res.boundary is None
    assert bench.launched == [L]


def test_settings_predicted_over_free_vram_are_skipped_not_launched() -> None:
    # the free VRAM (10 GiB) rules out N <= 4: they are never launched, and count as over budget
    skip = frozenset(n for n in range(L + 1) if linear_vram(n) > 10 * 1024 - 512)
    bench = FakeBench(skip=skip)
    res = search(L, 9 * 1024, bench, predict_mib=linear_vram)
    assert not set(bench.launched) & skip
    assert res.best == 7 and res.over_neighbour == 6
    assert [p.status for p in res.probes if p.n == 0] == ["skipped"]


def test_skipped_neighbour_still_counts_as_over() -> None:
    skip = frozenset(range(0, 7))  # predicted over free VRAM right up to the boundary
    bench = FakeBench(skip=skip)
    res = search(L, 9 * 1024, bench, predict_mib=linear_vram)
    assert res.best == 7 and res.over_neighbour == 6
    assert next(p for p in res.probes if p.n == 6).basis == "skipped"


def test_failed_launch_counts_as_over_budget() -> None:
    bench = FakeBench(fail=frozenset({7}))
    res = search(L, 9 * 1024, bench, predict_mib=linear_vram)
    assert res.best == 8 and res.over_neighbour == 7
    assert next(p for p in res.probes if p.n == 7).status == "failed"


def test_list_mode_picks_the_fastest_under_budget_even_if_speed_is_not_monotone() -> None:
    speed = {0: 150.0, 8: 90.0, 12: 110.0, 16: 95.0, 24: 40.0}
    bench = FakeBench(speed=lambda n: speed[n])
    res = search(L, 8 * 1024, bench, predict_mib=linear_vram, settings=[0, 8, 12, 16, 24])
    assert bench.launched == [0, 8, 12, 16, 24]
    assert res.boundary == 12 and res.best == 12  # 8 is over budget (8560 MiB > 8192)
    res = search(L, 10 * 1024, FakeBench(speed=lambda n: speed[n]), predict_mib=linear_vram,
                 settings=[0, 8, 12, 16, 24])
    assert res.boundary == 8 and res.best == 12  # 12 is faster than 8 here


def test_without_nvml_the_prediction_decides() -> None:
    bench = FakeBench(nvml=False)
    res = search(L, 9 * 1024, bench, predict_mib=linear_vram)
    assert res.best == 7
    assert {p.basis for p in res.probes} == {"predicted"}


def test_without_budget_everything_measured_is_under() -> None:
    res = search(L, None, FakeBench(), predict_mib=linear_vram)
    assert res.best == 0 and {p.basis for p in res.probes} == {"no budget"}


def test_next_probe_guides_then_falls_back_to_midpoint() -> None:
    probes = [judge(24, Measurement(True, linear_vram(24) + 100, 40.0), linear_vram(24), 9216.0)]
    # the guess corrects the prediction by the error seen so far (+100 MiB)
    n = next_probe(0, 24, 9216.0, linear_vram, probes, guided=True)
    assert n == min(k for k in range(1, 24) if linear_vram(k) + 100 <= 9216)
    assert next_probe(0, 24, 9216.0, linear_vram, probes, guided=False) == 12
    assert next_probe(0, 24, 9216.0, None, probes, guided=True) == 12
    # nothing in range predicted to fit: confirm the neighbour of hi
    assert next_probe(0, 3, 1000.0, linear_vram, probes, guided=True) == 2


def test_measured_vram_prefers_the_pid_figure() -> None:
    def end(peak: dict) -> ArmEnd:
        return ArmEnd("a", "ok", None, 0, 1.0, 1, 0, {"peak": peak, "steady": {}}, {}, "x.log")

    assert measured_vram_mib(end({"pid_vram_mib": 9000.0, "device_used_mib": 9500.0}), 400.0) == 9000.0
    assert measured_vram_mib(end({"pid_vram_mib": None, "device_used_mib": 9500.0}), 400.0) == 9100.0
    assert measured_vram_mib(end({"pid_vram_mib": None, "device_used_mib": 9500.0}), None) is None
    assert measured_vram_mib(None) is None


# ----------------------------------------------------------------------------- the report


def _req(arm: str, seq: int, tps: float, ttft: float, bucket: str = "tok128", n: int = 33) -> RequestRecord:
    gap = 1e9 / tps
    t0 = int(ttft * 1e6)
    events = [TokenEvent(t0 + int(i * gap), 1) for i in range(n)]
    return RequestRecord(
        arm=arm, bucket=bucket, prompt_id=f"{bucket}-p", run_index=seq, seq=seq, warmup=False, endpoint="completion",
        concurrency=1, t_send_ns=0, client_overhead_ms=0.0, status=200, error=None, ttft_ms=ttft,
        e2e_ms=events[-1].t_ns / 1e6, prompt_tokens=128, completion_tokens=n, server_predicted_n=n, events=events,
        chunk_times_ns=[e.t_ns for e in events], token_ids=None, text="", timings={}, cache_n=0,
    )


def fabricate_sweep(path: Path, budget_mib: float = 9 * 1024, skip: tuple[int, ...] = (0,),
                    nvml: bool = True) -> Path:
    """A gpt-oss-20b-like sweep on a GPU: settings 24, 12, 8, 6 (7 implied), 0 skipped."""
    lay = preset_model("gpt-oss-20b-like")
    plan = make_plan(lay, "/m/gpt-oss-20b-like.gguf", ContextParams(n_ctx=4096), None, budget_mib, 10 * 1024,
                     backend="cuda")
    speeds = {24: 30.0, 12: 60.0, 7: 80.0, 6: 84.0}
    with EvidenceWriter(path, fsync=False) as w:
        w.write(RunManifest("r", "0", "t", ["abtest", "sweep"], {}, {"available": nvml, "reason": None if nvml else "no"},
                            [], {"extra": {"sweep": plan.to_extra()}}))
        for n, tps in speeds.items():
            arm = f"ncmoe{n}"
            w.write(ArmStart(arm, "/m", "s" * 64, "llama-server", {}, ["llama-server"], 1, 1, 1.0, "t", "x.log"))
            for i in range(6):
                w.write(_req(arm, i, tps * (1 + 0.02 * (i - 2.5)), 200 + 20 * n + i))
            vram = plan.predictions[n].total_mib + 60 if nvml else None
            mem = {"peak": {"pid_vram_mib": vram}, "steady": {"pid_vram_mib": vram}}
            buffers = {"CUDA0": {"model_mib": plan.predictions[n].weights_mib, "kv_mib": 192.0, "compute_mib": 210.0}}
            w.write(ArmEnd(arm, "ok", None, 0, 1.0, 6, 0, mem, {"buffers": buffers}, "x.log"))
        w.write(RunEnd("t", 1.0, 24, 0, []))
    return path


def test_report_advice_table_and_frontier(tmp_path: Path) -> None:
    ev = read_evidence(fabricate_sweep(tmp_path / "s.jsonl"))
    rep = build_sweep_report(ev)
    assert [r.n for r in rep.rows] == [6, 7, 12, 24]
    assert rep.reference == 24
    # 6 is over 9 GiB measured (predicted 9520.7 + 60); 7 (9093.6 + 60) is under: the advice
    assert rep.best == 7
    assert re.fullmatch(
        r"with 9 GiB, use `--n-cpu-moe 7`: 8\.9 GiB, 80\.0 ± [0-9.]+ tok/s \(2\.7× the speed of --cpu-moe\)",
        rep.advice,
    ), rep.advice
    row7 = rep.row(7)
    assert row7 is not None and row7.error_mib == pytest.approx(60, abs=0.2)
    # one server session per setting: the ratio is an estimate, with no interval (sessions are the unit)
    assert row7.speedup is not None and row7.speedup.delta == pytest.approx(80 / 30 - 1, rel=0.01)
    assert all(math.isnan(x) for x in row7.speedup.interval())
    assert any("one server session each" in n for n in rep.notes)
    assert all(r.on_frontier for r in rep.rows)  # faster always costs more VRAM here
    md = render_markdown(rep)
    assert rep.advice in md and "| 7 ← |" in md and "★" in md and "Frontier" in md
    assert "mean +60 MiB" in md  # the prediction error is reported
    # bytes per token: the GPU side shrinks, the host side grows with N
    g = [rep.row(n).gpu_bytes_per_token for n in (6, 7, 12, 24)]  # type: ignore[union-attr]
    h = [rep.row(n).host_bytes_per_token for n in (6, 7, 12, 24)]  # type: ignore[union-attr]
    assert g == sorted(g, reverse=True) and h == sorted(h)
    assert any("GB/s effective" in e for e in rep.explanation)
    assert any("over PCIe" in e and "N=24: 10.01 GiB" in e for e in rep.explanation)
    assert write_plot(rep, tmp_path / "p.png") is not None and (tmp_path / "p.png").stat().st_size > 1000


def test_report_without_nvml_uses_the_prediction(tmp_path: Path) -> None:
    rep = build_sweep_report(read_evidence(fabricate_sweep(tmp_path / "s.jsonl", nvml=False)))
    assert rep.best == 7 and "predicted" in rep.advice
    assert any("no measured VRAM" in n for n in rep.notes)


def test_report_nothing_fits(tmp_path: Path) -> None:
    rep = build_sweep_report(read_evidence(fabricate_sweep(tmp_path / "s.jsonl", budget_mib=1024)))
    assert rep.best is None
    assert advice_line(rep).startswith("with 1 GiB, no setting fits: the smallest, `--cpu-moe`, needs 1.8 GiB")


def test_report_refuses_a_plain_run(tmp_path: Path) -> None:
    p = tmp_path / "run.jsonl"
    with EvidenceWriter(p, fsync=False) as w:
        w.write(RunManifest("r", "0", "t", [], {}, {}, [], {"extra": {}}))
    with pytest.raises(EvidenceError, match="not a sweep"):
        build_sweep_report(read_evidence(p))


def test_mean_ci() -> None:
    c = mean_ci([10.0, 12.0, 14.0])
    assert c.mean == 12.0 and c.std == 2.0
    assert c.low == pytest.approx(12 - 4.302653 * 2 / math.sqrt(3), rel=1e-5)
    assert mean_ci([5.0]).n == 1 and math.isnan(mean_ci([5.0]).low)
    assert mean_ci([]).n == 0


# ----------------------------------------------------------------------------- module boundaries


def test_decode_interval_is_stratified_by_bucket() -> None:
    """Two buckets whose decode rates differ by design (a long prompt's KV depth): the interval of a
    setting's mean compares within buckets (the between-bucket spread is not noise), as the report's
    "all" row does; with one bucket it is the plain t-interval."""
    from abtest.analysis.stratified import mean_ci_stratified

    rng = np.random.default_rng(1)
    short, long_ = 100 + rng.normal(0, 1, 20), 60 + rng.normal(0, 1, 20)
    values = np.concatenate([short, long_])
    strata = np.array(["short"] * 20 + ["long"] * 20)
    ci = mean_ci_stratified(values, strata, {"short": 0.5, "long": 0.5})
    assert abs(ci.mean - (short.mean() + long_.mean()) / 2) < 1e-9
    assert ci.high - ci.low < 2.0  # pooled, the between-bucket spread made it about 13 wide
    one = mean_ci_stratified(short, np.array(["short"] * 20), {"short": 1.0})
    from scipy import stats as st
    half = st.t.ppf(0.975, 19) * short.std(ddof=1) / np.sqrt(20)
    assert np.isclose(one.low, short.mean() - half) and np.isclose(one.high, short.mean() + half)
    assert np.isclose(one.std, short.std(ddof=1))
