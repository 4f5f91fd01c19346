"""Faults mid-stream: each failed request is a record with its cause, the run goes on, arm_end
counts the failures, the evidence reads back whole, and no server is left running.

One scripted run carries one fault per request (request index = order of arrival, warm-up off,
concurrency 1), so the whole matrix costs one server start; the faults that kill the server get
runs of their own, one of them with the real llama-server killed by SIGKILL.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
from pathlib import Path

import pytest
from faultkit import assert_no_orphans, only_jsonl, read_ok, write_wrapper

from abtest.config import ArmSpec
from abtest.errors import EXIT_PARTIAL
from abtest.measure import transport
from abtest.measure.runner import Runner
from abtest.records import RequestRecord
from abtest.server.process import ServerProcess

# request index -> (fault, the words its record's error must hold)
MATRIX = {
    1: ({"kind": "stall", "after_tokens": 2}, "stream stalled: no data for 0.8 s (--stall-timeout)"),
    2: ({"kind": "malformed", "after_tokens": 3}, "malformed event"),
    3: ({"kind": "http_error", "status": 500, "message": "boom"}, "HTTP 500"),
    4: ({"kind": "http_error", "status": 429, "message": "busy"}, "HTTP 429"),
    5: ({"kind": "close", "after_tokens": 4}, "stream closed before the end event"),
    6: ({"kind": "close", "after_tokens": 2, "abrupt": True}, "connection closed after 2 tokens"),
    7: ({"kind": "error_event", "after_tokens": 1, "message": "slot crashed"}, "server error in stream: slot crashed"),
    8: (None, "request timed out after 1 s (--request-timeout)"),  # slow but never silent for 0.8 s
}
N_REQUESTS = 10  # 0 and 9 are healthy


@pytest.fixture(scope="module")
def matrix_run(tmp_path_factory: pytest.TempPathFactory, tiny_moe: Path):
    from abtest.config import RunConfig, resolve_arms

    tmp = tmp_path_factory.mktemp("matrix")
    faults = [{**f, "on": [i]} for i, (f, _) in MATRIX.items() if f is not None]
    wrapper = write_wrapper(tmp / "bin", {"faults": faults, "requests": {"8": {"itl_ms": 250}}})
    prompts = tmp / "prompts.jsonl"
    prompts.write_text("".join(f'{{"id": "p{i}", "bucket": "b", "text": "prompt {i}"}}\n' for i in range(N_REQUESTS)))
    cfg = RunConfig(
        model=str(tiny_moe), arms=resolve_arms(["a=-ngl 99", "b=-ngl 99"], None), runs=1, blocks=1, warmup=0, max_tokens=8,
        prompts_path=str(prompts), out_dir=str(tmp / "evidence"), server_bin=str(wrapper), threads=1,
        health_timeout_s=10, stall_timeout_s=0.8, request_timeout_s=1.0,
    )
    result = Runner(cfg, argv=["pytest"]).execute()
    return result, read_ok(result.evidence_path), tmp


def _by_seq(ev, arm: str) -> dict[int, RequestRecord]:
    return {r.seq: r for r in ev.requests if r.arm == arm}


NAMES = {1: "stall", 2: "malformed-json", 3: "http-500", 4: "http-429", 5: "close-without-stop", 6: "connection-reset",
         7: "error-event", 8: "request-timeout"}


@pytest.mark.parametrize("index", sorted(MATRIX), ids=[NAMES[i] for i in sorted(MATRIX)])
def test_fault_is_a_failed_record_naming_its_cause(matrix_run, index: int) -> None:
    _, ev, _ = matrix_run
    for arm in ("a", "b"):  # every arm's server misbehaves alike (the script is per process)
        rec = _by_seq(ev, arm)[index]
        assert not rec.ok
        assert MATRIX[index][1] in (rec.error or ""), rec.error
        assert rec.e2e_ms is None


def test_what_arrived_before_the_fault_is_kept(matrix_run) -> None:
    _, ev, _ = matrix_run
    recs = _by_seq(ev, "a")
    assert recs[1].completion_tokens == 2 and len(recs[1].events) == 2  # stall after 2 tokens
    assert recs[5].completion_tokens == 4 and recs[5].text  # closed after 4 tokens, text kept
    assert recs[3].status == 500 and recs[4].status == 429


def test_run_goes_on_and_arm_end_counts_failures(matrix_run) -> None:
    result, ev, _ = matrix_run
    assert not ev.partial
    assert [a.arm for a in ev.arm_ends] == ["a", "b"]
    for end in ev.arm_ends:
        assert end.status == "ok" and end.error is None  # the server lived: the arm itself is fine
        assert end.n_requests == N_REQUESTS and end.n_failed == len(MATRIX)
    recs = _by_seq(ev, "a")
    assert recs[0].ok and recs[9].ok and recs[9].completion_tokens == 8  # healthy after the faults
    assert ev.run_end is not None and ev.run_end.n_failed == 2 * len(MATRIX)
    assert result.n_failed == 2 * len(MATRIX) and result.arms_failed == []


def test_no_server_left_after_stream_faults(matrix_run) -> None:
    _, ev, tmp = matrix_run
    assert_no_orphans([s.pid for s in ev.arm_starts], marker=tmp)


def test_server_dies_mid_stream_arm_fails_run_goes_on(scripted, cfg_for, spawned, tmp_path: Path) -> None:
    """Scripted os._exit(137) after 3 tokens of request 1: that request fails with what arrived, the
    rest of the arm is not sent, arm_end says why, and the next arm runs."""
    dying = scripted({"faults": [{"kind": "die", "on": [1], "after_tokens": 3, "exit_code": 137}]})
    healthy = scripted({})
    cfg = cfg_for(dying, arms=["a"], runs=3)
    cfg = dataclasses.replace(cfg, arms=(*cfg.arms, ArmSpec("b", ("-ngl", "99"), server_bin=str(healthy))))
    result = Runner(cfg).execute()
    ev = read_ok(result.evidence_path)
    recs = _by_seq(ev, "a")
    assert recs[0].ok
    assert "connection closed after 3 tokens" in (recs[1].error or "") and recs[1].completion_tokens == 3
    assert sorted(recs) == [0, 1]  # the dead server got no more requests
    end_a, end_b = ev.arm_ends
    assert end_a.status == "failed" and end_a.exit_code == 137 and end_a.n_failed == 1 and end_a.n_requests == 2
    assert "exited (code 137) during the measurements" in (end_a.error or "") and "4 not sent" in (end_a.error or "")
    assert end_b.status == "ok" and end_b.n_requests == 6 and end_b.n_failed == 0
    assert not ev.partial and ev.run_end is not None and ev.run_end.arms_failed == ["a"]
    assert result.arms_failed == ["a"]
    assert_no_orphans(spawned, marker=tmp_path)


def test_real_llama_server_killed_mid_stream(llama_server: Path, tiny_moe: Path, one_prompt: Path, cfg_for,
                                             spawned, monkeypatch: pytest.MonkeyPatch) -> None:
    """kill -9 of the real llama-server while request 1 streams: the request fails with the tokens
    that arrived, the arm ends 'killed by SIGKILL', and the next arm (cpu-moe) runs normally."""
    original = transport.HttpTransport.stream

    async def stream_and_kill(self, client, base_url, req, limits):  # type: ignore[no-untyped-def]
        if req.arm == "baseline" and req.seq == 1:
            asyncio.get_running_loop().call_later(0.2, os.kill, spawned[-1], signal.SIGKILL)
        return await original(self, client, base_url, req, limits)

    monkeypatch.setattr(transport.HttpTransport, "stream", stream_and_kill)
    cfg = cfg_for(llama_server, arms=["baseline", "cpu-moe=-ngl 99 --cpu-moe"], runs=3, max_tokens=600,
                  prompts_path=str(one_prompt), stall_timeout_s=5.0, request_timeout_s=20.0)
    result = Runner(cfg).execute()
    ev = read_ok(result.evidence_path)
    base = _by_seq(ev, "baseline")
    assert base[0].ok and base[0].completion_tokens == 600
    killed = base[1]
    assert not killed.ok and 0 < killed.completion_tokens < 600, killed.error
    assert "connection closed after" in (killed.error or "")
    assert sorted(base) == [0, 1]
    end = {e.arm: e for e in ev.arm_ends}
    assert end["baseline"].status == "failed" and end["baseline"].exit_code == -signal.SIGKILL
    assert "was killed by SIGKILL during the measurements" in (end["baseline"].error or "")
    assert end["cpu-moe"].status == "ok" and end["cpu-moe"].n_failed == 0 and end["cpu-moe"].n_requests == 3
    assert result.arms_failed == ["baseline"]
    assert_no_orphans(spawned)


def test_cli_exit_code_for_failed_requests_is_partial(scripted, tiny_moe: Path, prompts: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from abtest.cli import main

    wrapper = scripted({"faults": [{"kind": "http_error", "on": [0], "status": 500}]})
    with pytest.raises(SystemExit) as exc:
        main(["run", "--model", str(tiny_moe), "--server-bin", str(wrapper), "--arm", "a=-ngl 99", "--runs", "1", "--blocks", "1",
              "--warmup", "0", "--max-tokens", "4", "--prompts", str(prompts), "--out", str(tmp_path / "ev"), "--quiet"])
    assert exc.value.code == EXIT_PARTIAL
    ev = read_ok(only_jsonl(tmp_path / "ev"))
    assert ev.arm_ends[0].n_failed == 1 and not ev.partial
    # --quiet is for cron: the failure is still said on stderr, in one line, with the first error
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "1 of " in err[0] and "failed" in err[0] and "HTTP 500" in err[0], err


@pytest.mark.parametrize("exec_", [True, False], ids=["server-leads-group", "shell-leads-group"])
def test_stop_kills_the_whole_group_of_a_server_ignoring_sigterm(scripted, tmp_path: Path, exec_: bool) -> None:
    """A server that ignores SIGTERM: stop() waits stop_timeout_s, then SIGKILLs the group. Started
    through a shell that does not exec, the shell exits on SIGTERM and the server lives on in the
    group: the final SIGKILL of the group still takes it."""
    from abtest.server.process import LaunchSpec

    wrapper = scripted({"ignore_term": True}, exec_=exec_)
    srv = ServerProcess(LaunchSpec(name="x", argv=(str(wrapper),), log_path=tmp_path / "x.log",
                                   health_timeout_s=10, stop_timeout_s=0.5)).start()
    pid = srv.pid
    code = srv.stop()
    assert code is not None and srv.stop_ms is not None
    if exec_:  # the server itself got SIGTERM, ignored it, and was SIGKILLed after the wait
        assert code == -signal.SIGKILL and srv.stop_ms >= 500
        assert "ignoring it" in (tmp_path / "x.log").read_text()
    assert_no_orphans([pid], marker=tmp_path)


def test_disk_full_mid_run_stops_servers_keeps_records(scripted, tiny_moe: Path, prompts: Path, tmp_path: Path,
                                                      spawned, capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The evidence disk fills up during the run: one line naming the file and that the records so
    far are kept, exit 2, the server stopped, the file readable up to the failure."""
    import errno

    import abtest.evidence as evidence_mod
    from abtest.cli import main
    from abtest.errors import EXIT_USAGE

    real_write, calls = os.write, [0]

    def write(fd: int, data: bytes) -> int:  # the writer thread's seam
        calls[0] += 1
        if calls[0] > 6:  # manifest, memory, arm_start, ... then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(evidence_mod.os, "write", write)
    wrapper = scripted({"schedule": {"itl_ms": 5}})
    with pytest.raises(SystemExit) as exc:
        main(["run", "--model", str(tiny_moe), "--server-bin", str(wrapper), "--arm", "a=-ngl 99", "--runs", "20",
              "--warmup", "0", "--max-tokens", "8", "--prompts", str(prompts), "--out", str(tmp_path / "ev"), "--quiet"])
    assert exc.value.code == EXIT_USAGE
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "No space left on device" in err[0] and "records up to here are kept" in err[0], err
    ev = read_ok(only_jsonl(tmp_path / "ev"))
    assert ev.partial and ev.arm_starts and ev.run_end is None
    assert_no_orphans(spawned, marker=tmp_path)
