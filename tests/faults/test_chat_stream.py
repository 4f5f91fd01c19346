"""The chat endpoint against servers that are not llama-server: timings on the last chunk only, or
never, with and without usage. TTFT is the first chunk that carried text, whatever carries the
count; a count nothing confirms is a failed record that says so, never a silent 0 or a guess."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import httpx
import pytest
from fakes.scripted import Script, ScriptedServer

from abtest.measure import rawclient, stream
from abtest.measure.stream import StreamLimits, StreamRequest
from abtest.records import RequestRecord

N = 8
TTFT_MS, ITL_MS = 40.0, 40.0  # the last token is due at 40 + 7 x 40 = 320 ms
LIMITS = StreamLimits(stall_timeout_s=5.0, request_timeout_s=20.0)


def _run(script: dict[str, Any]) -> dict[str, RequestRecord]:
    sched = {"ttft_ms": TTFT_MS, "itl_ms": ITL_MS, **script.pop("schedule", {})}
    req = StreamRequest(arm="a", bucket="b", prompt_id="p", prompt="hello", run_index=0, seq=0, warmup=False,
                        endpoint="chat", max_tokens=N)

    async def main(url: str) -> dict[str, RequestRecord]:
        async with rawclient.RawClient(2) as raw:
            out = {"raw": await rawclient.stream_request(raw, url, req, LIMITS)}
        async with httpx.AsyncClient(timeout=None) as hx:
            out["httpx"] = await stream.stream_request(hx, url, req, LIMITS)
        return out

    with ScriptedServer(Script.from_dict({"schedule": sched, **script})).start_in_thread() as srv:
        return asyncio.run(main(srv.base_url))


def _ttft_is_the_first_token(rec: RequestRecord) -> None:
    assert rec.ttft_ms is not None and TTFT_MS <= rec.ttft_ms < TTFT_MS + 150, rec.ttft_ms  # never ~320 ms


@pytest.mark.parametrize("timings", ["per_token", "last", "none"])
def test_one_token_per_chunk_with_usage_is_counted_exactly(timings: str) -> None:
    for transport, rec in _run({"chat_timings": timings}).items():
        assert rec.error is None, (transport, rec.error)
        assert rec.completion_tokens == N and [e.n_tokens for e in rec.events] == [1] * N, transport
        _ttft_is_the_first_token(rec)
        assert rec.prompt_tokens == len("hello") + 1


def test_final_timings_confirm_one_token_per_chunk_without_usage() -> None:
    for transport, rec in _run({"chat_timings": "last", "chat_usage": False}).items():
        assert rec.error is None, (transport, rec.error)
        assert rec.completion_tokens == N == rec.server_predicted_n, transport
        _ttft_is_the_first_token(rec)


def test_neither_timings_nor_usage_is_a_failed_record_saying_the_count_is_unknown() -> None:
    for transport, rec in _run({"chat_timings": "none", "chat_usage": False}).items():
        assert rec.error is not None and rec.error.startswith("token count unknown"), (transport, rec.error)
        assert rec.text and rec.e2e_ms is None
        _ttft_is_the_first_token(rec)  # what arrived is kept


def test_several_tokens_per_chunk_without_per_chunk_counts_is_a_failed_record() -> None:
    for transport, rec in _run({"chat_timings": "none", "schedule": {"tokens_per_event": 2}}).items():
        assert rec.error is not None and rec.error.startswith("token count per event unknown"), (transport, rec.error)
        assert "4 text event(s)" in rec.error and f"counted {N} tokens" in rec.error


def test_llama_server_shape_with_per_token_timings_counts_multi_token_chunks() -> None:
    for transport, rec in _run({"schedule": {"tokens_per_event": [1, 3]}}).items():
        assert rec.error is None, (transport, rec.error)
        assert [e.n_tokens for e in rec.events] == [1, 3, 1, 3] and rec.server_predicted_n == N, transport


def test_scripted_chat_wire_format() -> None:
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "stream": True,
                       "timings_per_token": True, "stream_options": {"include_usage": True}}).encode()
    with ScriptedServer(Script()).start_in_thread() as srv, socket.create_connection(("127.0.0.1", srv.port), 5) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: " + str(len(body)).encode()
                  + b"\r\n\r\n" + body)
        buf = b""
        while not buf.endswith(b"\r\n0\r\n\r\n"):
            part = s.recv(65536)
            assert part
            buf += part
    events = [json.loads(line[6:]) for line in buf.split(b"\n") if line.startswith(b"data: {")]
    assert b"data: [DONE]" in buf
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": None}
    assert [e["timings"]["predicted_n"] for e in events[:-1]] == [0, 1, 2, 2]  # role, 2 tokens, finish
    assert events[-2]["choices"][0]["finish_reason"] == "length"
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 2
