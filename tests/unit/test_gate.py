"""The nightly regression gate: detection and false-alarm rates over 200 seeds, then real files.

The 200-seed loops build per-night samples in memory (NightArm) and go through the same
`evaluate_history` the CLI uses. Noise model: per-request decode tok/s Normal with a 3 % coefficient
of variation, 24 measured requests per arm per night, and a night-to-night shift of the mean with
a 1 % coefficient of variation (nights differ by more than request noise explains).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
from helpers_evidence import SHA_A, SHA_B, Arm, fabricate

from abtest.analysis.gate import check_line, evaluate_history, gate_samples, gate_values, raise_for_outcome
from abtest.analysis.nights import Night, NightArm, load_history
from abtest.cli import main
from abtest.errors import EXIT_MISSING_NIGHT, ConfigError, MissingNight, RegressionFound
from abtest.render.history import history_markdown, history_terminal

SEEDS = range(200)
KEY = ("m", "cpu-moe")


def simulate(seed, *, nights=30, n_req=24, cv=0.03, night_cv=0.01, drop=0.0, ttft_rise=0.0, vram_mib=11800.0):
    """One arm's history in memory; tonight (the last night) optionally slower by `drop`."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(nights):
        last = i == nights - 1
        mu = 80.0 * (1 + rng.normal(0, night_cv))
        decode = rng.normal(mu, cv * 80.0, n_req) * ((1 - drop) if last else 1.0)
        tmu = 120.0 * (1 + rng.normal(0, night_cv))
        ttft = rng.normal(tmu, 0.05 * 120.0, n_req) * ((1 + ttft_rise) if last else 1.0)
        night = f"2026-10-{i + 1:02d}"
        out.append(Night(night, [], {KEY: NightArm(night, "cpu-moe", decode, ttft, vram_mib, model="m",
                                                    provenance={"server_build": "b6000"})}))
    return out


def alarms(nights, th=None):
    return evaluate_history(nights, th).regressions


def test_planted_8_percent_decode_slowdown_is_caught_in_at_least_95_percent_of_seeds():
    caught = sum(any(c.metric == "decode_tps" for c in alarms(simulate(s, drop=0.08))) for s in SEEDS)
    assert caught >= 190, caught


def test_noise_only_30_nights_alarm_in_at_most_1_percent_of_seeds():
    false = sum(bool(alarms(simulate(s, drop=0.0))) for s in SEEDS)
    assert false <= 2, false


def test_night_to_night_noise_is_what_the_prediction_bound_absorbs():
    """With 3 % night-to-night noise a 5 % move is ordinary. The prediction bound, which carries
    the nightly spread, keeps decode alarms near its α (1 %); a request-level test plus the
    threshold alone (no bound) fires several times as often."""
    histories = [simulate(s, night_cv=0.03) for s in SEEDS]
    gated = sum(any(c.metric == "decode_tps" for c in alarms(n)) for n in histories)
    request_level_only = 0
    for n in histories:
        g = gate_samples(n[-1].arms[KEY].decode_tps, [x.arms[KEY].decode_tps for x in n[-8:-1]],
                           higher_is_better=True, threshold_pct=5.0)
        request_level_only += g.beyond_threshold and g.p_value < 0.01
    assert gated <= 4, gated  # 2 % of 200: α = 1 % plus the sampling error of 200 seeds
    assert request_level_only >= 3 * max(gated, 1), (request_level_only, gated)


def test_speedups_are_improvements_not_regressions():
    checks = evaluate_history(simulate(3, drop=-0.10)).checks
    decode = next(c for c in checks if c.metric == "decode_tps")
    assert decode.status == "improvement" and not decode.regression


def test_ttft_rise_is_a_regression():
    regs = alarms(simulate(5, ttft_rise=0.15))
    assert [c.metric for c in regs] == ["ttft_ms"]


def test_an_arm_with_no_successful_request_tonight_is_a_regression():
    nights = simulate(2, nights=10)
    nights[-1].arms[KEY] = NightArm(nights[-1].night, "cpu-moe", np.empty(0), np.empty(0), math.nan,
                                    n_failed=24, model="m")
    result = evaluate_history(nights)
    (reg,) = result.regressions
    assert reg.metric == "requests" and "no successful request tonight (24 failed)" in _flat(history_markdown(result))
    from rich.console import Console

    Console(file=__import__("io").StringIO()).print(history_terminal(result))


def test_too_little_history_gives_no_verdict_yet_and_never_claims_no_regression():
    """The gate needs `min_nights` (3) nights before tonight: a new box's first nights say so, exit 0."""
    result = evaluate_history(simulate(1, nights=3, drop=0.5))
    assert {c.status for c in result.checks} == {"no verdict yet"}
    assert result.outcome == "no verdict yet" and not result.regressions
    md = history_markdown(result)
    assert md.startswith("**abtest nightly 2026-10-03: no verdict yet (2 nights; the gate needs 3)**")
    assert "no regression" not in md
    raise_for_outcome(result)  # no exception: exit 0, nobody is paged
    assert evaluate_history(simulate(1, nights=4, drop=0.5)).regressions


def test_window_is_the_last_seven_nights():
    checks = evaluate_history(simulate(1, nights=12)).checks
    assert checks[0].window_nights == [f"2026-10-{d:02d}" for d in range(4, 12)][-7:]


@pytest.mark.parametrize(
    "tonight,window,expected",
    [
        (11800.0 * 1.01, [11800.0] * 7, False),  # +1 %: under the relative threshold
        (1000.0 + 50.0, [1000.0] * 7, False),  # +5 % but +50 MiB: under the absolute floor
        (3000.0 + 70.0, [3000.0] * 7, True),  # +2.3 % and +70 MiB over a flat window
        (11800.0 + 300.0, [11800.0] * 7, True),  # +2.5 % and +300 MiB
        (11800.0 + 300.0, [11800.0, 12300.0, 11500.0, 12400.0, 11300.0, 12100.0, 11600.0], False),  # noisy window
        (11800.0 - 600.0, [11800.0] * 7, False),  # less VRAM is never a regression
    ],
)
def test_vram_gate_needs_relative_and_absolute_change(tonight, window, expected):
    assert gate_values(tonight, window, threshold_pct=2.0, floor_abs=64.0).regression is expected


def test_nightly_value_is_mean_of_bucket_medians():
    na = NightArm("n", "a", np.array([10.0, 11.0, 12.0, 100.0, 110.0]), np.zeros(5), 0.0,
                    strata=np.array(["s", "s", "s", "l", "l"]))
    assert na.value("decode_tps") == pytest.approx((11.0 + 105.0) / 2)
    assert NightArm("n", "a", np.array([1.0, 3.0]), np.zeros(2), 0.0).value("decode_tps") == 2.0


def test_gate_samples_reports_the_request_level_p_value():
    from scipy import stats as st

    rng = np.random.default_rng(0)
    window = [rng.normal(80, 2.4, 24) for _ in range(7)]
    tonight = rng.normal(72, 2.4, 24)
    g = gate_samples(tonight, window, higher_is_better=True, threshold_pct=5.0)
    assert g.p_value == pytest.approx(st.mannwhitneyu(tonight, np.concatenate(window), alternative="less").pvalue)
    assert g.value == pytest.approx(np.median(tonight))
    assert g.reference == pytest.approx(np.median([np.median(w) for w in window]))
    assert g.regression


def test_gate_samples_with_buckets_uses_van_elteren():
    from abtest.analysis import stratified

    rng = np.random.default_rng(1)
    lab = np.repeat(["short", "long"], 12)
    scale = np.repeat([120.0, 480.0], 12)
    window = [scale * rng.normal(1, 0.05, 24) for _ in range(7)]
    tonight = scale * rng.normal(1.1, 0.05, 24)
    g = gate_samples(tonight, window, higher_is_better=False, threshold_pct=5.0, strata=(lab, [lab] * 7))
    expected = stratified.van_elteren(tonight, lab, np.concatenate(window), np.tile(lab, 7), alternative="greater")
    assert g.p_value == pytest.approx(expected.p_value)
    assert g.regression


# ---------------------------------------------------------------------------------------- real files


def write_nights(root, n=9, *, slow_tonight=False, new_build_tonight=False, night_config=None):
    """`n` nights of one model; `night_config(i)` may give night i's cpu_moe_argv, buckets, model_sha256."""
    rng = np.random.default_rng(42)
    for i in range(n):
        last = i == n - 1
        jitter = 1 + rng.normal(0, 0.005)
        cfg = night_config(i) if night_config else {}
        arms = [
            Arm("baseline", ["-ngl", "99"], decode_tps=80.0 * jitter),
            Arm("cpu-moe", cfg.get("cpu_moe_argv", ["-ngl", "99", "--cpu-moe"]), vram_mib=1450.0,
                decode_tps=cfg.get("cpu_moe_tps", 9.0) * jitter * (0.92 if (last and slow_tonight) else 1.0)),
        ]
        night = f"2026-11-{i + 1:02d}"
        fabricate(root / night / "run.jsonl", seed=100 + i, arms=arms, completion_tokens=16, runs=3,
                  prompts_per_bucket=2, started_at=f"{night}T01:00:00Z",
                  buckets=cfg.get("buckets", ("short", "long")), model_sha256=cfg.get("model_sha256", SHA_A),
                  server_build_id="b6001" if (last and new_build_tonight) else "b6000")
    return root


def test_regression_in_real_files_is_found_with_its_likely_cause(tmp_path, capsys):
    root = write_nights(tmp_path / "nightly", slow_tonight=True, new_build_tonight=True)
    result = evaluate_history(load_history(root))
    assert result.tonight == "2026-11-09"
    (reg,) = result.regressions
    assert (reg.arm, reg.metric) == ("cpu-moe", "decode_tps")
    assert reg.gate.change == pytest.approx(-0.08, abs=0.02)
    assert [str(c) for c in reg.causes] == ["server build b6000 → b6001 (2026-11-09)"]
    md = history_markdown(result)
    assert md.startswith("**abtest nightly 2026-11-09: 1 regression**")
    assert "likely cause: server build b6000 → b6001" in _flat(md)
    with pytest.raises(RegressionFound, match="cpu-moe decode"):
        raise_for_outcome(result)
    with pytest.raises(SystemExit) as exc:
        main(["report", "--history", str(root), "--format", "markdown", "--out", str(tmp_path / "out")])
    assert exc.value.code == 1
    out = capsys.readouterr()
    assert "1 regression" in out.out and "likely cause" in out.err
    assert {p.name for p in (tmp_path / "out").iterdir()} >= {"trend_decode_tps.png", "trend_ttft_ms.png",
                                                               "trend_vram_peak_mib.png", "history.md"}


def test_quiet_nights_in_real_files_exit_0(tmp_path, capsys):
    root = write_nights(tmp_path / "nightly", new_build_tonight=True)
    with pytest.raises(SystemExit) as exc:
        main(["report", "--history", str(root), "--format", "json"])
    assert exc.value.code == 0
    import json

    d = json.loads(capsys.readouterr().out)
    assert d["regressions"] == 0
    assert any(ch["field"] == "server_build" for ch in d["provenance_changes"])
    assert all(math.isfinite(c["value"]) for c in d["checks"] if c["status"] != "no verdict yet")


def test_history_needs_night_directories(tmp_path, capsys):
    (tmp_path / "not-a-date").mkdir()
    with pytest.raises(SystemExit) as exc:
        main(["report", "--history", str(tmp_path)])
    assert exc.value.code == 2 and "YYYY-MM-DD" in capsys.readouterr().err


# ------------------------------------------------------------------------- several models per night


def write_model_nights(root, n=9, *, missing_tonight=(), models=(("alpha", SHA_A, 80.0), ("beta", SHA_B, 30.0))):
    """scripts/nightly.sh's layout: every model of the config writes its own file into the night folder."""
    rng = np.random.default_rng(7)
    for i in range(n):
        night = f"2026-11-{i + 1:02d}"
        for m, (name, sha, tps) in enumerate(models):
            if i == n - 1 and name in missing_tonight:
                continue
            jitter = 1 + rng.normal(0, 0.005)
            arms = [Arm("baseline", ["-ngl", "99"], decode_tps=tps * jitter, ttft_ms=100.0 + 50 * m),
                    Arm("cpu-moe", ["-ngl", "99", "--cpu-moe"], decode_tps=tps / 8 * jitter, vram_mib=1450.0,
                        ttft_ms=600.0 + 300 * m)]
            fabricate(root / night / f"20261101T0100{m:02d}-{name}.jsonl", seed=100 + 10 * i + m, arms=arms,
                      completion_tokens=16, runs=3, prompts_per_bucket=2, started_at=f"{night}T01:00:00Z",
                      model_name=name, model_sha256=sha)
    return root


def test_each_model_is_gated_against_its_own_past(tmp_path):
    root = write_model_nights(tmp_path / "nightly")
    result = evaluate_history(load_history(root))
    assert not result.regressions
    assert {(c.model, c.arm) for c in result.checks} == {(m, a) for m in ("alpha", "beta")
                                                         for a in ("baseline", "cpu-moe")}
    alpha = next(c for c in result.checks if (c.model, c.arm, c.metric) == ("alpha", "baseline", "decode_tps"))
    assert alpha.gate.value == pytest.approx(80.0, rel=0.05)


def test_a_model_missing_tonight_is_missing_not_compared_with_another_model(tmp_path, capsys):
    """Two unchanged models, one model's file missing tonight: no regression of the other model (the
    old gate pooled arms by name across models and blamed the model SHA256), the missing one a failure."""
    root = write_model_nights(tmp_path / "nightly", missing_tonight=("alpha",))
    result = evaluate_history(load_history(root))
    assert not result.regressions, [check_line(c) for c in result.regressions]
    assert not any(ch.field == "model_sha256" for c in result.checks for ch in c.causes)
    missing = [(c.model, c.arm) for c in result.checks if c.status == "missing"]
    assert missing == [("alpha", "baseline"), ("alpha", "cpu-moe")]
    assert result.outcome == "missing"
    with pytest.raises(MissingNight, match="alpha · baseline"):
        raise_for_outcome(result)
    with pytest.raises(SystemExit) as exc:
        main(["report", "--history", str(root), "--format", "markdown"])
    assert exc.value.code == EXIT_MISSING_NIGHT
    out = capsys.readouterr()
    assert "2 missing" in out.out and "no regression" not in out.out
    (line,) = out.err.strip().splitlines()
    assert "alpha · baseline" in line and "last seen 2026-11-08" in line


# ----------------------------------------------------------------------------- tonight without evidence


@pytest.mark.parametrize("tonight", ["absent", "empty", "logs only", "unreadable"])
def test_a_night_without_evidence_is_a_failure_not_the_previous_night_judged(tmp_path, capsys, tonight):
    root = write_nights(tmp_path / "nightly")  # 2026-11-01 … 2026-11-09, all quiet
    night = root / "2026-11-10"
    if tonight != "absent":
        night.mkdir()
    if tonight == "logs only":  # what scripts/nightly.sh leaves when every run failed before its evidence
        (night / "report.md").write_text("")
        (night / "x.baseline.log").write_text("error: model not found\n")
    if tonight == "unreadable":
        (night / "run.jsonl").write_text("not json\n{\"kind\": \"bogus\"}\n")
    with pytest.raises(SystemExit) as exc:
        main(["report", "--history", str(root), "--night", "2026-11-10", "--format", "markdown"])
    assert exc.value.code == EXIT_MISSING_NIGHT
    out = capsys.readouterr()
    (line,) = out.err.strip().splitlines()
    assert line.startswith("abtest: error: no evidence for tonight (2026-11-10)"), line
    assert out.out.startswith("**abtest nightly 2026-11-10: no evidence tonight**\n")
    assert "no regression" not in out.out and "decode tok/s" not in out.out  # 2026-11-09 is not judged


def test_the_newest_night_folder_is_tonight_even_when_empty(tmp_path, capsys):
    root = write_nights(tmp_path / "nightly")
    (root / "2026-11-10").mkdir()
    with pytest.raises(SystemExit) as exc:
        main(["report", "--history", str(root)])
    assert exc.value.code == EXIT_MISSING_NIGHT
    assert "no evidence for tonight (2026-11-10)" in capsys.readouterr().err


def test_night_flag_gates_that_night_and_ignores_later_ones(tmp_path):
    root = write_nights(tmp_path / "nightly", slow_tonight=True)  # 2026-11-09 is slow
    result = evaluate_history(load_history(root, night="2026-11-08"))
    assert result.tonight == "2026-11-08" and not result.regressions
    with pytest.raises(ConfigError, match="YYYY-MM-DD"):
        load_history(root, night="11/08/2026")


# ------------------------------------------------------------------------------- changed configuration

NEW_ARGV = ["-ngl", "99", "--n-cpu-moe", "12"]


def _flat(text):
    """Markdown as one line: bullets wrap at 80 columns, the phrases are what is checked."""
    return " ".join(text.split())


def _status(result, arm, metric="decode_tps"):
    return next(c for c in result.checks if (c.arm, c.metric) == (arm, metric))


def test_changed_argv_tonight_is_named_and_not_called_a_regression(tmp_path, capsys):
    """--cpu-moe → --n-cpu-moe 12 tonight, and cpu-moe twice as fast: a new configuration, not an
    improvement, and (the other way round) never a regression."""
    for tps, name in ((18.0, "faster"), (4.0, "slower")):
        root = write_nights(tmp_path / name, night_config=lambda i, tps=tps: (
            {"cpu_moe_argv": NEW_ARGV, "cpu_moe_tps": tps} if i == 8 else {}))
        result = evaluate_history(load_history(root))
        assert not result.regressions and result.outcome == "ok"
        assert _status(result, "cpu-moe").status == "no verdict yet"
        assert _status(result, "baseline").status == "ok"
        md = _flat(history_markdown(result))
        assert "tiny-moe · cpu-moe: configuration changed" in md
        assert "--cpu-moe → --n-cpu-moe 12" in md
    with pytest.raises(SystemExit) as exc:
        main(["report", "--history", str(root), "--format", "markdown"])
    assert exc.value.code == 0
    assert "no verdict yet" in capsys.readouterr().out


@pytest.mark.parametrize("change,named", [
    ({"buckets": ("short",)}, "buckets long, short → short"),
    ({"model_sha256": SHA_B}, "model SHA256 aaaaaaaaaaaa → bbbbbbbbbbbb"),
])
def test_changed_buckets_or_model_file_are_named_and_not_compared(tmp_path, change, named):
    root = write_nights(tmp_path / "nightly", slow_tonight=True, night_config=lambda i: change if i == 8 else {})
    result = evaluate_history(load_history(root))
    assert not result.regressions, [check_line(c) for c in result.regressions]
    assert {c.status for c in result.checks} == {"no verdict yet"}
    assert named in _flat(history_markdown(result))


def test_only_nights_of_tonights_configuration_are_compared(tmp_path):
    # nights 1-4 old argv, 5-9 new: tonight (9) against 5-8 only, which still catches a slowdown
    root = write_nights(tmp_path / "nightly", slow_tonight=True,
                        night_config=lambda i: {"cpu_moe_argv": NEW_ARGV} if i >= 4 else {})
    result = evaluate_history(load_history(root))
    reg = _status(result, "cpu-moe")
    assert reg.window_nights == ["2026-11-05", "2026-11-06", "2026-11-07", "2026-11-08"]
    assert reg.regression
    assert "(2026-11-02 … 2026-11-04) not compared" in _flat(history_markdown(result))  # named
    # a change that was reverted: the nights of the other configuration are skipped, not the window cut
    root = write_nights(tmp_path / "reverted", night_config=lambda i: {"cpu_moe_argv": NEW_ARGV} if i == 6 else {})
    result = evaluate_history(load_history(root))
    assert _status(result, "cpu-moe").window_nights == [f"2026-11-0{d}" for d in (1, 2, 3, 4, 5, 6, 8)]


# ------------------------------------------------------------------------------------ exit codes

ROOT = Path(__file__).resolve().parents[2]


def _exit_codes():
    from abtest import errors

    return {name: getattr(errors, name) for name in dir(errors) if name.startswith("EXIT_")}


def test_nightly_sh_exit_codes_are_those_of_errors_py():
    script = (ROOT / "scripts" / "nightly.sh").read_text()
    declared = dict(re.findall(r"^(EXIT_[A-Z_]+)=(\d+)$", script, flags=re.M))
    assert declared, "nightly.sh names its exit codes"
    codes = _exit_codes()
    assert {k: int(v) for k, v in declared.items()} == {k: codes[k] for k in declared}
    code = [line for line in script.splitlines() if not line.lstrip().startswith("#")]
    assert not [line for line in code if re.search(r"\bexit [1-9]", line)], "only named codes (and 0)"


def test_docs_exit_code_table_lists_exactly_the_codes_of_errors_py():
    doc = (ROOT / "docs" / "cli.md").read_text()
    table = doc.split("## Exit codes (every command)")[1].split("\n## ")[0]
    listed = {int(m) for m in re.findall(r"^\| (\d+) \|", table, flags=re.M)}
    assert listed == set(_exit_codes().values())


def test_two_files_of_one_model_name_keep_apart_by_file_name(tmp_path):
    """Two quantisations whose GGUF headers give the same name (the manifest's model name): each
    file has its own history, and the one missing tonight is missing, not pooled into the other."""
    root = write_model_nights(tmp_path / "nightly", missing_tonight=("alpha-q4",),
                              models=(("alpha-q4", SHA_A, 80.0), ("alpha-q8", SHA_B, 30.0)))
    for f in root.glob("*/*.jsonl"):
        f.write_text(f.read_text().replace('"name":"alpha-q4"', '"name":"alpha"')
                     .replace('"name":"alpha-q8"', '"name":"alpha"'))
    result = evaluate_history(load_history(root))
    assert not result.regressions, [check_line(c) for c in result.regressions]
    assert [c.label for c in result.missing] == ["alpha (alpha-q4.gguf) · baseline", "alpha (alpha-q4.gguf) · cpu-moe"]
    assert {c.model for c in result.checks if c.verdict} == {"alpha (alpha-q8.gguf)"}


def test_the_summary_fits_80_columns(tmp_path):
    """Cron mail and chat: every Markdown line within 80 columns, also with a long model name, a
    regression with its likely cause, a configuration change and a model missing."""
    write_nights(tmp_path / "a", slow_tonight=True, new_build_tonight=True,
                 night_config=lambda i: {"cpu_moe_argv": NEW_ARGV} if i >= 4 else {})
    write_model_nights(tmp_path / "b", missing_tonight=("alpha",),
                       models=(("alpha", SHA_A, 80.0), ("gpt-oss-20b-like-q4_0-seed0", SHA_B, 30.0)))
    for root in (tmp_path / "a", tmp_path / "b"):
        md = history_markdown(evaluate_history(load_history(root)))
        assert max(len(line) for line in md.splitlines()) <= 80, md


def test_an_arm_dropped_from_tonights_configuration_is_not_missing(tmp_path):
    """The manifest lists the arms a run was configured with: an arm removed from ARMS is a note,
    an arm configured and absent (its run crashed before it) is missing."""
    root = write_nights(tmp_path / "nightly")
    tonight = root / "2026-11-10"
    fabricate(tonight / "run.jsonl", seed=5, arms=[Arm("baseline", ["-ngl", "99"])], completion_tokens=16, runs=3,
              prompts_per_bucket=2, started_at="2026-11-10T01:00:00Z")
    result = evaluate_history(load_history(root))
    assert not result.missing and result.outcome == "ok"
    assert any("tiny-moe · cpu-moe: not in tonight's configuration" in n for n in result.notes)
    f = tonight / "run.jsonl"  # configured, but the file ends before its arm (a crash)
    f.write_text(f.read_text().replace('"arms":[{"name":"baseline"', '"arms":[{"name":"cpu-moe","args":[]},{"name":"baseline"'))
    assert [c.label for c in evaluate_history(load_history(root)).missing] == ["tiny-moe · cpu-moe"]


def _spread_nights(values, tonight_value):
    """Nights of one key whose decode values are exactly `values`, then tonight's."""
    out = []
    for i, v in enumerate([*values, tonight_value]):
        night = f"2026-10-{i + 1:02d}"
        decode = np.full(24, float(v)) + np.linspace(-0.5, 0.5, 24)
        out.append(Night(night, [], {KEY: NightArm(night, "cpu-moe", decode, np.full(24, 120.0), 11800.0, model="m",
                                                    provenance={"server_build": "b6000"})}))
    return out


def test_a_decode_bound_below_zero_is_clamped_and_the_gate_says_it_cannot_fire():
    """Three nights of 80, 20 and 90 tok/s: their lower prediction bound (mean − t·s·√(1+1/n),
    t(0.99, 2) = 6.96) is −241 tok/s, a decode rate that cannot exist, and no drop tonight
    can fall below it. The bound is clamped at 0 and the result says the gate is blind."""
    g = gate_samples(np.full(24, 10.0), [np.full(24, v) for v in (80.0, 20.0, 90.0)], higher_is_better=True,
                     threshold_pct=5.0)
    from abtest.analysis.stats import prediction_bound

    assert prediction_bound([80.0, 20.0, 90.0], alpha=0.01, upper=False) == pytest.approx(-241.1, abs=0.05)
    assert g.bound == 0.0 and g.blind and not g.regression and g.beyond_threshold
    quiet = gate_samples(np.full(24, 79.0), [np.full(24, v) for v in (80.0, 81.0, 79.5)], higher_is_better=True,
                         threshold_pct=5.0)
    assert quiet.bound > 0 and not quiet.blind
    result = evaluate_history(_spread_nights([80.0, 20.0, 90.0], 10.0))
    (c,) = [c for c in result.checks if c.metric == "decode_tps"]
    assert c.gate is not None and c.gate.bound >= 0 and c.status == "ok"
    assert any("cannot call any drop a regression" in n for n in result.notes), result.notes
    text = history_markdown(result)
    assert "cannot call any drop a regression" in _flat(text) and "−1" not in text
    from abtest.render.html import render_history_html

    page = render_history_html(result)  # the page quotes the bound beside a move beyond the threshold
    assert "prediction bound is 0" in page and "bound is −" not in page


@pytest.mark.parametrize("value", ["100", "150"])
def test_a_decode_threshold_of_100_percent_or_more_is_refused(tmp_path, capsys, value):
    """decode tok/s cannot fall by 100 % or more: such a threshold would never trigger."""
    (tmp_path / "2026-10-01").mkdir()
    with pytest.raises(SystemExit) as e:
        main(["report", "--history", str(tmp_path), "--decode-threshold", value])
    assert e.value.code == 2 and "--decode-threshold" in capsys.readouterr().err
