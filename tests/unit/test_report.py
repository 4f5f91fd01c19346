"""The report on fabricated evidence (abtest.analysis and abtest.render): numbers, pooling, warnings, verdict, formats, plots, CLI."""

from __future__ import annotations

import csv
import io
import json
import math

import numpy as np
import pytest
from helpers_evidence import SHA_B, Arm, default_arms, fabricate, read_lines, write_lines
from rich.console import Console

from abtest.analysis import stats, stratified
from abtest.analysis.arms import expand_paths, load_evidence
from abtest.analysis.cost import busy_seconds
from abtest.analysis.equivalence import first_divergence
from abtest.analysis.findings import ReportWarning as W
from abtest.analysis.metrics import METRICS
from abtest.analysis.report import build_report
from abtest.cli import main
from abtest.errors import ConfigError
from abtest.evidence import read_evidence
from abtest.fmt import fmt_count, fmt_factor, fmt_num, fmt_pct
from abtest.render.report import CSV_COLUMNS, render, render_csv, render_markdown, terminal_renderable


def build(paths, **kw):
    return build_report(load_evidence(paths), **kw)


def kinds(report):
    return {w.kind for w in report.warnings}


@pytest.fixture(scope="module")
def one(tmp_path_factory):
    path = fabricate(tmp_path_factory.mktemp("ev") / "run.jsonl", seed=1)
    return path, build([path])


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    """Two server sessions per arm (abtest run --blocks 2): what intervals and p-values need."""
    path = fabricate(tmp_path_factory.mktemp("ev2") / "run.jsonl", seed=1, blocks=2)
    return path, build([path])


# ---------------------------------------------------------------------------------------- numbers


def test_bucket_summaries_match_numpy_on_the_raw_records(one):
    path, rep = one
    ev = read_evidence(path)
    for arm in ("baseline", "cpu-moe"):
        for bucket in ("short", "long"):
            reqs = [r for r in ev.requests if r.arm == arm and r.bucket == bucket and not r.warmup and r.ok]
            row = next(s for s in rep.buckets if s.group == arm and s.bucket == bucket)
            assert row.n == len(reqs) == 12 and row.n_failed == 0
            # decode: tokens after the first over first -> last token arrival (docs/metrics.md), not
            # over TTFT -> end of stream (the fixture's stream ends 1.1 ms after the last token)
            decode = np.array([(r.completion_tokens - 1) / ((r.events[-1].t_ns - r.events[0].t_ns) / 1e9) for r in reqs])
            assert not np.allclose(decode, [(r.completion_tokens - 1) / ((r.e2e_ms - r.ttft_ms) / 1000) for r in reqs])
            ttft = np.array([r.ttft_ms for r in reqs])
            e2e = np.array([r.e2e_ms for r in reqs])
            itl = np.concatenate([np.diff([e.t_ns for e in r.events]) / 1e6 for r in reqs])
            for key, ref in (("decode_tps", decode), ("ttft_ms", ttft), ("e2e_ms", e2e), ("itl_ms", itl)):
                s = row.summaries[key]
                assert s.mean == pytest.approx(ref.mean())
                assert s.std == pytest.approx(ref.std(ddof=1))
                assert s.median == pytest.approx(np.median(ref))
                assert s.p95 == pytest.approx(np.percentile(ref, 95))


def test_warmup_requests_are_left_out(one):
    path, rep = one
    ev = read_evidence(path)
    assert any(r.warmup for r in ev.requests)
    assert next(s for s in rep.buckets if s.group == "baseline" and s.bucket == "all").n == 24


def test_comparisons_are_ratios_of_means_over_server_sessions(two):
    _, rep = two
    by = {(s.group, s.bucket): s for s in rep.buckets}
    for c in rep.comparisons:
        bs, s = by[(c.baseline, c.bucket)], by[(c.group, c.bucket)]
        x, y = bs.samples[c.metric], s.samples[c.metric]
        assert c.ci.low <= c.ci.delta <= c.ci.high
        assert c.test == "session-t" and c.sessions == (2, 2) and c.inference.df == 2
        assert c.significant == (not c.ci.covers(0.0)) == (c.p_value < 0.05)  # one statistic
        if s.pooled:  # "all": compared within buckets, then combined
            expected = stratified.session_ratio(x, bs.sessions, y, s.sessions, bs.strata, s.strata, s.weights)
        else:
            assert c.ci.delta == pytest.approx(y.mean() / x.mean() - 1)
            expected = stratified.session_ratio(x, bs.sessions, y, s.sessions)
        assert (c.ci.delta, c.p_value) == pytest.approx((expected.delta, expected.p_value))
    decode = next(c for c in rep.comparisons if c.metric == "decode_tps" and c.bucket == "all")
    assert decode.ci.delta == pytest.approx(9.0 / 80.0 - 1, abs=0.01)
    assert decode.significant and not decode.better


def test_pooled_row_is_not_inflated_by_the_spread_between_buckets(two):
    """TTFT of short and long prompts differs 4x; compared within buckets, the "all" interval is
    about as tight as each bucket's, not as wide as one sample of the mix would give."""
    _, rep = two
    ttft = {c.bucket: c for c in rep.comparisons if c.metric == "ttft_ms"}
    width = {b: c.ci.high - c.ci.low for b, c in ttft.items()}
    assert width["all"] < max(width["short"], width["long"])
    by = {(s.group, s.bucket): s for s in rep.buckets}
    base, arm = by[("baseline", "all")], by[("cpu-moe", "all")]
    naive = stratified.session_ratio(base.samples["ttft_ms"], base.sessions, arm.samples["ttft_ms"], arm.sessions)
    lo, hi = naive.interval()
    assert width["all"] < (hi - lo) / 3


def test_verdict_names_vram_decode_and_output_equivalence(two):
    _, rep = two
    (v,) = rep.verdict
    assert v.startswith("cpu-moe (vs baseline) saves 10.1 GiB VRAM (−86 %)")
    # a 9× loss reads as a factor (hyperfine's "times slower"), the percentage beside it, never "costs −89 %"
    decode = next(c for c in rep.comparisons if c.bucket == "all" and c.metric == "decode_tps")
    factor = fmt_factor(1 / (1 + decode.ci.delta))
    assert f"has {factor} slower decode ({fmt_pct(decode.ci.delta)}; 97.5 % CI " in v
    assert "× slower TTFT (+" in v and "p < 0.001, Holm" in v and "costs" not in v
    assert "outputs identical on 48/48 greedy requests" in v


def test_memory_rows(one):
    _, rep = one
    mem = {m.group: m for m in rep.memory}
    assert mem["baseline"].vram_after_load_mib == pytest.approx(11800.0)
    assert mem["baseline"].vram_peak_mib == pytest.approx(12000.0)
    assert mem["cpu-moe"].vram_peak_mib == pytest.approx(1650.0)
    assert mem["cpu-moe"].rss_file_peak_mib == pytest.approx(1200.0)
    assert mem["cpu-moe"].breakdown["buffers"]["CPU_Mapped"]["model_mib"] > 10000


def test_cost_rows_follow_the_seed_formulas(one):
    path, rep = one
    ev = read_evidence(path)
    row = next(c for c in rep.cost if c.group == "baseline")
    reqs = [r for r in ev.requests if r.arm == "baseline" and not r.warmup]
    tps = sum(r.completion_tokens for r in reqs) / (sum(r.e2e_ms for r in reqs) / 1000)  # sequential: no overlap
    assert row.tokens_per_s == pytest.approx(tps)
    assert row.cost_per_1m == pytest.approx(3.50 / (tps * 3600) * 1e6)
    assert row.tokens_per_day == pytest.approx(tps * 86400)
    assert row.gpu_hours_per_1b == pytest.approx(1e9 / tps / 3600)
    assert row.vram_gb == pytest.approx(12000.0 * 2**20 / 1e9)
    assert row.first_token_ms == pytest.approx(np.median([r.ttft_ms for r in reqs]))
    assert (row.total_params, row.active_params, row.n_expert, row.n_expert_used) == (20.9e9, 3.6e9, 32, 4)


def test_cost_with_other_price_and_absent_params(tmp_path):
    path = fabricate(tmp_path / "r.jsonl", model_params={})
    rep = build([path], gpu_hour_cost=1.75)
    row = rep.cost[0]
    assert row.total_params is None and row.n_expert is None
    assert row.cost_per_1m == pytest.approx(1.75 / (row.tokens_per_s * 3600) * 1e6)
    md = render_markdown(rep)
    assert "Experts" not in md and "| — | — |" in md


def test_busy_seconds_is_the_union_of_intervals():
    assert busy_seconds([(0, 2), (1, 3), (5, 6)]) == 4
    assert busy_seconds([]) == 0


def test_a_clean_run_has_no_warnings(one):
    _, rep = one
    assert rep.warnings == []


# ---------------------------------------------------------------------------------------- pooling


def test_files_that_differ_only_in_port_are_pooled(tmp_path):
    a = fabricate(tmp_path / "a.jsonl", seed=1, port_base=18080)
    b = fabricate(tmp_path / "b.jsonl", seed=2, port_base=19090)
    rep = build([a, b])
    assert rep.groups == ["baseline", "cpu-moe"]
    assert next(s for s in rep.buckets if s.group == "baseline" and s.bucket == "all").n == 48
    assert any("pooled 2 files" in n for n in rep.notes)


def test_directories_are_globbed(tmp_path):
    fabricate(tmp_path / "a.jsonl", seed=1)
    fabricate(tmp_path / "b.jsonl", seed=2)
    assert expand_paths([tmp_path]) == [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    with pytest.raises(ConfigError):
        expand_paths([tmp_path / "missing.jsonl"])


@pytest.mark.parametrize(
    "kw,what",
    [
        ({"host": "bench-02"}, "host"),
        ({"driver": "560.1"}, "GPU/driver"),
        ({"server_build_id": "b6100"}, "server build"),
        ({"arms": [Arm("baseline", ["-ngl", "99", "-c", "8192"]), Arm("cpu-moe", ["-ngl", "99", "--cpu-moe"])]},
         "server argv"),
    ],
)
def test_files_that_differ_are_shown_side_by_side(tmp_path, kw, what):
    a = fabricate(tmp_path / "a.jsonl", seed=1, arms=default_arms())
    b = fabricate(tmp_path / "b.jsonl", seed=2, **kw)
    rep = build([a, b])
    assert "baseline [a]" in rep.groups and "baseline [b]" in rep.groups
    assert any(what in n and "side by side" in n for n in rep.notes)
    pairs = {(c.group, c.baseline) for c in rep.comparisons}
    if what == "server argv":  # only the baseline's argv differs: cpu-moe is pooled over both files
        assert pairs == {("cpu-moe", "baseline [a]")}
    else:  # each arm is compared with the baseline of its own file
        assert pairs == {("cpu-moe [a]", "baseline [a]"), ("cpu-moe [b]", "baseline [b]")}


def test_mixed_model_sha256_is_refused_unless_allowed(tmp_path):
    a = fabricate(tmp_path / "a.jsonl", seed=1)
    b = fabricate(tmp_path / "b.jsonl", seed=2, model_sha256=SHA_B)
    with pytest.raises(ConfigError, match="--allow-mixed-models"):
        build([a, b])
    rep = build([a, b], allow_mixed_models=True)
    assert len(rep.groups) == 4
    assert any("model SHA256" in n for n in rep.notes)


# ---------------------------------------------------------------------------------------- baseline


def test_baseline_flag_and_defaults(tmp_path):
    path = fabricate(tmp_path / "r.jsonl")
    assert build([path], baseline="cpu-moe").baseline == "cpu-moe"
    with pytest.raises(ConfigError, match="not an arm"):
        build([path], baseline="nope")
    # without an arm called baseline, the config's first arm is the baseline
    arms = [Arm("offload", ["-ngl", "99", "--cpu-moe"], decode_tps=9.0), Arm("gpu", ["-ngl", "99"])]
    p2 = fabricate(tmp_path / "r2.jsonl", arms=arms)
    assert build([p2]).baseline == "offload"


# ---------------------------------------------------------------------------------------- robustness


def test_truncated_last_line_is_reported_not_fatal(tmp_path):
    path = fabricate(tmp_path / "r.jsonl", truncate_last_line=True)
    rep = build([path])
    assert W.BAD_LINES in kinds(rep) and W.PARTIAL_RUN in kinds(rep)
    assert any("truncated last line" in w.text for w in rep.warnings)


def test_partial_run_and_failed_arm_and_failed_requests(tmp_path):
    arms = [Arm("baseline", ["-ngl", "99"], failed_requests=3), Arm("cpu-moe", ["-ngl", "99", "--cpu-moe"], failed=True)]
    path = fabricate(tmp_path / "r.jsonl", arms=arms, partial=True)
    rep = build([path])
    k = kinds(rep)
    assert {W.PARTIAL_RUN, W.ARM_FAILED, W.FAILED_REQUESTS} <= k
    assert rep.failed_requests == {"baseline": 3, "cpu-moe": 0}
    assert any(v.startswith("cpu-moe failed") for v in rep.verdict)
    base_all = next(s for s in rep.buckets if s.group == "baseline" and s.bucket == "all")
    assert (base_all.n, base_all.n_failed) == (24, 3)
    failed = next(w for w in rep.warnings if w.kind is W.FAILED_REQUESTS)
    assert "3 of 24" in failed.text and "HTTP 500" in failed.text


def test_failed_requests_are_counted_in_the_verdict(tmp_path):
    arms = [Arm("baseline", ["-ngl", "99"]), Arm("cpu-moe", ["-ngl", "99", "--cpu-moe"], decode_tps=9.0,
                                                   failed_requests=2)]
    rep = build([fabricate(tmp_path / "r.jsonl", arms=arms)])
    assert "2 of 24 measured requests failed" in rep.verdict[0]


# ---------------------------------------------------------------------------------------- equivalence


def test_divergent_outputs_report_rate_and_first_position(tmp_path):
    arms = [Arm("baseline", ["-ngl", "99"]), Arm("cpu-moe", ["--cpu-moe"], decode_tps=9.0, diverge_at=17, diverge_every=2)]
    rep = build([fabricate(tmp_path / "r.jsonl", arms=arms)])
    (e,) = rep.equivalence
    assert e.compared_by == "token_ids" and e.greedy is True
    assert e.pairs == 24 and e.identical == 12
    assert {d.position for d in e.divergences} == {17}
    assert "outputs identical on 12/24 greedy requests (earliest divergence at token 17" in rep.verdict[0]


def test_equivalence_falls_back_to_text(tmp_path):
    arms = [Arm("baseline", ["-ngl", "99"]), Arm("cpu-moe", ["--cpu-moe"], diverge_at=3)]
    rep = build([fabricate(tmp_path / "r.jsonl", arms=arms, with_token_ids=False, temperature=0.8)])
    (e,) = rep.equivalence
    assert e.compared_by == "text" and e.greedy is False and e.identical == 0
    assert all(d.position > 0 for d in e.divergences)


def _divergent_pair(tmp_path, diverge_at):
    """A fabricated baseline vs cpu-moe file whose outputs part at `diverge_at` on every other prompt:
    (path, its records, a baseline request, the cpu-moe request of its prompt that differs, where)."""
    arms = [Arm("baseline", ["-ngl", "99"]), Arm("cpu-moe", ["--cpu-moe"], diverge_at=diverge_at, diverge_every=2)]
    path = fabricate(tmp_path / "r.jsonl", arms=arms)
    objs = read_lines(path)
    reqs = [o for o in objs if o["kind"] == "request" and not o["warmup"]]
    base = next(o for o in reqs if o["arm"] == "baseline" and o["prompt_id"] == reqs[0]["prompt_id"])
    other = next(o for o in reqs if o["arm"] == "cpu-moe" and o["prompt_id"] == base["prompt_id"]
                 and o["token_ids"] != base["token_ids"])
    i = next(k for k, (a, b) in enumerate(zip(other["token_ids"], base["token_ids"], strict=False)) if a != b)
    return path, objs, base, other, i


def test_margins_probe_names_the_tokens_and_the_logit_margin_at_a_divergence(tmp_path):
    """A --margins probe (TokenIds with top_logprobs) folded into its request: the divergence then says
    which token each arm chose and by how many logits the baseline preferred its own; a probe whose
    ids are not the request's is not folded (its margins belong to another output)."""
    path, objs, base, other, i = _divergent_pair(tmp_path, diverge_at=17)

    def probe(o, winner, runner_up, gap):
        top = [[[t, -0.1, f"t{t}"], [t + 1, -5.0, "x"]] for t in o["token_ids"]]
        top[i] = [[winner, -0.2, f"t{winner}"], [runner_up, -0.2 - gap, f"t{runner_up}"]]
        return {"kind": "token_ids", "schema": 2, "arm": o["arm"], "seq": o["seq"], "token_ids": o["token_ids"],
                "source": "non-streamed n_probs=2 (--margins)", "top_logprobs": top}

    a, b = other["token_ids"][i], base["token_ids"][i]
    stray = dict(probe(base, b, a, 9.0), token_ids=[0, 0, 0])  # another output: not folded
    write_lines(path, [*objs, probe(base, b, a, 0.25), probe(other, a, b, 0.5), stray])
    rep = build([path])
    (e,) = rep.equivalence
    d = next(d for d in e.divergences if d.prompt_id == base["prompt_id"] and d.run_index == other["run_index"])
    assert d.position == i and (d.token_id, d.baseline_token_id) == (a, b)
    assert (d.token, d.baseline_token) == (f"t{a}", f"t{b}")
    assert d.margin == pytest.approx(0.25) and d.margin_is_exact is True and d.arm_margin == pytest.approx(0.5)
    unprobed = [x for x in e.divergences if x.prompt_id != base["prompt_id"]]
    assert unprobed and all(x.margin is None and x.token is None for x in unprobed)
    md = render_markdown(rep)
    assert f"@ {i}: 't{a}' vs 't{b}', margin 0.25" in md
    assert json.loads(render(rep, "json"))["equivalence"][0]["divergences"][0].keys() >= {"position"}


def test_margin_skips_an_end_of_generation_token_listed_above_the_chosen_one(tmp_path):
    """With ignore_eos the server's top list can start with an end-of-generation token greedy decoding
    could not take (SmolLM2 on the H200): the margin is then the chosen token's over the entry after
    it, and with only two entries listed ([EOS, chosen], the n_probs 2 of older files) the tokens are
    named but no margin is claimed."""
    path, objs, base, other, i = _divergent_pair(tmp_path, diverge_at=9)
    a, b = other["token_ids"][i], base["token_ids"][i]
    eos = max(a, b) + 1000

    def probe(o, at_i):
        top = [[[t, -0.1, f"t{t}"], [t + 1, -5.0, "x"], [t + 2, -6.0, "y"]] for t in o["token_ids"]]
        top[i] = at_i
        return {"kind": "token_ids", "schema": 2, "arm": o["arm"], "seq": o["seq"], "token_ids": o["token_ids"],
                "source": "non-streamed n_probs=3 (--margins)", "top_logprobs": top}

    base_top = [[eos, -1.0, ""], [b, -1.5, f"t{b}"], [a, -1.8, f"t{a}"]]
    arm_top = [[eos, -1.0, ""], [a, -1.4, f"t{a}"]]  # two entries: no runner-up after the chosen one
    write_lines(path, [*objs, probe(base, base_top), probe(other, arm_top)])
    (e,) = build([path]).equivalence
    d = next(d for d in e.divergences if d.prompt_id == base["prompt_id"] and d.run_index == other["run_index"])
    assert (d.token_id, d.baseline_token_id) == (a, b) and (d.token, d.baseline_token) == (f"t{a}", f"t{b}")
    assert d.margin == pytest.approx(0.3) and d.margin_is_exact is True
    assert d.arm_margin is None


def test_a_damaged_margins_probe_gives_no_margin_and_no_traceback(tmp_path):
    """A probe whose top list at the divergence is not [id, logprob, piece] entries (a damaged or
    hand-edited file) is left out: the divergence is still reported, without a margin."""
    path, objs, base, other, i = _divergent_pair(tmp_path, diverge_at=5)

    def probe(o, at_i):
        top = [[[t, -0.1, f"t{t}"], [t + 1, -5.0, "x"]] for t in o["token_ids"]]
        top[i] = at_i
        return {"kind": "token_ids", "schema": 2, "arm": o["arm"], "seq": o["seq"], "token_ids": o["token_ids"],
                "source": "non-streamed n_probs=3 (--margins)", "top_logprobs": top}

    write_lines(path, [*objs, probe(base, [["not an id", "x", "y"], [1, 2]]), probe(other, "junk")])
    (e,) = build([path]).equivalence
    d = next(d for d in e.divergences if d.prompt_id == base["prompt_id"] and d.run_index == other["run_index"])
    assert d.position == i and d.margin is None and d.arm_margin is None


def test_outputs_without_a_baseline_partner_are_counted_not_hidden(tmp_path):
    """An arm output whose (prompt_id, run_index) the baseline never ran (its session cut, say) is not a
    pair: the rate stays over the pairs, and the section says how many outputs were left unpaired."""
    arms = [Arm("baseline", ["-ngl", "99"]), Arm("cpu-moe", ["--cpu-moe"], diverge_at=5)]
    path = fabricate(tmp_path / "r.jsonl", arms=arms)
    objs = read_lines(path)
    measured = [o for o in objs if o["kind"] == "request" and not o["warmup"]]
    cut = max(o["run_index"] for o in measured)
    keep = [o for o in objs if not (o["kind"] == "request" and o["arm"] == "baseline" and o["run_index"] == cut)]
    write_lines(path, keep)
    rep = build([path])
    (e,) = rep.equivalence
    n_arm = sum(1 for o in measured if o["arm"] == "cpu-moe")
    n_cut = sum(1 for o in measured if o["arm"] == "cpu-moe" and o["run_index"] == cut)
    assert n_cut > 0 and e.pairs == n_arm - n_cut and e.unpaired == n_cut and e.identical == 0
    assert f"0/{e.pairs} (0%); {n_cut} without a baseline partner" in render_markdown(rep)
    assert json.loads(render(rep, "json"))["equivalence"][0]["unpaired"] == n_cut


def test_first_divergence():
    assert first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert first_divergence([1, 2, 3], [1, 5, 3]) == 1
    assert first_divergence([1, 2], [1, 2, 3]) == 2


# ---------------------------------------------------------------------------------------- warnings


def test_warning_few_samples_and_unresolved_claim(tmp_path):
    arms = [Arm("baseline", ["-ngl", "99"], decode_cv=0.06, session_sd=0.03),
            Arm("other", ["-ngl", "98"], decode_cv=0.06, session_sd=0.03)]
    rep = build([fabricate(tmp_path / "r.jsonl", arms=arms, runs=1, prompts_per_bucket=2, seed=4, blocks=2)])
    few = [w for w in rep.warnings if w.kind is W.FEW_SAMPLES]
    assert [w.subject for w in few] == ["baseline", "other"]  # one line per arm, buckets listed
    assert "only 4 successful measured requests per bucket (short, long)" in few[0].text
    unresolved = [w for w in rep.warnings if w.kind is W.UNRESOLVED]  # only the verdict's claims ("all")
    assert sorted(w.text.split(":")[0] for w in unresolved) == ["TTFT ms", "decode tok/s"]
    for w in unresolved:
        assert w.subject == "other vs baseline"
        assert "--blocks" in w.text and "over 2 server sessions per arm cannot rule out a 5% change" in w.text


def test_warning_high_cv(tmp_path):
    arms = [Arm("baseline", ["-ngl", "99"], decode_cv=0.3), Arm("cpu-moe", ["--cpu-moe"], decode_tps=9.0)]
    rep = build([fabricate(tmp_path / "r.jsonl", arms=arms)])
    (hi,) = [w for w in rep.warnings if w.kind is W.HIGH_CV]
    assert hi.subject == "baseline" and hi.text.startswith("decode tok/s") and "in short, long" in hi.text


def test_warning_first_measured_request_outlier(tmp_path):
    arms = [Arm("baseline", ["-ngl", "99"], first_request_factor=3.0), Arm("cpu-moe", ["--cpu-moe"])]
    rep = build([fabricate(tmp_path / "r.jsonl", arms=arms)])
    w = next(w for w in rep.warnings if w.kind is W.FIRST_OUTLIER)
    assert w.subject == "baseline" and "--warmup" in w.text and "modified Z" in w.text


def test_warning_clocks_and_temperature_moved(tmp_path):
    arms = [Arm("baseline", ["-ngl", "99"], clock_mhz=(1980, 1600), temperature_c=(48, 80)),
            Arm("cpu-moe", ["--cpu-moe"])]
    rep = build([fabricate(tmp_path / "r.jsonl", arms=arms)])
    k = {(w.kind, w.subject) for w in rep.warnings}
    assert (W.CLOCKS_MOVED, "baseline") in k and (W.TEMPERATURE_MOVED, "baseline") in k
    # idle clocks and the cold GPU while the model loaded are not counted as movement
    assert not any(w.subject == "cpu-moe" for w in rep.warnings)


def test_every_warning_names_its_fix():
    for w in W:
        # a server's warning carries its own words (and a hint where abtest has one: below)
        if w not in (W.BAD_LINES, W.PARTIAL_RUN, W.ARM_FAILED, W.FAILED_REQUESTS, W.SERVER_WARNING):
            assert "--" in w.value or "nvidia-smi" in w.value or "cache_prompt" in w.value, w


def test_prompt_cache_hits_are_flagged(tmp_path):
    path = fabricate(tmp_path / "r.jsonl")
    objs = read_lines(path)
    for o in objs:
        if o["kind"] == "request":
            o["cache_n"] = 12
    write_lines(path, objs)
    assert W.PROMPT_CACHE in kinds(build([path]))


# ---------------------------------------------------------------------------------------- formats


def test_markdown_has_every_section_and_provenance(one):
    _, rep = one
    md = render_markdown(rep)
    for title in ("## Verdict", "## Latency and throughput per bucket", "## Memory", "## Output equivalence",
                  "## Cost", "## Provenance", "throughput projection", "llama-server's buffers at load"):
        assert title in md
    for needle in ("a" * 64, "b6000", "driver 550.54.15", "NVIDIA H100 80GB HBM3", "2026-11-20", "abtest 0.1.0",
                   "| Model | Tokens/sec | First Token (ms) | VRAM (GB) | Total Params | Active Params",
                   "Cost/1M tokens", "Tokens/day", "GPU-hours per 1B tokens", "$3.50"):
        assert needle in md, needle


def test_csv_is_tidy_and_carries_provenance(one):
    _, rep = one
    rows = list(csv.DictReader(io.StringIO(render_csv(rep))))
    assert list(rows[0]) == CSV_COLUMNS
    prov = {(r["arm"], r["stat"]): r["value"] for r in rows if r["section"] == "provenance"}
    assert prov[("baseline", "model_sha256")] == "a" * 64
    assert prov[("baseline", "server_build")] == "b6000"
    mean = next(r for r in rows if r["section"] == "metric" and r["arm"] == "baseline" and r["bucket"] == "short"
                and r["metric"] == "decode_tps" and r["stat"] == "mean")
    summ = next(s for s in rep.buckets if s.group == "baseline" and s.bucket == "short").summaries["decode_tps"]
    assert float(mean["value"]) == pytest.approx(summ.mean)


def test_json_is_strict_and_complete(one):
    _, rep = one
    text = render(rep, "json")
    d = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert d["baseline"] == "baseline"
    assert d["provenance"][0]["model_sha256"] == "a" * 64
    assert {c["metric"] for c in d["comparisons"]} == {m.key for m in METRICS}
    assert d["equivalence"][0]["exact_match_rate"] == 1.0
    assert d["settings"]["bootstrap_seed"] == stats.DEFAULT_SEED


def test_terminal_renders(one):
    _, rep = one
    con = Console(width=200, record=True, file=io.StringIO())
    con.print(terminal_renderable(rep))
    text = con.export_text()
    assert "Verdict" in text and "saves 10.1 GiB VRAM" in text and "aaaaaaaaaaaa" in text


def test_report_is_reproducible(one):
    path, rep = one
    assert render_markdown(build([path])) == render_markdown(rep)


def test_unknown_format():
    with pytest.raises(ConfigError):
        render(None, "xml")  # type: ignore[arg-type]


def test_fmt_helpers():
    assert fmt_pct(-0.8612) == "−86 %" and fmt_pct(0.012) == "+1.2 %" and fmt_pct(math.nan) == "—"
    assert fmt_count(20.9e9) == "20.9B" and fmt_count(None) == "—" and fmt_count(math.nan) == "—"
    assert fmt_num(11800.2) == "11,800" and fmt_num(-1.5) == "−1.50"


# ---------------------------------------------------------------------------------------- plots and CLI


def test_plots_are_pngs(one, tmp_path):
    from abtest.render import plots

    _, rep = one
    paths = plots.write_report_plots(rep, tmp_path / "plots")
    assert {p.name for p in paths} == {"ttft_ms.png", "decode_tps.png", "vram_over_time.png", "memory_breakdown.png"}
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_cli_formats_and_out_dir(one, tmp_path, capsys):
    path, _ = one
    code, out, _ = run_cli(["report", str(path), "--format", "markdown", "--out", str(tmp_path / "o")], capsys)
    assert code == 0 and out.startswith("# abtest report")
    assert {p.name for p in (tmp_path / "o").iterdir()} >= {"report.md", "report.json", "report.csv", "ttft_ms.png"}
    code, out, _ = run_cli(["report", str(path.parent), "--format", "json", "--gpu-hour-cost", "2"], capsys)
    assert code == 0 and json.loads(out)["settings"]["gpu_hour_cost"] == 2.0
    code, out, _ = run_cli(["report", str(path)], capsys)
    assert code == 0 and "Verdict" in out


def test_cli_errors_exit_2(tmp_path, capsys):
    a = fabricate(tmp_path / "a.jsonl", seed=1)
    b = fabricate(tmp_path / "b.jsonl", seed=2, model_sha256=SHA_B)
    code, _, err = run_cli(["report", str(a), str(b)], capsys)
    assert code == 2 and "--allow-mixed-models" in err
    code, _, _ = run_cli(["report", str(a), str(b), "--allow-mixed-models", "--format", "csv"], capsys)
    assert code == 0
    code, _, err = run_cli(["report"], capsys)
    assert code == 2 and "no evidence given" in err
    code, _, err = run_cli(["report", str(a), "--baseline", "nope"], capsys)
    assert code == 2 and "not an arm" in err


def test_suspect_requests_are_named_in_the_warnings(tmp_path) -> None:
    """A record that says what cannot be true (RequestRecord.suspect, set at run time) is counted
    per arm in the warnings, with its first reason; the request itself stays in the statistics."""
    import dataclasses

    from helpers_evidence import fabricate, read_lines, write_lines

    from abtest.analysis.findings import ReportWarning
    from abtest.analysis.report import build_report
    from abtest.evidence import read_evidence
    from abtest.records import RequestRecord, from_dict, to_dict

    path = fabricate(tmp_path / "ev.jsonl")
    lines = read_lines(path)
    marked = 0
    for i, obj in enumerate(lines):
        if obj.get("kind") == "request" and not obj["warmup"] and obj["arm"] == "baseline" and marked < 3:
            rec = from_dict(obj)
            assert isinstance(rec, RequestRecord)
            lines[i] = to_dict(dataclasses.replace(rec, suspect=["TTFT 1.000 ms is below the server's own prompt "
                                                                 "time 2.000 ms (the send mark was taken late)"]))
            marked += 1
    write_lines(path, lines)
    report = build_report([read_evidence(path)])
    found = [w for w in report.warnings if w.kind is ReportWarning.SUSPECT_REQUESTS]
    assert len(found) == 1 and found[0].subject.startswith("baseline") and "3 of " in str(found[0])
    assert "below the server's own prompt time" in str(found[0])


def test_server_warnings_from_the_arm_logs_are_findings(tmp_path):
    """arm_end.server_warnings (the W/E lines of the server log) become SERVER_WARNING findings, one
    per text, naming the arms that printed it; files without the field read as no warnings."""
    objs = read_lines(fabricate(tmp_path / "run.jsonl", seed=1))
    mmap = ("W llama_model_loader: tensor overrides to CPU are used with mmap enabled - consider using "
            "--load-mode none for better performance")
    key = "W llama_context: n_ctx_seq (4096) < n_ctx_train (131072) -- the full capacity of the model will not be utilized"
    # lines abtest's own actions cause, kept by files written before they were dropped at capture
    ours = ["W srv  llama_server: security: no API key is set", "W srv          stop: cancel task, id_task = 990"]
    arms = [o["arm"] for o in objs if o["kind"] == "arm_end"]
    for o in objs:
        if o["kind"] == "arm_end":
            o["server_warnings"] = [key] + ours + ([mmap] if o["arm"] == arms[-1] else [])
    rep = build([write_lines(tmp_path / "w.jsonl", objs)])
    found = [w for w in rep.warnings if w.kind is W.SERVER_WARNING]
    assert len(found) == 2
    plain, loader = (next(w for w in found if t in w.text) for t in (key, mmap))
    assert plain.subject == "every arm" and loader.subject == arms[-1]
    # the --load-mode hint only where the server's words are the mmap warning
    assert "abtest sweep --load-mode both" in loader.text and "abtest sweep" not in plain.text
    assert W.SERVER_WARNING not in kinds(build([fabricate(tmp_path / "plain.jsonl", seed=1)]))


def test_sessions_of_a_load_level_run_show_the_lowest_levels_means() -> None:
    """Committed H200 evidence with `--concurrency 1,2,4,8,16` and one bucket (no "all" row): every
    session's row carries the means of its lowest level, not dashes."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "docs" / "results" / "h200-2026-12-02-load"
    report = build_report(load_evidence(sorted(root.glob("*.jsonl.gz"))))
    assert len(report.sessions) == 4
    for row in report.sessions:
        assert math.isfinite(row.means["decode_tps"]) and math.isfinite(row.means["ttft_ms"]), row
    cpu = [r.means["decode_tps"] for r in report.sessions if r.group == "cpu-moe"]
    assert len(cpu) == 2 and cpu[0] != cpu[1]
    # 2 warm-up requests per level, 5 levels: the warm-up advice quotes the level's, not 10
    outlier = [w.text for w in report.warnings if "first measured request" in w.text]
    assert outlier and all("(it was 2 per load level)" in t for t in outlier)


def test_sessions_of_a_rate_level_run_show_the_lowest_levels_means(tmp_path) -> None:
    """`abtest run --rate 0.5,1,2` with one bucket: the levels share one concurrency, so the
    session rows must tell them apart by rate, and carry the lowest rate's means, not dashes."""
    rates = (0.5, 1.0, 2.0)
    path = fabricate(tmp_path / "rates.jsonl", seed=3, buckets=("short",), blocks=2)
    objs = read_lines(path)
    for o in objs:
        if o.get("kind") == "request":
            i = o["run_index"] % len(rates)
            o["load"] = {"mode": "open", "concurrency": 1, "rate_rps": rates[i], "level": i, "levels": len(rates)}
    report = build([write_lines(path, objs)])
    assert len(report.sessions) == 4
    for row in report.sessions:
        assert math.isfinite(row.means["decode_tps"]) and math.isfinite(row.means["ttft_ms"]), row
        low = next(s for s in report.buckets if s.group == row.group and s.bucket == "short r=0.5")
        j = [r for r in report.sessions if r.group == row.group].index(row)
        assert row.means["ttft_ms"] == pytest.approx(float(np.mean(low.samples["ttft_ms"][low.sessions == j])))
    section = render_markdown(report).split("## Server sessions")[1].split("##")[0]
    assert "headline row of the lowest load level" in section
    rows = [line.split("|")[1:-1] for line in section.splitlines() if line.startswith("| baseline |")
            or line.startswith("| cpu-moe |")][:4]
    assert len(rows) == 4 and all(cell.strip() != "—" for row in rows for cell in row[4:6]), rows


def test_a_level_failed_by_a_failed_request_says_so(tmp_path) -> None:
    """A failed request is a miss (not served within the SLO): it fails a level whose served
    requests all meet it when it reaches the percentile (p95 of 12 requests), and the level stays
    in the tables, its served requests counted. The Load levels table must say that the failure
    is why (its TTFT p95 is over the served requests and lies within the limit)."""
    from abtest.analysis.slo import parse_slo

    path = fabricate(tmp_path / "lv.jsonl", seed=5, buckets=("short",), prompts_per_bucket=6, runs=4)
    objs = read_lines(path)
    failed_one = False
    for o in objs:
        if o.get("kind") == "request" and not o["warmup"]:
            i = o["run_index"] % 2
            c = (1, 2)[i]
            o["concurrency"] = c
            o["load"] = {"mode": "closed", "concurrency": c, "level": i, "levels": 2}
            if o["arm"] == "baseline" and i == 1 and not failed_one:
                failed_one = True
                o.update(status=500, error="HTTP 500: slot unavailable", ttft_ms=None, events=[], chunk_times_ns=[],
                         completion_tokens=0, token_ids=None, text="", timings={})
    slo = parse_slo("ttft_p95<=5s")
    report = build([write_lines(path, objs)], slo=slo)
    rows = {(lr.group, lr.point.label): lr for lr in report.levels}
    hit = rows[("baseline", "c=2")]
    assert hit.n == 12 and hit.n_failed == 1 and hit.ttft_p95_ms is not None and hit.ttft_p95_ms < 5000
    assert hit.meets_slo is False and hit.failed_requests_decide is True
    assert rows[("baseline", "c=1")].meets_slo is True and rows[("baseline", "c=1")].failed_requests_decide is False
    section = render_markdown(report).split("## Load levels")[1].split("##")[0]
    line = next(ln for ln in section.splitlines() if ln.startswith("| baseline | c=2"))
    assert "no (failed)" in line, line
    assert "| baseline | c=1" in section and "yes" in next(ln for ln in section.splitlines()
                                                           if ln.startswith("| baseline | c=1"))
