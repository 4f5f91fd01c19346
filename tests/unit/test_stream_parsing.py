"""SSE parsing and token counting against llama-server's event shapes (no network)."""

from __future__ import annotations

import json

from abtest.measure.protocol import StreamRequest, Tracker, assemble, request_body


def _ev(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def _req(endpoint: str = "completion") -> StreamRequest:
    return StreamRequest(arm="a", bucket="b", prompt_id="p", prompt="hi", run_index=0, seq=0, warmup=False,
                         endpoint=endpoint, max_tokens=5)


def test_completion_tokens_counted_from_tokens_predicted_not_chunks() -> None:
    tr = Tracker("completion")
    tr.t_send_ns = 0
    stream = (
        _ev({"content": "", "tokens": [], "tokens_predicted": 0})  # begin, no token
        + _ev({"content": "a", "tokens": [5], "tokens_predicted": 1})
        + b": ping\n\n"  # SSE comment: not an event
        + _ev({"content": "", "tokens": [6], "tokens_predicted": 2})  # partial stop-string: empty content
        + _ev({"content": "\u00e9x", "tokens": [9], "tokens_predicted": 5})  # 3 tokens held back, one event
        + _ev({"content": "", "tokens": [], "stop": True, "tokens_predicted": 5,
               "timings": {"predicted_n": 5, "prompt_n": 2, "cache_n": 0, "predicted_per_second": 10.0}})
    )
    # Feed in odd-sized pieces to exercise partial lines.
    for i in range(0, len(stream), 7):
        tr.feed(stream[i:i + 7], 1000 + i)
    assert tr.end() is None
    rec = assemble(_req(), tr, 200, None, 10_000, "")
    assert rec.completion_tokens == 5 == rec.server_predicted_n
    assert [e.n_tokens for e in rec.events] == [1, 1, 3]
    assert len(rec.chunk_times_ns) == 5  # every data event, token-carrying or not
    assert rec.token_ids is None  # 3 ids for 5 tokens: incomplete, left for the backfill
    assert rec.text == "a\u00e9x" and rec.cache_n == 0 and rec.prompt_tokens == 2
    assert tr.done and rec.ok


def test_chat_role_chunk_is_not_a_token_and_usage_is_read() -> None:
    tr = Tracker("chat")
    tr.t_send_ns = 0
    role = {"choices": [{"delta": {"role": "assistant", "content": None}}], "timings": {"predicted_n": 0}}
    tok1 = {"choices": [{"delta": {"content": "Hi"}}], "timings": {"predicted_n": 1}}
    tok2 = {"choices": [{"delta": {"content": " there"}}], "timings": {"predicted_n": 3}}
    usage = {"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 3}}
    tr.feed(_ev(role) + _ev(tok1) + _ev(tok2) + _ev(usage) + b"data: [DONE]\n\n", 500)
    rec = assemble(_req("chat"), tr, 200, tr.end(), 900, "")
    assert [e.n_tokens for e in rec.events] == [1, 2]
    assert rec.ttft_ms == 500 / 1e6
    assert rec.text == "Hi there" and rec.prompt_tokens == 4 and tr.done and rec.ok


def test_a_last_line_without_newline_is_parsed_at_the_end() -> None:
    tr = Tracker("chat")
    tr.feed(_ev({"choices": [{"delta": {"content": "Hi"}}], "timings": {"predicted_n": 1}}) + b"data: [DONE]", 5)
    assert not tr.done
    assert tr.end() is None and tr.done


def test_request_body_pins_cache_eos_and_seed() -> None:
    path, body = request_body(_req())
    assert path == "/completion"
    assert body["cache_prompt"] is False and body["ignore_eos"] is True and body["n_predict"] == 5
    path, body = request_body(_req("chat"))
    assert path == "/v1/chat/completions" and body["timings_per_token"] is True
    assert body["stream_options"] == {"include_usage": True}
