"""Report defects the house issue lists, each pinned by a test that failed before its fix: the "all"
row, the memory Δ, the first-request and noise warnings, the measured window, device counting."""

from __future__ import annotations

import math

from helpers_evidence import Arm, fabricate, read_lines, write_lines

from abtest.analysis.arms import load_evidence
from abtest.analysis.findings import ReportWarning as W
from abtest.analysis.report import build_report
from abtest.render.report import render_markdown


def build(paths, **kw):
    return build_report(load_evidence(paths), **kw)


def _row(rep, group, bucket):
    return next(s for s in rep.buckets if s.group == group and s.bucket == bucket)


def _comp(rep, group, bucket, metric):
    return next(c for c in rep.comparisons if c.group == group and c.bucket == bucket and c.metric == metric)


# ----------------------------------------------------------------------------------- the "all" row


def test_the_all_row_shows_the_means_its_delta_compares(tmp_path):
    """Short requests of one arm fail: pooled means over what is left mix the buckets differently in
    the two arms (the issue: -42.6 % printed beside a stratified -1.1 %). The row's means, the
    comparison's means and its Δ must be one thing."""
    arms = [Arm("baseline", ["-ngl", "99"], ttft_ms=120.0, ttft_cv=0.02),
            Arm("other", ["-ngl", "99", "-t", "4"], ttft_ms=120.0, ttft_cv=0.02, failed_requests=4)]
    path = fabricate(tmp_path / "run.jsonl", seed=3, arms=arms)
    rep = build([path])
    c = _comp(rep, "other", "all", "ttft_ms")
    # the arms are the same within each bucket: the Δ is small, and so is the ratio of the shown means
    assert abs(c.ci.delta) < 0.05
    assert math.isclose(c.other_mean / c.base_mean - 1, c.ci.delta, rel_tol=1e-9, abs_tol=1e-12)
    for group, mean in (("baseline", c.base_mean), ("other", c.other_mean)):
        assert math.isclose(_row(rep, group, "all").summaries["ttft_ms"].mean, mean, rel_tol=1e-9)
    # no pooled spread, median or p95 beside a stratified mean
    s = _row(rep, "other", "all").summaries["ttft_ms"]
    assert math.isnan(s.std) and math.isnan(s.median) and math.isnan(s.p95)
    md = render_markdown(rep)
    assert "weighted by" in md


# ---------------------------------------------------------------------------------------- memory Δ


def test_memory_delta_is_taken_against_the_paired_baseline(tmp_path):
    """Two boxes shown side by side: each cpu-moe's VRAM Δ is against the baseline of its own file,
    as the verdict's is (it was against the first baseline group for every arm)."""
    a = fabricate(tmp_path / "a.jsonl", seed=1, gpu_name="NVIDIA H100 80GB HBM3", arms=[
        Arm("baseline", ["-ngl", "99"], vram_mib=10000.0, vram_peak_extra_mib=0.0),
        Arm("cpu-moe", ["-ngl", "99", "--cpu-moe"], vram_mib=2000.0, vram_peak_extra_mib=0.0)])
    b = fabricate(tmp_path / "b.jsonl", seed=2, gpu_name="NVIDIA L4", arms=[
        Arm("baseline", ["-ngl", "99"], vram_mib=4000.0, vram_peak_extra_mib=0.0),
        Arm("cpu-moe", ["-ngl", "99", "--cpu-moe"], vram_mib=2000.0, vram_peak_extra_mib=0.0)])
    rep = build([a, b])
    assert rep.paired_baseline == {"cpu-moe [a]": "baseline [a]", "cpu-moe [b]": "baseline [b]"}
    memory = render_markdown(rep).split("## Memory", 1)[1].split("\n## ", 1)[0]
    rows = {line.split("|")[1].strip(): line for line in memory.splitlines() if line.startswith("| cpu-moe [")}
    assert "−80 %" in rows["cpu-moe [a]"]
    assert "−50 %" in rows["cpu-moe [b]"]  # 2000 / 4000 − 1 (was 2000 / 10000 − 1)
    assert any(v.startswith("cpu-moe [b] (vs baseline [b]) saves 2.0 GiB VRAM (−50 %)") for v in rep.verdict)


# ----------------------------------------------------------- first-request outlier, noise warnings


def _slow_down(path, factor_by_prompt, only_first=False):
    """Scale the TTFT of the named prompts' measured requests (events shift, decode is unchanged)."""
    objs = read_lines(path)
    done = set()
    for o in objs:
        if o.get("kind") != "request" or o["warmup"] or o["prompt_id"] not in factor_by_prompt:
            continue
        if only_first and (o["arm"], o["prompt_id"]) in done:
            continue
        done.add((o["arm"], o["prompt_id"]))
        shift_ns = int(o["ttft_ms"] * (factor_by_prompt[o["prompt_id"]] - 1) * 1e6)
        o["ttft_ms"] += shift_ns / 1e6
        o["e2e_ms"] += shift_ns / 1e6
        o["events"] = [[t + shift_ns, n] for t, n in o["events"]]
        o["chunk_times_ns"] = [t + shift_ns for t in o["chunk_times_ns"]]
    write_lines(path, objs)
    return path


def _arms(**kw):
    return [Arm("baseline", ["-ngl", "99"], ttft_cv=0.03, **kw),
            Arm("other", ["-ngl", "99", "-t", "4"], ttft_cv=0.03)]


def test_a_slow_prompt_is_not_a_first_request_outlier(tmp_path):
    """A bucket that mixes prompt lengths (seed004: 19- to 84-token prompts): the first request is a
    long prompt, as slow as its own repeats. Compared with its bucket it looked like an outlier."""
    path = _slow_down(fabricate(tmp_path / "run.jsonl", seed=5, arms=_arms()), {"short-0": 3.0})
    assert W.FIRST_OUTLIER not in {w.kind for w in build([path]).warnings}


def test_a_fast_first_request_is_not_a_warm_up_outlier(tmp_path):
    path = _slow_down(fabricate(tmp_path / "run.jsonl", seed=5, arms=_arms()), {"short-0": 0.3}, only_first=True)
    assert W.FIRST_OUTLIER not in {w.kind for w in build([path]).warnings}


def test_a_first_request_slower_than_its_own_repeats_is_flagged(tmp_path):
    """Three runs: the first request has two repeats of its own prompt; the spread of the other
    prompts' repeats says how far apart repeats normally are."""
    path = fabricate(tmp_path / "run.jsonl", seed=5, arms=_arms(first_request_factor=2.0))
    found = [w for w in build([path]).warnings if w.kind == W.FIRST_OUTLIER]
    assert [w.subject for w in found] == ["baseline"]


def test_the_noise_warning_measures_repeats_not_the_prompt_mix(tmp_path):
    """Prompts of very different lengths in one bucket spread its TTFT far beyond 20 %; repeats of
    each prompt agree within 3 %: that is not noise."""
    path = _slow_down(fabricate(tmp_path / "run.jsonl", seed=6, arms=_arms()), {"short-0": 3.0, "long-1": 2.0})
    rep = build([path])
    row = _row(rep, "baseline", "short")
    assert row.summaries["ttft_ms"].cv > 0.5  # the bucket's spread
    assert W.HIGH_CV not in {w.kind for w in rep.warnings}


def test_noisy_repeats_are_still_a_noise_warning(tmp_path):
    arms = [Arm("baseline", ["-ngl", "99"], ttft_cv=0.45), Arm("other", ["-ngl", "99", "-t", "4"], ttft_cv=0.03)]
    rep = build([fabricate(tmp_path / "run.jsonl", seed=6, arms=arms)])
    assert [w.subject for w in rep.warnings if w.kind == W.HIGH_CV] == ["baseline"]


def test_the_report_says_why_a_bucket_has_no_interval(tmp_path):
    """Each bucket of two files of different plans was seen by one session per arm: the "all" row
    pools two sessions, and still has no interval (the spread between sessions is unmeasured)."""
    a = fabricate(tmp_path / "a.jsonl", seed=2, buckets=("short",))
    b = fabricate(tmp_path / "b.jsonl", seed=3, buckets=("long",), started_at="2026-11-20T02:00:00Z")
    rep = build([a, b])
    c = _comp(rep, "cpu-moe", "all", "decode_tps")
    assert math.isfinite(c.ci.delta) and math.isnan(c.ci.low) and math.isnan(c.p_value)
    assert c.reason.startswith("one server session per arm in a bucket (its sessions ran different buckets)")
    assert f"No interval or p-value where {c.reason}." in render_markdown(rep)


# ------------------------------------------------------------------------ the measured window


def _late_first_request(path, delay_ms=5000.0, idle_temp=40):
    """The arms' first request came `delay_ms` after /health (cutting prompts took that long), and the
    GPU sat at `idle_temp` °C meanwhile; arm_start.spawn_ns says where spawn was on the request clock."""
    objs = read_lines(path)
    out = []
    for o in objs:
        if o.get("kind") == "memory" and o["t_ms"] >= 4000.0:
            o["t_ms"] += delay_ms
        out.append(o)
    for o in objs:
        if o.get("kind") == "arm_start":
            t0 = min(r["t_send_ns"] for r in objs if r.get("kind") == "request" and r["arm"] == o["arm"])
            o["spawn_ns"] = t0 - int((o["ready_ms"] + delay_ms) * 1e6)
            idle = next(m for m in objs if m.get("kind") == "memory" and m["arm"] == o["arm"])
            for k in range(int(delay_ms // 500)):
                out.append({**idle, "t_ms": o["ready_ms"] + 10.0 + k * 500.0, "temperature_c": idle_temp,
                            "sm_clock_mhz": 1980})
    write_lines(path, out)
    return path


def test_the_clock_and_temperature_window_comes_from_spawn_ns(tmp_path):
    path = _late_first_request(fabricate(tmp_path / "run.jsonl", seed=4))
    rep = build([path])
    assert W.TEMPERATURE_MOVED not in {w.kind for w in rep.warnings}


def test_without_spawn_ns_the_window_is_still_guessed(tmp_path):
    path = _late_first_request(fabricate(tmp_path / "run.jsonl", seed=4))
    objs = read_lines(path)
    for o in objs:
        if o.get("kind") == "arm_start":
            o["spawn_ns"] = 0  # a file written before the field existed
    write_lines(path, objs)
    assert W.TEMPERATURE_MOVED in {w.kind for w in build([path]).warnings}


def test_steady_memory_leaves_out_warm_up_and_prompt_cutting():
    from abtest.measure.sampler import summarize
    from abtest.records import RequestRecord, VramSample, measured_window_ms

    def sample(t_ms, mib):
        return VramSample("a", t_ms, mib, None, None, None, None, mib, None)

    # loading and warm-up hold 900 MiB of host RSS; the measured requests 500
    samples = [sample(t, 900.0) for t in (100, 200, 300, 400, 500, 600)] + [sample(t, 500.0) for t in (1100, 1200, 1300)]
    spawn_ns = 1_000_000_000

    def req(t_ms, warm):
        return RequestRecord("a", "b", "p", 0, 0, warm, "completion", 1, spawn_ns + int(t_ms * 1e6), 0.0, 200, None,
                             1.0, 100.0, 1, 1, None, [], [], None, "", {}, 0)

    window = measured_window_ms([req(300, True), req(1050, False), req(1200, False)], spawn_ns)
    assert window == (1050.0, 1300.0)
    out = summarize(samples, samples[0], window)
    assert out["steady"]["host_rss_anon_mib"] == 500.0
    assert out["peak"]["host_rss_anon_mib"] == 900.0
    assert summarize(samples, samples[0])["steady"]["host_rss_anon_mib"] == 900.0  # the old median
