"""`abtest sweep --vram-budget A,B` against the real llama-server (CPU build) on the tiny MoE model.

The CPU build has no GPU: it accepts -ts and ignores it (common/arg.cpp warns "Setting a tensor
split has no effect"), NVML sees no device, so every setting is judged on its per-device
prediction. What this checks is the real path around that: the arms' argv carry -ts and
--n-cpu-moe as planned, arm_start records the split, every setting of the grid runs, the fit
competitor is skipped on a CPU build, and the multi-device report reads it all back.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from abtest.analysis.devsweep import device_report_from_file
from abtest.cli import cli
from abtest.evidence import read_evidence

pytestmark = pytest.mark.integration


def test_a_two_budget_sweep_runs_each_ts_and_reports_per_device(tmp_path: Path, llama_server: Path,
                                                               tiny_moe: Path) -> None:
    out = tmp_path / "sweep"
    res = CliRunner().invoke(
        cli,
        ["sweep", "--model", str(tiny_moe), "--vram-budget", "1GiB,1GiB", "--ts", "1,1;3,1", "--ncmoe", "0,6",
         "--runs", "1", "--max-tokens", "256", "--buckets", "seed004", "--server-bin", str(llama_server),
         "--threads", "1", "--out", str(out), "--quiet", "--finalist-sessions", "1"],
        catch_exceptions=False,
    )
    assert res.exit_code == 0, res.output
    (path,) = sorted(out.glob("*.jsonl"))
    ev = read_evidence(path)
    assert ev.problems == [] and not ev.partial
    arms = ["ncmoe0-ts1-1", "ncmoe6-ts1-1", "ncmoe0-ts3-1", "ncmoe6-ts3-1"]
    assert [a.arm for a in ev.arm_starts] == arms and all(e.status == "ok" for e in ev.arm_ends)
    for start in ev.arm_starts:
        ts = start.argv[start.argv.index("-ts") + 1]
        assert ts in ("1,1", "3,1") and start.placement["tensor_split"] == [float(x) for x in ts.split(",")]
        assert start.placement["n_cpu_moe"] == int(start.arm[5])
    rep = device_report_from_file(path)
    assert rep.budgets_mib == [1024.0, 1024.0]
    measured = [r for r in rep.rows if r.arm in arms]
    assert len(measured) == 4 and all(r.status == "measured" and r.basis == "predicted" for r in measured)
    assert all(len(r.predicted_mib) == 2 and r.fits for r in measured)  # tiny-moe: far under 1 GiB a GPU
    fit = rep.row("fit")
    assert fit is not None and fit.status == "skipped" and "CPU build" in fit.reason
    assert rep.best in arms and "-ts" in rep.advice and "--n-cpu-moe" in rep.advice
    assert (out / "sweep-report.md").read_text(encoding="utf-8").startswith("# abtest sweep over 2 GPUs")
    assert rep.advice in res.output
