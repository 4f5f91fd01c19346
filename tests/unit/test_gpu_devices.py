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
