"""A capacity comparison of two arms end to end on the real llama-server (tiny MoE, CPU): `abtest
run --concurrency 1,2` then `abtest report --slo ...` — the structure (levels, capacity table and
line, JSON fields), not the numbers: on a shared CPU box these say nothing about the arms."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from abtest.cli import main
from abtest.evidence import read_evidence

pytestmark = pytest.mark.integration


def _cli(args: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 0, args


def test_a_capacity_comparison_of_two_arms_runs_end_to_end(tmp_path: Path, llama_server: Path, tiny_moe: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "evidence"
    _cli(["run", "-q", "--model", str(tiny_moe), "--server-bin", str(llama_server), "--concurrency", "1,2",
          "--runs", "1", "--blocks", "2", "--warmup", "1", "--max-tokens", "16", "--buckets", "tok8",
          "--threads", "1", "--out", str(out)])
    path = Path(capsys.readouterr().out.strip().splitlines()[-1])
    ev = read_evidence(path)
    starts = ev.arm_starts
    assert sorted((s.arm, s.block) for s in starts) == [("baseline", 0), ("baseline", 1), ("cpu-moe", 0),
                                                        ("cpu-moe", 1)]
    assert all(s.argv[s.argv.index("-np") + 1] == "2" for s in starts)
    assert {(r.arm, r.block, r.load["concurrency"], r.load["level"]) for r in ev.requests if not r.warmup} == {
        (a, b, c, i) for a in ("baseline", "cpu-moe") for b in (0, 1) for i, c in enumerate((1, 2))}

    rep = tmp_path / "report"
    _cli(["report", str(path), "--slo", "ttft_p95<=10s,e2e_p99<=30s", "--format", "json", "--out", str(rep)])
    data = json.loads((rep / "report.json").read_text())
    assert [(lv["arm"], lv["load"]) for lv in data["levels"]] == [("baseline", "c=1"), ("baseline", "c=2"),
                                                                   ("cpu-moe", "c=1"), ("cpu-moe", "c=2")]
    assert all(lv["sessions"] == 2 and lv["meets_slo"] in (True, False) for lv in data["levels"])
    assert [c["arm"] for c in data["capacity"]] == ["baseline", "cpu-moe"]
    for c in data["capacity"]:
        assert c["load_kind"] == "concurrency" and len(c["sessions"]) == 2
        assert c["status"] in ("bracketed", "at-least", "none-met", "mixed")
        assert {"load", "load_low", "load_high", "req_per_s", "headline", "headline_low", "limited_by"} <= set(c)
    (d,) = data["capacity_deltas"]
    assert (d["arm"], d["baseline"]) == ("cpu-moe", "baseline") and {"ratio", "low", "high", "p_value"} <= set(d)
    assert data["capacity_line"].startswith("Within TTFT p95 ≤ 10 s, E2E p99 ≤ 30 s: baseline ")
    assert data["verdict"][0] == data["capacity_line"]  # it opens the verdict
    md = (rep / "report.md").read_text()
    assert "## Load levels" in md and "## Capacity" in md and "| baseline | c=2 |" in md
    assert {"load_levels.png", "load_metrics.png"} <= {p.name for p in rep.glob("*.png")}
