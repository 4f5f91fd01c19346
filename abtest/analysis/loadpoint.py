"""The load level a request ran at: a closed loop's concurrency or an open loop's offered rate, one
key for every table that splits by level (Load levels, per-bucket tables, capacity)."""

from __future__ import annotations

from dataclasses import dataclass

from ..records import RequestRecord

CONCURRENCY = "concurrency"
RATE = "rate"


@dataclass(frozen=True, order=True)
class LoadPoint:
    """`kind` "concurrency" (closed loop: requests in flight) or "rate" (open loop: requests/s
    offered); `value` the level. Orders by kind, then value."""

    kind: str
    value: float

    @property
    def label(self) -> str:
        """"c=4" or "r=2.5"."""
        return f"{'c' if self.kind == CONCURRENCY else 'r'}={self.value:g}"

    @property
    def unit(self) -> str:
        return "concurrency" if self.kind == CONCURRENCY else "req/s offered"


def load_point(r: RequestRecord) -> LoadPoint:
    """An open-loop request's offered rate (`load["rate_rps"]`), else its concurrency."""
    if r.load.get("mode") == "open":
        rate = r.load.get("rate_rps")
        if isinstance(rate, (int, float)) and not isinstance(rate, bool) and rate > 0:
            return LoadPoint(RATE, float(rate))
    return LoadPoint(CONCURRENCY, float(r.concurrency))


def is_level_run(r: RequestRecord) -> bool:
    """Whether the request belongs to a run of several load levels (`--concurrency 1,2,4`, `--rate
    1,2,4` or a capacity search): its `load` carries the level's index."""
    level = r.load.get("level")
    return isinstance(level, int) and not isinstance(level, bool)
