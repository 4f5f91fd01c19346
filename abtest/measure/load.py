"""Load schedules: when each request of an open loop is due (uniform or Poisson arrivals)."""

from __future__ import annotations

import random


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
