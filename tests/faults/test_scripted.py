"""The scripted server keeps its promises: llama-server's wire format, the schedule, the chunk log,
process-mode behaviour (flags, bind failure, SIGTERM), and abtest's stream client reading it."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from fakes import SCRIPTED_PY
from fakes.scripted import (
    Schedule,
    Script,
    ScriptedServer,
    SentChunk,
    detokenize,
    prompt_key,
    read_chunk_log,
    tokenize,
)
from faultkit import PY, assert_no_orphans

from abtest.measure.stream import StreamLimits, StreamRequest, stream_request


def _stream(base_url: str, max_tokens: int = 8, n: int = 1, limits: StreamLimits | None = None):
    async def main():
        async with httpx.AsyncClient(timeout=None) as client:
            out = []
            for i in range(n):
                req = StreamRequest(arm="a", bucket="b", prompt_id="p", prompt="hi", run_index=0, seq=i, warmup=False,
                                    max_tokens=max_tokens)
                out.append(await stream_request(client, base_url, req, limits or StreamLimits()))
            return out

    return asyncio.run(main())


def _raw_exchange(port: int, body: dict, requests: int = 2) -> list[bytes]:
    """Raw HTTP/1.1 on one kept-alive socket: the bytes of each response, as sent."""
    out = []
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        for _ in range(requests):
            data = json.dumps(body).encode()
            sock.sendall(b"POST /completion HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)
            buf = b""
            while not buf.endswith(b"\r\n0\r\n\r\n"):
                chunk = sock.recv(65536)
                assert chunk, "connection closed"
                buf += chunk
            out.append(buf)
    return out


def test_wire_format_is_llama_servers() -> None:
    with ScriptedServer(Script()).start_in_thread() as srv:
        first, second = _raw_exchange(srv.port, {"prompt": "hi", "n_predict": 3, "stream": True})
    head, _, body = first.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    for h in (b"Content-Type: text/event-stream", b"Transfer-Encoding: chunked", b"Keep-Alive: timeout=5, max=100",
              b"Server: llama.cpp"):
        assert h in head
    assert second.startswith(b"HTTP/1.1 200 OK")  # the same connection served a second request
    # chunked: each chunk is exactly one `data: {json}\n\n` event
    events, rest = [], body
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        chunk, rest = rest[:size], rest[size + 2:]
        assert chunk.startswith(b"data: ") and chunk.endswith(b"\n\n")
        events.append(json.loads(chunk[6:]))
    assert [e["tokens_predicted"] for e in events] == [1, 2, 3, 3]
    assert all(e["stop"] is False and len(e["tokens"]) == 1 and e["tokens_evaluated"] == 3 for e in events[:3])
    final = events[-1]
    assert final["stop"] is True and final["tokens"] == []
    assert {"prompt_n", "prompt_ms", "predicted_n", "predicted_ms", "predicted_per_second"} <= set(final["timings"])
    assert final["timings"]["cache_n"] == 0 and final["timings"]["predicted_n"] == 3


def test_health_tokenize_detokenize() -> None:
    with ScriptedServer(Script(load_s=0.3)).start_in_thread() as srv, httpx.Client(base_url=srv.base_url) as c:
        loading = c.get("/health")
        assert loading.status_code == 503 and loading.json()["error"]["message"] == "Loading model"
        assert c.post("/tokenize", json={"content": "x"}).status_code == 503  # every path, while loading
        time.sleep(0.35)
        assert c.get("/health").json() == {"status": "ok"}
        ids = c.post("/tokenize", json={"content": "hé", "add_special": True}).json()["tokens"]
        assert ids == tokenize("hé", True) and ids[0] == 1 and len(ids) == 4
        assert c.post("/detokenize", json={"tokens": ids}).json()["content"] == "hé" == detokenize(ids)
        pieces = c.post("/tokenize", json={"content": "ab", "with_pieces": True}).json()["tokens"]
        assert [p["piece"] for p in pieces] == ["a", "b"]


def test_schedule_timing_and_chunk_log() -> None:
    script = Script(schedule=Schedule(ttft_ms=60, itl_ms=15, tokens_per_event=(1, 3)))
    with ScriptedServer(script).start_in_thread() as srv:
        (rec,) = _stream(srv.base_url, max_tokens=9)
        sent = srv.sent
    assert rec.ok and rec.completion_tokens == 9 == rec.server_predicted_n
    assert [e.n_tokens for e in rec.events] == [1, 3, 1, 3, 1]  # several tokens per event, counted
    assert rec.token_ids is None  # only the last id per event: the runner backfills them
    data = [c for c in sent if c.kind == "data"]
    recv = next(c for c in sent if c.kind == "request")
    planned_ms = [(c.planned_ns - recv.t_ns) / 1e6 for c in data]  # type: ignore[operator]
    assert planned_ms == pytest.approx([60, 105, 120, 165, 180], abs=0.01)  # at each event's last token
    for c in data:
        assert 0 <= (c.t_ns - c.planned_ns) / 1e6 < 100  # type: ignore[operator]  # never early; late only by scheduling
    # the client stamps its send after the bytes left: on a busy box that stamp can be a few ms late
    assert rec.ttft_ms is not None and rec.ttft_ms >= 50


def _request_bytes(prompt: str, n_predict: int = 2) -> bytes:
    data = json.dumps({"prompt": prompt, "n_predict": n_predict, "stream": True}).encode()
    return (b"POST /completion HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(data)).encode() + b"\r\n\r\n" + data)


def _read_responses(sock: socket.socket, n: int) -> None:
    """Read until `n` chunked streaming responses have ended."""
    buf = b""
    while buf.count(b"\r\n0\r\n\r\n") < n:
        chunk = sock.recv(65536)
        assert chunk, "connection closed"
        buf += chunk


def _per_request(sent: list[SentChunk]) -> dict[str, dict[str, SentChunk]]:
    """prompt key -> {kind: the first line of that kind}, for every request."""
    by_req: dict[int, dict[str, SentChunk]] = {}
    for c in sent:
        by_req.setdefault(c.req, {}).setdefault(c.kind, c)
    return {r["request"].key: r for r in by_req.values() if "request" in r}


def test_arrive_is_when_the_first_bytes_came_in_not_when_the_line_was_read() -> None:
    """A request line cut in two, 150 ms apart: "arrive" is the first part's time (the bytes were
    in the process), "request" (the body read) comes after the second part."""
    with ScriptedServer(Script(schedule=Schedule(ttft_ms=1, itl_ms=1))).start_in_thread() as srv:
        whole = _request_bytes("cut")
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as sock:
            t_first = time.perf_counter_ns()
            sock.sendall(whole[:7])  # b"POST /c": not even the request line
            time.sleep(0.15)
            t_rest = time.perf_counter_ns()
            sock.sendall(whole[7:])
            _read_responses(sock, 1)
    lines = _per_request(srv.sent)[prompt_key("cut")]
    arrive, request = lines["arrive"], lines["request"]
    assert t_first <= arrive.t_ns < t_rest, (arrive.t_ns - t_first) / 1e6
    assert request.t_ns >= t_rest  # the body read: as before


def test_arrive_on_a_kept_alive_connection_belongs_to_each_request_line() -> None:
    """Three requests on one connection: the first alone, then two pipelined in one write while
    nothing else is in flight. Each "arrive" is its own request line's data: the first's is not
    reused for the later ones, and the pipelined third's is its write's time, not when the server
    got round to it (after streaming the second, >= 80 ms later)."""
    with ScriptedServer(Script(schedule=Schedule(ttft_ms=80, itl_ms=1))).start_in_thread() as srv:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as sock:
            t1 = time.perf_counter_ns()
            sock.sendall(_request_bytes("one"))
            _read_responses(sock, 1)
            time.sleep(0.02)
            t23 = time.perf_counter_ns()
            sock.sendall(_request_bytes("two") + _request_bytes("three"))
            t23_sent = time.perf_counter_ns()
            _read_responses(sock, 2)
    per = _per_request(srv.sent)  # once stopped: every "summary" is in (the last comes after "end")
    one, two, three = (per[prompt_key(p)] for p in ("one", "two", "three"))
    assert t1 <= one["arrive"].t_ns < t23
    assert t23 <= two["arrive"].t_ns <= three["arrive"].t_ns
    assert three["arrive"].t_ns < two["data"].t_ns  # in before two was answered
    assert three["request"].t_ns >= two["summary"].t_ns  # read after two was done
    assert (three["arrive"].t_ns - t23_sent) / 1e6 < 40  # not two's 80 ms later
    # every line kind kept, "arrive" first; the server TTFT counts from it
    assert list(three)[:3] == ["arrive", "request", "headers"]
    assert three["summary"].ttft_ms == pytest.approx((three["data"].t_ns - three["arrive"].t_ns) / 1e6)


def test_empty_content_events_and_pings() -> None:
    script = Script(schedule=Schedule(itl_ms=1, empty_every=2, ping_every=3))
    with ScriptedServer(script).start_in_thread() as srv:
        (rec,) = _stream(srv.base_url, max_tokens=8)
        sent = srv.sent
    assert rec.ok and rec.completion_tokens == 8 == rec.server_predicted_n
    assert rec.text == "The quic"  # held text comes with the next event
    assert [e.n_tokens for e in rec.events] == [1] * 8  # an empty-content event still carries its token
    assert sum(1 for c in sent if c.kind == "data" and c.content_bytes == 0) == 4
    assert sum(1 for c in sent if c.kind == "ping") == 2  # comments: not events, not tokens


def test_token_cut_inside_utf8_sends_no_event() -> None:
    """As llama-server: a token ending inside a character sends nothing; the next event carries
    both tokens (content of the whole character) with only the last id."""
    with ScriptedServer(Script(schedule=Schedule(itl_ms=1), text="aé")).start_in_thread() as srv:
        (rec,) = _stream(srv.base_url, max_tokens=9)
    assert rec.ok and rec.text == "aé" * 3
    assert [e.n_tokens for e in rec.events] == [1, 2] * 3
    assert rec.completion_tokens == 9 == rec.server_predicted_n and rec.token_ids is None


def test_stream_faults_in_process() -> None:
    faults = {"faults": [{"kind": "die", "on": [1], "after_tokens": 2}]}
    with ScriptedServer(Script.from_dict(faults)).start_in_thread() as srv:
        ok, died, after = _stream(srv.base_url, n=3, limits=StreamLimits(stall_timeout_s=1, request_timeout_s=2))
    assert ok.ok
    assert not died.ok and died.completion_tokens == 2 and "connection closed after 2 tokens" in (died.error or "")
    assert not after.ok and "cannot connect" in (after.error or "")


def test_non_streamed_completion_returns_tokens() -> None:
    with ScriptedServer(Script()).start_in_thread() as srv:
        body = httpx.post(srv.base_url + "/completion", json={"prompt": "x", "n_predict": 5, "return_tokens": True}).json()
    assert body["tokens"] == tokenize("The q") and body["content"] == "The q" and body["stop"] is True


def test_script_json_round_trip_and_refuses_unknown_keys() -> None:
    script = Script.from_dict({"schedule": {"itl_ms": [1, 2]}, "requests": {"2": {"ttft_ms": 9}},
                               "faults": [{"kind": "stall", "on": [1, 3]}]})
    assert Script.from_json(script.to_json()) == script
    assert script.schedule_for(2).ttft_ms == 9 and script.schedule_for(2).itl_ms == (1, 2)
    assert script.fault_for(3) is not None and script.fault_for(2) is None
    with pytest.raises(ValueError, match="unknown schedule key"):
        Script.from_dict({"schedule": {"itl": 1}})
    with pytest.raises(ValueError, match="unknown fault kind"):
        Script.from_dict({"faults": [{"kind": "explode"}]})


# ---------------------------------------------------------------------------------- process mode


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, str(SCRIPTED_PY), *args], capture_output=True, text=True, timeout=10)


def test_answers_version_help_list_devices_and_exits() -> None:
    assert "version:" in _cli("--version").stderr
    assert "--fit" in _cli("-m", "x.gguf", "--help").stdout.split()
    assert "Available devices" in _cli("--list-devices").stdout


def test_process_mode_bind_failure_says_couldnt_bind() -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        out = _cli("-m", "x.gguf", "-ngl", "99", "--fit", "off", "--port", str(port))
    assert out.returncode == 1
    assert f"couldn't bind HTTP server socket, hostname: 127.0.0.1, port: {port}" in out.stderr


def test_process_mode_load_exit_prints_llama_server_words() -> None:
    out = _cli("--port", "0", "--script", json.dumps({"load_fault": "exit", "exit_code": 3, "load_s": 0.1}))
    assert out.returncode == 3
    assert "llama_model_load: error loading model" in out.stderr and "out of memory" in out.stderr


def test_process_mode_chunk_log_and_sigterm_delay(tmp_path: Path) -> None:
    log = tmp_path / "chunks.jsonl"
    proc = subprocess.Popen([PY, str(SCRIPTED_PY), "--port", "0", "-lv", "4", "--chunk-log", str(log),
                             "--script", json.dumps({"term_delay_s": 0.5})],
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        port = None
        assert proc.stderr is not None
        for line in proc.stderr:
            if "listening, hostname" in line:
                port = int(line.split("port: ")[1].split(",")[0])
                break
        assert port
        (rec,) = _stream(f"http://127.0.0.1:{port}", max_tokens=4)
        assert rec.ok
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 0
        assert time.monotonic() - t0 >= 0.45  # took its time, like llama-server
    finally:
        proc.kill()
        proc.wait()
    chunks = read_chunk_log(log)
    assert [c.kind for c in chunks] == ["arrive", "request", "headers", "data", "data", "data", "data", "stop", "end",
                                        "summary"]
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    assert all(a.t_ns <= b.t_ns for a, b in zip(chunks, chunks[1:], strict=False))
    assert_no_orphans([proc.pid])


def test_scripted_module_imports_only_stdlib() -> None:
    code = (f"import sys; sys.path.insert(0, {str(SCRIPTED_PY.parent.parent)!r}); import fakes.scripted; bad = [m for m in sys.modules if m.split('.')[0] in "
            "('httpx', 'click', 'rich', 'numpy', 'gguf')]; print(bad)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "[]"
