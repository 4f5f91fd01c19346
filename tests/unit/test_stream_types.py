"""Never raises: a server event whose fields have the wrong JSON type is a failed record naming the
field, through both transports (real HTTP over loopback), never a TypeError out of the request."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from fakes.replay import Reply, chunked, replay, sse

from abtest.measure import rawclient, stream
from abtest.measure.stream import StreamLimits, StreamRequest
from abtest.records import RequestRecord

LIMITS = StreamLimits(stall_timeout_s=3.0, request_timeout_s=10.0, connect_timeout_s=2.0)
GOOD = {"content": "a", "tokens": [5], "tokens_predicted": 1, "stop": False}
STOP = {"content": "", "tokens": [], "stop": True, "tokens_predicted": 1, "tokens_evaluated": 2,
        "timings": {"prompt_n": 2, "prompt_ms": 0.001, "predicted_n": 1, "cache_n": 0}}
ROLE = {"choices": [{"index": 0, "delta": {"role": "assistant", "content": None}}], "timings": {"predicted_n": 0}}
CHAT = {"choices": [{"index": 0, "delta": {"content": "a"}}], "timings": {"predicted_n": 1, "prompt_ms": 0.001}}
END = {"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}], "timings": {"predicted_n": 1}}
USAGE = {"choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}}

# name -> (endpoint, the bad event (it replaces the token event), the field the error must name)
BAD: dict[str, tuple[str, dict, str]] = {
    "tokens_predicted-str": ("completion", {**GOOD, "tokens_predicted": "5"}, "tokens_predicted"),
    "tokens_predicted-float": ("completion", {**GOOD, "tokens_predicted": 1.5}, "tokens_predicted"),
    "tokens_predicted-bool": ("completion", {**GOOD, "tokens_predicted": True}, "tokens_predicted"),
    "tokens-int": ("completion", {**GOOD, "tokens": 7}, "tokens"),
    "tokens-of-str": ("completion", {**GOOD, "tokens": ["7"]}, "tokens"),
    "content-int": ("completion", {**GOOD, "content": 5}, "content"),
    "timings-list": ("completion", {**STOP, "timings": [1]}, "timings"),
    "timings-predicted_n-str": ("completion", {**STOP, "timings": {"predicted_n": "1"}}, "predicted_n"),
    "timings-prompt_ms-str": ("completion", {**STOP, "timings": {"predicted_n": 1, "prompt_ms": "3"}}, "prompt_ms"),
    "timings-cache_n-str": ("completion", {**STOP, "timings": {"predicted_n": 1, "cache_n": "0"}}, "cache_n"),
    "tokens_evaluated-str": ("completion", {**STOP, "tokens_evaluated": "2"}, "tokens_evaluated"),
    "stop-str": ("completion", {**GOOD, "stop": "yes"}, "stop"),
    "chat-choices-str": ("chat", {**CHAT, "choices": "x"}, "choices"),
    "chat-choice-int": ("chat", {**CHAT, "choices": [1]}, "choices"),
    "chat-delta-str": ("chat", {**CHAT, "choices": [{"delta": "x"}]}, "delta"),
    "chat-content-int": ("chat", {**CHAT, "choices": [{"delta": {"content": 5}}]}, "content"),
    "chat-timings-predicted_n-str": ("chat", {**CHAT, "timings": {"predicted_n": "1"}}, "predicted_n"),
    "chat-usage-str": ("chat", {**USAGE, "usage": "x"}, "usage"),
    "chat-usage-completion_tokens-str": ("chat", {**USAGE, "usage": {"completion_tokens": "1"}}, "completion_tokens"),
    "chat-usage-prompt_tokens-list": ("chat", {**USAGE, "usage": {"prompt_tokens": [2]}}, "prompt_tokens"),
}


def _events(endpoint: str, bad: dict) -> list[bytes]:
    if endpoint == "completion":
        seq = [bad, STOP] if "timings" not in bad else [GOOD, bad]
        return sse(*(json.dumps(e) for e in seq))
    seq = [ROLE, bad, END, USAGE] if "usage" not in bad else [ROLE, CHAT, END, bad]
    return [*sse(*(json.dumps(e) for e in seq)), b"data: [DONE]\n\n"]


async def _both(reply: Reply, endpoint: str) -> dict[str, RequestRecord]:
    req = StreamRequest(arm="a", bucket="b", prompt_id="p", prompt="hi", run_index=0, seq=0, warmup=False,
                        endpoint=endpoint, max_tokens=1)
    out = {}
    async with replay(reply) as srv:
        async with rawclient.RawClient(2) as raw:
            out["raw"] = await rawclient.stream_request(raw, srv.base_url, req, LIMITS)
        async with httpx.AsyncClient(timeout=None) as hx:
            out["httpx"] = await stream.stream_request(hx, srv.base_url, req, LIMITS)
    return out


@pytest.mark.parametrize("name", sorted(BAD))
def test_wrong_json_type_is_a_failed_record_naming_the_field(name: str) -> None:
    endpoint, bad, field = BAD[name]
    records = asyncio.run(_both(Reply(chunked(_events(endpoint, bad))), endpoint))
    for transport, rec in records.items():
        assert rec.error is not None and rec.error.startswith("malformed event"), (transport, rec.error)
        assert repr(field) in rec.error or f'"{field}"' in rec.error, (transport, rec.error)
        assert rec.e2e_ms is None


@pytest.mark.parametrize("payload", [b"[1, 2]", b'"text"', b"42", b"null", b"{", b"\xff\xfe", b"[" * 5000])
def test_event_that_is_not_a_json_object_is_a_failed_record(payload: bytes) -> None:
    events = [b"data: " + payload + b"\n\n", *sse(json.dumps(STOP))]
    records = asyncio.run(_both(Reply(chunked(events)), "completion"))
    for transport, rec in records.items():
        assert rec.error is not None and rec.error.startswith("malformed event"), (transport, rec.error)


@pytest.mark.parametrize("endpoint", ["completion", "chat"])
def test_well_typed_stream_is_a_record(endpoint: str) -> None:
    events = _events(endpoint, GOOD if endpoint == "completion" else CHAT)
    records = asyncio.run(_both(Reply(chunked(events)), endpoint))
    for transport, rec in records.items():
        assert rec.error is None, (transport, rec.error)
        assert rec.completion_tokens == 1 and rec.text == "a" and rec.prompt_tokens == 2, transport
