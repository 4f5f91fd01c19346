"""VRAM prediction per GPU for a model split over several devices (``-ts``, ``-sm``, ``-mg``, ``-ot``, ``--n-cpu-moe``).

The single-device prediction (`vram.predict`) answers "how much on the GPU"; this module answers
"how much on each GPU", by the rules of the pinned llama.cpp (llama-cpp-python 0.3.36's vendored
tree). Each device's share is

    total_d = weights on d + KV of the layers on d + compute buffer of d + CUDA overhead

**Which layer goes where** (src/llama-model.cpp, ``llama_model_base::load_tensors``): the layers
0..n_layer-1 and the output layer (number n_layer) are offloaded from ``i_gpu_start = max(n_layer
+ 1 - ngl, 0)`` on (-ngl 99: all of them, ``act = n_layer + 1`` layers). The split points are the
cumulative sums of ``-ts`` normalised to 1 (float32); without ``-ts`` (all zero) the proportions
are each device's free memory. Layer ``il`` goes to the first device ``j`` whose split point is
greater than ``(il - i_gpu_start) / act`` (``std::upper_bound``). So ``-ts 1,1`` over 48 blocks puts
blocks 0-24 on device 0 and blocks 25-47 and the output layer on device 1: the output layer (the
output matmul, ``output.weight`` or the tied-embedding copy) always lands on the last device with a
share. The input layer (``token_embd``) stays in host memory.

**Tensor overrides** (src/llama-model-loader.cpp): every ``-ot PATTERN=BUFFER``, ``--cpu-moe`` and
``--n-cpu-moe N`` (patterns ``blk\\.i\\.ffn_(up|down|gate|gate_up)_(ch|)exps`` for i < N, common/common.h)
is tried in argv order with ``std::regex_search`` on the tensor name; the first match decides
(``CPU``: host memory; ``CUDA<k>``: device k's buffer). ``--n-cpu-moe`` does not move layers: the
first N layers' experts leave *their* device (the first ones), which is why ``-ts`` and
``--n-cpu-moe`` are searched together.

**Split modes** (src/llama.cpp ``llama_prepare_model_devices``, common/arg.cpp): ``layer`` (the
default) as above; ``none`` keeps only device ``-mg`` (default 0) in the model's device list, so
the prediction is the single-device one on that device; ``row`` needs the backend's split buffer
type (``ggml_backend_split_buffer_type``), which the pinned CUDA backend no longer exports, so
``load_tensors`` throws "device CUDA0 does not support split buffers": not predicted (an error);
``tensor`` (the experimental meta device) is not modelled.

**KV cache** (src/llama-kv-cache.cpp): each layer's K and V live on that layer's device; the
per-layer bytes are those of `vram.kv_caches` (one cache per attention kind).

**Compute buffer**: the scheduler gives every backend its own buffer for the nodes it runs.
Every device holding layers is given the whole graph's high-water mark (`vram.graph_bytes`: the
per-layer activations are the same on every device; an upper bound by the logits for devices
without the output layer). Op offload (a prompt batch of >= 32 tokens computing host-resident
experts on a GPU) goes to the *first* backend that supports it (ggml-backend.cpp, cause "1.off"),
device 0 of the model's list, so only that device's buffer grows by the copied expert tensor.
Pipeline parallelism (src/llama-context.cpp: several devices, -ngl > n_layer, split mode layer,
KV offloaded and *no tensor override at all*, so not with --n-cpu-moe >= 1 or -ot) keeps
``GGML_SCHED_MAX_COPIES = 4`` copies of every split input (ggml-backend.cpp); each device's buffer
is given 3 more copies of its inputs: the residual stream [n_embd, T] f32 and the KQ mask(s).

**CUDA overhead**: `vram.CUDA_OVERHEAD_MIB` (the CUDA context, cuBLAS, the pool, graphs; measured
on one H100) on *every* device in the model's device list: each gets a backend, hence a context.

What is from the source and not yet checked against a measurement on several GPUs: the per-device
compute buffers (upper bound, pipeline copies), the per-device overhead, and the layer
assignment's float32 rounding at a boundary; docs/sweep.md ("Several GPUs") keeps the list.
With one device this module gives exactly `vram.predict`'s weights, KV and compute
(tests/unit/test_vram_split.py).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..argv import EXPERT_REGEX, FLAGS, gpu_placement, int_flag
from ..errors import ConfigError
from ..records import MIB
from .desc import ModelDesc
from .vram import (
    CUDA_ALIGNMENT,
    CUDA_OVERHEAD_MIB,
    OP_OFFLOAD_MIN_BATCH,
    ContextParams,
    compute_buffer_bytes,
    compute_parts,
    cuda_alloc_bytes,
    graph_bytes,
    kv_caches,
)

SPLIT_MODES = ("none", "layer", "row", "tensor")
PIPELINE_COPIES = 4  # ggml-backend.cpp GGML_SCHED_MAX_COPIES: copies of each split input with pipeline parallelism
HOST = -1  # a tensor's place when it stays in host memory
_CUDA_BUFFER = re.compile(r"^CUDA(\d+)$")
_NCMOE_PATTERN = re.compile(r"^blk\\\.(\d+)" + re.escape(EXPERT_REGEX) + "$")


def n_cpu_moe_overrides(n: int) -> tuple[tuple[str, str], ...]:
    """``--n-cpu-moe n`` as llama.cpp expands it (common/common.h llm_add_n_cpu_ffn_overrides)."""
    return tuple((f"blk\\.{i}{EXPERT_REGEX}", "CPU") for i in range(max(0, n)))


@dataclass(frozen=True)
class Split:
    """How one server places a model over `n_devices` GPUs (CUDA order, as -ts, -mg, CUDA<k> count)."""

    n_devices: int
    split_mode: str = "layer"
    tensor_split: tuple[float, ...] = ()  # proportions per device; () or all zero = by free memory
    main_gpu: int = 0
    # (pattern, buffer) in the order llama.cpp tries them: -ot, -cmoe, -ncmoe expanded, as in the argv
    overrides: tuple[tuple[str, str], ...] = ()
    n_gpu_layers: int = 99
    free_mib: tuple[float, ...] = ()  # per device: the default split without -ts (() = even)

    @classmethod
    def of(cls, n_devices: int, tensor_split: Sequence[float] = (), n_cpu_moe: int = 0, **kw: Any) -> Split:
        """-ts `tensor_split` with ``--n-cpu-moe n_cpu_moe``: the settings the sweep searches."""
        return cls(n_devices, tensor_split=tuple(float(x) for x in tensor_split),
                   overrides=n_cpu_moe_overrides(n_cpu_moe), **kw)

    @classmethod
    def from_argv(cls, argv: Sequence[str], n_devices: int, free_mib: Sequence[float] = ()) -> Split:
        """The split an arm's argv asks for (`argv.gpu_placement`); ConfigError for a value llama-server
        would reject."""
        p = gpu_placement(argv)
        ts = p["tensor_split"]
        assert isinstance(ts, list)
        if any(isinstance(x, str) for x in ts):
            raise ConfigError(f"-ts {ts}: every proportion must be a number, e.g. -ts 3,1")
        mg = p["main_gpu"]
        if not isinstance(mg, int):
            raise ConfigError(f"-mg {mg!r}: the main GPU is a device index, e.g. -mg 0")
        ngl = int_flag(argv, FLAGS["gpu_layers"], 99)  # "all"/"auto" read as every layer
        overrides = p["overrides"]
        assert isinstance(overrides, list)
        return cls(n_devices, str(p["split_mode"]), tuple(float(x) for x in ts), mg,
                   tuple((str(a), str(b)) for a, b in overrides), ngl, tuple(free_mib))

    @property
    def n_cpu_moe(self) -> int:
        """The N of --n-cpu-moe N: the length of the run of its per-layer patterns 0, 1, ... among the overrides."""
        layers = {int(m.group(1)) for p, b in self.overrides if b == "CPU" and (m := _NCMOE_PATTERN.match(p))}
        n = 0
        while n in layers:
            n += 1
        return n

    def label(self) -> str:
        """'ts 3,1 · ncmoe 4' (what a table row says)."""
        ts = ",".join(f"{x:g}" for x in self.tensor_split) or "auto"
        out = f"ts {ts}" if self.split_mode == "layer" else f"sm {self.split_mode} mg {self.main_gpu}"
        return out + (f" · ncmoe {self.n_cpu_moe}" if self.n_cpu_moe else "")

    def check(self) -> None:
        if self.n_devices < 1:
            raise ConfigError("a split needs at least one device")
        if self.split_mode not in SPLIT_MODES:
            raise ConfigError(f"-sm {self.split_mode!r}: use one of {', '.join(SPLIT_MODES)}")
        if self.split_mode == "row":
            raise ConfigError("-sm row: the pinned llama.cpp's CUDA backend has no split buffer type "
                              "(load_tensors throws 'does not support split buffers'); use -sm layer")
        if self.split_mode == "tensor":
            raise ConfigError("-sm tensor (llama.cpp's experimental meta device) is not predicted; use -sm layer")
        if any(x < 0 for x in self.tensor_split):
            raise ConfigError(f"-ts {','.join(f'{x:g}' for x in self.tensor_split)}: proportions must be >= 0")
        if self.split_mode == "none" and not 0 <= self.main_gpu < self.n_devices:
            raise ConfigError(f"-mg {self.main_gpu}: invalid with {self.n_devices} device(s) "
                              "(llama.cpp: 'invalid value for main_gpu')")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["n_cpu_moe"] = self.n_cpu_moe
        d["overrides"] = [list(o) for o in self.overrides if o not in n_cpu_moe_overrides(self.n_cpu_moe)]
        return d


def model_devices(split: Split) -> list[int]:
    """The CUDA indices in the model's device list: all of them, or -mg alone with -sm none."""
    if split.split_mode == "none":
        return [split.main_gpu]
    return list(range(split.n_devices))


def layer_devices(n_layer: int, split: Split) -> list[int]:
    """The device (CUDA index; `HOST` = -1) of each layer 0..n_layer, the last being the output
    layer, exactly as load_tensors computes it (float32 split points, upper_bound)."""
    devs = model_devices(split)
    nd = len(devs)
    ts = list(split.tensor_split[:nd]) + [0.0] * max(0, nd - len(split.tensor_split))
    if split.split_mode == "none":
        weights = [1.0]
    elif any(ts):
        weights = ts
    elif split.free_mib and len(split.free_mib) >= nd:
        weights = [float(split.free_mib[d]) for d in devs]
    else:
        weights = [1.0] * nd
    splits = np.cumsum(np.asarray(weights, dtype=np.float32), dtype=np.float32)
    splits = (splits / splits[-1]).astype(np.float32)
    i_gpu_start = max(n_layer + 1 - split.n_gpu_layers, 0)
    act = min(split.n_gpu_layers, n_layer + 1)
    out: list[int] = []
    for il in range(n_layer + 1):
        if il < i_gpu_start or il - i_gpu_start >= act:
            out.append(HOST)
            continue
        x = np.float32(il - i_gpu_start) / np.float32(act)
        j = int(np.searchsorted(splits, x, side="right"))  # std::upper_bound
        out.append(devs[min(j, nd - 1)])
    return out


@dataclass(frozen=True)
class DeviceShare:
    """One GPU's predicted memory (MiB) for a split: what NVML should count for the server's PID there."""

    device: int  # CUDA index
    layers: tuple[int, ...]  # the layers assigned to it (the output layer is n_layer)
    weights_mib: float
    expert_mib: float  # of weights_mib, routed-expert tensors (unpadded)
    kv_mib: float
    compute_mib: float
    overhead_mib: float
    total_mib: float
    weights_bytes: int = 0  # weights_mib exactly (CUDA padding included)
    kv_bytes: int = 0  # kv_mib exactly

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["layers"] = _ranges(self.layers)
        return d


@dataclass(frozen=True)
class SplitPrediction:
    """Every device's share, the host-resident weights, and how the prediction was made."""

    split: Split
    n_ctx: int
    devices: tuple[DeviceShare, ...]  # in CUDA order, every device of the model's list
    host_weights_mib: float
    pipeline_parallel: bool
    notes: tuple[str, ...] = field(default=())

    @property
    def total_mib(self) -> float:
        return round(sum(d.total_mib for d in self.devices), 1)

    def share(self, device: int) -> DeviceShare | None:
        return next((d for d in self.devices if d.device == device), None)

    def per_device_mib(self, n_devices: int) -> list[float]:
        """total_mib per CUDA index 0..n_devices-1 (0 for a device the server does not use)."""
        return [s.total_mib if (s := self.share(i)) else 0.0 for i in range(n_devices)]

    def over(self, budgets_mib: Sequence[float], margin_mib: float = 0.0) -> list[int]:
        """The devices whose share is over their budget less `margin_mib`."""
        return [i for i, (p, b) in enumerate(zip(self.per_device_mib(len(budgets_mib)), budgets_mib, strict=True))
                if p > b - margin_mib]

    def to_dict(self) -> dict[str, Any]:
        return {"split": self.split.to_dict(), "label": self.split.label(), "n_ctx": self.n_ctx,
                "devices": [d.to_dict() for d in self.devices], "host_weights_mib": self.host_weights_mib,
                "total_mib": self.total_mib, "pipeline_parallel": self.pipeline_parallel, "notes": list(self.notes)}


def tensor_devices(model: ModelDesc, split: Split) -> dict[str, int]:
    """Each tensor's place: a CUDA index, or `HOST`. Layer tensors follow their layer, the input
    layer (token_embd) stays on the host, everything else is the output layer's; then the first
    matching override decides."""
    by_layer = layer_devices(model.n_layer, split)
    out_dev = by_layer[model.n_layer]
    rules = _rules(split.overrides)
    place: dict[str, int] = {}
    for t in model.tensors:
        layer = model.layer_of(t)
        dev = HOST if t.name == "token_embd.weight" else by_layer[layer] if layer is not None else out_dev
        for rx, layers, buft in rules:
            hit = (layer in layers and model.is_expert(t)) if rx is None else rx.search(t.name) is not None
            if hit:
                m = _CUDA_BUFFER.match(buft)
                dev = int(m.group(1)) if m else HOST
                break
        place[t.name] = dev
    return place


def _rules(overrides: Sequence[tuple[str, str]]) -> list[tuple[re.Pattern[str] | None, frozenset[int], str]]:
    """The overrides in order, each --n-cpu-moe pattern run (``blk\\.i`` + the expert regex, to one
    buffer) folded into one rule on the layer numbers: the same first match, without a regex per layer."""
    out: list[tuple[re.Pattern[str] | None, frozenset[int], str]] = []
    for pattern, buft in overrides:
        m = _NCMOE_PATTERN.match(pattern)
        if m and out and out[-1][0] is None and out[-1][2] == buft:
            out[-1] = (None, out[-1][1] | {int(m.group(1))}, buft)
        elif m:
            out.append((None, frozenset({int(m.group(1))}), buft))
        else:
            out.append((re.compile(pattern), frozenset(), buft))
    return out


def predict_devices(model: ModelDesc, split: Split, ctx: ContextParams,
                    overhead_mib: float = CUDA_OVERHEAD_MIB) -> SplitPrediction:
    """Pure: each GPU's memory for ``llama-server -ngl N`` with `split`, at `ctx` (see the module doc)."""
    split.check()
    devs = model_devices(split)
    by_layer = layer_devices(model.n_layer, split)
    place = tensor_devices(model, split)
    weights = dict.fromkeys(devs, 0)
    experts = dict.fromkeys(devs, 0)
    host = max_host_expert = 0
    for t in model.tensors:
        d = place[t.name]
        if t.name == "token_embd.weight" and not model.has_output():
            out = by_layer[model.n_layer]  # tied embeddings: the output matmul's copy on the output device
            if out != HOST:
                weights[out] = weights.get(out, 0) + cuda_alloc_bytes(t)
        if d == HOST:
            host += t.nbytes
            if model.is_expert(t):
                max_host_expert = max(max_host_expert, t.nbytes)
            continue
        weights[d] = weights.get(d, 0) + cuda_alloc_bytes(t)
        if model.is_expert(t):
            experts[d] = experts.get(d, 0) + t.nbytes
    # KV: each layer's rows on its device (-ngl 99 offloads the KV of every offloaded layer)
    kv: dict[int, float] = {}
    swa = set(model.swa_layers)
    for cache in kv_caches(model, ctx):
        per_layer = cache.cells * cache.n_stream * (cache.k_bytes_per_cell + cache.v_bytes_per_cell)
        for il in range(model.n_layer):
            if (il in swa) == (cache.kind == "swa") and by_layer[il] != HOST:
                kv[by_layer[il]] = kv.get(by_layer[il], 0.0) + per_layer
    has_overrides = bool(split.overrides)
    pipeline = (len(devs) > 1 and split.n_gpu_layers > model.n_layer and split.split_mode == "layer"
                and not has_overrides)
    base = graph_bytes(model, ctx, CUDA_ALIGNMENT)
    first = compute_buffer_bytes(model, ctx, max_host_expert, CUDA_ALIGNMENT) if max_host_expert else base
    extra = 0
    notes: list[str] = []
    if pipeline:
        p = compute_parts(model, ctx)
        extra = (PIPELINE_COPIES - 1) * (p.residual_act + p.mask * (2 if model.swa_layers else 1))
        notes.append(f"pipeline parallelism: {PIPELINE_COPIES} copies of each device's split inputs "
                     "(from the source, not measured)")
    if max_host_expert and ctx.n_tokens_reserve >= OP_OFFLOAD_MIN_BATCH and len(devs) > 1:
        notes.append(f"op offload: CUDA{devs[0]} copies the host-resident experts for prompt batches")
    held = {d for d in by_layer if d != HOST} | {d for d in place.values() if d != HOST}
    shares: list[DeviceShare] = []
    offload = bool(max_host_expert) and ctx.n_tokens_reserve >= OP_OFFLOAD_MIN_BATCH
    # the model's devices, and any other an -ot names (its buffer is allocated there all the same)
    for i, d in enumerate(devs + sorted(held - set(devs))):
        if i == 0 and (d in held or offload):
            compute = first + (extra if d in held else 0)
        else:
            compute = base + extra if d in held else 0
        w, k, c = weights.get(d, 0) / MIB, kv.get(d, 0.0) / MIB, compute / MIB
        shares.append(DeviceShare(
            device=d, layers=tuple(il for il, x in enumerate(by_layer) if x == d),
            weights_mib=round(w, 2), expert_mib=round(experts.get(d, 0) / MIB, 2), kv_mib=round(k, 2),
            compute_mib=round(c, 2), overhead_mib=round(overhead_mib, 2),
            total_mib=round(w + k + c + overhead_mib, 1), weights_bytes=weights.get(d, 0),
            kv_bytes=round(kv.get(d, 0.0))))
    return SplitPrediction(split, ctx.n_ctx_total, tuple(shares), round(host / MIB, 2), pipeline, tuple(notes))


def even_and_skews(n_devices: int) -> list[tuple[float, ...]]:
    """The -ts grid the sweep searches by default: even, then each device weighted 3:2 and 2:1
    against the others (2 devices: 1,1  3,2  2,3  2,1  1,2)."""
    if n_devices < 2:
        return [()]
    out: list[tuple[float, ...]] = [(1.0,) * n_devices]
    for w in (1.5, 2.0):
        for k in range(n_devices):
            out.append(tuple(w if i == k else 1.0 for i in range(n_devices)))
    return list(dict.fromkeys(_integral(ts) for ts in out))


def _integral(ts: tuple[float, ...]) -> tuple[float, ...]:
    """1.5,1 -> 3,2: the same proportions in small whole numbers (what a person would type)."""
    k = 2.0 if any(x != int(x) for x in ts) else 1.0
    return tuple(x * k for x in ts)


def parse_tensor_split_grid(text: str | None, n_devices: int) -> list[tuple[float, ...]]:
    """'auto' -> `even_and_skews`; '1,1;3,2;2,1' -> those proportions (one per device each)."""
    t = (text or "auto").strip().lower()
    if t == "auto":
        return even_and_skews(n_devices)
    out: list[tuple[float, ...]] = []
    for part in t.split(";"):
        part = part.strip()
        if not part:
            continue
        try:
            ts = tuple(float(x) for x in re.split(r"[,/]", part))
        except ValueError:
            raise ConfigError(f"--ts {text!r}: {part!r} is not a list of proportions; use e.g. 1,1;3,2;2,1") from None
        if len(ts) != n_devices or any(x < 0 for x in ts) or not any(ts):
            raise ConfigError(f"--ts {text!r}: {part!r} needs {n_devices} proportions >= 0 (one per --vram-budget "
                              "device), not all zero")
        out.append(ts)
    if not out:
        raise ConfigError(f"--ts {text!r}: no proportions; use e.g. 1,1;3,2 or auto")
    return list(dict.fromkeys(out))


def _ranges(ns: Sequence[int]) -> str:
    """(0, 1, 2, 5) -> '0-2,5'."""
    out: list[str] = []
    run: list[int] = []
    for n in list(ns) + [None]:  # type: ignore[list-item]
        if n is not None and run and n == run[-1] + 1:
            run.append(n)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [n] if n is not None else []
    return ",".join(out)


__all__ = [
    "HOST", "PIPELINE_COPIES", "SPLIT_MODES", "DeviceShare", "Split", "SplitPrediction", "even_and_skews",
    "layer_devices", "model_devices", "n_cpu_moe_overrides", "parse_tensor_split_grid", "predict_devices",
    "tensor_devices",
]
