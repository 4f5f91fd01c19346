"""Load schedules: the order of server sessions (blocks), when each request of an open loop is
due (uniform or Poisson arrivals), and the label of the load a run applies."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..config import RunConfig


def arrival_times(n: int, rate: float, arrivals: str, seed: int) -> list[float]:
    """Send offsets in seconds: evenly spaced at 1/rate, or a Poisson process (exponential gaps)."""
    if arrivals == "poisson":
        rng = random.Random(seed)
        t, out = 0.0, []
        for _ in range(n):
            out.append(t)
            t += rng.expovariate(rate)
        return out
    return [i / rate for i in range(n)]


def session_order(arms: list[str], blocks: int) -> list[tuple[int, str]]:
    """(block, arm) in the order the sequential schedule runs them: the arms' order in even blocks,
    reversed in odd ones (A0 B0 B1 A1 A2 B2 ...). Every arm then holds, on average, the same
    position in time, so a linear drift over the run shifts every arm's mean alike."""
    out: list[tuple[int, str]] = []
    for block in range(blocks):
        out.extend((block, a) for a in (arms if block % 2 == 0 else arms[::-1]))
    return out


def applied_load(cfg: RunConfig) -> dict[str, Any]:
    """What every request of the run is labelled with (`RequestRecord.load`): the mode and the
    parameters that were in force. An open loop's records add `in_flight_at_send` each."""
    slots = cfg.server_slots
    if cfg.schedule == "interleaved":
        return {"mode": "interleaved", "concurrency": 1, "rate_rps": None, "arrivals": None,
                "connection_cap": None, "server_slots": slots}
    if cfg.rate:
        return {"mode": "open", "concurrency": None, "rate_rps": cfg.rate, "arrivals": cfg.arrivals,
                "connection_cap": None, "server_slots": slots}
    return {"mode": "closed", "concurrency": cfg.concurrency, "rate_rps": None, "arrivals": None,
            "connection_cap": cfg.concurrency, "server_slots": slots}
