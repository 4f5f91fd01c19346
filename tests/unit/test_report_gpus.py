"""Per-GPU peaks in the report's JSON and one VRAM line per GPU in the memory plot, when the servers
held memory on more than one GPU; one GPU: the output as before (the H100 snapshot checks that byte
for byte). The evidence is test_gpu_devices.py's: a run fabricated on two of four GPUs."""

from __future__ import annotations

import json

from helpers_evidence import read_lines
from test_gpu_devices import UUID, _two_gpu_evidence

from abtest.analysis.arms import load_evidence
from abtest.analysis.report import build_report
from abtest.render.plots import vram_lines, write_report_plots
from abtest.render.report import render, to_json


def test_the_json_has_each_gpus_peak_when_several_gpus_held_memory(tmp_path) -> None:
    path, objs = _two_gpu_evidence(tmp_path)
    rep = build_report(load_evidence([path]))
    out = json.loads(render(rep, "json"))
    for m in out["memory"]:
        want = {u: max(o["pid_vram_by_gpu"][u] for o in objs if o.get("kind") == "memory"
                       and o["arm"] == m["arm"] and o.get("pid_vram_by_gpu")) for u in (UUID[1], UUID[2])}
        got = {g["uuid"]: g["vram_peak_mib"] for g in m["vram_peak_by_gpu"]}
        assert got == want and [g["nvml_index"] for g in m["vram_peak_by_gpu"]] == [1, 2]
    one, _ = _two_gpu_evidence(tmp_path, split=None)
    single = to_json(build_report(load_evidence([one])))
    assert all("vram_peak_by_gpu" not in m for m in single["memory"])  # one GPU: the keys as before


def test_the_vram_plot_draws_a_line_per_arm_and_gpu(tmp_path) -> None:
    path, objs = _two_gpu_evidence(tmp_path)
    rep = build_report(load_evidence([path]))
    lines = vram_lines(rep)
    arms = [m.group for m in rep.memory]
    assert sorted(label for label, _, _ in lines) == sorted(f"{a} · GPU {i}" for a in arms for i in (1, 2))
    for label, t, v in lines:  # each line is that GPU's own samples
        arm, gpu = label.split(" · GPU ")
        uuid = UUID[int(gpu)]
        want = [o["pid_vram_by_gpu"][uuid] for o in objs if o.get("kind") == "memory" and o["arm"] == arm
                and o.get("pid_vram_by_gpu")]
        assert v == want and len(t) == len(v)
    assert any(p.name == "vram_over_time.png" for p in write_report_plots(rep, tmp_path / "plots"))
    one, _ = _two_gpu_evidence(tmp_path, split=None)
    rep1 = build_report(load_evidence([one]))
    assert [label for label, _, _ in vram_lines(rep1)] == [m.group for m in rep1.memory]  # one line per arm


def test_a_file_without_per_gpu_samples_plots_the_sum(tmp_path) -> None:
    path, objs = _two_gpu_evidence(tmp_path)
    for o in objs:
        o.pop("pid_vram_by_gpu", None)
    path.write_text("\n".join(json.dumps(o) for o in objs) + "\n", encoding="utf-8")
    rep = build_report(load_evidence([path]))
    assert [label for label, _, _ in vram_lines(rep)] == [m.group for m in rep.memory]
    assert read_lines(path)
