"""Which GPUs abtest counts and samples: the ones CUDA_VISIBLE_DEVICES lets the server see, and of
those the ones its PID holds memory on (NVML itself ignores CUDA_VISIBLE_DEVICES). NVML is scripted
here: eight devices, each with its own memory, clock and temperature."""

from __future__ import annotations

from types import SimpleNamespace

from helpers_evidence import fabricate, read_lines, write_lines

from abtest.analysis.arms import load_evidence
from abtest.analysis.report import build_report
from abtest.measure.sampler import Nvml, VramSampler, visible_indices
from abtest.measure.sweep import free_vram_mib

MIB = 1024 * 1024


class ScriptedNvml:
    """The pynvml calls abtest makes, over `n` devices; `procs[i]` = [(pid, bytes)] on device i."""

    NVML_CLOCK_SM = 1
    NVML_TEMPERATURE_GPU = 0

    def __init__(self, n: int = 8, procs: dict[int, list[tuple[int, int]]] | None = None) -> None:
        self.n, self.procs = n, procs or {}

    def nvmlInit(self) -> None: ...
    def nvmlDeviceGetCount(self) -> int: return self.n
    def nvmlDeviceGetHandleByIndex(self, i: int) -> int: return i
    def nvmlDeviceGetUUID(self, h: int) -> str: return f"GPU-{h:08x}-aaaa"
    def nvmlDeviceGetName(self, h: int) -> str: return "NVIDIA H200"
    def nvmlDeviceGetMemoryInfo(self, h: int) -> SimpleNamespace:
        return SimpleNamespace(total=143_771 * MIB, used=(1000 + 100 * h) * MIB)
    def nvmlDeviceGetEnforcedPowerLimit(self, h: int) -> int: return 700_000
    def nvmlDeviceGetMaxClockInfo(self, h: int, kind: int) -> int: return 1980
    def nvmlDeviceGetClockInfo(self, h: int, kind: int) -> int: return 1900 + h
    def nvmlDeviceGetTemperature(self, h: int, kind: int) -> int: return 40 + h
    def nvmlDeviceGetPowerUsage(self, h: int) -> int: return 100_000 + h * 1000
    def nvmlSystemGetDriverVersion(self) -> str: return "580.0"
    def nvmlSystemGetCudaDriverVersion(self) -> int: return 13000
    def nvmlDeviceGetComputeRunningProcesses(self, h: int) -> list[SimpleNamespace]:
        return [SimpleNamespace(pid=p, usedGpuMemory=b) for p, b in self.procs.get(h, [])]
    def nvmlDeviceGetGraphicsRunningProcesses(self, h: int) -> list[SimpleNamespace]: return []


def test_cuda_visible_devices_by_index_and_uuid():
    uuids = [f"GPU-{i:08x}-aaaa" for i in range(4)]
    assert visible_indices(None, uuids) == [0, 1, 2, 3]
    assert visible_indices("2,0", uuids) == [2, 0]
    assert visible_indices("GPU-00000003", uuids) == [3]
    assert visible_indices("1,7,2", uuids) == [1]  # CUDA stops at the first invalid entry
    assert visible_indices("", uuids) == []
    assert visible_indices("GPU-0000", uuids) == []  # ambiguous prefix


def test_only_visible_devices_are_listed_and_sampled():
    nvml = Nvml(ScriptedNvml(procs={5: [(4242, 3000 * MIB)]}), "2,5")
    info = nvml.info()
    assert [d["index"] for d in info.devices] == [2, 5] and info.cuda_visible_devices == "2,5"
    samples: list = []
    s = VramSampler(nvml, "a", 4242, 0, samples.append).sample()
    assert s.gpus == [5] and s.pid_vram_mib == 3000.0
    assert (s.device_used_mib, s.sm_clock_mhz, s.temperature_c) == (1500.0, 1905, 45)  # device 5's, not 0's
    # the sweep's free memory: the visible devices', not device 0's
    assert free_vram_mib(nvml) == 2 * 143_771 - (1200 + 1500)


def test_a_server_not_yet_on_a_gpu_is_sampled_on_every_visible_one():
    nvml = Nvml(ScriptedNvml(), "1,3")
    s = VramSampler(nvml, "a", 4242, 0, [].append).sample()
    assert s.gpus == [1, 3] and s.pid_vram_mib is None and s.device_used_mib == 1100.0 + 1300.0


def test_every_gpu_hidden_is_no_gpu_with_a_reason():
    nvml = Nvml(ScriptedNvml(), "")
    assert not nvml.ok and "CUDA_VISIBLE_DEVICES" in (nvml.reason or "")


def test_cost_counts_the_gpus_the_server_used_not_every_gpu_of_the_host(tmp_path):
    path = fabricate(tmp_path / "run.jsonl", seed=1)
    objs = read_lines(path)
    for o in objs:
        if o.get("kind") == "run_start":
            o["gpu"]["devices"] = [{"index": i, "name": "NVIDIA H200"} for i in range(8)]
        if o.get("kind") == "memory":
            o["gpus"] = [3]
    write_lines(path, objs)
    rep = build_report(load_evidence([path]))
    assert {c.n_gpus for c in rep.cost} == {1}
    for o in objs:
        if o.get("kind") == "memory":
            o.pop("gpus")
    write_lines(path, objs)  # a file from before VramSample.gpus: the manifest's devices
    assert {c.n_gpus for c in build_report(load_evidence([path])).cost} == {8}


# -- several GPUs: per-device memory by UUID, the index mapping, per-device peaks, the cost ---------

UUID = [f"GPU-{i:08x}-aaaa" for i in range(8)]


class MixedNvml(ScriptedNvml):
    """A host of two GPU models: CUDA's default order (fastest first) can differ from NVML's."""

    def nvmlDeviceGetName(self, h: int) -> str: return "NVIDIA H200" if h < 4 else "NVIDIA L4"


def test_the_pid_memory_is_kept_per_device_by_uuid_and_summed():
    nvml = Nvml(ScriptedNvml(procs={2: [(4242, 3000 * MIB), (7, 99 * MIB)], 5: [(4242, 1000 * MIB)]}), "2,5")
    s = VramSampler(nvml, "a", 4242, 0, [].append).sample()
    assert s.pid_vram_by_gpu == {UUID[2]: 3000.0, UUID[5]: 1000.0}  # another PID's 99 MiB is not ours
    assert s.pid_vram_mib == 4000.0 and s.gpus == [2, 5]
    assert s.device_used_mib == 1200.0 + 1500.0 and s.sm_clock_mhz == 1902 and s.temperature_c == 45


def test_the_pid_is_found_on_a_device_the_index_mapping_missed():
    # CUDA_VISIBLE_DEVICES=1 meant, in CUDA's order, the device NVML numbers 6: memory still counts
    nvml = Nvml(MixedNvml(procs={6: [(4242, 500 * MIB)]}), "1")
    s = VramSampler(nvml, "a", 4242, 0, [].append).sample()
    assert s.pid_vram_by_gpu == {UUID[6]: 500.0} and s.pid_vram_mib == 500.0 and s.gpus == [6]


def test_no_pid_memory_is_none_not_an_empty_map():
    s = VramSampler(Nvml(ScriptedNvml(n=2), None), "a", 4242, 0, [].append).sample()
    assert s.pid_vram_by_gpu is None and s.pid_vram_mib is None and s.gpus == [0, 1]


def test_the_order_note_names_when_cuda_indices_may_not_be_nvml_indices():
    assert Nvml(MixedNvml(), "0,5", cuda_order=None).info().order_note  # indices, default order, mixed
    assert "PCI_BUS_ID" in (Nvml(MixedNvml(), "0,5", cuda_order="FASTEST_FIRST").info().order_note or "")
    info = Nvml(MixedNvml(), "0,5", cuda_order="PCI_BUS_ID").info()
    assert info.order_note is None and info.cuda_device_order == "PCI_BUS_ID"
    assert [d["index"] for d in info.devices] == [0, 5]
    assert Nvml(MixedNvml(), f"{UUID[5][:12]},{UUID[0]}", cuda_order=None).info().order_note is None  # UUIDs
    assert Nvml(MixedNvml(), None, cuda_order=None).info().order_note is None  # unset: every device
    assert Nvml(ScriptedNvml(), "0,5", cuda_order=None).info().order_note is None  # one GPU model


def test_the_arm_end_summary_keeps_each_devices_peak():
    from abtest.measure.sampler import summarize
    from abtest.records import VramSample

    def at(t: float, a: float, b: float) -> VramSample:
        return VramSample("a", t, a + b, None, None, None, None, None, None, gpus=[0, 1],
                          pid_vram_by_gpu={UUID[0]: a, UUID[1]: b})

    out = summarize([at(0, 100, 900), at(100, 800, 300), at(200, 500, 500)], None)
    assert out["peak_by_gpu"] == {UUID[0]: 800.0, UUID[1]: 900.0}
    assert out["peak"]["pid_vram_mib"] == 1100.0  # the sum's peak is not the sum of the peaks
    one = VramSample("a", 0, 10.0, None, None, None, None, None, None)
    assert "peak_by_gpu" not in summarize([one], None)  # no per-device samples: no key, as before


def test_per_device_memory_reads_back_and_old_lines_read_as_none(tmp_path):
    from abtest.evidence import read_evidence
    from abtest.records import SCHEMA_VERSION

    base = {"kind": "memory", "schema": SCHEMA_VERSION, "arm": "a", "t_ms": 1.0, "pid_vram_mib": 30.0,
            "device_used_mib": None, "sm_clock_mhz": None, "temperature_c": None, "power_w": None,
            "host_rss_anon_mib": None, "host_rss_file_mib": None}
    lines = [dict(base), dict(base, pid_vram_by_gpu={UUID[0]: 10.0, UUID[1]: 20.0}),
             dict(base, pid_vram_by_gpu={UUID[0]: -1.0}), dict(base, pid_vram_by_gpu={UUID[0]: "x"})]
    path = write_lines(tmp_path / "m.jsonl", lines)
    ev = read_evidence(path)
    assert [s.pid_vram_by_gpu for s in ev.memory] == [None, {UUID[0]: 10.0, UUID[1]: 20.0}]
    assert ev.bad_lines == 2 and any("negative" in p for p in ev.problems)


def _two_gpu_evidence(tmp_path, split: float | None = 0.6):
    """A fabricated run whose servers held memory on two GPUs (a `split` share on the first), the
    host listing four; split None: on one GPU only."""
    path = fabricate(tmp_path / "run.jsonl", seed=1)
    objs = read_lines(path)
    for o in objs:
        if o.get("kind") == "run_start":
            o["gpu"]["devices"] = [{"index": i, "name": "NVIDIA H200", "uuid": UUID[i]} for i in range(4)]
        if o.get("kind") == "memory" and o.get("pid_vram_mib") is not None:
            v = o["pid_vram_mib"]
            if split is None:
                o["pid_vram_by_gpu"], o["gpus"] = {UUID[2]: v}, [2]
            else:
                o["pid_vram_by_gpu"] = {UUID[1]: round(v * split, 1), UUID[2]: round(v - round(v * split, 1), 1)}
                o["gpus"] = [1, 2]
    out, seen = [], set()
    for o in objs:
        if o.get("kind") == "memory" and o["arm"] not in seen:  # before the server allocated:
            seen.add(o["arm"])  # NVML did not list the PID, and every visible device was read
            out.append(dict(o, pid_vram_mib=None, device_used_mib=None, pid_vram_by_gpu=None, gpus=[0, 1, 2, 3]))
        out.append(o)
    return write_lines(path, out), out


def test_the_report_shows_each_gpus_peak_when_several_gpus_hold_memory(tmp_path):
    from abtest.render.report import render

    path, objs = _two_gpu_evidence(tmp_path)
    rep = build_report(load_evidence([path]))
    for mr in rep.memory:
        want = {u: max(o["pid_vram_by_gpu"][u] for o in objs if o.get("kind") == "memory"
                       and o["arm"] == mr.group and o.get("pid_vram_by_gpu"))
                for u in (UUID[1], UUID[2])}
        assert mr.gpu_peaks_mib == want and mr.gpu_nvml_index == {UUID[1]: 1, UUID[2]: 2}
    md = render(rep, "markdown")
    assert "VRAM peak per GPU" in md and f"1 · {UUID[1][:12]}" in md and f"2 · {UUID[2][:12]}" in md
    assert all(len(line) <= 80 for line in md.split("VRAM peak per GPU")[1].split("\n\n")[1].splitlines())

    one, _ = _two_gpu_evidence(tmp_path, split=None)
    rep1 = build_report(load_evidence([one]))
    assert all(list(mr.gpu_peaks_mib) == [UUID[2]] for mr in rep1.memory)
    assert "VRAM peak per GPU" not in render(rep1, "markdown")  # one GPU: the section as before


def test_cost_counts_the_gpus_the_pid_held_memory_on_not_those_read_before_it_allocated(tmp_path):
    path, objs = _two_gpu_evidence(tmp_path)
    assert any(o.get("gpus") == [0, 1, 2, 3] for o in objs)  # the early samples read all four
    assert {c.n_gpus for c in build_report(load_evidence([path])).cost} == {2}
    one, _ = _two_gpu_evidence(tmp_path, split=None)
    assert {c.n_gpus for c in build_report(load_evidence([one])).cost} == {1}
    for o in objs:  # a file from before pid_vram_by_gpu: `gpus` of the samples with PID memory
        o.pop("pid_vram_by_gpu", None)
    assert {c.n_gpus for c in build_report(load_evidence([write_lines(path, objs)])).cost} == {2}
    for o in objs:  # NVML never listed the PID (a PID namespace): the devices the samples read
        if o.get("kind") == "memory":
            o["pid_vram_mib"] = None
    assert {c.n_gpus for c in build_report(load_evidence([write_lines(path, objs)])).cost} == {4}


def test_the_pid_total_has_one_definition_for_the_sampler_and_the_nvml_query():
    from abtest.measure.sampler import pid_total_mib

    assert pid_total_mib({}) is None and pid_total_mib({2: 3000.04, 5: 1000.04}) == 4000.1
    nvml = Nvml(ScriptedNvml(procs={2: [(4242, 3000 * MIB)], 5: [(4242, 1000 * MIB + 50_000)]}), "2,5")
    s = VramSampler(nvml, "a", 4242, 0, [].append).sample()
    assert s.pid_vram_mib == nvml.pid_memory_mib(4242) == pid_total_mib(nvml.pid_memory_by_device(4242))
    assert nvml.pid_memory_mib(7) is None
