from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from factories import request as _rec

from abtest.errors import EvidenceError
from abtest.evidence import EvidenceWriter, check_writable, read_evidence
from abtest.records import SCHEMA_VERSION, RunEnd, RunManifest, TokenIds, VramSample, to_dict


def _manifest() -> RunManifest:
    return RunManifest(run_id="r", abtest_version="0", started_at="t", argv=[], host={}, gpu={"available": False},
                       models=[], config={})


def test_round_trip_and_partial(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    with EvidenceWriter(path) as w:
        w.write(_manifest())
        w.write(_rec([(5, 1), (9, 2)], e2e_ms=1.0))
        w.write(VramSample("a", 1.0, None, None, None, None, None, 1.0, 2.0))
    ev = read_evidence(path)
    assert ev.partial and ev.problems == []
    assert ev.requests[0].events[1].n_tokens == 2 and ev.memory[0].host_rss_file_mib == 2.0
    first = json.loads(path.read_text().splitlines()[0])
    assert first["kind"] == "run_start" and first["schema"] == SCHEMA_VERSION
    with EvidenceWriter(path) as w:
        w.write(TokenIds(arm="a", seq=0, token_ids=[1, 2, 3], source="test"))
        w.write(RunEnd("t", 1.0, 1, 0, []))
    ev = read_evidence(path)
    assert not ev.partial and ev.requests[0].token_ids == [1, 2, 3]


def test_truncated_last_line_and_unknown_kind_are_reported_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    with EvidenceWriter(path) as w:
        w.write(_manifest())
    with open(path, "a") as fh:
        fh.write(json.dumps({"kind": "from_the_future", "schema": 1}) + "\n")
        fh.write('{"kind": "request", "arm": "a", "bu')
    ev = read_evidence(path)
    assert ev.manifest is not None
    assert any("truncated last line" in p for p in ev.problems)
    assert any("unknown record kind" in p for p in ev.problems)


def test_newer_schema_is_refused_per_line(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    path.write_text(json.dumps({"kind": "run_end", "schema": SCHEMA_VERSION + 1}) + "\n")
    ev = read_evidence(path)
    assert any("upgrade abtest" in p for p in ev.problems)


def test_unwritable_directory_fails_fast(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(EvidenceError, match="--out"):
        check_writable(blocker / "sub")


def test_committed_gpu_evidence_still_reads() -> None:
    """Old files stay readable: the H100 evidence in docs/results predates ArmStart.spawn_ns."""
    root = Path(__file__).resolve().parents[2] / "docs" / "results" / "evidence"
    files = sorted(root.glob("*.jsonl"))
    assert files
    for f in files:
        ev = read_evidence(f)
        assert ev.problems == [] and not ev.partial
        assert [a.arm for a in ev.arm_starts] == ["baseline", "ncmoe12", "cpu-moe"]
        assert all(a.spawn_ns == 0 for a in ev.arm_starts)
        assert all(r.ok for r in ev.requests)


# ------------------------------------------------------------------------------ a reader that never raises


def _with_line(tmp_path: Path, line: str) -> Path:
    path = tmp_path / "e.jsonl"
    with EvidenceWriter(path) as w:
        w.write(_manifest())
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line + "\n")
    return path


@pytest.mark.parametrize("line", ["[1, 2]", '"text"', "42", "null", "true", "1.5", "{}"])
def test_a_line_that_is_not_a_record_is_skipped_counted_and_named(tmp_path: Path, line: str) -> None:
    ev = read_evidence(_with_line(tmp_path, line))
    assert ev.manifest is not None
    assert ev.bad_lines == 1
    assert len(ev.problems) == 1 and ev.problems[0].startswith("e.jsonl:2:"), ev.problems


def _memory(**kw: object) -> str:
    body: dict[str, object] = dict(kind="memory", schema=SCHEMA_VERSION, arm="a", t_ms=1.0, pid_vram_mib=None,
                                   device_used_mib=None, sm_clock_mhz=None, temperature_c=None, power_w=None,
                                   host_rss_anon_mib=1.0, host_rss_file_mib=2.0)
    body.update(kw)
    return json.dumps(body)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"t_ms": "late"}, "t_ms"),
        ({"t_ms": True}, "t_ms"),  # a bool is not a number here
        ({"t_ms": None}, "t_ms"),
        ({"sm_clock_mhz": 1.5}, "sm_clock_mhz"),  # a float is not an int
        ({"arm": 3}, "arm"),
        ({"gpus": [0, "x"]}, "gpus"),
        ({"gpus": {"0": 1}}, "gpus"),
    ],
)
def test_records_are_type_checked_on_read(tmp_path: Path, change: dict[str, object], named: str) -> None:
    ev = read_evidence(_with_line(tmp_path, _memory(**change)))
    assert ev.memory == [] and ev.bad_lines == 1
    assert named in ev.problems[0], ev.problems


def test_an_int_is_a_float_and_optional_fields_may_be_missing(tmp_path: Path) -> None:
    ev = read_evidence(_with_line(tmp_path, _memory(t_ms=5, power_w=250)))
    assert ev.problems == [] and ev.memory[0].t_ms == 5 and ev.memory[0].gpus is None


def test_a_missing_required_field_is_named(tmp_path: Path) -> None:
    obj = json.loads(_memory())
    del obj["t_ms"]
    ev = read_evidence(_with_line(tmp_path, json.dumps(obj)))
    assert ev.memory == [] and "t_ms" in ev.problems[0]


@pytest.mark.parametrize("events", ["x", [[1]], [[1, 2, 3]], [["1", 2]], [[1, 2.5]], [1, 2], [[True, 1]]])
def test_request_events_are_checked(tmp_path: Path, events: object) -> None:
    body = to_dict(_rec([(5, 1)], e2e_ms=1.0))
    body["events"] = events
    ev = read_evidence(_with_line(tmp_path, json.dumps(body)))
    assert ev.requests == [] and ev.bad_lines == 1 and "events" in ev.problems[0], ev.problems


def test_many_bad_lines_are_counted_and_the_first_ones_named(tmp_path: Path) -> None:
    ev = read_evidence(_with_line(tmp_path, "\n".join(["42"] * 500)))
    assert ev.bad_lines == 500
    assert len(ev.problems) <= 25 and "500 bad lines" in ev.problems[-1], ev.problems[-3:]


def test_a_bad_memory_line_reaches_the_report_as_a_warning_not_a_crash(tmp_path: Path) -> None:
    from helpers_evidence import fabricate

    from abtest.analysis.findings import ReportWarning
    from abtest.analysis.report import build_report

    path = fabricate(tmp_path / "run.jsonl", seed=3)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(_memory(arm="baseline", t_ms="late") + "\n")
    rep = build_report([read_evidence(path)])
    bad = [w for w in rep.warnings if w.kind is ReportWarning.BAD_LINES]
    assert len(bad) == 1 and "t_ms" in bad[0].text, bad


def test_a_file_all_of_a_newer_schema_asks_for_an_upgrade(tmp_path: Path) -> None:
    from abtest.analysis.report import build_report

    path = tmp_path / "new.jsonl"
    path.write_text("".join(json.dumps({**json.loads(_memory()), "kind": k, "schema": SCHEMA_VERSION + 1}) + "\n"
                            for k in ("run_start", "arm_start", "request", "arm_end", "run_end")))
    ev = read_evidence(path)
    assert ev.newer_schema_lines == 5
    with pytest.raises(EvidenceError, match="upgrade abtest") as info:
        build_report([ev])
    assert "was the run started" not in str(info.value)


def test_every_record_field_has_a_json_check() -> None:
    """A field added with an annotation the reader's check does not know (a tuple, a Literal) would
    make every line of its kind a bad line: extend `records._conforms` with it."""
    from abtest.records import KINDS, _conforms, _fields_of

    for cls in KINDS.values():
        for name, hint, _ in _fields_of(cls):
            try:
                _conforms([[1, 2]], hint), _conforms({"k": [1]}, hint), _conforms(None, hint)
            except TypeError as exc:
                pytest.fail(f"{cls.__name__}.{name}: {exc}")


def test_new_writers_on_one_name_get_files_of_their_own(tmp_path: Path) -> None:
    path = tmp_path / "20261201T000000-m.jsonl"
    with EvidenceWriter(path, new=True) as a, EvidenceWriter(path, new=True) as b, \
            EvidenceWriter(path, new=True) as c:
        assert (a.path, b.path, c.path) == (path, tmp_path / "20261201T000000-m-2.jsonl",
                                            tmp_path / "20261201T000000-m-3.jsonl")
        a.write(_manifest())
        b.write(RunEnd("t", 1.0, 1, 0, []))
    assert read_evidence(a.path).run_end is None and read_evidence(b.path).manifest is None


def test_a_reserved_log_name_is_never_shared(tmp_path: Path) -> None:
    from abtest.evidence import reserve_new

    log = tmp_path / "run.a.log"
    assert reserve_new(log) == log and reserve_new(log) == tmp_path / "run.a-2.log"
    assert log.read_bytes() == b""


# ------------------------------------------------------------------------------ the writer thread


def test_write_returns_while_the_disk_is_still_busy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`write` only serialises and queues: a stuck fsync (a slow disk) never holds the caller."""
    import threading

    import abtest.evidence as evidence_mod

    stuck = threading.Event()
    entered = threading.Event()
    real_fsync = evidence_mod.os.fsync

    def slow_fsync(fd: int) -> None:
        entered.set()
        stuck.wait(30)
        real_fsync(fd)

    monkeypatch.setattr(evidence_mod.os, "fsync", slow_fsync)
    w = EvidenceWriter(tmp_path / "e.jsonl", flush_interval_s=0.0)
    w.write(_manifest())
    assert entered.wait(10)  # the writer thread is inside fsync, and stays there
    done = threading.Event()
    threading.Thread(target=lambda: (w.write(_rec([(5, 1)], e2e_ms=1.0)), done.set()), daemon=True).start()
    assert done.wait(10), "write() waited for the disk"
    stuck.set()
    w.close()
    ev = read_evidence(w.path)
    assert ev.manifest is not None and len(ev.requests) == 1


def test_lines_reach_the_file_without_sync_and_are_fsynced_within_the_interval(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    import abtest.evidence as evidence_mod

    synced: list[int] = []
    real_fsync = evidence_mod.os.fsync
    monkeypatch.setattr(evidence_mod.os, "fsync", lambda fd: (real_fsync(fd), synced.append(fd)))
    w = EvidenceWriter(tmp_path / "e.jsonl", flush_interval_s=0.05)
    w.write(_manifest())
    deadline = time.monotonic() + 10
    while not (synced and w.path.read_bytes().endswith(b"\n")):
        assert time.monotonic() < deadline, "never written and fsynced without sync()"
        time.sleep(0.01)
    n = len(synced)
    w.write(RunEnd("t", 1.0, 0, 0, []))
    w.sync()  # durable now: written and fsynced before sync() returns
    assert len(synced) > n and read_evidence(w.path).run_end is not None
    w.close()


@pytest.mark.parametrize(("seam", "errno_name"), [("write", "ENOSPC"), ("write", "EIO"), ("fsync", "EIO")])
def test_a_failed_write_is_one_evidence_error_naming_the_file_and_the_cause(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seam: str, errno_name: str) -> None:
    import errno

    import abtest.evidence as evidence_mod

    code = getattr(errno, errno_name)
    real = getattr(evidence_mod.os, seam)
    calls = {"n": 0}

    def failing(*a: object) -> object:
        calls["n"] += 1
        if calls["n"] > 1:  # the first call goes through: the manifest is kept
            raise OSError(code, os.strerror(code))
        return real(*a)

    w = EvidenceWriter(tmp_path / "e.jsonl", flush_interval_s=0.0)
    w.write(_manifest())
    w.sync()
    monkeypatch.setattr(evidence_mod.os, seam, failing)
    with pytest.raises(EvidenceError) as info:
        for _ in range(3):
            w.write(_rec([(5, 1)], e2e_ms=1.0))
            w.sync()
    msg = str(info.value)
    assert str(w.path) in msg and os.strerror(code) in msg and "\n" not in msg
    assert w.failed
    with pytest.raises(EvidenceError):
        w.write(_rec([(5, 1)], e2e_ms=1.0))  # and every later write, so the run stops
    w.close()  # already reported: close does not raise it again
    monkeypatch.undo()
    assert read_evidence(w.path).manifest is not None  # what was written is kept


def test_a_failure_nobody_saw_is_raised_by_close(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    import abtest.evidence as evidence_mod

    def full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(evidence_mod.os, "write", full)
    w = EvidenceWriter(tmp_path / "e.jsonl")
    w.write(_manifest())
    with pytest.raises(EvidenceError, match="No space left on device"):
        w.close()


def test_a_real_full_device_gives_enospc(tmp_path: Path) -> None:
    """/dev/full: every write fails with ENOSPC, from the kernel."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    link = tmp_path / "e.jsonl"
    link.symlink_to("/dev/full")
    w = EvidenceWriter(link)
    w.write(_manifest())
    with pytest.raises(EvidenceError, match=r"e\.jsonl failed \(No space left on device\)"):
        w.sync()
    w.close()


def test_gzipped_evidence_reads_as_the_plain_file_and_a_cut_gz_keeps_its_head(tmp_path: Path) -> None:
    import gzip

    path = tmp_path / "e.jsonl"
    with EvidenceWriter(path) as w:
        w.write(_manifest())
        for i in range(200):
            w.write(_rec([(5, 1), (9, 2)], e2e_ms=1.0 + i))
        w.write(RunEnd("t", 1.0, 200, 0, []))
    plain = read_evidence(path)
    gz = tmp_path / "e.jsonl.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    packed = read_evidence(gz)
    assert packed.problems == plain.problems == [] and not packed.partial
    assert [r.e2e_ms for r in packed.requests] == [r.e2e_ms for r in plain.requests]
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(gz.read_bytes()[: gz.stat().st_size // 2])
    head = read_evidence(cut)  # what decompresses is read; the damage is named, never raised
    assert head.manifest is not None and 0 < len(head.requests) < 200
    assert any("gzip data is damaged" in p for p in head.problems)
