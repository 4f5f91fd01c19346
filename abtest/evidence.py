"""Evidence files: one JSON object per line, appended and flushed per record, read tolerantly.

The file is opened (and its directory checked) before any server is launched, so a bad path fails
early, and every record is flushed as it is written, so a crash loses at most the requests in
flight. The reader never raises on a truncated last line or an unknown record: it reports them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

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
)

# Refuse to start a run with less free space than this in the evidence directory.
MIN_FREE_BYTES = 16 * 1024 * 1024
# Bad lines named one by one in `Evidence.problems` (and so in the report's warnings); the rest counted.
MAX_NAMED_BAD_LINES = 20
# A sweep's search trail lies beside its evidence file: <run>.jsonl -> <run>.sweep.json.
SWEEP_SIDECAR_SUFFIX = ".sweep.json"


class EvidenceWriter:
    """Append-only JSONL writer; one line per record, flushed (and fsynced) immediately."""

    def __init__(self, path: Path, *, fsync: bool = True, new: bool = False) -> None:
        """Append to `path`; with `new`, create a file of its own instead: `path` if it does not
        exist, else the first free `<stem>-2<suffix>`, `-3`, ... (`self.path` is the one taken)."""
        self._fsync = fsync
        check_writable(Path(path).parent)
        try:
            if new:
                self.path, fd = create_new(Path(path))
            else:
                self.path = Path(path)
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            self._fh: IO[str] = open(fd, "a", encoding="utf-8")
        except OSError as exc:
            raise EvidenceError(f"cannot open evidence file {path}: {exc.strerror} — pick another --out") from exc

    def write(self, record: Any) -> None:
        line = json.dumps(to_dict(record), separators=(",", ":"), ensure_ascii=False)
        try:
            self._fh.write(line + "\n")
            self._fh.flush()
            if self._fsync:
                os.fsync(self._fh.fileno())
        except OSError as exc:
            raise EvidenceError(
                f"writing evidence to {self.path} failed ({exc.strerror}); records up to here are kept"
            ) from exc

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()

    def __enter__(self) -> EvidenceWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise EvidenceError(f"cannot read evidence file {path}: {exc.strerror}") from exc
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
                ev.requests[i] = dataclasses.replace(req, token_ids=list(record.token_ids))
                break
