"""Load levels (`abtest run --concurrency 1,2,4`): each arm's throughput and latency per level, the
curve a capacity question starts from."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..records import RequestRecord
from . import metrics
from .arms import ArmGroup


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


def _pct(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def level_rows(groups: Sequence[ArmGroup]) -> list[LevelRow]:
    """Rows for the groups whose requests carry a load level (`load["level"]`); [] otherwise."""
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
            done, tokens, span_s = 0, 0, 0.0
            for s in sessions.values():
                good = [r for r in s if r.ok]
                if not good:
                    continue
                t0 = min(r.t_send_ns for r in s)
                t1 = max(r.t_send_ns + (r.e2e_ms or 0.0) * 1e6 for r in good)
                if t1 > t0:
                    done += len(good)
                    tokens += sum(r.completion_tokens for r in good)
                    span_s += (t1 - t0) / 1e9
            ttft = [v for r in ok if (v := metrics.ttft_ms(r)) is not None]
            tpot = [v for r in ok if (v := metrics.tpot_ms(r)) is not None]
            out.append(LevelRow(
                group=g.label, concurrency=conc, n=len(reqs), n_failed=len(reqs) - len(ok), sessions=len(sessions),
                req_per_s=done / span_s if span_s else None, output_tok_per_s=tokens / span_s if span_s else None,
                ttft_p50_ms=_pct(ttft, 50), ttft_p95_ms=_pct(ttft, 95), tpot_p50_ms=_pct(tpot, 50),
                tpot_p95_ms=_pct(tpot, 95),
            ))
    return out
