"""Load levels (`abtest run --concurrency 1,2,4`): each arm's throughput and latency per level, the
curve a capacity question starts from."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..records import RequestRecord
from . import metrics
from .arms import ArmGroup
from .slo import Objective, level_meets, meets_each
from .stats import percentile_or_none


@dataclass(frozen=True)
class LevelRow:
    """One arm group at one load level, over all its sessions."""

    group: str
    concurrency: int
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


def level_rows(groups: Sequence[ArmGroup], slo: Sequence[Objective] = ()) -> list[LevelRow]:
    """Rows for the groups whose requests carry a load level (`load["level"]`); [] otherwise.
    With objectives, each row also has its goodput and whether the level meets them."""
    out: list[LevelRow] = []
    for g in groups:
        by: dict[int, dict[tuple[int, int], list[RequestRecord]]] = {}
        for i, run in enumerate(g.runs):
            for r in run.measured:
                if isinstance(r.load.get("level"), int):
                    by.setdefault(r.concurrency, {}).setdefault((i, r.block), []).append(r)
        for conc in sorted(by):
            sessions = by[conc]
            reqs = [r for s in sessions.values() for r in s]
            ok = [r for r in reqs if r.ok]
            done, tokens, good_n, span_s = 0, 0, 0, 0.0
            for s in sessions.values():
                good = [r for r in s if r.ok]
                if not good:
                    continue
                t0 = min(r.t_send_ns for r in s)
                t1 = max(r.t_send_ns + (r.e2e_ms or 0.0) * 1e6 for r in good)
                if t1 > t0:
                    done += len(good)
                    tokens += sum(r.completion_tokens for r in good)
                    good_n += sum(1 for r in good if slo and meets_each(r, slo))
                    span_s += (t1 - t0) / 1e9
            ttft = [v for r in ok if (v := metrics.ttft_ms(r)) is not None]
            tpot = [v for r in ok if (v := metrics.tpot_ms(r)) is not None]
            out.append(LevelRow(
                group=g.label, concurrency=conc, n=len(reqs), n_failed=len(reqs) - len(ok), sessions=len(sessions),
                req_per_s=done / span_s if span_s else None, output_tok_per_s=tokens / span_s if span_s else None,
                ttft_p50_ms=percentile_or_none(ttft, 50), ttft_p95_ms=percentile_or_none(ttft, 95), tpot_p50_ms=percentile_or_none(tpot, 50),
                tpot_p95_ms=percentile_or_none(tpot, 95),
                goodput_rps=good_n / span_s if slo and span_s else None,
                meets_slo=level_meets(reqs, slo) if slo else None,
                sessions_meeting=sum(1 for s in sessions.values() if level_meets(s, slo)) if slo else None,
            ))
    return out


def capacity_line(rows: Sequence[LevelRow], slo: Sequence[Objective]) -> str | None:
    """"within TTFT p95 ≤ 500 ms: a carries concurrency 4 (7.8 req/s), b 2 (1.1 req/s)": per arm
    the highest level run whose requests meet every objective, among the levels run (no interval,
    no search between levels yet); None without objectives or levels."""
    if not slo or not rows:
        return None
    parts = []
    for group in dict.fromkeys(r.group for r in rows):
        mine = [r for r in rows if r.group == group]
        ok = [r for r in mine if r.meets_slo]
        if not ok:
            parts.append(f"{group} meets it at none of the levels run (lowest {mine[0].concurrency})")
            continue
        best = max(ok, key=lambda r: r.concurrency)
        rate = f"{best.req_per_s:.3g} req/s" if best.req_per_s else "—"
        above = [r.concurrency for r in mine if r.concurrency > best.concurrency]
        agree = (f", {best.sessions_meeting} of {best.sessions} sessions alone"
                 if best.sessions > 1 and best.sessions_meeting is not None else "")
        parts.append(f"{group} carries concurrency {best.concurrency} ({rate}{agree})"
                     + (f", not {min(above)}" if above else ", the highest run"))
    return f"within {', '.join(map(str, slo))}: " + "; ".join(parts) + " — among the levels run, no interval yet"
