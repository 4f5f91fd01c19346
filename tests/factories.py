"""Small record factories for unit tests (importable: tests/ is on sys.path via conftest.py).

`request` takes the token events as given. `streamed` lays them out from a schedule the way a
real stream arrives: the end of the stream comes `STREAM_TAIL_MS` after the last token (the final
event, and on chat the finish and usage chunks), and events may be batched by the server (several
tokens in one event) or by the read (several events with one arrival stamp), so that a test can
tell "end of stream" from "last token" and "event" from "read".
"""

from __future__ import annotations

from collections.abc import Sequence

from abtest.records import RequestRecord, TokenEvent

# The committed H100 evidence (docs/results/evidence, 300 requests): end of stream - last token
# arrival has median 1.19 ms (p5 0.83, p95 1.89); the H200 tiny-moe evidence 0.36-0.43 ms.
STREAM_TAIL_MS = 1.1
MS = 1_000_000  # ns


def request(events: list[tuple[int, int]], e2e_ms: float | None, chunks: list[int] | None = None,
            **kw: object) -> RequestRecord:
    """A record with these token events ``(t_ns, n_tokens)`` and this end of stream, as given."""
    evs = [TokenEvent(t, n) for t, n in events]
    fields: dict[str, object] = dict(
        arm="a", bucket="b", prompt_id="p", run_index=0, seq=0, warmup=False, endpoint="completion",
        concurrency=1, t_send_ns=0, client_overhead_ms=0.0, status=200, error=None,
        ttft_ms=evs[0].t_ns / 1e6 if evs else None, e2e_ms=e2e_ms, prompt_tokens=3,
        completion_tokens=sum(n for _, n in events), server_predicted_n=None, events=evs,
        chunk_times_ns=chunks if chunks is not None else [t for t, _ in events], token_ids=None, text="",
        timings={}, cache_n=0,
    )
    fields.update(kw)
    return RequestRecord(**fields)  # type: ignore[arg-type]


def streamed(n_tokens: int, *, ttft_ms: float = 50.0, itl_ms: float = 10.0,
             tokens_per_event: int | Sequence[int] = 1, events_per_read: int | Sequence[int] = 1,
             tail_ms: float = STREAM_TAIL_MS, **kw: object) -> RequestRecord:
    """A request of `n_tokens` decoded `itl_ms` apart after the first at `ttft_ms`.

    The server sends an event when its last token is decoded, carrying `tokens_per_event` tokens
    (a list is cycled: ``[1, 3]`` = 1, 3, 1, 3, ...). The client reads `events_per_read` events at
    a time (cycled too), stamping every event of a read with the arrival of the read's last one,
    as both HTTP layers do. The stream ends `tail_ms` after the last token's read.
    """
    sizes = [tokens_per_event] if isinstance(tokens_per_event, int) else list(tokens_per_event)
    per_read = [events_per_read] if isinstance(events_per_read, int) else list(events_per_read)
    sent: list[tuple[int, int]] = []  # (send time, tokens)
    i = 0
    while i < n_tokens:
        k = min(sizes[len(sent) % len(sizes)], n_tokens - i)
        i += k
        sent.append((round((ttft_ms + (i - 1) * itl_ms) * MS), k))
    events: list[tuple[int, int]] = []
    j = reads = 0
    while j < len(sent):
        group = sent[j:j + per_read[reads % len(per_read)]]
        events += [(group[-1][0], n) for _, n in group]
        j += len(group)
        reads += 1
    return request(events, e2e_ms=events[-1][0] / MS + tail_ms, **kw)
