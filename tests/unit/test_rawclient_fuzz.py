"""Property: whatever bytes a server sends, the raw client returns a record -- failed with a reason,
or correct for a valid response -- never an exception, never a wait past the stall timeout.

Real HTTP over loopback (tests/fakes/replay.py in the test's own event loop). Two sources of bytes:
arbitrary ones (alone or after a valid head), and valid llama-server responses whose framing is
mutated (chunk sizes, Content-Length, line terminators, bytes inserted between framing tokens, a
cut) and split into reads at arbitrary points.
"""

from __future__ import annotations

import asyncio
import json
import time

from fakes.replay import Reply, replay, sse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from abtest.measure import rawclient
from abtest.measure.stream import StreamLimits, StreamRequest
from abtest.records import RequestRecord

STALL_S = 0.5
LIMITS = StreamLimits(stall_timeout_s=STALL_S, request_timeout_s=5.0, connect_timeout_s=2.0)
# "Never past the stall timeout": every byte is written at once, so a hang ends stall_timeout_s
# after the request; the slack is for a busy 2-core box, and stays below twice the stall timeout.
BOUND_S = STALL_S + 0.4
REQ = StreamRequest(arm="a", bucket="b", prompt_id="p", prompt="hi", run_index=0, seq=0, warmup=False, max_tokens=3)
SETTINGS = settings(deadline=None, max_examples=120, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

EVENTS = [json.dumps(e, separators=(",", ":")) for e in (
    {"content": "a", "tokens": [5], "tokens_predicted": 1, "stop": False},
    {"content": "bc", "tokens": [7], "tokens_predicted": 3, "stop": False},
    {"content": "", "tokens": [], "stop": True, "tokens_predicted": 3, "tokens_evaluated": 2,
     "timings": {"prompt_n": 2, "prompt_ms": 0.001, "predicted_n": 3, "cache_n": 0}},
)]
BODY = b"".join(sse(*EVENTS))
HEAD_CHUNKED = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
HEAD_CLOSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n"


def _exchange(parts: list[bytes], then: str) -> tuple[RequestRecord, float]:
    async def main() -> tuple[RequestRecord, float]:
        async with replay(Reply(tuple(parts), gap_s=0.002, then=then)) as srv, rawclient.RawClient(1) as client:
            t0 = time.perf_counter()
            rec = await rawclient.stream_request(client, srv.base_url, REQ, LIMITS)
            return rec, time.perf_counter() - t0

    return asyncio.run(main())


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False) if b > a] or [b""]


def _check(rec: RequestRecord, took: float, valid_possible: bool) -> None:
    assert took < BOUND_S, f"{took:.2f} s: past the stall timeout"
    if rec.error is None:
        assert valid_possible, "an invalid response made an ok record"
        assert rec.completion_tokens == 3 and rec.text == "abc" and [e.n_tokens for e in rec.events] == [1, 2]
    else:
        assert isinstance(rec.error, str) and rec.error.strip()
        assert rec.e2e_ms is None


THEN = st.sampled_from(["close", "close", "close", "reset", "hold"])
CUTS = st.lists(st.integers(min_value=0, max_value=10_000), max_size=4)


@SETTINGS
@given(data=st.one_of(st.binary(max_size=400),
                      st.builds(bytes.__add__, st.sampled_from([HEAD_CHUNKED, HEAD_CLOSE]), st.binary(max_size=400))),
       cuts=CUTS, then=THEN)
def test_arbitrary_server_bytes_give_a_failed_record_in_time(data: bytes, cuts: list[int], then: str) -> None:
    rec, took = _exchange(_split(data, cuts), then)
    _check(rec, took, valid_possible=False)


# -- valid responses, mutated ------------------------------------------------------------------------

# Spellings of a chunk size (formatted with the true size in hex) that HTTP/1.1 forbids: a lenient
# parser reads most of them as the true size and hands over a "correct" record for an invalid response.
BAD_SIZES = ["-{}", "0x{}", "+{}", " {}", "{} ", "{}_0", "{}\t", "", "f" * 20 + "{}"]
BAD_LENGTHS = ["-1", "+{}", "0x{}", "{}_0", "", "{}.0", "-{}"]
BAD_CRLFS = [b"\n", b"\r", b"", b"\r\r\n", b"\n\r"]  # (b" \r\n" is valid after a header value)
ANY_SIZE = st.one_of(  # may or may not be valid: a failed record or a correct one
    st.integers(min_value=0, max_value=600).map(lambda n: f"{n:x}".encode()),
    st.sampled_from([b"0", b"00", b"5;ext", b"5 ;ext"]),
    st.binary(max_size=6),
)


def _tokens(framing: str) -> list[tuple[str, bytes]]:
    """The valid response as (kind, bytes) tokens: kinds "size", "crlf", "length" are mutable."""
    if framing == "chunked":
        out: list[tuple[str, bytes]] = [("head", HEAD_CHUNKED)]
        for e in sse(*EVENTS):
            out += [("size", f"{len(e):x}".encode()), ("crlf", b"\r\n"), ("data", e), ("crlf", b"\r\n")]
        return [*out, ("size", b"0"), ("crlf", b"\r\n"), ("crlf", b"\r\n")]
    if framing == "length":
        return [("head", b"HTTP/1.1 200 OK\r\nContent-Length: "), ("length", str(len(BODY)).encode()),
                ("crlf", b"\r\n"), ("crlf", b"\r\n"), ("data", BODY)]
    return [("head", HEAD_CLOSE), ("data", BODY)]


@st.composite
def mutated(draw: st.DrawFn) -> tuple[bytes, str, bool]:
    """(bytes, how the connection ends, whether a mutation certainly broke HTTP/1.1)."""
    framing = draw(st.sampled_from(["chunked", "chunked", "length", "close"]))
    tokens = _tokens(framing)
    invalid = False
    mutable = [i for i, (kind, _) in enumerate(tokens) if kind not in ("data", "head")]
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        op = draw(st.sampled_from(["bad", "bad", "any", "insert", "cut"]))
        if op == "cut":
            whole = b"".join(b for _, b in tokens)
            at = draw(st.integers(min_value=0, max_value=len(whole)))
            invalid = invalid or (framing != "close" and at < len(whole))
            tokens, mutable = [("data", whole[:at])], []
            break
        if not mutable:
            continue
        i = draw(st.sampled_from(mutable))
        kind, value = tokens[i]
        if op == "insert":
            tokens.insert(i, ("junk", draw(st.binary(min_size=1, max_size=8))))
            mutable = [j + (j >= i) for j in mutable]
        elif op == "any":
            tokens[i] = (kind, draw(ANY_SIZE) if kind in ("size", "length") else draw(st.sampled_from(BAD_CRLFS)))
            invalid = invalid or kind == "crlf"
            mutable.remove(i)  # a "bad" spelling of this token would no longer be certainly bad
        else:
            if kind in ("size", "length"):
                spelling = draw(st.sampled_from(BAD_SIZES if kind == "size" else BAD_LENGTHS))
                tokens[i] = (kind, spelling.format(value.decode("latin-1")).encode("latin-1"))
            else:
                tokens[i] = (kind, draw(st.sampled_from(BAD_CRLFS)))
            invalid = True
            mutable.remove(i)
    # a response delimited by close is only complete when the connection closes
    then = "close" if framing == "close" else draw(THEN)
    return b"".join(b for _, b in tokens), then, invalid


@SETTINGS
@given(case=mutated(), cuts=CUTS)
def test_mutated_framing_of_a_valid_response_is_a_failed_or_a_correct_record(case: tuple[bytes, str, bool],
                                                                             cuts: list[int]) -> None:
    data, then, invalid = case
    rec, took = _exchange(_split(data, cuts), then)
    _check(rec, took, valid_possible=not invalid)


def test_the_unmutated_responses_are_correct_records() -> None:
    for framing in ("chunked", "length", "close"):
        rec, took = _exchange([b"".join(b for _, b in _tokens(framing))], "close")
        _check(rec, took, valid_possible=True)
        assert rec.ok, (framing, rec.error)
