from __future__ import annotations

import pytest
from factories import request as _rec

from abtest.analysis.metrics import decode_tps, inter_chunk_ms, itl_ms, tpot_ms, ttft_ms


def test_definitions_on_a_known_schedule() -> None:
    # first token at 100 ms, then tokens every 10 ms, one event carrying 3 tokens after 30 ms
    r = _rec([(100_000_000, 1), (110_000_000, 1), (140_000_000, 3), (150_000_000, 1)], e2e_ms=151.0)
    assert ttft_ms(r) == pytest.approx(100.0)
    assert decode_tps(r) == pytest.approx(5 / 0.050)  # 5 tokens after the first over 50 ms
    assert tpot_ms(r) == pytest.approx((151.0 - 100.0) / 5)
    assert itl_ms(r) == pytest.approx([10, 10, 10, 10, 10])
    assert inter_chunk_ms(r) == pytest.approx([10, 30, 10])


def test_undefined_cases_are_none() -> None:
    assert decode_tps(_rec([(1, 1)], e2e_ms=1.0)) is None
    assert ttft_ms(_rec([], e2e_ms=1.0)) is None


def test_the_live_display_shows_the_metric_decode_rate():
    """`abtest run`'s live line used (tokens - 1) / (e2e - ttft), a third definition of decode
    tok/s; it shows `metrics.decode_tps`, the report's. A stream that ends 50 ms after its last
    token tells the two apart."""
    from factories import request
    from rich.console import Console

    from abtest.analysis.metrics import decode_tps
    from abtest.cli.progress import RichProgress

    r = request([(10_000_000, 1), (20_000_000, 1), (30_000_000, 1)], e2e_ms=80.0)  # 2 tokens in 20 ms
    assert decode_tps(r) == 100.0
    shown = RichProgress(Console(file=open("/dev/null", "w"))).decode_label(r)
    assert shown == "100.0 tok/s"
