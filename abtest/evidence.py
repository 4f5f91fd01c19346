"""Evidence files: one JSON object per line, written off the event loop, read tolerantly.

The file is opened (and its directory checked) before any server is launched, so a bad path fails
early. `EvidenceWriter.write` only serialises the record (orjson) and queues the bytes: a writer
thread writes them at once and fsyncs at least every `FLUSH_INTERVAL_S`, at every `sync()` (each
arm's end) and at `close()`. So the loop that stamps tokens is never held by a disk, a crash or
SIGKILL loses only the requests in flight (lines queued are written within milliseconds), and a
power cut at most the last second. A write that fails (disk full, I/O error) stops the writer;
the next `write`, `sync` or `close` raises EvidenceError naming the file and the cause, and what
was written stays. The reader never raises on what a line holds: bad lines are skipped, counted
and named.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import shutil
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from .errors import EvidenceError
from .records import (
    ArmEnd,
    ArmStart,
    NewerSchema,
    RequestRecord,
    RunEnd,
    RunManifest,
    TokenIds,
    VramSample,
    from_dict,
    to_dict,
    to_fields,
)

# Refuse to start a run with less free space than this in the evidence directory.
MIN_FREE_BYTES = 16 * 1024 * 1024
# The longest a written record waits for its fsync (lines reach the kernel within milliseconds).
FLUSH_INTERVAL_S = 1.0
# Bad lines named one by one in `Evidence.problems` (and so in the report's warnings); the rest counted.
MAX_NAMED_BAD_LINES = 20
# A sweep's search trail lies beside its evidence file: <run>.jsonl -> <run>.sweep.json.
SWEEP_SIDECAR_SUFFIX = ".sweep.json"
_ORJSON_OPTS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE


def encode(record: Any) -> bytes:
    """One evidence line (newline included) for a record: orjson over a shallow dict of the fields
    (kind and schema first, events compact), ~30 µs for a 128-token request where
    `dataclasses.asdict` + `json.dumps` took ~1.9 ms. A value orjson refuses (a float subclass, an
    int beyond 64 bits) falls back to the stdlib on the deep dict, as before."""
    try:
        return orjson.dumps(to_fields(record), option=_ORJSON_OPTS)
    except TypeError:
        return (json.dumps(to_dict(record), separators=(",", ":"), ensure_ascii=False, default=str) + "\n").encode()


class EvidenceWriter:
    """Append-only JSONL writer: `write` serialises and queues (microseconds, any thread); a thread
    of its own writes and fsyncs (see the module docstring). Thread-safe."""

    def __init__(self, path: Path, *, fsync: bool = True, new: bool = False,
                 flush_interval_s: float = FLUSH_INTERVAL_S) -> None:
        """Append to `path`; with `new`, create a file of its own instead: `path` if it does not
        exist, else the first free `<stem>-2<suffix>`, `-3`, ... (`self.path` is the one taken)."""
        self._fsync = fsync
        self._interval_s = flush_interval_s
        check_writable(Path(path).parent)
        try:
            if new:
                self.path, self._fd = create_new(Path(path))
            else:
                self.path = Path(path)
                self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as exc:
            raise EvidenceError(f"cannot open evidence file {path}: {exc.strerror} — pick another --out") from exc
        self._cond = threading.Condition()
        self._pending: list[bytes] = []
        self._asked = 0  # sync() tickets handed out ...
        self._synced = 0  # ... and the last one the thread has made durable
        self._stopping = False
        self._error: OSError | None = None
        self._reported = False
        self._closed = False
        self._thread = threading.Thread(target=self._drain, name=f"evidence-{self.path.name}", daemon=True)
        self._thread.start()

    # -- the caller's side -------------------------------------------------------------------
    def write(self, record: Any) -> None:
        """Queue one record. EvidenceError if an earlier write failed (the run must stop)."""
        line = encode(record)
        with self._cond:
            if self._error is not None:
                raise self._failure()
            if self._stopping:
                raise EvidenceError(f"evidence file {self.path} is closed; {type(record).__name__} not written")
            self._pending.append(line)
            if len(self._pending) == 1:
                self._cond.notify()

    def sync(self) -> None:
        """Block until every record queued so far is written (and fsynced). EvidenceError on failure."""
        with self._cond:
            self._asked += 1
            ticket = self._asked
            self._cond.notify()
            while self._synced < ticket and self._error is None and self._thread.is_alive():
                self._cond.wait(0.5)
            if self._error is not None:
                raise self._failure()

    def close(self) -> None:
        """Write what is queued, fsync, close. EvidenceError if a write failed and no call said so yet."""
        if self._closed:
            return
        with self._cond:
            self._stopping = True
            self._cond.notify()
        try:
            self._thread.join()
        except KeyboardInterrupt:  # a second Ctrl-C: the queued lines still go out, then it goes on
            self._thread.join(5)
            raise
        self._closed = True
        os.close(self._fd)
        if self._error is not None and not self._reported:
            raise self._failure()

    @property
    def failed(self) -> bool:
        return self._error is not None

    def _failure(self) -> EvidenceError:
        self._reported = True
        err = self._error
        assert err is not None
        cause = err.strerror or str(err)
        return EvidenceError(f"writing evidence to {self.path} failed ({cause}); records up to here are kept — "
                             "free some space or pass another --out")

    def __enter__(self) -> EvidenceWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the writer thread -------------------------------------------------------------------
    def _drain(self) -> None:
        dirty = False  # written, not yet fsynced
        last_sync = time.monotonic()
        while True:
            with self._cond:
                while not (self._pending or self._stopping or self._asked > self._synced):
                    if dirty and self._fsync:
                        left = last_sync + self._interval_s - time.monotonic()
                        if left <= 0:
                            break
                        self._cond.wait(left)
                    else:
                        self._cond.wait()
                batch, self._pending = self._pending, []
                ticket, stopping = self._asked, self._stopping
            try:
                if batch:
                    self._write_all(b"".join(batch))
                    dirty = True
                now = time.monotonic()
                if dirty and self._fsync and (stopping or ticket > self._synced or now - last_sync >= self._interval_s):
                    os.fsync(self._fd)
                    dirty, last_sync = False, now
                elif dirty and not self._fsync:
                    dirty = False
            except OSError as exc:
                with self._cond:
                    self._error = exc
                    self._pending.clear()
                    self._cond.notify_all()
                return
            with self._cond:
                self._synced = max(self._synced, ticket)
                self._cond.notify_all()
                if stopping and not self._pending:
                    return

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]


def create_new(path: Path, *, tries: int = 1000) -> tuple[Path, int]:
    """Create a file no one else has (O_EXCL): `path`, else `<stem>-2<suffix>`, `-3`, ...; the name
    taken and an fd open for appending. Two runs started in the same second with the same --out
    get two files, never one merged file. OSError (FileExistsError after `tries` names) as raised."""
    path = Path(path)
    suffix = "".join(path.suffixes[-1:])
    stem = path.name[: len(path.name) - len(suffix)]
    for n in range(1, tries + 1):
        candidate = path if n == 1 else path.with_name(f"{stem}-{n}{suffix}")
        try:
            return candidate, os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        except FileExistsError:
            continue
    raise FileExistsError(17, f"{tries} names taken", str(path))


def reserve_new(path: Path) -> Path:
    """Create an empty file of our own at `path` or the first free name after it (see `create_new`)
    and return its name: a server log that another run, started the same second, cannot share."""
    taken, fd = create_new(path)
    os.close(fd)
    return taken


def check_writable(directory: Path) -> None:
    """Fail fast (before launching anything) if evidence cannot be written to `directory`."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EvidenceError(
            f"evidence directory {directory} cannot be created ({exc.strerror}) — pass --out DIR that you can write"
        ) from exc
    probe = directory / f".abtest-write-probe-{os.getpid()}"
    try:
        with open(probe, "w") as fh:
            fh.write("x")
        probe.unlink()
    except OSError as exc:
        raise EvidenceError(
            f"evidence directory {directory} is not writable ({exc.strerror}) — pass --out DIR that you can write"
        ) from exc
    free = shutil.disk_usage(directory).free
    if free < MIN_FREE_BYTES:
        raise EvidenceError(
            f"evidence directory {directory} has only {free // 1024} KiB free — free some space or pass --out DIR"
        )


@dataclass
class Evidence:
    """Everything one evidence file holds, grouped by kind, in file order."""

    path: Path
    manifest: RunManifest | None = None
    arm_starts: list[ArmStart] = field(default_factory=list)
    requests: list[RequestRecord] = field(default_factory=list)
    memory: list[VramSample] = field(default_factory=list)
    arm_ends: list[ArmEnd] = field(default_factory=list)
    run_end: RunEnd | None = None
    problems: list[str] = field(default_factory=list)  # truncated lines, unknown kinds, ...
    bad_lines: int = 0  # lines skipped (the first MAX_NAMED_BAD_LINES of them are named in problems)
    newer_schema_lines: int = 0  # of those, lines of a schema newer than this abtest reads

    @property
    def partial(self) -> bool:
        """A run without its run-end record was interrupted or crashed."""
        return self.run_end is None

    def arms(self) -> list[str]:
        names = [a.arm for a in self.arm_starts] + [a.arm for a in self.arm_ends]
        return list(dict.fromkeys(names))


def read_evidence(path: Path) -> Evidence:
    """Read one evidence file. Never raises on its content: a line that is not a record of this
    schema (malformed or truncated JSON, not an object, unknown kind, a field missing or of the wrong
    type, a newer schema) is skipped, counted in `bad_lines` and named in `problems` (the first
    `MAX_NAMED_BAD_LINES` of them; then one line with the total). EvidenceError only when the file
    cannot be read at all."""
    path = Path(path)
    ev = Evidence(path=path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise EvidenceError(f"cannot read evidence file {path}: {exc.strerror}") from exc
    if raw[:2] == _GZIP_MAGIC:  # evidence committed gzipped (docs/results) reads as it is
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            # a cut-off .gz: keep what decompresses, as a cut-off .jsonl keeps its whole lines
            raw = _gunzip_prefix(raw)
            ev.problems.append(f"{path.name}: gzip data is damaged ({exc}); read what precedes the damage")
    text = raw.decode("utf-8", errors="replace")
    lines = text.split("\n")
    newest = 0
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = from_dict(json.loads(line))
        except json.JSONDecodeError:
            last = all(not rest.strip() for rest in lines[lineno:])
            _bad(ev, f"{path.name}:{lineno}: {'truncated last line' if last else 'malformed line'} skipped")
            continue
        except NewerSchema as exc:
            ev.newer_schema_lines += 1
            newest = max(newest, exc.version)
            _bad(ev, f"{path.name}:{lineno}: {exc}; skipped")
            continue
        except (ValueError, TypeError, RecursionError) as exc:
            _bad(ev, f"{path.name}:{lineno}: {exc}; skipped")
            continue
        _add(ev, record)
    if ev.bad_lines > MAX_NAMED_BAD_LINES:
        ev.problems.append(f"{path.name}: {ev.bad_lines} bad lines skipped in all "
                           f"({ev.bad_lines - MAX_NAMED_BAD_LINES} not named above)")
    if ev.manifest is None:
        if ev.newer_schema_lines:
            ev.problems.append(f"{path.name}: no run_start record of a schema this abtest reads "
                               f"({ev.newer_schema_lines} lines of schema {newest}); upgrade abtest")
        else:
            ev.problems.append(f"{path.name}: no run_start record")
    return ev


_GZIP_MAGIC = b"\x1f\x8b"


def _gunzip_prefix(raw: bytes) -> bytes:
    """What a damaged or truncated gzip stream decompresses to before the damage."""
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out = []
    for i in range(0, len(raw), 1 << 16):
        try:
            out.append(d.decompress(raw[i:i + (1 << 16)]))
        except zlib.error:
            break
    return b"".join(out)


def _bad(ev: Evidence, problem: str) -> None:
    ev.bad_lines += 1
    if ev.bad_lines <= MAX_NAMED_BAD_LINES:
        ev.problems.append(problem)


def _add(ev: Evidence, record: Any) -> None:
    if isinstance(record, RunManifest):
        ev.manifest = record
    elif isinstance(record, ArmStart):
        ev.arm_starts.append(record)
    elif isinstance(record, RequestRecord):
        ev.requests.append(record)
    elif isinstance(record, VramSample):
        ev.memory.append(record)
    elif isinstance(record, ArmEnd):
        ev.arm_ends.append(record)
    elif isinstance(record, RunEnd):
        ev.run_end = record
    elif isinstance(record, TokenIds):
        # Fold late ids into their request (written after the timed runs).
        for i, req in enumerate(ev.requests):
            if req.arm == record.arm and req.seq == record.seq:
                if record.top_logprobs is None:
                    ev.requests[i] = dataclasses.replace(req, token_ids=list(record.token_ids))
                elif req.token_ids is None or req.token_ids == record.token_ids:  # margins of this very output
                    ev.requests[i] = dataclasses.replace(req, token_ids=list(record.token_ids),
                                                         top_logprobs=record.top_logprobs)
                break


def sweep_sidecar_path(evidence_path: Path | str) -> Path:
    """The sweep trail beside an evidence file: <run>.jsonl, or <run>.jsonl.gz as committed under
    docs/results, -> <run>.sweep.json."""
    p = Path(evidence_path)
    name = p.name
    for suffix in (".gz", ".jsonl"):
        name = name.removesuffix(suffix)
    return p.with_name(name + SWEEP_SIDECAR_SUFFIX)
