"""Load levels (`abtest run --concurrency 1,2,4`, `--rate 1,2,4`, a capacity search): each arm's
throughput and latency per level, the curve a capacity question starts from."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..records import RequestRecord
from . import metrics
from .arms import ArmGroup
from .loadpoint import RATE, LoadPoint, is_level_run, load_point
from .slo import Objective, level_meets, level_span
from .stats import percentile_or_none


@dataclass(frozen=True)
class LevelRow:
    """One arm group at one load level, over all its sessions."""

    group: str
    concurrency: int  # closed loop: the level; open loop: the requests' concurrency field (the slots)
    n: int  # measured requests at this level
    n_failed: int
    sessions: int
    req_per_s: float | None  # completed requests / the level's wall time, summed over sessions
    output_tok_per_s: float | None  # generated tokens / the level's wall time (aggregate throughput)
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None
    tpot_p50_ms: float | None
    tpot_p95_ms: float | None
    goodput_rps: float | None = None  # requests meeting every SLO limit / the level's wall time (with --slo)
    meets_slo: bool | None = None  # the level's percentiles meet every objective (None: no --slo)
    sessions_meeting: int | None = None  # sessions whose own requests at this level meet them
    rate_rps: float | None = None  # open-loop levels (--rate 1,2,4): the rate offered
    # with --slo: the level fails only through its failed requests (misses: not served within the
    # SLO); its served requests alone would meet every objective
    failed_requests_decide: bool | None = None

    @property
    def point(self) -> LoadPoint:
        return LoadPoint(RATE, self.rate_rps) if self.rate_rps is not None else LoadPoint("concurrency",
                                                                                          float(self.concurrency))


def level_sessions(g: ArmGroup) -> dict[LoadPoint, dict[tuple[int, int], list[RequestRecord]]]:
    """The group's level-run requests by load level, then by server session (file index, block)."""
    by: dict[LoadPoint, dict[tuple[int, int], list[RequestRecord]]] = {}
    for i, run in enumerate(g.runs):
        for r in run.measured:
            if is_level_run(r):
                by.setdefault(load_point(r), {}).setdefault((i, r.block), []).append(r)
    return dict(sorted(by.items()))


def level_rows(groups: Sequence[ArmGroup], slo: Sequence[Objective] = ()) -> list[LevelRow]:
    """Rows for the groups whose requests carry a load level (`load["level"]`); [] otherwise.
    With objectives, each row also has its goodput and whether the level meets them."""
    out: list[LevelRow] = []
    for g in groups:
        for point, sessions in level_sessions(g).items():
            reqs = [r for s in sessions.values() for r in s]
            ok = [r for r in reqs if r.ok]
            spans = [level_span(s, slo) for s in sessions.values()]
            span_s = sum(s.span_s for s in spans)
            done, tokens, good_n = (sum(s.done for s in spans), sum(s.tokens for s in spans),
                                    sum(s.good for s in spans))
            ttft = [v for r in ok if (v := metrics.ttft_ms(r)) is not None]
            tpot = [v for r in ok if (v := metrics.tpot_ms(r)) is not None]
            out.append(LevelRow(
                group=g.label, concurrency=reqs[0].concurrency if point.kind == RATE else int(point.value),
                n=len(reqs), n_failed=len(reqs) - len(ok), sessions=len(sessions),
                req_per_s=done / span_s if span_s else None, output_tok_per_s=tokens / span_s if span_s else None,
                ttft_p50_ms=percentile_or_none(ttft, 50), ttft_p95_ms=percentile_or_none(ttft, 95),
                tpot_p50_ms=percentile_or_none(tpot, 50), tpot_p95_ms=percentile_or_none(tpot, 95),
                goodput_rps=good_n / span_s if slo and span_s else None,
                meets_slo=(meets := level_meets(reqs, slo)) if slo else None,
                failed_requests_decide=(meets is False and len(ok) < len(reqs) and bool(level_meets(ok, slo))
                                        ) if slo else None,
                sessions_meeting=sum(1 for s in sessions.values() if level_meets(s, slo)) if slo else None,
                rate_rps=point.value if point.kind == RATE else None,
            ))
    return out
