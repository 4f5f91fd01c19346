"""The records that cross module boundaries, and the evidence schema they form.

Every line of an evidence file is one of these records as a JSON object with two extra keys:
``"kind"`` (the record type, see `KINDS`) and ``"schema"`` (`SCHEMA_VERSION`). docs/evidence.md
describes each field; this module is the single source of truth for their names.

Units are in the names: ``_ms`` milliseconds, ``_ns`` nanoseconds, ``_mib`` MiB, ``_tps`` tokens per
second. Durations come from ``time.perf_counter_ns()`` (CLOCK_MONOTONIC on Linux); wall-clock time
appears only as ISO-8601 labels (``*_at``).

Schema history:
  1 — first version.
  2 — server sessions and the applied load: `block` on arm_start, request, memory and arm_end
      (the arm's server session, 0-based; an arm restarted per block has several); on a request
      `t_scheduled_ns` (when an open loop had it due), `load` (the load actually applied) and
      `suspect` (what the client saw that cannot be true, `measure.protocol.implausible`).
      A version-1 line reads as block 0, no schedule, `load` {}, `suspect` [].
A reader accepts any version <= SCHEMA_VERSION (`upgrade` fills fields added later with defaults)
and keeps unknown keys out of the dataclasses, so newer minor additions never break old readers.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

SCHEMA_VERSION = 2
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
    models: list[dict[str, Any]]  # per model: display name, path, size_bytes, sha256, then ModelDesc.to_dict() (arch, params, ...)
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
    block: int = 0  # which of the arm's server sessions (0-based; --blocks restarts the server per block)
    # how the argv places the model over GPUs (`argv.gpu_placement`: split_mode, tensor_split,
    # main_gpu, overrides, n_cpu_moe, devices); {} in files written before this field existed
    placement: dict[str, Any] = field(default_factory=dict)


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
    t_send_ns: int  # perf_counter_ns right before the request bytes were handed to the kernel (this host's monotonic clock)
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
    block: int = 0  # the arm's server session this request went to (ArmStart.block)
    # perf_counter_ns at which the schedule had this request due (open loop: start + its arrival
    # offset); None in a closed loop, where a request is due when the previous one ends
    t_scheduled_ns: int | None = None
    # the load actually applied: {"mode": "closed"|"open"|"interleaved", "concurrency": int,
    # "rate_rps": float|None, "arrivals": str|None, "connection_cap": int|None}
    load: dict[str, Any] = field(default_factory=dict)
    suspect: list[str] = field(default_factory=list)  # measure.protocol.implausible(self) when measured
    # `--margins`: per generated token, the server's top 3 as [token id, logprob, piece] (logprob
    # differences are logit differences), from the non-streamed probe after the timed runs (a
    # TokenIds record folded in); None when not probed
    top_logprobs: list[list[list[Any]]] | None = None

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
    several tokens but only the last id), from one extra non-streamed request after the timed runs;
    or (`--margins`) that request's ids and top-3 logprobs per token. The reader folds them into the
    matching RequestRecord (arm, seq)."""

    arm: str
    seq: int
    token_ids: list[int]
    source: str
    # `--margins` probe: the top 3 per generated token (RequestRecord.top_logprobs); folded into the
    # request only when the probe generated the request's own token ids
    top_logprobs: list[list[list[Any]]] | None = None


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
    block: int = 0  # the arm's server session (ArmStart.block)
    # this PID's own GPU memory per device it holds memory on, MiB, keyed by the device's NVML UUID
    # (pid_vram_mib is their sum; None: no GPU, not listed, or a file written before the field existed)
    pid_vram_by_gpu: dict[str, float] | None = None


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
    block: int = 0  # the arm's server session (ArmStart.block)
    # the server's own warning/error lines from its log ("W llama_model_loader: ..."), each once, in
    # order (`server.log.server_warnings`); [] in files written before this field existed
    server_warnings: list[str] = field(default_factory=list)


# Warning lines a server prints because of what abtest did, not because of the arm: "no API key"
# (abtest binds its servers to 127.0.0.1 and sends no key, server/process.py) and "cancel task"
# (tools/server/server-queue.cpp, server_response_reader::stop: a client closed a request before
# it ended, which in a run is abtest's own request timeout or an interrupt; the request's record
# already says so). Dropped when the log is read, and when a report reads older files.
ABTEST_CAUSED_WARNINGS = ("security: no API key is set", "cancel task, id_task = ")


def caused_by_abtest(warning: str) -> bool:
    """Whether a server warning line (ArmEnd.server_warnings) is one that abtest's own actions cause."""
    return any(marker in warning for marker in ABTEST_CAUSED_WARNINGS)


def arm_warnings(end: ArmEnd) -> list[str]:
    """The server warnings of an arm session that say something about the arm."""
    return [w for w in end.server_warnings if not caused_by_abtest(w)]


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


_NAMES: dict[type, tuple[str, ...]] = {}


def to_fields(record: Any) -> dict[str, Any]:
    """A record as a shallow dict for a serialiser that takes nested dataclasses itself (orjson):
    kind and schema first, then the fields in order, a request's events compact ([t_ns, n_tokens]).
    The fast form of `to_dict`, same JSON."""
    cls = type(record)
    names = _NAMES.get(cls)
    if names is None:
        names = _NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
    body = {"kind": KIND_OF[cls], "schema": SCHEMA_VERSION}
    for name in names:
        body[name] = getattr(record, name)
    if cls is RequestRecord:
        body["events"] = [[e.t_ns, e.n_tokens] for e in record.events]
    return body


def to_dict(record: Any) -> dict[str, Any]:
    """A record as the JSON object written to evidence (kind and schema first)."""
    body = dataclasses.asdict(record)
    if isinstance(record, RequestRecord):
        # Compact form for the hot list: [[t_ns, n_tokens], ...]
        body["events"] = [[e.t_ns, e.n_tokens] for e in record.events]
    return {"kind": KIND_OF[type(record)], "schema": SCHEMA_VERSION, **body}


class NewerSchema(ValueError):
    """An evidence object of a schema version newer than this abtest reads (upgrade abtest)."""

    def __init__(self, version: int) -> None:
        super().__init__(
            f"evidence schema {version} is newer than this abtest understands ({SCHEMA_VERSION}); upgrade abtest"
        )
        self.version = version


def upgrade(obj: dict[str, Any]) -> dict[str, Any]:
    """Bring an object of an older schema version up to SCHEMA_VERSION (version 1 needs nothing: the
    fields version 2 added all have defaults that say what a version-1 file meant).
    NewerSchema for a version above ours, ValueError for one that is not a version at all."""
    version = obj.get("schema", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"evidence schema {version!r} is not a schema version")
    if version > SCHEMA_VERSION:
        raise NewerSchema(version)
    return obj


def from_dict(obj: Any) -> Any:
    """The dataclass for one evidence object, its fields type-checked against the dataclass's
    annotations; unknown keys are ignored, missing optional ones defaulted. ValueError (NewerSchema
    for a newer version) names what is wrong: not an object, no such kind, a missing or ill-typed field."""
    if not isinstance(obj, dict):
        raise ValueError(f"not a JSON object but {_json_name(obj)}")
    obj = upgrade(obj)
    kind = obj.get("kind")
    cls = KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ValueError(f"unknown record kind {kind!r}")
    kwargs: dict[str, Any] = {}
    for name, hint, required in _fields_of(cls):
        if name not in obj:
            if required:
                raise ValueError(f"{kind} record without its {name!r} field")
            continue
        value = obj[name]
        if not _conforms(value, hint):
            raise ValueError(f"{kind} record: field {name!r} is {_json_name(value)}, not {_hint_name(hint)}")
        kwargs[name] = value
    why = _impossible_request(kwargs) if cls is RequestRecord else _impossible_memory(kwargs) if cls is VramSample else None
    if why:
        raise ValueError(f"{kind} record: {why}")
    if cls is RequestRecord:
        kwargs["events"] = [TokenEvent(t, n) for t, n in kwargs["events"]]
    return cls(**kwargs)


def _impossible_memory(s: dict[str, Any]) -> str | None:
    """Memory, clocks, power and the time since spawn are never negative."""
    for name, value in s.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
            return f"{name!r} is negative"
    if any(i < 0 for i in s.get("gpus") or []):
        return "'gpus' holds a negative index"
    if any(v < 0 for v in (s.get("pid_vram_by_gpu") or {}).values()):
        return "'pid_vram_by_gpu' holds a negative value"
    return None


def _impossible_request(r: dict[str, Any]) -> str | None:
    """What no client measurement can give (the analysis divides by these): a token event of no
    tokens, times before the send or going backwards, a negative duration or count."""
    for name in ("events", "chunk_times_ns"):
        times = [e[0] for e in r[name]] if name == "events" else r[name]
        if any(t < 0 for t in times) or any(b < a for a, b in zip(times, times[1:], strict=False)):
            return f"{name!r} times are negative or go backwards"
    if any(n < 1 for _, n in r["events"]):
        return "a token event of fewer than 1 token in 'events'"
    for name in ("ttft_ms", "e2e_ms", "headers_ms", "client_overhead_ms", "completion_tokens"):
        if (r.get(name) or 0) < 0:
            return f"{name!r} is negative"
    if r["concurrency"] < 1:
        return "'concurrency' is below 1"
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
               for v in r["timings"].values()):
        return "'timings' holds a value that is not a finite number"
    return None


# -- the type check on read: the JSON shapes the annotations of the records allow -------------------

_FIELDS: dict[type, list[tuple[str, Any, bool]]] = {}
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _fields_of(cls: type) -> list[tuple[str, Any, bool]]:
    """(name, resolved annotation, required) per field of a record class, cached."""
    if cls not in _FIELDS:
        hints = typing.get_type_hints(cls)
        _FIELDS[cls] = [
            (f.name, hints[f.name], f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
            for f in dataclasses.fields(cls)
        ]
    return _FIELDS[cls]


def _conforms(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits an annotation: int/float/str/bool/None, list[X], dict[str, X],
    unions, Any; an int fits float, a bool fits neither; a TokenEvent is its [t_ns, n_tokens] pair."""
    if hint is Any:
        return True
    if hint is None or hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:  # int64: what the analysis (numpy) and orjson take
        return isinstance(value, int) and not isinstance(value, bool) and INT64_MIN <= value <= INT64_MAX
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        return isinstance(value, int) or math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    if hint is TokenEvent:  # the compact form: [t_ns, n_tokens]
        return (isinstance(value, list) and len(value) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) for v in value))
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union or origin is types.UnionType:
        return any(_conforms(value, a) for a in args)
    if hint is list or origin is list:
        return isinstance(value, list) and (not args or all(_conforms(v, args[0]) for v in value))
    if hint is dict or origin is dict:
        return isinstance(value, dict) and (not args or all(_conforms(v, args[1]) for v in value.values()))
    raise TypeError(f"no JSON check for the annotation {hint!r}")  # a record field of a new kind: extend


def _hint_name(hint: Any) -> str:
    if hint is TokenEvent:
        return "[t_ns, n_tokens]"
    if hint is type(None):
        return "null"
    args = typing.get_args(hint)
    if args and typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_hint_name(a) for a in args)
    if args:
        return f"{typing.get_origin(hint).__name__}[{', '.join(_hint_name(a) for a in args)}]"
    return getattr(hint, "__name__", str(hint))


def _json_name(value: Any) -> str:
    """A value as an error message names it: its JSON type, and the value itself when short."""
    kind = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array",
            dict: "an object", type(None): "null"}.get(type(value), type(value).__name__)
    if value is None or isinstance(value, (dict, list)):
        return kind
    text = repr(value)
    return f"{kind} ({text})" if len(text) <= 40 else kind
