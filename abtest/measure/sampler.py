"""GPU and host memory of one server process, sampled every 100 ms; "no GPU" is data, not a crash.

NVML (nvidia-ml-py, imported as ``pynvml``) gives the process's *own* GPU memory
(``nvmlDeviceGetComputeRunningProcesses``: per-PID ``usedGpuMemory``, which equals what
``nvidia-smi --query-compute-apps`` prints), the device total used, SM clock, temperature and
power. Host memory comes from ``/proc/PID/status``: ``RssAnon`` and ``RssFile`` apart, because the
model is mmapped, so experts kept in system RAM show up as file-backed pages.

Inside a container without ``--pid=host`` NVML reports host PIDs, which never match ours; then the
per-PID figure is None and `GpuInfo.pid_note` says why (the device total is still recorded).

NVML ignores ``CUDA_VISIBLE_DEVICES``; the server does not. Only the devices it lets the server see
are listed and sampled, and of those, each sample reads the devices the server's PID holds memory on
(`VramSample.gpus`; every visible device until it holds some): an 8-GPU host running one server on
one GPU counts one GPU, with that GPU's clock and temperature. The PID's own memory is looked up on
every device NVML lists (a PID is one process host-wide), so it is right even where the mapping of
``CUDA_VISIBLE_DEVICES`` to NVML indices is not, and it is kept per device, by UUID
(`VramSample.pid_vram_by_gpu`).

Mapping ``CUDA_VISIBLE_DEVICES``: an entry is a CUDA index or a UUID (prefix). UUIDs are exact.
NVML numbers devices in PCI bus order; CUDA does so only with ``CUDA_DEVICE_ORDER=PCI_BUS_ID``; its
default, ``FASTEST_FIRST``, puts faster devices first and breaks ties by PCI bus, so it equals
NVML's order on a host of one GPU model. abtest assumes index = NVML index; where that may be wrong
(indices given, the default order, GPUs of more than one model) `GpuInfo.order_note` says so.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

from ..records import MIB, VramSample


@dataclass(frozen=True)
class GpuInfo:
    available: bool
    reason: str | None  # why there is no GPU data, when unavailable
    driver: str | None = None
    cuda_driver_version: int | None = None
    devices: list[dict[str, Any]] = field(default_factory=list)  # the visible ones, with their NVML index
    pid_note: str | None = None
    cuda_visible_devices: str | None = None  # as set for the servers (None: unset, every device)
    cuda_device_order: str | None = None  # CUDA_DEVICE_ORDER as set (None: unset, CUDA's FASTEST_FIRST)
    order_note: str | None = None  # why the visible devices listed may not be the server's

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def order_note(cuda_visible: str | None, cuda_order: str | None, names: list[str | None]) -> str | None:
    """Why CUDA's device indices may not be NVML's: CUDA_VISIBLE_DEVICES names a device by index,
    CUDA_DEVICE_ORDER is not PCI_BUS_ID, and the host's GPUs are not all of one model (then CUDA's
    default order, fastest first, can differ from NVML's PCI bus order). None when the mapping holds."""
    if cuda_visible is None or (cuda_order or "").strip().upper() == "PCI_BUS_ID" or len(set(names)) <= 1:
        return None
    if not any(e.strip().isdigit() for e in cuda_visible.split(",")):
        return None
    return ("CUDA_VISIBLE_DEVICES gives indices and CUDA_DEVICE_ORDER is not PCI_BUS_ID on a host of "
            "mixed GPUs: the devices listed (NVML's order) may not be the server's; per-process memory "
            "is still right. Set CUDA_DEVICE_ORDER=PCI_BUS_ID or give UUIDs")


def visible_indices(cuda_visible: str | None, uuids: list[str | None]) -> list[int]:
    """The NVML indices CUDA_VISIBLE_DEVICES lets a process see, in its order. Entries are indices or
    (prefixes of) UUIDs, `GPU-…`; CUDA stops at the first invalid one, and so does this. Unset: all.
    Indices are taken as NVML's (PCI bus) order, which is CUDA's with CUDA_DEVICE_ORDER=PCI_BUS_ID
    and on hosts of one GPU model."""
    if cuda_visible is None:
        return list(range(len(uuids)))
    out: list[int] = []
    for entry in (e.strip() for e in cuda_visible.split(",")):
        if entry.isdigit() and int(entry) < len(uuids):
            idx = int(entry)
        else:
            found = [i for i, u in enumerate(uuids) if entry and u and u.startswith(entry)]
            if len(found) != 1:
                break
            idx = found[0]
        if idx in out:
            break
        out.append(idx)
    return out


class Nvml:
    """A thin, failure-tolerant wrapper: every query returns None instead of raising. `nv` stands in
    for the pynvml module (tests hand in a scripted one)."""

    def __init__(self, nv: Any = None, cuda_visible: str | None = None, *, from_env: bool = True,
                 cuda_order: str | None = None) -> None:
        self.ok = False
        self.reason: str | None = None
        self._nv: Any = None
        self.handles: list[Any] = []  # every device NVML lists
        self.uuids: list[str] = []  # per NVML index: its UUID ("nvml-<index>" where NVML gives none)
        self.visible: list[int] = []  # the NVML indices a server started from here can see
        if from_env and cuda_visible is None:
            cuda_visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if from_env and cuda_order is None:
            cuda_order = os.environ.get("CUDA_DEVICE_ORDER")
        self.cuda_visible = cuda_visible
        self.cuda_order = cuda_order
        try:
            if nv is None:
                import pynvml as nv  # type: ignore[import-untyped,no-redef]

            nv.nvmlInit()
            self._nv = nv
            self.handles = [nv.nvmlDeviceGetHandleByIndex(i) for i in range(nv.nvmlDeviceGetCount())]
            uuids = [_str(_try(partial(nv.nvmlDeviceGetUUID, h))) for h in self.handles]
            self.uuids = [u or f"nvml-{i}" for i, u in enumerate(uuids)]
            self.visible = visible_indices(cuda_visible, uuids)
            self.ok = bool(self.visible)
            if not self.handles:
                self.reason = "NVML found no GPU"
            elif not self.ok:
                self.reason = f"CUDA_VISIBLE_DEVICES={cuda_visible!r} hides every GPU NVML lists"
        except ImportError:
            self.reason = "nvidia-ml-py (pynvml) is not installed"
        except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
            self.reason = f"NVML unavailable: {exc}"

    def info(self) -> GpuInfo:
        """The driver and the visible devices (what the server can use), each with its NVML index."""
        if not self.ok:
            return GpuInfo(available=False, reason=self.reason)
        nv = self._nv
        devices = []
        for i in self.visible:
            h = self.handles[i]
            mem = _try(partial(nv.nvmlDeviceGetMemoryInfo, h))
            devices.append(
                {
                    "index": i,
                    "name": _str(_try(partial(nv.nvmlDeviceGetName, h))),
                    "uuid": _str(_try(partial(nv.nvmlDeviceGetUUID, h))),
                    "memory_total_mib": round(mem.total / MIB, 1) if mem else None,
                    "memory_used_mib": round(mem.used / MIB, 1) if mem else None,
                    "power_limit_w": _div(_try(partial(nv.nvmlDeviceGetEnforcedPowerLimit, h)), 1000),
                    "max_sm_clock_mhz": _try(partial(nv.nvmlDeviceGetMaxClockInfo, h, nv.NVML_CLOCK_SM)),
                }
            )
        return GpuInfo(
            available=True,
            reason=None,
            driver=_str(_try(lambda: nv.nvmlSystemGetDriverVersion())),
            cuda_driver_version=_try(lambda: nv.nvmlSystemGetCudaDriverVersion()),
            devices=devices,
            pid_note=_pid_namespace_note(),
            cuda_visible_devices=self.cuda_visible,
            cuda_device_order=self.cuda_order,
            order_note=order_note(self.cuda_visible, self.cuda_order,
                                  [_str(_try(partial(nv.nvmlDeviceGetName, h))) for h in self.handles]),
        )

    def pid_memory_by_device(self, pid: int) -> dict[int, float]:
        """The process's own GPU memory per NVML index, MiB, on each device it holds memory on. Every
        device NVML lists is asked, visible or not: a PID names one process host-wide, so this holds
        whatever CUDA's device order did to the mapping of CUDA_VISIBLE_DEVICES."""
        if not self.ok:
            return {}
        nv = self._nv
        on: dict[int, int] = {}
        for i, h in enumerate(self.handles):
            for getter in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
                procs = _try(partial(getattr(nv, getter), h)) or []
                for p in procs:
                    if p.pid == pid and p.usedGpuMemory is not None:
                        on[i] = on.get(i, 0) + p.usedGpuMemory
        return {i: round(b / MIB, 1) for i, b in on.items()}

    def pid_memory_mib(self, pid: int) -> float | None:
        """The process's own GPU memory summed over its devices; None if NVML does not list it."""
        return pid_total_mib(self.pid_memory_by_device(pid))

    def device_sample(self, indices: list[int] | None = None) -> dict[str, Any]:
        """Used memory (summed), SM clock (the slowest), temperature (the hottest) and power (summed)
        of the given NVML devices, every visible one by default; `gpus` names them."""
        if not self.ok:
            return {}
        nv = self._nv
        chosen = [i for i in (self.visible if indices is None else indices) if 0 <= i < len(self.handles)]
        used, clocks, temps, power = [], [], [], []
        for i in chosen:
            h = self.handles[i]
            mem = _try(partial(nv.nvmlDeviceGetMemoryInfo, h))
            used.append(mem.used / MIB if mem else None)
            clocks.append(_try(partial(nv.nvmlDeviceGetClockInfo, h, nv.NVML_CLOCK_SM)))
            temps.append(_try(partial(nv.nvmlDeviceGetTemperature, h, nv.NVML_TEMPERATURE_GPU)))
            power.append(_div(_try(partial(nv.nvmlDeviceGetPowerUsage, h)), 1000))
        return {
            "device_used_mib": round(sum(used), 1) if used and None not in used else None,  # type: ignore[arg-type]
            "sm_clock_mhz": min(clocks) if clocks and None not in clocks else None,
            "temperature_c": max(temps) if temps and None not in temps else None,
            "power_w": round(sum(power), 2) if power and None not in power else None,  # type: ignore[arg-type]
            "gpus": chosen,
        }


def pid_total_mib(by_device: Mapping[int, float]) -> float | None:
    """A process's GPU memory summed over its devices (`Nvml.pid_memory_by_device`), MiB; None when
    NVML lists it on none (not yet on a GPU, or a PID NVML cannot see), not 0."""
    return round(sum(by_device.values()), 1) if by_device else None


def _try(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception:
        return None


def _str(v: Any) -> str | None:
    if v is None:
        return None
    return v.decode() if isinstance(v, bytes) else str(v)


def _div(v: Any, d: float) -> float | None:
    return None if v is None else round(v / d, 2)


def _pid_namespace_note() -> str | None:
    """NVML lists host PIDs; inside a PID namespace ours differ (NVIDIA/nvidia-docker#1483)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("NSpid:") and len(line.split()) > 2:
                    return "running in a PID namespace: NVML per-process memory may not match (use --pid=host)"
    except OSError:
        pass
    return None


def host_memory_mib(pid: int) -> tuple[float | None, float | None]:
    """(RssAnon, RssFile) of a process in MiB from /proc; (None, None) where unavailable."""
    anon = file_ = None
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("RssAnon:"):
                    anon = round(int(line.split()[1]) / 1024, 1)
                elif line.startswith("RssFile:"):
                    file_ = round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError):
        pass
    return anon, file_


class VramSampler:
    """Samples one PID every `interval_s` on a thread; hands each `VramSample` to `sink`."""

    def __init__(
        self, nvml: Nvml, arm: str, pid: int, t0_ns: int, sink: Callable[[VramSample], None], interval_s: float = 0.1,
        block: int = 0,
    ) -> None:
        self.nvml = nvml
        self.arm = arm
        self.block = block
        self.pid = pid
        self.t0_ns = t0_ns
        self.sink = sink
        self.interval_s = interval_s
        self.samples: list[VramSample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"vram-{arm}", daemon=True)

    def sample(self) -> VramSample:
        by_device = self.nvml.pid_memory_by_device(self.pid)
        on = list(by_device)
        pid_mib = pid_total_mib(by_device)
        dev = self.nvml.device_sample(on or None)
        anon, file_ = host_memory_mib(self.pid)
        s = VramSample(
            arm=self.arm,
            t_ms=round((time.perf_counter_ns() - self.t0_ns) / 1e6, 1),
            pid_vram_mib=pid_mib,
            device_used_mib=dev.get("device_used_mib"),
            sm_clock_mhz=dev.get("sm_clock_mhz"),
            temperature_c=dev.get("temperature_c"),
            power_w=dev.get("power_w"),
            host_rss_anon_mib=anon,
            host_rss_file_mib=file_,
            gpus=dev.get("gpus"),
            block=self.block,
            pid_vram_by_gpu={self.nvml.uuids[i]: mib for i, mib in by_device.items()} or None,
        )
        self.samples.append(s)
        return s

    def _loop(self) -> None:
        next_t = time.monotonic()
        while not self._stop.is_set():
            self.sink(self.sample())
            next_t += self.interval_s
            self._stop.wait(max(0.0, next_t - time.monotonic()))

    def start(self) -> VramSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)


def summarize(samples: list[VramSample], after_load: VramSample | None,
              window_ms: tuple[float, float] | None = None) -> dict[str, Any]:
    """after_load, steady and peak, per field. Peak is over every sample; steady is the median over
    the samples inside `window_ms` (the measured requests, `records.measured_window_ms`: warm-up
    and prompt cutting left out), over every sample when none falls inside or no window is known.
    `peak_by_gpu`: the PID's own peak on each device, by UUID, where samples had it."""
    fields = ("pid_vram_mib", "device_used_mib", "host_rss_anon_mib", "host_rss_file_mib")
    out: dict[str, Any] = {"after_load": asdict(after_load) if after_load else None, "n_samples": len(samples)}
    inside = [s for s in samples if window_ms is not None and window_ms[0] <= s.t_ms <= window_ms[1]]
    peak: dict[str, float | None] = {}
    steady: dict[str, float | None] = {}
    for f in fields:
        vals = sorted(v for v in (getattr(s, f) for s in samples) if v is not None)
        peak[f] = vals[-1] if vals else None
        calm = sorted(v for v in (getattr(s, f) for s in inside) if v is not None) or vals
        steady[f] = calm[len(calm) // 2] if calm else None
    out["peak"] = peak
    out["steady"] = steady
    by_gpu: dict[str, float] = {}
    for s in samples:
        for uuid, mib in (s.pid_vram_by_gpu or {}).items():
            by_gpu[uuid] = max(mib, by_gpu.get(uuid, mib))
    if by_gpu:  # the PID's own peak per device, by UUID; absent without per-device samples
        out["peak_by_gpu"] = by_gpu
    return out


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return os.uname().machine
