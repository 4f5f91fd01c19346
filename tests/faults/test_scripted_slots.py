"""The scripted server's slot model keeps a known capacity: at most n requests decode at once, the
rest wait FIFO without a byte (not even headers), every step gives one token to every slot past
its prompt, and the chunk log says when each request arrived, got its slot, had each chunk written
and ended, on the client's monotonic clock.

Timing assertions are on the *planned* times the log records (exact, whatever the box's load) or
are generous bounds on the actual ones: these tests must pass on a busy 2-core box."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import time
from typing import Any

import httpx
import pytest
from fakes import SCRIPTED_PY
from fakes.scripted import (
    Script,
    ScriptedServer,
    SentChunk,
    Slots,
    pair_requests,
    prompt_key,
    read_chunk_log,
)
from faultkit import PY

from abtest.measure import rawclient
from abtest.measure.stream import StreamLimits, StreamRequest
from abtest.records import RequestRecord

LIMITS = StreamLimits(stall_timeout_s=10.0, request_timeout_s=30.0)
MS = 1_000_000  # ns


def _requests(n: int, endpoint: str, max_tokens: int) -> list[StreamRequest]:
    return [StreamRequest(arm="a", bucket="b", prompt_id=f"p{i}", prompt=f"prompt number {i}", run_index=0, seq=i,
                          warmup=False, endpoint=endpoint, max_tokens=max_tokens) for i in range(n)]


def _run(script: dict[str, Any], reqs: list[StreamRequest], stagger_s: float = 0.0,
         **server_kw: Any) -> tuple[list[RequestRecord], list[SentChunk]]:
    """All of `reqs` at once (or `stagger_s` apart) through abtest's raw client; records and the log."""

    async def main(url: str) -> list[RequestRecord]:
        async with rawclient.RawClient(len(reqs)) as raw:
            async def one(i: int, r: StreamRequest) -> RequestRecord:
                await asyncio.sleep(i * stagger_s)
                return await rawclient.stream_request(raw, url, r, LIMITS)

            return await asyncio.gather(*(one(i, r) for i, r in enumerate(reqs)))

    with ScriptedServer(Script.from_dict(script), **server_kw).start_in_thread() as srv:
        records = asyncio.run(main(srv.base_url))
    return records, srv.sent  # after the stop: a request's last lines come just after its last byte


def _by_req(sent: list[SentChunk]) -> dict[int, list[SentChunk]]:
    out: dict[int, list[SentChunk]] = {}
    for c in sent:
        if c.req >= 0:
            out.setdefault(c.req, []).append(c)
    return out


def _one(chunks: list[SentChunk], kind: str) -> SentChunk:
    (c,) = [c for c in chunks if c.kind == kind]
    return c


def _data(chunks: list[SentChunk]) -> list[SentChunk]:
    return [c for c in chunks if c.kind == "data" and c.n_tokens > 0]


@pytest.mark.parametrize("endpoint", ["completion", "chat"])
def test_the_request_past_n_waits_for_a_slot_and_the_log_says_so(endpoint: str) -> None:
    n_tokens, step_ms = 12, 15.0
    reqs = _requests(3, endpoint, n_tokens)
    records, sent = _run({"slots": {"n": 2, "step_ms": step_ms}}, reqs)
    assert all(r.error is None and r.completion_tokens == n_tokens for r in records), [r.error for r in records]
    per = _by_req(sent)
    assert sorted(per) == [0, 1, 2]

    tail = ["stop", "usage", "done", "end", "summary"] if endpoint == "chat" else ["stop", "end", "summary"]
    for chunks in per.values():
        kinds = [c.kind for c in chunks]
        assert kinds == ["arrive", "request", "slot", "headers"] + ["data"] * n_tokens + tail, kinds
        assert [c.seq for c in chunks] == list(range(len(chunks)))
        assert all(a.t_ns <= b.t_ns for a, b in zip(chunks, chunks[1:], strict=False))  # one clock, in order
        data = _data(chunks)
        assert all(c.planned_ns is not None and c.t_ns >= c.planned_ns for c in data)  # never before its token
        planned = [c.planned_ns for c in data]
        assert all(b - a == int(step_ms * MS) for a, b in zip(planned, planned[1:], strict=False))  # a token a step
        if endpoint == "chat":  # llama-server sends the role chunk with the first token, in one chunk
            assert data[0].note == "with role" and not any(c.kind == "role" for c in chunks)
        req, summary = _one(chunks, "request"), _one(chunks, "summary")
        assert req.note == endpoint and req.n_predict == n_tokens and req.n_prompt > 0 and req.peer.startswith("127.")
        assert summary.note == "ok" and summary.n_tokens == n_tokens
        arrive, slot = _one(chunks, "arrive"), _one(chunks, "slot")
        assert summary.ttft_ms == pytest.approx((data[0].t_ns - arrive.t_ns) / 1e6)
        assert summary.queue_ms == pytest.approx((slot.t_ns - arrive.t_ns) / 1e6) and summary.slot == slot.slot

    # the third arrival waits for the first slot to free: it gets it at the end of the step that
    # produced that request's last token (planned times: exact), and nothing is sent before
    first, queued = sorted(per)[:2], per[2]
    last_token = {i: _data(per[i])[-1].planned_ns for i in first}
    freed = min(first, key=lambda i: last_token[i])
    slot = _one(queued, "slot")
    assert slot.planned_ns == last_token[freed] and slot.slot == _one(per[freed], "slot").slot
    assert {_one(per[i], "slot").slot for i in first} == {0, 1}
    assert _one(queued, "headers").t_ns >= slot.t_ns
    # so its first token is later than the others' by about one service time (n_tokens - 1 steps at least)
    gap_ns = _data(queued)[0].planned_ns - max(_data(per[i])[0].planned_ns for i in first)  # type: ignore[operator]
    assert gap_ns >= (n_tokens - 1) * step_ms * MS
    assert _one(queued, "summary").queue_ms >= (n_tokens - 2) * step_ms  # arrivals a step apart at most

    # the client's records pair with the server's lines by prompt key, on the same clock
    pairs = pair_requests(sent, [(prompt_key(r.prompt), rec.t_send_ns) for r, rec in zip(reqs, records, strict=True)])
    assert sorted(p for p in pairs if p is not None) == [0, 1, 2]
    for req, rec, idx in zip(reqs, records, pairs, strict=True):
        assert idx is not None and _one(per[idx], "request").key == prompt_key(req.prompt)
        srv = _one(per[idx], "summary")
        assert rec.t_send_ns <= _one(per[idx], "arrive").t_ns
        # the client sent earlier and saw later than the server's stamps, up to the moment between a
        # write and its stamp (client and server share a GIL here: a thread waits for it in 5 ms
        # switch intervals, several on a busy box — 9 ms was seen in CI); a gross stamping error
        # (the send mark after the server's start, a token read before it was written) is larger
        assert rec.ttft_ms is not None and rec.ttft_ms >= srv.ttft_ms - 25
        assert rec.headers_ms is not None and rec.headers_ms >= srv.queue_ms - 5
    assert records[pairs.index(2)].ttft_ms >= (n_tokens - 1) * step_ms  # type: ignore[operator]


def test_throughput_is_n_slots_over_step_ms() -> None:
    n_slots, step_ms, n_tokens, m = 4, 5.0, 24, 8
    records, sent = _run({"slots": {"n": n_slots, "step_ms": step_ms}}, _requests(m, "completion", n_tokens))
    assert all(r.error is None and r.completion_tokens == n_tokens for r in records)
    steps = [c for c in sent if c.kind == "step"]
    assert sum(c.n_tokens for c in steps) == m * n_tokens  # one token per busy slot per step, nothing else
    assert max(c.busy for c in steps) == n_slots and all(c.n_tokens <= c.busy <= n_slots for c in steps)
    # always busy from the first arrival to the last token: planned steps exactly step_ms apart (no drift)
    assert all(b.planned_ns - a.planned_ns == int(step_ms * MS)  # type: ignore[operator]
               for a, b in zip(steps, steps[1:], strict=False))
    assert len(steps) >= m * n_tokens / n_slots
    # actual: never faster than the model, and not far behind it (loose: a busy box)
    data = [c for c in sent if c.kind == "data"]
    t0 = min(c.t_ns for c in sent if c.kind == "slot")
    span_s = (max(c.t_ns for c in data) - t0) / 1e9
    capacity_tps = n_slots / (step_ms / 1e3)
    assert 0.3 * capacity_tps <= m * n_tokens / span_s <= 1.02 * capacity_tps * len(steps) / (len(steps) - 1)


@pytest.mark.parametrize(("batch_tokens", "first_ms"), [(0, 10 + 2 * 1 + 10 * 0.5), (4, 3 * (10 + 2 * 1) + 10 * 0.5)])
def test_step_costs_prompt_processing_and_busy_slots(batch_tokens: int, first_ms: float) -> None:
    """prompt 'x' * 9: 10 tokens with BOS. Alone: the first step costs step + per-slot + prompt; with
    batch_tokens 4 the prompt takes three steps (4 + 4 + 2) and the first token ends the third."""
    slots = {"n": 2, "step_ms": 10, "step_ms_per_slot": 2, "prompt_ms_per_token": 0.5, "batch_tokens": batch_tokens}
    req = StreamRequest(arm="a", bucket="b", prompt_id="p", prompt="x" * 9, run_index=0, seq=0, warmup=False,
                        max_tokens=4)
    (rec,), sent = _run({"slots": slots}, [req])
    assert rec.error is None and rec.prompt_tokens == 10
    chunks = _by_req(sent)[0]
    slot, data = _one(chunks, "slot"), _data(chunks)
    assert data[0].planned_ns - slot.planned_ns == int(first_ms * MS)  # type: ignore[operator]
    gaps = [b.planned_ns - a.planned_ns for a, b in zip(data, data[1:], strict=False)]  # type: ignore[operator]
    assert gaps == [12 * MS] * 3
    assert [c.n_prompt for c in sent if c.kind == "step"][:3] == ([10, 0, 0] if not batch_tokens else [4, 4, 2])
    assert rec.timings["prompt_ms"] >= first_ms * 0.99  # llama-server's prompt_ms: from the slot, not the arrival


def test_the_schedule_still_groups_tokens_and_sends_empty_events() -> None:
    """Under the slot model an event still carries `tokens_per_event` tokens, sent at the step that
    produced its last one; `empty_every` and pings still apply."""
    script = {"slots": {"n": 1, "step_ms": 5}, "schedule": {"tokens_per_event": [1, 3], "empty_every": 2,
                                                           "ping_every": 2}}
    (rec,), sent = _run(script, _requests(1, "completion", 9))
    assert rec.error is None and rec.completion_tokens == 9 == rec.server_predicted_n
    assert [e.n_tokens for e in rec.events] == [1, 3, 1, 3, 1]
    chunks = _by_req(sent)[0]
    data, slot = _data(chunks), _one(chunks, "slot")
    assert [(c.planned_ns - slot.planned_ns) // MS for c in data] == [5, 20, 25, 40, 45]  # type: ignore[operator]
    assert [c.content_bytes == 0 for c in data] == [False, True, False, True, False]
    assert sum(1 for c in chunks if c.kind == "ping") == 2


def test_a_client_that_hangs_up_frees_its_slot_for_the_queue() -> None:
    """N=1. A streams, then hangs up after its first token; B (queued behind it) gets the slot within
    a few steps, not after A's 60 tokens; C hangs up while queued and never gets one."""
    script = Script.from_dict({"slots": {"n": 1, "step_ms": 10}})
    with ScriptedServer(script).start_in_thread() as srv:
        def send(n_predict: int) -> socket.socket:
            body = json.dumps({"prompt": "p", "n_predict": n_predict, "stream": True}).encode()
            sock = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
            sock.sendall(b"POST /completion HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            return sock

        a = send(60)
        buf = b""
        while b"data: " not in buf:
            buf += a.recv(65536)
        b = send(5)
        c = send(5)
        time.sleep(0.05)
        c.close()  # queued
        a.close()  # holding the slot
        out = b""
        while not out.endswith(b"\r\n0\r\n\r\n"):
            chunk = b.recv(65536)
            assert chunk, "B's stream was cut"
            out += chunk
        b.close()
    per = _by_req(srv.sent)
    a_sum, b_slot, c_sum = _one(per[0], "summary"), _one(per[1], "slot"), _one(per[2], "summary")
    assert a_sum.note == "client gone" and a_sum.n_tokens < 60
    assert b_slot.t_ns - _one(per[0], "slot").t_ns < 400 * MS  # A alone would have held it 600 ms
    assert c_sum.note == "client gone" and not any(x.kind == "slot" for x in per[2])
    assert _one(per[1], "summary").note == "ok"


def test_non_streamed_requests_and_http_errors() -> None:
    """A non-streamed request holds a slot for all its steps; a scripted HTTP error never takes one."""
    script = Script.from_dict({"slots": {"n": 1, "step_ms": 10}, "faults": [{"kind": "http_error", "on": [2],
                                                                             "status": 429}]})
    with ScriptedServer(script).start_in_thread() as srv:
        async def main() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=srv.base_url, timeout=10) as c:
                first = asyncio.ensure_future(c.post("/completion", json={"prompt": "a", "n_predict": 6}))
                await asyncio.sleep(0.02)
                second = asyncio.ensure_future(c.post("/v1/chat/completions", json={
                    "messages": [{"role": "user", "content": "b"}], "max_tokens": 6}))
                await asyncio.sleep(0.02)
                third = await c.post("/completion", json={"prompt": "c", "n_predict": 6})
                return [await first, await second, third]

        one, two, three = asyncio.run(main())
    per = _by_req(srv.sent)
    assert one.json()["tokens_predicted"] == 6 and two.json()["choices"][0]["finish_reason"] == "length"
    assert three.status_code == 429 and not any(c.kind == "slot" for c in per[2])
    s0, s1 = _one(per[0], "slot"), _one(per[1], "slot")
    assert s1.planned_ns - s0.planned_ns == 6 * 10 * MS  # type: ignore[operator]  # the second waited all six steps
    assert _one(per[1], "data").t_ns >= s1.planned_ns + 6 * 10 * MS  # type: ignore[operator]


# ---------------------------------------------------------------------------------- process mode


def _serve(tmp_path: Any, script: dict[str, Any], *flags: str) -> tuple[subprocess.Popen[str], int, list[str]]:
    proc = subprocess.Popen([PY, str(SCRIPTED_PY), "--port", "0", "--chunk-log", str(tmp_path / "log.jsonl"),
                             "--script", json.dumps(script), *flags], stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    lines, port = [], None
    for line in proc.stderr:
        lines.append(line)
        if "listening, hostname" in line:
            port = int(line.split("port: ")[1].split(",")[0])
        if "initializing, n_slots" in line and port:
            return proc, port, lines
    proc.kill()
    raise AssertionError("".join(lines))


@pytest.mark.parametrize(("slots", "flags", "n_slots"), [({}, ["-np", "1"], 1), ({"n": 2}, ["-np", "1"], 2),
                                                         ({}, [], 4)])
def test_np_sets_the_slots_unless_the_script_does(tmp_path: Any, slots: dict[str, Any], flags: list[str],
                                                  n_slots: int) -> None:
    proc, port, lines = _serve(tmp_path, {"slots": {"step_ms": 5, **slots}}, "-m", "x.gguf", *flags)
    try:
        assert any(f"n_slots = {n_slots} (scripted slot model" in line for line in lines), lines
        reqs = _requests(n_slots + 1, "completion", 4)

        async def main() -> list[RequestRecord]:
            async with rawclient.RawClient(len(reqs)) as raw:
                return await asyncio.gather(*(rawclient.stream_request(raw, f"http://127.0.0.1:{port}", r, LIMITS)
                                              for r in reqs))

        deadline = time.monotonic() + 10
        while httpx.get(f"http://127.0.0.1:{port}/health").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        records = asyncio.run(main())
        assert all(r.error is None for r in records)
    finally:
        proc.terminate()
        proc.wait(10)
    sent = read_chunk_log(tmp_path / "log.jsonl")  # everything written by the writer thread at SIGTERM
    per = _by_req(sent)
    assert len(per) == n_slots + 1 and all(_one(c, "summary").note == "ok" for c in per.values())
    assert {_one(c, "slot").slot for c in per.values()} == set(range(n_slots))
    assert sum(1 for c in per.values() if _one(c, "summary").queue_ms > 2 * 5) >= 1  # one waited for a slot
    assert max(c.busy for c in sent if c.kind == "step") == n_slots


def test_bad_np_is_one_line() -> None:
    out = subprocess.run([PY, str(SCRIPTED_PY), "--port", "0", "-np", "many"], capture_output=True, text=True,
                         timeout=10)
    assert out.returncode == 2 and out.stderr.strip() == "error: invalid value for n_parallel: 'many'"


# ---------------------------------------------------------------------------------- script and log


def test_slots_in_the_script() -> None:
    script = Script.from_dict({"slots": {"n": 3, "step_ms": 7.5, "batch_tokens": 512}})
    assert Script.from_json(script.to_json()) == script and Script.from_json(Script().to_json()).slots is None
    assert script.slots == Slots(n=3, step_ms=7.5, batch_tokens=512)
    assert Slots().n_slots(None) == 4 == Slots().n_slots(-1) and Slots().n_slots(8) == 8 and Slots(n=3).n_slots(8) == 3
    assert Slots(step_ms=10, step_ms_per_slot=1, prompt_ms_per_token=0.5).step_ms_for(4, 10) == 19
    for bad, match in [({"steps": 1}, "unknown slots key"), ({"n": 0}, "slots.n"), ({"step_ms": 0}, "step_ms"),
                       ({"batch_tokens": -1}, ">= 0")]:
        with pytest.raises(ValueError, match=match):
            Script.from_dict({"slots": bad})


def test_pair_requests_by_key_then_order_and_by_client_id() -> None:
    def arrival(req: int, t: int, key: str, client_id: str = "") -> list[SentChunk]:
        return [SentChunk(req, 0, "arrive", t), SentChunk(req, 1, "request", t + 5, key=key, client_id=client_id)]

    log = [*arrival(0, 100, "k1"), *arrival(1, 110, "k2"), *arrival(2, 120, "k1"), *arrival(3, 50, "k3")]
    # two sends of k1: the earlier send is the earlier arrival, whatever order the list is in
    assert pair_requests(log, [("k1", 115), ("k2", 105), ("k1", 95)]) == [2, 1, 0]
    assert pair_requests(log, [("k3", 60)]) == [None]  # arrived before it was sent: not this one
    assert pair_requests(log, [("nope", 1)]) == [None]
    tagged = [*arrival(0, 100, "k", "id-b"), *arrival(1, 101, "k", "id-a")]
    assert pair_requests(tagged, [("id-a", 90), ("id-b", 91)], by="client_id") == [1, 0]


def test_request_line_carries_the_client_id_and_prompt_key() -> None:
    with ScriptedServer(Script()).start_in_thread() as srv:
        httpx.post(srv.base_url + "/completion", json={"prompt": "héllo", "n_predict": 2},
                   headers={"X-Request-Id": "bench-7"})
        httpx.post(srv.base_url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "héllo"}],
                                                               "max_tokens": 2})
    sent = srv.sent
    completion, chat = (c for c in sent if c.kind == "request")
    assert completion.client_id == "bench-7" and chat.client_id == ""
    assert completion.key == chat.key == prompt_key("héllo") and len(completion.key) == 16
    assert completion.note == "completion" and chat.note == "chat"
    assert all(_one(c, "summary").queue_ms is None for c in _by_req(sent).values())  # no slot model: no queue


def test_read_chunk_log_skips_cut_lines_and_ignores_unknown_keys(tmp_path: Any) -> None:
    path = tmp_path / "log.jsonl"
    path.write_text('{"req":0,"seq":0,"kind":"arrive","t_ns":5,"future_field":1}\n[1,2]\n{"req":0,"seq":1,"ki')
    assert read_chunk_log(path) == [SentChunk(0, 0, "arrive", 5)]
