"""`abtest sweep --vram-budget A,B`: the -ts x --n-cpu-moe search over two GPUs, on a fake NVML of two
devices (built as in test_gpu_devices.py). The plan, the skip logic and the per-device judgement
are pure; the whole sweep runs with `Runner.run_arm` replaced by a scripted arm whose per-device
memory is the per-device prediction plus a known error, so that what is launched, skipped, fitted
and advised can be asserted. No server: the single-budget path is covered by test_sweep*.py."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner
from factories import streamed
from test_gpu_devices import ScriptedNvml

from abtest.analysis.devsweep import device_report_from_file
from abtest.config import RunConfig
from abtest.errors import ConfigError
from abtest.evidence import read_evidence
from abtest.measure import sweep as sweep_mod
from abtest.measure.arms import ResolvedArm
from abtest.measure.devsweep import (
    arm_name,
    fit_targets,
    free_by_device,
    make_device_plan,
    measured_by_device,
    parse_arm,
    parse_budgets,
)
from abtest.measure.runner import Runner
from abtest.measure.sampler import Nvml
from abtest.models import synth
from abtest.models.desc import preset_model, read_model
from abtest.models.split import Split, predict_devices
from abtest.models.vram import ContextParams
from abtest.records import ArmEnd
from abtest.render.devsweep import render_device_markdown

MIB = 1024 * 1024
UUID = [f"GPU-{i:08x}-aaaa" for i in range(2)]
BIG = preset_model("qwen3-30b-a3b-arch")  # 48 layers, ~17 GiB in Q4_K_M: over one 12 GiB budget
CTX = ContextParams(n_ctx=4096)


def test_budgets_arm_names_and_fit_targets() -> None:
    assert parse_budgets("24GiB,20GiB") == [24 * 1024.0, 20 * 1024.0] and parse_budgets("9GiB") == [9 * 1024.0]
    with pytest.raises(ConfigError, match="one size per GPU"):
        parse_budgets("24GiB,,24GiB")
    assert arm_name((3.0, 2.0), 12) == "ncmoe12-ts3-2" and parse_arm("ncmoe12-ts3-2") == ((3.0, 2.0), 12)
    assert parse_arm("ncmoe12") is None and parse_arm("fit") is None
    assert fit_targets([30_000.0, 20_000.5], [24_576.0, 24_576.0])[0] == [5424, 0]  # never negative
    assert fit_targets(None, [1.0, 2.0])[0] is None


def test_the_plan_predicts_every_setting_per_device_and_skips_on_any_device() -> None:
    budgets = [12 * 1024.0, 12 * 1024.0]
    plan = make_device_plan(BIG, CTX, budgets, [80_000.0, 80_000.0], None, "1,1;3,1", 512.0, 712.0)
    assert plan.grid == ((1.0, 1.0), (3.0, 1.0)) and plan.settings == tuple(range(49))
    assert len(plan.predictions) == 2 * 49
    even = plan.predicted((1.0, 1.0), 0)
    assert even == predict_devices(BIG, Split.of(2, (1, 1), 0), CTX).per_device_mib(2)
    assert sum(even) > budgets[0]  # the whole model is over one budget ...
    fits = [n for n in plan.settings if plan.excess((1.0, 1.0), n) <= 0]
    assert fits and min(fits) < 48  # ... but fits two with some experts on the GPUs
    # -ts 3,1 loads GPU 0: it needs more experts on the CPU than the even split
    skew = [n for n in plan.settings if plan.excess((3.0, 1.0), n) <= 0]
    assert min(skew) > min(fits)
    # skipped when *any* device is predicted far over its budget (here GPU 0 only)
    n = min(skew) - 1
    p = plan.predicted((3.0, 1.0), n)
    assert p[0] > budgets[0] + 256 and p[1] < budgets[1]
    assert "GPU 0" in (plan.skip_reason((3.0, 1.0), n) or "")
    assert plan.skip_reason((1.0, 1.0), 48) is None
    # over a device's free memory: skipped whatever the budget
    assert "GPU 1: predicted" in (plan.skip_reason((1.0, 1.0), 48, free_now=[80_000.0, 500.0]) or "")
    extra = plan.to_extra()
    assert extra["budgets_mib"] == budgets and "ncmoe0-ts3-1" in extra["skipped_at_start"]
    assert min(fits) == 0 and "ncmoe0-ts1-1" not in extra["skipped_at_start"]  # even: the whole model fits two
    assert extra["predictions"]["ncmoe48-ts1-1"]["devices"][1]["layers"] == "25-48"


def test_a_budget_per_visible_gpu() -> None:
    with pytest.raises(ConfigError, match="one budget per visible device"):
        make_device_plan(BIG, CTX, [1.0, 2.0], [1.0, 2.0, 3.0], None, None, 0.0, 0.0)
    with pytest.raises(ConfigError, match="budget per GPU"):
        make_device_plan(BIG, CTX, [1.0], None, None, None, 0.0, 0.0)
    with pytest.raises(ConfigError, match="--ts"):
        sweep_mod.check_devices(None, "1,1", None, "speed", "mmap")
    for kw in ({"contexts": [4096, 8192]}, {"objective": "capacity"}, {"load_mode": "both"}):
        args: dict[str, Any] = {"contexts": None, "objective": "speed", "load_mode": "mmap", **kw}
        with pytest.raises(ConfigError):
            sweep_mod.check_devices((1.0, 2.0), None, args["contexts"], args["objective"], args["load_mode"])


def test_free_memory_and_peaks_per_device_from_a_fake_nvml_of_two() -> None:
    nvml = Nvml(ScriptedNvml(n=2), None)
    assert free_by_device(nvml) == [143_771.0 - 1000, 143_771.0 - 1100]
    end = ArmEnd("a", "ok", None, 0, 1.0, 1, 0, {"peak": {}, "peak_by_gpu": {UUID[1]: 900.0}}, {}, "")
    assert measured_by_device(end, UUID, 2) == [0.0, 900.0]  # nothing on GPU 0: 0, not unknown
    assert measured_by_device(ArmEnd("a", "ok", None, 0, 1.0, 1, 0, {"peak": {}}, {}, ""), UUID, 2) is None
    assert free_by_device(Nvml(ScriptedNvml(n=2), "")) is None


# -- the whole sweep, with a scripted arm --------------------------------------------------------------


class SmallNvml(ScriptedNvml):
    """Two devices, the first with only `free_mib` free."""

    def __init__(self, free_mib: float) -> None:
        super().__init__(n=2)
        self.free_mib = free_mib

    def nvmlDeviceGetMemoryInfo(self, h: int) -> SimpleNamespace:
        if h == 0:
            return SimpleNamespace(total=round((1000 + self.free_mib) * MIB), used=1000 * MIB)
        return super().nvmlDeviceGetMemoryInfo(h)


ERROR_MIB = (40.0, -10.0)  # what the scripted server uses beyond the prediction, per GPU


def _scripted_run_arm(model: Any, overhead: float, n_dev: int) -> Any:
    def run_arm(self: Runner, arm: ResolvedArm, cases: Any, ctx: int, evidence: Path, block: int = 0) -> None:
        name = arm.spec.name
        parsed = parse_arm(name)
        if parsed is None:  # fit: llama.cpp's own placement, scripted as the even split at N = 2
            parsed = ((1.0, 1.0), 2)
        ts, n = parsed
        per = predict_devices(model, Split.of(n_dev, ts, n), ContextParams(ctx), overhead).per_device_mib(n_dev)
        per = [v + e for v, e in zip(per, ERROR_MIB, strict=True)]
        itl = 10.0 + n * 0.5 + (0.3 if ts != (1.0, 1.0) else 0.0) + (0.2 if name == "fit" else 0.0)
        for i in range(6):
            self.write(streamed(32, itl_ms=itl + 0.01 * i, arm=name, bucket="b", block=block, seq=i,
                                run_index=i))
        self.write(ArmEnd(name, "ok", None, 0, 1.0, 6, 0,
                          {"peak": {"pid_vram_mib": round(sum(per), 1)},
                           "peak_by_gpu": {UUID[i]: round(v, 1) for i, v in enumerate(per)}}, {}, "", block=block))
    return run_arm


def test_the_sweep_searches_ts_by_ncmoe_and_advises_a_setting_that_fits_every_gpu(tmp_path, monkeypatch) -> None:
    gguf = tmp_path / "m.gguf"
    synth.write_synth(gguf, "qwen3-30b-a3b-arch-tiny", None, seed=0)
    model = read_model(gguf)
    overhead = 0.0  # the tiny model's shares are a few MiB: budgets in MiB, no CUDA constant
    plan = make_device_plan(model, CTX, [1e9, 1e9], None, None, "1,1;3,1", 0.0, overhead)
    even = [plan.predicted((1.0, 1.0), n) for n in range(model.n_layer + 1)]
    # budgets: N = 2 fits the even split with room for the scripted error, N = 1 does not
    budgets = [(even[1][0] + even[2][0]) / 2 + ERROR_MIB[0], even[2][1] + 5.0]
    assert even[1][0] + ERROR_MIB[0] > budgets[0] >= even[2][0] + ERROR_MIB[0]
    resolved = ResolvedArm(sweep_mod.ready_made_arm("ncmoe0"),
                           {"path": "/nowhere/llama-server", "version_text": "x", "build_id": "b", "backend": "cuda",
                            "found_via": "test"},
                           {"name": "m", "path": str(gguf), "size_bytes": gguf.stat().st_size, "sha256": "0" * 64})
    monkeypatch.setattr(sweep_mod, "resolve_run_arms", lambda cfg, note: [resolved])
    monkeypatch.setattr(Runner, "run_arm", _scripted_run_arm(model, overhead, 2))
    cfg = RunConfig(model=str(gguf), arms=(), runs=1, blocks=1, warmup=0, max_tokens=32, ctx_size=4096,
                    out_dir=str(tmp_path / "out"))
    runner = sweep_mod.SweepRunner(cfg, "auto", tuple(budgets), 0.0, overhead, ts_grid="1,1;3,1",
                                   finalist_sessions=2)
    free0 = even[0][0] - 2.0  # GPU 0 has room for N >= 1 only: N = 0 is skipped, never launched
    runner.runner.nvml = Nvml(SmallNvml(free0), None)
    result = runner.execute()
    trail = result.trail
    launched = [t["arm"] for t in trail if t.get("status") == "measured" and t.get("block") == 0]
    skipped = [t for t in trail if t.get("status") == "skipped"]
    # every launched setting was predicted within every GPU's budget (+ the accuracy bar)
    for t in trail:
        if t.get("status") == "measured" and t.get("role") is None and t.get("block") == 0:
            assert all(p <= b + 128 for p, b in zip(t["predicted_by_device_mib"], budgets, strict=True))
            assert t["vram_by_device_mib"] is not None and len(t["vram_by_device_mib"]) == 2
    assert [t["arm"] for t in skipped] == ["ncmoe0-ts1-1", "ncmoe0-ts3-1"]
    assert all("GPU 0: predicted" in t["reason"] and "> free" in t["reason"] for t in skipped)
    assert "ncmoe2-ts1-1" in launched and "ncmoe1-ts1-1" in launched
    one = next(t for t in trail if t["arm"] == "ncmoe1-ts1-1")
    assert one["over_budget_devices"] == [0]  # measured over GPU 0's budget: held against it, per device
    # the fit competitor: a margin per GPU
    fit = next(t for t in trail if t["arm"] == "fit" and t.get("block") == 0)
    assert fit["fit_target"]["margins_mib"] == [max(0, int(free0 - budgets[0])), int(143_771 - 1100 - budgets[1])]
    # the report: the fastest setting that fits every GPU
    rep = device_report_from_file(result.evidence_path)
    best = rep.row(rep.best or "")
    assert best is not None and best.fits and best.arm == "ncmoe2-ts1-1"
    assert all(r.fits == (r.peak_mib is not None and all(v <= b for v, b in zip(r.peak_mib, budgets, strict=True)))
               for r in rep.rows if r.status == "measured")
    assert best.sessions == 2  # a finalist: a second server session
    assert rep.recommend == "pick" or rep.recommend == "fit"
    md = render_device_markdown(rep)
    assert "ncmoe2-ts1-1 ←" in md or "fit ←" in md
    assert "-ts 1,1 --n-cpu-moe 2" in rep.advice or "--fit on" in rep.advice
    assert all(len(line) <= 80 for line in md.split("| setting")[1].split("\n\n")[0].splitlines()[1:]), md
    # the manifest holds the plan, the sidecar the searches per -ts
    ev = read_evidence(result.evidence_path)
    assert ev.manifest is not None and set(ev.manifest.config["extra"]["sweep"]["devices"]["grid"][0]) == {1.0}
    side = result.sidecar_path.read_text()
    assert '"results_by_ts"' in side and '"3,1"' in side


def test_the_cli_reads_a_budget_per_gpu(monkeypatch, tmp_path) -> None:
    from abtest.cli import cli as main

    seen: dict[str, Any] = {}

    class Stop(Exception):
        pass

    def fake_init(self: Any, cfg: Any, ncmoe: Any, budget_mib: Any, *a: Any, **kw: Any) -> None:
        seen.update(budget=budget_mib, ts=kw.get("ts_grid"))
        raise Stop

    monkeypatch.setattr(sweep_mod.SweepRunner, "__init__", fake_init)
    res = CliRunner().invoke(main, ["sweep", "-m", "x.gguf", "--vram-budget", "24GiB,20GiB", "--ts", "1,1;3,2",
                                    "--out", str(tmp_path)])
    assert isinstance(res.exception, Stop) and seen == {"budget": (24 * 1024.0, 20 * 1024.0), "ts": "1,1;3,2"}
    res = CliRunner().invoke(main, ["sweep", "-m", "x.gguf", "--vram-budget", "9GiB", "--out", str(tmp_path)])
    assert seen["budget"] == 9 * 1024.0  # one budget: a float, the single-GPU sweep as before
    bad = CliRunner().invoke(main, ["sweep", "-m", "x.gguf", "--vram-budget", "24GiB,x"])
    assert bad.exit_code == 2 and "cannot read size" in bad.output

