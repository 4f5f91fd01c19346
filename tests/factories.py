"""Small record factories for unit tests (importable: tests/ is on sys.path via conftest.py)."""

from __future__ import annotations

from abtest.records import RequestRecord, TokenEvent


def request(events: list[tuple[int, int]], e2e_ms: float, chunks: list[int] | None = None, **kw: object) -> RequestRecord:
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
