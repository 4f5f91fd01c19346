"""The scripted server's "arrive" carries the kernel's receive time: it stays at the send while the
server's event loop is held busy (when the process stamp is late), and says why when it is missing."""

from __future__ import annotations

import json
import socket
import sys
import threading
import time

import pytest
from fakes import scripted
from fakes.scripted import Schedule, Script, ScriptedServer, SentChunk, prompt_key, read_chunk_log

SLACK_NS = 1_000_000  # the REALTIME -> MONOTONIC move, read at each recv: far under this
linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_TIMESTAMPNS is Linux's")


def _request(prompt: str) -> bytes:
    data = json.dumps({"prompt": prompt, "n_predict": 2, "stream": True}).encode()
    return (b"POST /completion HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(data)).encode() + b"\r\n\r\n" + data)


def _read_response(sock: socket.socket) -> None:
    buf = b""
    while b"\r\n0\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, "connection closed"
        buf += chunk


def _arrive(sent: list[SentChunk], prompt: str) -> SentChunk:
    req = next(c.req for c in sent if c.kind == "request" and c.key == prompt_key(prompt))
    return next(c for c in sent if c.req == req and c.kind == "arrive")


class _Hold:
    """Holds the server's event loop: once it runs, it waits until the client has sent, then 30 ms
    more, and notes when it let go. Every stamp the loop takes is after `t_free_ns`."""

    def __init__(self, srv: ScriptedServer) -> None:
        self.holding, self.sent = threading.Event(), threading.Event()
        self.t_free_ns = 0
        assert srv._loop is not None
        srv._loop.call_soon_threadsafe(self._run)

    def _run(self) -> None:
        self.holding.set()
        self.sent.wait(5)
        time.sleep(0.03)
        self.t_free_ns = time.perf_counter_ns()


def _send(sock: socket.socket, data: bytes) -> tuple[int, int]:
    t0 = time.perf_counter_ns()
    sock.sendall(data)
    return t0, time.perf_counter_ns()


@linux
def test_kernel_arrival_stays_at_the_send_while_the_loop_is_busy(tmp_path) -> None:
    """Two requests sent while the loop is held: one on a connection made before, one on a
    connection made during the hold (not yet accepted). The process stamp is after the hold (so
    >= 30 ms after the send); the kernel's is within the send call; the log file keeps both."""
    log = tmp_path / "chunks.jsonl"
    with ScriptedServer(Script(schedule=Schedule(ttft_ms=1, itl_ms=1)), chunk_log=log).start_in_thread() as srv:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as early:
            early.sendall(_request("warm"))  # accepted and read: the connection is the server's
            _read_response(early)
            hold = _Hold(srv)
            assert hold.holding.wait(5)
            with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as late:
                sends = {"early": _send(early, _request("early")), "late": _send(late, _request("late"))}
                hold.sent.set()
                _read_response(early)
                _read_response(late)
    for sent in (srv.sent, read_chunk_log(log)):
        for prompt, (t0, t1) in sends.items():
            arrive = _arrive(sent, prompt)
            assert arrive.t_ns >= hold.t_free_ns >= t1 + 30_000_000, prompt  # the process stamp: late
            assert arrive.t_kernel_ns is not None, arrive.note
            assert t0 - SLACK_NS <= arrive.t_kernel_ns <= t1 + SLACK_NS, (prompt, (arrive.t_kernel_ns - t0) / 1e6)
            assert arrive.note == ""


@pytest.mark.parametrize(("option", "why"), [(None, "no SO_TIMESTAMPNS on this platform"),
                                              (0x7FFF, "SO_TIMESTAMPNS refused")])
def test_without_the_kernel_stamp_the_process_stamp_stays_and_the_line_says_why(monkeypatch, option, why) -> None:
    monkeypatch.setattr(scripted, "_SO_TIMESTAMPNS", option)
    with ScriptedServer(Script(schedule=Schedule(ttft_ms=1, itl_ms=1))).start_in_thread() as srv:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as sock:
            t0, _ = _send(sock, _request("x"))
            _read_response(sock)
    arrive = _arrive(srv.sent, "x")
    assert arrive.t_kernel_ns is None
    assert arrive.t_ns >= t0
    assert arrive.note.startswith(f"no kernel stamp: {why}"), arrive.note
    summary = next(c for c in srv.sent if c.req == arrive.req and c.kind == "summary")
    assert summary.note == "ok" and summary.ttft_ms is not None  # served as ever


def test_arrivals_pair_each_read_with_its_kernel_time_and_name_a_missing_one() -> None:
    a = scripted._Arrivals()
    a.came(10, 100)  # data_received with no recv through the socket first: a loop that reads the fd itself
    a.kernel_read(150)
    a.came(10, 200)
    a.kernel_read(None)  # a read whose bytes carried no timestamp
    a.came(10, 300)
    a.came(10, 400)  # the kernel time of one read is not reused for the next
    first, second, third, fourth = (a.at(i) for i in (0, 10, 20, 30))
    assert first is not None and first[:2] == (100, None) and "without socket.recv" in first[2]
    assert second == (200, 150, "")
    assert third is not None and third[:2] == (300, None) and "no kernel timestamp" in third[2]
    assert fourth is not None and fourth[:2] == (400, None)
    refused = scripted._Arrivals("SO_TIMESTAMPNS refused (x)")
    refused.came(5, 1)
    assert refused.at(0) == (1, None, "SO_TIMESTAMPNS refused (x)")


def test_accepted_connections_keep_tcp_nodelay() -> None:
    """The server accepts by itself now: its connections must still be TCP (proto) with Nagle off,
    as loop.create_server's were, or small token chunks wait for the previous one's ACK."""
    with ScriptedServer(Script(schedule=Schedule(ttft_ms=1, itl_ms=1))).start_in_thread() as srv:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as sock:
            sock.sendall(_request("nodelay"))
            _read_response(sock)
            (writer,) = srv._writers
            accepted = writer.get_extra_info("socket")
            assert accepted.proto == socket.IPPROTO_TCP
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
