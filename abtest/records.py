"""The records that cross module boundaries, and the evidence schema they form.

Every line of an evidence file is one of these records as a JSON object with two extra keys:
``"kind"`` (the record type, see `KINDS`) and ``"schema"`` (`SCHEMA_VERSION`). docs/evidence.md
describes each field; this module is the single source of truth for their names.

Units are in the names: ``_ms`` milliseconds, ``_ns`` nanoseconds, ``_mib`` MiB, ``_tps`` tokens per
second. Durations come from ``time.perf_counter_ns()`` (CLOCK_MONOTONIC on Linux); wall-clock time
appears only as ISO-8601 labels (``*_at``).

Schema history:
  1 — first version.
A reader accepts any version <= SCHEMA_VERSION (`upgrade` fills fields added later with defaults)
and keeps unknown keys out of the dataclasses, so newer minor additions never break old readers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

SCHEMA_VERSION = 1
MIB = 1024 * 1024  # bytes in the MiB of every ``_mib`` field
GIB = 1024 * MIB


@dataclass(frozen=True)
class TokenEvent:
    """One SSE event that carried at least one generated token.

    t_ns: arrival time, perf_counter_ns, relative to the request's send mark.
    n_tokens: tokens this event carried (from tokens_predicted/predicted_n deltas, never 1-per-chunk).
    """

    t_ns: int
    n_tokens: int


@dataclass(frozen=True)
class RunManifest:
    """First record of every evidence file: who, where, what, with which configuration."""

    run_id: str
    abtest_version: str
    started_at: str
    argv: list[str]
    host: dict[str, Any]
    gpu: dict[str, Any]  # {"available": bool, "reason": str|None, "driver": str|None, "devices": [...]}
    models: list[dict[str, Any]]  # ModelRef dicts: name, path, size_bytes, sha256, arch, params
    config: dict[str, Any]  # the full RunConfig as a dict


@dataclass(frozen=True)
class ArmStart:
    """An arm's server is healthy and about to be measured."""

    arm: str
    model_path: str
    model_sha256: str
    server_bin: str
    server_build: dict[str, Any]  # {"version_text", "build_id", "backend", "found_via"}
    argv: list[str]  # the exact argv the server was started with
    port: int
    pid: int
    ready_ms: float  # from spawn to the first /health 200
    started_at: str
    log_path: str
    prompt_tokens: dict[str, int] = field(default_factory=dict)  # prompt_id -> tokens (server /tokenize)
    memory_after_load: dict[str, Any] = field(default_factory=dict)  # a VramSample dict
    # perf_counter_ns at spawn, on the clock of RequestRecord.t_send_ns: a memory sample's
    # absolute time is spawn_ns + t_ms * 1e6 (0 in files written before this field existed).
    spawn_ns: int = 0


@dataclass(frozen=True)
class RequestRecord:
    """One streamed request, every raw sample kept. A failed request has `error` set."""

    arm: str
    bucket: str
    prompt_id: str
    run_index: int  # 0-based repetition
    seq: int  # order of sending within the arm
    warmup: bool  # warm-up requests are kept but left out of statistics
    endpoint: str  # "completion" or "chat"
    concurrency: int
    t_send_ns: int  # perf_counter_ns when the request bytes were sent (absolute, this host's monotonic clock)
    client_overhead_ms: float  # client work from "start request" until the bytes were sent
    status: int  # HTTP status; 0 when no response
    error: str | None
    ttft_ms: float | None  # send -> first event carrying a token
    e2e_ms: float | None  # send -> end of stream
    prompt_tokens: int | None  # server's prompt_n (or usage.prompt_tokens)
    completion_tokens: int  # counted by the client from the events
    server_predicted_n: int | None  # server's own timings.predicted_n at the end
    events: list[TokenEvent]  # one per token-carrying event
    chunk_times_ns: list[int]  # arrival of every data event (token or not), relative to send
    token_ids: list[int] | None
    text: str
    timings: dict[str, Any]  # llama-server's `timings` as sent, stored beside ours, never instead
    cache_n: int | None  # timings.cache_n; must be 0 with cache_prompt false
    headers_ms: float | None = None  # send -> response headers (prompt processing *starts* here)
    sent_at: str = ""  # wall-clock label

    @property
    def ok(self) -> bool:
        return self.error is None


def measured_window_ms(requests: Iterable[RequestRecord], spawn_ns: int) -> tuple[float, float] | None:
    """[first measured send, last measured end] in ms since the server's spawn: where the memory
    samples (`VramSample.t_ms`) of the measured requests lie. None without measured requests or
    without `spawn_ns` (files written before `ArmStart.spawn_ns` existed)."""
    measured = [r for r in requests if not r.warmup]
    if not measured or spawn_ns <= 0:
        return None
    lo = min(r.t_send_ns for r in measured)
    hi = max(r.t_send_ns + (r.e2e_ms or 0.0) * 1e6 for r in measured)
    return (lo - spawn_ns) / 1e6, (hi - spawn_ns) / 1e6


@dataclass(frozen=True)
class TokenIds:
    """Generated token ids for a request whose streamed ids were incomplete (an event carried
    several tokens but only the last id), from one extra non-streamed request after the timed runs.
    The reader folds them into the matching RequestRecord (arm, seq)."""

    arm: str
    seq: int
    token_ids: list[int]
    source: str


@dataclass(frozen=True)
class VramSample:
    """One sample of the server process's memory. None where the platform cannot say."""

    arm: str
    t_ms: float  # since the arm's server was spawned
    pid_vram_mib: float | None  # this PID's own GPU memory (NVML per-process)
    device_used_mib: float | None  # whole-device used memory
    sm_clock_mhz: int | None
    temperature_c: int | None
    power_w: float | None
    host_rss_anon_mib: float | None  # /proc/PID/status RssAnon
    host_rss_file_mib: float | None  # RssFile: the mmapped model's resident pages live here
    # NVML indices the device fields were read from: those the PID holds memory on, else every
    # visible one (None: no GPU, or a file written before the field existed)
    gpus: list[int] | None = None


@dataclass(frozen=True)
class ArmEnd:
    """An arm's server stopped (or failed to start: then status is "failed" and error says why)."""

    arm: str
    status: str  # "ok" | "failed"
    error: str | None
    exit_code: int | None
    stop_ms: float | None  # SIGTERM -> exit
    n_requests: int
    n_failed: int
    memory: dict[str, Any]  # {"after_load": {...}, "steady": {...}, "peak": {...}} of VramSample fields
    breakdown: dict[str, Any]  # parsed from the server log: buffers per device, offloaded layers
    log_path: str
    log_tail: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RunEnd:
    """Last record. A file without it is a partial run."""

    finished_at: str
    duration_s: float
    n_requests: int
    n_failed: int
    arms_failed: list[str]


KINDS: dict[str, type] = {
    "run_start": RunManifest,
    "arm_start": ArmStart,
    "request": RequestRecord,
    "memory": VramSample,
    "token_ids": TokenIds,
    "arm_end": ArmEnd,
    "run_end": RunEnd,
}
KIND_OF: dict[type, str] = {cls: kind for kind, cls in KINDS.items()}

T = TypeVar("T")


def to_dict(record: Any) -> dict[str, Any]:
    """A record as the JSON object written to evidence (kind and schema first)."""
    body = dataclasses.asdict(record)
    if isinstance(record, RequestRecord):
        # Compact form for the hot list: [[t_ns, n_tokens], ...]
        body["events"] = [[e.t_ns, e.n_tokens] for e in record.events]
    return {"kind": KIND_OF[type(record)], "schema": SCHEMA_VERSION, **body}


def upgrade(obj: dict[str, Any]) -> dict[str, Any]:
    """Bring an object of an older schema version up to SCHEMA_VERSION (no-op for version 1)."""
    version = obj.get("schema", 1)
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise ValueError(
            f"evidence schema {version!r} is newer than this abtest understands ({SCHEMA_VERSION}); upgrade abtest"
        )
    return obj


def from_dict(obj: dict[str, Any]) -> Any:
    """The dataclass for one evidence object; unknown keys are ignored, missing optional ones defaulted."""
    obj = upgrade(obj)
    kind = obj.get("kind")
    cls = KINDS.get(kind)  # type: ignore[arg-type]
    if cls is None:
        raise ValueError(f"unknown record kind {kind!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in obj.items() if k in names}
    if cls is RequestRecord:
        kwargs["events"] = [TokenEvent(int(t), int(n)) for t, n in kwargs.get("events", [])]
    return cls(**kwargs)
