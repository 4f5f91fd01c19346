"""Open-loop runs (`--rate`, one rate or levels): per rate, the load applied, latency from the schedule beside latency from the
send, and whether a queue built up over the run."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..records import RequestRecord
from . import metrics
from .arms import ArmGroup
from .loadpoint import is_level_run, load_point
from .stats import percentile_or_none

# The queue is "growing" when the from-schedule TTFT of the last quarter of the requests (by due
# time) is this many times that of the first quarter: a server below its capacity keeps them
# alike (same prompts, same service time), one above it makes every later arrival wait longer.
GROWTH_FACTOR = 2.0


@dataclass(frozen=True)
class LoadRow:
    """One arm group's open-loop requests, summarised."""

    group: str
    rate_rps: float | None  # offered: what the schedule asked for
    arrivals: str | None
    n: int  # measured requests with a due time
    achieved_rps: float | None  # completed requests / (last end - first due)
    max_in_flight: int | None
    send_lag_p50_ms: float | None
    send_lag_p99_ms: float | None
    ttft_p50_ms: float | None  # from the send
    ttft_from_schedule_p50_ms: float | None
    ttft_from_schedule_p99_ms: float | None
    first_quarter_ttft_ms: float | None  # median from-schedule TTFT of the first quarter (by due time)
    last_quarter_ttft_ms: float | None

    @property
    def queue_growing(self) -> bool:
        lo, hi = self.first_quarter_ttft_ms, self.last_quarter_ttft_ms
        return lo is not None and hi is not None and lo > 0 and hi >= GROWTH_FACTOR * lo


def _sessions(g: ArmGroup) -> dict[float | None, list[list[RequestRecord]]]:
    """The group's open-loop requests per rate level (None: a run of one rate), then per server
    session (file, block), each in due-time order."""
    by: dict[float | None, dict[tuple[int, int], list[RequestRecord]]] = {}
    for i, run in enumerate(g.runs):
        for r in run.measured:
            if r.t_scheduled_ns is not None:
                lv = load_point(r).value if is_level_run(r) else None
                by.setdefault(lv, {}).setdefault((i, r.block), []).append(r)
    return {lv: [sorted(v, key=lambda r: r.t_scheduled_ns or 0) for v in sessions.values()]
            for lv, sessions in sorted(by.items(), key=lambda kv: kv[0] or 0.0)}


def load_row(g: ArmGroup) -> LoadRow | None:
    """The group's open-loop summary (its first rate level's, in a run of several); None when none
    of its requests had a due time (closed loop)."""
    rows = group_load_rows(g)
    return rows[0] if rows else None


def group_load_rows(g: ArmGroup) -> list[LoadRow]:
    """One row per rate level the group ran (one for a run of one --rate); [] for a closed loop."""
    return [_row(g, sessions) for sessions in _sessions(g).values()]


def _row(g: ArmGroup, sessions: list[list[RequestRecord]]) -> LoadRow:
    """A session's schedule starts afresh with its server (and with each rate level), so the
    achieved rate and the growth of the queue are taken per session (the medians of the sessions'
    quarters are shown)."""
    reqs = [r for s in sessions for r in s]
    ok = [r for r in reqs if r.ok]
    lag = [v for r in reqs if (v := metrics.send_lag_ms(r)) is not None]
    ttft = [v for r in ok if (v := metrics.ttft_ms(r)) is not None]
    sched = [v for r in ok if (v := metrics.ttft_from_schedule_ms(r)) is not None]
    firsts, lasts, n_done, span_s = [], [], 0, 0.0
    for s in sessions:
        good = [r for r in s if r.ok]
        if len(good) < 2:
            continue
        quarter = max(len(good) // 4, 1)
        firsts += [v for r in good[:quarter] if (v := metrics.ttft_from_schedule_ms(r)) is not None]
        lasts += [v for r in good[-quarter:] if (v := metrics.ttft_from_schedule_ms(r)) is not None]
        t0 = s[0].t_scheduled_ns or 0
        t1 = max(r.t_send_ns + (r.e2e_ms or 0.0) * 1e6 for r in good)
        if t1 > t0:
            n_done += len(good)
            span_s += (t1 - t0) / 1e9
    counts = [v for r in reqs if isinstance(v := r.load.get("in_flight_at_send"), int) and not isinstance(v, bool)]
    rate = reqs[0].load.get("rate_rps")
    arrivals = reqs[0].load.get("arrivals")
    return LoadRow(
        group=g.label,
        rate_rps=float(rate) if isinstance(rate, (int, float)) and not isinstance(rate, bool) else None,
        arrivals=arrivals if isinstance(arrivals, str) else None,
        n=len(reqs),
        achieved_rps=n_done / span_s if span_s > 0 else None,
        max_in_flight=max(counts) if counts else None,
        send_lag_p50_ms=percentile_or_none(lag, 50),
        send_lag_p99_ms=percentile_or_none(lag, 99),
        ttft_p50_ms=percentile_or_none(ttft, 50),
        ttft_from_schedule_p50_ms=percentile_or_none(sched, 50),
        ttft_from_schedule_p99_ms=percentile_or_none(sched, 99),
        first_quarter_ttft_ms=percentile_or_none(firsts, 50),
        last_quarter_ttft_ms=percentile_or_none(lasts, 50),
    )


def load_rows(groups: Sequence[ArmGroup]) -> list[LoadRow]:
    return [row for g in groups for row in group_load_rows(g)]
