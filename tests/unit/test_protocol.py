"""The shared wire protocol without a network: counting rules for servers that are not llama-server,
and the records that cannot be true."""

from __future__ import annotations

import dataclasses
import json

import pytest

from abtest.measure import protocol
from abtest.measure.protocol import StreamRequest, Tracker, assemble, implausible


def _chunk(content: str | None = None, **extra: object) -> bytes:
    delta = {} if content is None else {"content": content}
    return b"data: " + json.dumps({"choices": [{"delta": delta}], **extra}).encode() + b"\n\n"


def _record(*reads: tuple[bytes, int], endpoint: str = "chat"):
    tr = Tracker(endpoint)
    tr.t_send_ns = 0
    for data, t in reads:
        tr.feed(data, t)
    req = StreamRequest(arm="a", bucket="b", prompt_id="p", prompt="hi", run_index=0, seq=0, warmup=False,
                        endpoint=endpoint)
    return assemble(req, tr, 200, tr.end(), 10_000_000, "")


DONE = b"data: [DONE]\n\n"


def test_timings_on_the_last_chunk_only_does_not_move_ttft_to_it() -> None:
    rec = _record((_chunk("a"), 1_000_000), (_chunk("b"), 2_000_000),
                  (_chunk(timings={"predicted_n": 2}) + DONE, 3_000_000))
    assert rec.ok and rec.ttft_ms == 1.0 and [e.t_ns for e in rec.events] == [1_000_000, 2_000_000]


def test_usage_on_every_chunk_is_a_per_event_count() -> None:
    rec = _record((_chunk("ab", usage={"completion_tokens": 2}), 1_000_000),
                  (_chunk("c", usage={"completion_tokens": 3}) + DONE, 2_000_000))
    assert rec.ok and [e.n_tokens for e in rec.events] == [2, 1] and rec.server_predicted_n == 3


def test_no_count_at_all_is_a_failed_record() -> None:
    rec = _record((_chunk("a") + _chunk("b") + DONE, 1_000_000))
    assert rec.error is not None and rec.error.startswith("token count unknown")
    assert rec.completion_tokens == 2 and rec.text == "ab"  # kept, but not trusted


def test_an_error_from_the_transport_is_kept_over_the_count() -> None:
    tr = Tracker("chat")
    tr.feed(_chunk("a"), 5)
    req = StreamRequest(arm="a", bucket="b", prompt_id="p", prompt="hi", run_index=0, seq=0, warmup=False,
                        endpoint="chat")
    assert assemble(req, tr, 200, "stream stalled: no data for 1 s", 9, "").error == "stream stalled: no data for 1 s"


def test_completion_events_without_tokens_predicted_are_counted_per_chunk_and_checked() -> None:
    ev = [b'data: {"content":"a"}\n\n', b'data: {"content":"b"}\n\n',
          b'data: {"content":"","stop":true,"tokens_predicted":2,"timings":{"predicted_n":2}}\n\n']
    rec = _record(*((e, (i + 1) * 1_000_000) for i, e in enumerate(ev)), endpoint="completion")
    assert rec.ok and rec.ttft_ms == 1.0 and rec.completion_tokens == 2


def test_implausible_names_a_ttft_below_the_servers_prompt_time_and_a_single_read() -> None:
    rec = _record((_chunk("a", timings={"predicted_n": 1, "prompt_ms": 0.5}), 1_000_000),
                  (_chunk("b", timings={"predicted_n": 2, "prompt_ms": 0.5}) + DONE, 2_000_000))
    assert rec.ok and implausible(rec) == []
    early = dataclasses.replace(rec, timings={**rec.timings, "prompt_ms": 1.5})
    assert [m.split(" ")[0] for m in implausible(early)] == ["TTFT"] and "1.500 ms" in implausible(early)[0]
    one_read = _record((_chunk("a", timings={"predicted_n": 1}) + _chunk("b", timings={"predicted_n": 2}) + DONE,
                        4_000_000))
    assert one_read.ok and implausible(one_read) == [
        "all 2 tokens arrived in one read (the client was stalled: TTFT and decode times are its delay)"]


def test_an_endless_line_is_malformed_not_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(protocol, "MAX_LINE_BYTES", 1024)
    tr = Tracker("completion")
    tr.feed(b"data: {\"content\":\"", 1)
    with pytest.raises(protocol.MalformedEvent, match="longer than"):
        for _ in range(200):
            tr.feed(b"x" * 64, 2)  # no newline ever: the partial line grows until refused
