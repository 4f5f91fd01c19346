"""Which finalists of a sweep get another server session: the session rule, a pure function of the sessions so far.

The sweep's advice rests on comparisons whose *default* wins unless the *challenger* is shown
faster with a 95 % interval over server sessions (`analysis.sweep.recommend`): llama.cpp's own
placement (``fit``) against abtest's pick, and the mmap load against ``--load-mode none``. An
interval over sessions needs two sessions a side, so the first session of each finalist decides
nothing by itself; what it can decide is whether a second session is worth its cost.

Rules (``--session-rule``):

* ``sequential`` (the default): after each session but the last, a comparison continues only
  when the challenger's estimate so far is above the default's (Δ > 0). Otherwise it stops for
  futility and the advice keeps the default (fit's flags; the mmap load), as it would after any
  session count without a positive interval. Arms in no continuing comparison (the pick's
  runner-up, whose comparison the advice does not rest on) get no further session. The claim the
  rule guards, "the challenger is faster", is only made at the last session, by the same test as
  with a fixed count; stopping early can only remove paths on which it would have been made, so
  its false-positive rate stays at most that test's 5 % (a non-binding futility stop; e.g.
  Jennison & Turnbull, *Group Sequential Methods*, 2000, §10). No early stop for success: that
  would need an alpha-spending boundary, and with 2 sessions a side there is nothing to spend.
* ``fixed``: every finalist in every session (the behaviour before the rule).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..records import ArmEnd

SESSION_RULES = ("sequential", "fixed")


@dataclass(frozen=True)
class Comparison:
    """One comparison the advice rests on: `challenger` is advised over `default` only if shown faster."""

    default: str  # the arm the advice keeps without evidence (fit; the mmap pick)
    challenger: str  # the arm that has to be shown faster (abtest's pick; the pick with --load-mode none)

    @property
    def label(self) -> str:
        return f"{self.challenger} vs {self.default}"


@dataclass(frozen=True)
class NextSession:
    """The decision before one further session: the arms to run (in the finalists' order) and,
    per comparison that stops here, why."""

    session: int  # 1-based number of the session about to run
    arms: tuple[str, ...]
    stopped: dict[str, str] = field(default_factory=dict)  # Comparison.label -> reason
    idle: tuple[str, ...] = ()  # finalists in no continuing comparison (no further session)


@dataclass(frozen=True)
class SessionResult:
    """One further server session of a finalist, as the sweep's launch and outcome gave it."""

    block: int  # the session's index (0 = the first)
    end: ArmEnd | None
    ok: bool
    decode_tps: float | None
    error: str | None
    vram_mib: float | None
    free_mib_before: float | None

    def trail_fields(self) -> dict[str, Any]:
        return {"block": self.block, "status": "measured" if self.ok else "failed", "vram_mib": self.vram_mib,
                "decode_tps": self.decode_tps, "error": self.error}


def next_session(finalists: Sequence[str], comparisons: Sequence[Comparison], rates: Mapping[str, Sequence[float]],
                 done: int, max_sessions: int, rule: str = "sequential") -> NextSession:
    """Which finalists run session ``done + 1`` (``done`` sessions each so far, at most
    ``max_sessions``). `rates`: per arm, its sessions' decode tok/s (one mean per session)."""
    if rule not in SESSION_RULES:
        raise ValueError(f"session rule {rule!r}: use one of {', '.join(SESSION_RULES)}")
    if done >= max_sessions:
        return NextSession(done + 1, (), {}, tuple(finalists))
    if rule == "fixed":
        return NextSession(done + 1, tuple(finalists))
    wanted: set[str] = set()
    stopped: dict[str, str] = {}
    for c in comparisons:
        if c.default not in finalists or c.challenger not in finalists:
            continue
        d, ch = _mean(rates.get(c.default, ())), _mean(rates.get(c.challenger, ()))
        if d is None or ch is None:
            stopped[c.label] = "no decode rate on a side: nothing to compare"
        elif ch > d:
            wanted.update((c.default, c.challenger))
        else:
            stopped[c.label] = (f"after {done} session(s) {c.challenger} ({ch:.1f} tok/s) is not above {c.default} "
                                f"({d:.1f} tok/s): stopped for futility, the advice keeps {c.default}")
    arms = tuple(a for a in finalists if a in wanted)
    return NextSession(done + 1, arms, stopped, tuple(a for a in finalists if a not in wanted))


def _mean(xs: Sequence[float]) -> float | None:
    vals = [float(x) for x in xs if x is not None]
    return statistics.mean(vals) if vals else None


__all__ = ["SESSION_RULES", "Comparison", "NextSession", "SessionResult", "next_session"]
