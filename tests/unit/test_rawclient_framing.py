"""HTTP/1.1 framing in the raw client: crafted server bytes over a real loopback socket.

Every malformed response is a failed record naming the cause, at once (never a wait for the stall
timeout); every valid one, however it is split into reads, gives the same record.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from fakes.replay import Reply, chunked, replay, sse

from abtest.measure import rawclient
from abtest.measure.stream import StreamLimits, StreamRequest
from abtest.records import RequestRecord

STALL_S = 3.0  # a lenient parser waits this long on a response it cannot frame; ours must not
LIMITS = StreamLimits(stall_timeout_s=STALL_S, request_timeout_s=10.0, connect_timeout_s=2.0)
FAST_S = 1.5  # "at once", generous for a busy 2-core box; far below STALL_S


def _event(obj: dict, size: int | None = None) -> bytes:
    """One SSE event; padded (in ``content``) to exactly ``size`` bytes when asked."""
    raw = sse(json.dumps(obj, separators=(",", ":")))[0]
    if size is not None:
        pad = size - len(raw)
        assert pad >= 0
        obj = {**obj, "content": obj.get("content", "") + "x" * pad}
        raw = sse(json.dumps(obj, separators=(",", ":")))[0]
        assert len(raw) == size
    return raw


E1 = _event({"content": "a", "tokens": [5], "tokens_predicted": 1, "stop": False}, size=0x50)
E2 = _event({"content": "b", "tokens": [6], "tokens_predicted": 2, "stop": False})
STOP = _event({"content": "", "tokens": [], "stop": True, "tokens_predicted": 2, "tokens_evaluated": 3,
               "timings": {"prompt_n": 3, "prompt_ms": 0.001, "predicted_n": 2, "cache_n": 0}})
BODY = E1 + E2 + STOP
TEXT = json.loads(E1[6:])["content"] + "b"
HEAD_CHUNKED = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
HEAD_CLOSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n"


def _req(endpoint: str = "completion") -> StreamRequest:
    return StreamRequest(arm="a", bucket="b", prompt_id="p", prompt="hi", run_index=0, seq=0, warmup=False,
                         endpoint=endpoint, max_tokens=2)


async def _one(reply: Reply, limits: StreamLimits = LIMITS) -> tuple[RequestRecord, float, int]:
    """(record, seconds the request took, perf_counter_ns when the request returned)."""
    async with replay(reply) as srv, rawclient.RawClient(4) as client:
        t0 = time.perf_counter()
        rec = await rawclient.stream_request(client, srv.base_url, _req(), limits)
        t_end = time.perf_counter_ns()
        return rec, time.perf_counter() - t0, t_end


def run(reply: Reply, limits: StreamLimits = LIMITS) -> tuple[RequestRecord, float]:
    rec, took, _ = asyncio.run(_one(reply, limits))
    return rec, took


def _ok(rec: RequestRecord) -> None:
    assert rec.error is None, rec.error
    assert rec.status == 200 and rec.completion_tokens == 2 and rec.text == TEXT
    assert [e.n_tokens for e in rec.events] == [1, 1]


# -- valid responses -------------------------------------------------------------------------------


@pytest.mark.parametrize("then", ["close", "hold", "keep"])
def test_valid_chunked_response_is_a_record(then: str) -> None:
    rec, took = run(Reply(chunked([E1, E2, STOP]), then=then))
    _ok(rec)
    assert took < FAST_S


def test_chunk_extension_interim_response_and_trailer_are_valid() -> None:
    parts = (b"HTTP/1.1 100 Continue\r\n\r\n" + HEAD_CHUNKED,
             b"50;name=value\r\n" + E1 + b"\r\n", f"{len(E2 + STOP):X}\r\n".encode() + E2 + STOP + b"\r\n",
             b"0\r\nX-Trailer: yes\r\n\r\n")
    _ok(run(Reply(parts, then="hold"))[0])


def test_content_length_response_is_valid() -> None:
    head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(BODY)}\r\n\r\n".encode()
    _ok(run(Reply((head, BODY), then="hold"))[0])


def test_until_close_body_ended_by_a_clean_close_is_valid() -> None:
    _ok(run(Reply((HEAD_CLOSE, BODY), then="close"))[0])


def test_every_split_of_a_valid_response_gives_the_same_record() -> None:
    whole = b"".join(chunked([E1, E2, STOP]))

    async def main() -> list[RequestRecord]:
        splits = range(1, len(whole))
        async with replay(lambda i: Reply((whole[:splits[i]], whole[splits[i]:]), gap_s=0.001, then="keep")) as srv:
            async with rawclient.RawClient(1) as client:
                return [await rawclient.stream_request(client, srv.base_url, _req(), LIMITS) for _ in splits]

    for rec in asyncio.run(main()):
        _ok(rec)


# -- malformed framing: a failed record at once -----------------------------------------------------

L = len(E1)  # 0x50: the lenient spellings below all read as this length to int(..., 16)
MALFORMED = {
    "chunk-size-negative": HEAD_CHUNKED + b"-3\r\n" + E1 + b"\r\n0\r\n\r\n",
    "chunk-size-0x": HEAD_CHUNKED + f"0x{L:x}\r\n".encode() + E1 + b"\r\n0\r\n\r\n",
    "chunk-size-plus": HEAD_CHUNKED + f"+{L:x}\r\n".encode() + E1 + b"\r\n0\r\n\r\n",
    "chunk-size-underscore": HEAD_CHUNKED + b"5_0\r\n" + E1 + b"\r\n0\r\n\r\n",
    "chunk-size-space": HEAD_CHUNKED + f" {L:x}\r\n".encode() + E1 + b"\r\n0\r\n\r\n",
    "chunk-size-empty": HEAD_CHUNKED + b"\r\n" + E1 + b"\r\n0\r\n\r\n",
    "chunk-size-overflow": HEAD_CHUNKED + b"f" * 40 + b"\r\n" + E1,
    "chunk-without-crlf": HEAD_CHUNKED + f"{L:x}\r\n".encode() + E1 + b"XX0\r\n\r\n",
    "content-length-negative": b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n" + BODY,
    "content-length-plus": f"HTTP/1.1 200 OK\r\nContent-Length: +{len(BODY)}\r\n\r\n".encode() + BODY,
    "content-length-twice": f"HTTP/1.1 200 OK\r\nContent-Length: {len(BODY)}\r\nContent-Length: 1\r\n\r\n".encode()
    + BODY,
    "content-length-and-chunked": (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
                                   + f"{L:x}\r\n".encode() + E1),
    "bare-lf-head": b"HTTP/1.1 200 OK\nContent-Type: text/event-stream\nTransfer-Encoding: chunked\n\n"
    + f"{L:x}\r\n".encode() + E1,
    "bare-lf-chunks": HEAD_CHUNKED + f"{L:x}\n".encode() + E1 + b"\n0\n\n",
    "status-not-a-number": b"HTTP/1.1 2OO OK\r\nContent-Length: 0\r\n\r\n",
    "not-http": b"SSH-2.0-OpenSSH_9.6\r\n",
    "http-2-preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "header-without-colon": b"HTTP/1.1 200 OK\r\nTransfer-Encoding chunked\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_framing_is_a_failed_record_at_once(name: str) -> None:
    rec, took = run(Reply((MALFORMED[name],), then="hold"))
    assert rec.error is not None and rec.error.startswith("HTTP protocol error"), rec.error
    assert rec.e2e_ms is None
    assert took < FAST_S, f"{took:.2f} s: the client waited for the stall timeout"


@pytest.mark.parametrize("status", [204, 304])
def test_bodiless_status_ends_at_once(status: int) -> None:
    head = f"HTTP/1.1 {status} Whatever\r\n".encode() + (b"Content-Length: 10\r\n" if status == 304 else b"") + b"\r\n"
    rec, took = run(Reply((head,), then="hold"))
    assert rec.status == status and rec.error is not None and rec.error.startswith(f"HTTP {status}"), rec.error
    assert took < FAST_S, f"{took:.2f} s: the client waited for the stall timeout"


def test_huge_headers_are_refused_early() -> None:
    head = b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * (1 << 20) + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
    rec, took = run(Reply((head, *chunked([E1, E2, STOP])[1:]), then="hold"))
    assert rec.error is not None and "headers" in rec.error and "KiB" in rec.error, rec.error
    assert took < FAST_S


def test_until_close_body_cut_by_a_reset_is_not_a_clean_end() -> None:
    rec, _ = run(Reply((HEAD_CLOSE, BODY), gap_s=0.01, then="reset"))
    assert rec.error is not None and "reset" in rec.error, rec.error
    assert rec.completion_tokens == 2  # what arrived is kept


def test_chunked_body_cut_by_close_is_a_failed_record() -> None:
    rec, took = run(Reply(chunked([E1, E2, STOP])[:2], gap_s=0.01, then="close"))
    assert rec.error is not None and "connection closed after 1 tokens" in rec.error, rec.error
    assert took < FAST_S


# -- the stall timeout --------------------------------------------------------------------------------


def test_stall_timeout_fires_once_its_time_has_passed_since_the_last_byte() -> None:
    """A byte shortly after the request, then silence: "stalled" after stall_timeout_s of silence (not
    at twice it, which a window re-armed in full on every expiry gives)."""
    stall_s = 0.4
    limits = StreamLimits(stall_timeout_s=stall_s, request_timeout_s=10.0)

    async def main() -> tuple[RequestRecord, float]:
        async with replay(Reply((HEAD_CHUNKED, f"{L:x}\r\n".encode() + E1 + b"\r\n"), gap_s=0.02,
                                then="hold")) as srv, rawclient.RawClient(1) as client:
            rec = await rawclient.stream_request(client, srv.base_url, _req(), limits)
            return rec, (time.perf_counter_ns() - srv.last_write_ns) / 1e9

    rec, silent_s = asyncio.run(main())
    assert rec.error is not None and rec.error.startswith("stream stalled"), rec.error
    assert rec.completion_tokens == 1
    # A correctness bound, not a performance target: generous for a busy box, below 2 x stall_s.
    assert stall_s - 0.01 <= silent_s < stall_s + 0.3, f"stalled after {silent_s:.3f} s of silence"


# -- the send mark ------------------------------------------------------------------------------------


class _SlowTransport:
    """A transport whose write takes a while (a busy core preempting the client inside the syscall)."""

    def __init__(self) -> None:
        self.t_write_ns: int | None = None

    def write(self, data: bytes) -> None:
        self.t_write_ns = time.perf_counter_ns()
        time.sleep(0.003)

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return False


def test_send_mark_is_taken_at_the_write_not_after_it() -> None:
    """The server can start on the request as soon as the bytes leave: a mark taken after the write
    returns can be later than the server's own start, and a TTFT below the server's prompt time."""
    conn = rawclient._Conn(("http", "127.0.0.1", 1))
    transport = _SlowTransport()
    conn.transport = transport  # type: ignore[assignment]
    t_sent = asyncio.run(conn.write(b"GET / HTTP/1.1\r\n\r\n"))
    assert transport.t_write_ns is not None and t_sent <= transport.t_write_ns
