"""Capacity at an SLO: per server session, the highest load whose requests meet every objective
(interpolated between the last level that meets them and the first that does not), combined over
sessions with an interval, and each arm's capacity over its baseline's with an interval.

The unit of analysis is the server session (docs/report.md, "Inference"): requests of one session
share its drift, so a capacity is estimated once per session and the sessions' estimates are the
sample. `capacity_from_levels` is the pure per-session estimate; the sweep can call it on one
setting's records (`--objective capacity`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..fmt import fmt_num, fmt_p
from ..records import RequestRecord
from . import stratified
from .arms import ArmGroup
from .levels import level_sessions
from .loadpoint import CONCURRENCY, RATE
from .slo import Objective, level_span, observed
from .stats import scipy_stats

# SessionCapacity.status
BRACKETED = "bracketed"  # a level met the SLO and a higher one did not: interpolated between them
AT_LEAST = "at-least"  # every level run met it: the capacity is at least the highest (censored)
NONE_MET = "none-met"  # even the lowest level failed it: below the lowest level run
NO_DATA = "no-data"

CONFIDENCE = 0.95


@dataclass(frozen=True)
class LevelJudged:
    """One session at one level: the load, whether it meets every objective, each objective's
    observed percentile over its limit (∞ when a failed request reaches the percentile), and the
    throughput (completed requests / the level's wall time)."""

    load: float
    ratios: tuple[float, ...]
    req_per_s: float | None

    @property
    def meets(self) -> bool:
        return all(r <= 1.0 for r in self.ratios)


@dataclass(frozen=True)
class SessionCapacity:
    """One server session's capacity. `load` is in the levels' unit (concurrency, or req/s
    offered); `req_per_s` the throughput there, interpolated like the load."""

    load: float | None
    req_per_s: float | None
    status: str
    low: float | None = None  # the highest level that met the SLO below `high`
    high: float | None = None  # the lowest level that did not
    limited_by: str = ""  # the objective that reaches its limit first ("" when none did)
    non_monotone: bool = False  # a level above `high` met the SLO again (noise, or a level too short)
    session: str = ""


def judge_levels(requests_by_load: Mapping[float, Sequence[RequestRecord]],
                 slo: Sequence[Objective]) -> list[LevelJudged]:
    """Each level of one session judged against the objectives, low to high."""
    out = []
    for load in sorted(requests_by_load):
        reqs = requests_by_load[load]
        if not reqs:
            continue
        ratios = tuple(observed(reqs, o) / o.limit_ms for o in slo)
        out.append(LevelJudged(float(load), ratios, level_span(reqs).req_per_s))
    return out


def session_capacity(levels: Sequence[LevelJudged], slo: Sequence[Objective], integer: bool = False) -> SessionCapacity:
    """The highest load meeting every objective, from one session's levels (low to high).

    `high` is the lowest level that fails, `low` the highest that meets below it. Between them each
    failing objective's observed/limit ratio is taken as linear in the load, and the capacity is
    where the first one reaches 1; a ratio that is infinite at `high` (a failed request at the
    percentile) gives `low` itself. The throughput is interpolated at the same point. Every level
    meeting it: at least the highest (censored); none: below the lowest. `integer` (concurrency
    levels): the capacity is the highest whole concurrency at or below that point — a fractional
    concurrency cannot be applied, and between neighbouring levels the bracket is already exact."""
    levels = sorted(levels, key=lambda lv: lv.load)
    if not levels or not slo:
        return SessionCapacity(None, None, NO_DATA)
    failing = [lv for lv in levels if not lv.meets]
    if not failing:
        top = levels[-1]
        return SessionCapacity(top.load, top.req_per_s, AT_LEAST, low=top.load)
    hi = failing[0]
    below = [lv for lv in levels if lv.load < hi.load]
    non_monotone = any(lv.meets for lv in levels if lv.load > hi.load)
    if not below:
        return SessionCapacity(None, None, NONE_MET, high=hi.load, non_monotone=non_monotone,
                               limited_by=_binding(hi, slo))
    lo = below[-1]
    best, which = hi.load, ""
    for o, r_lo, r_hi in zip(slo, lo.ratios, hi.ratios, strict=True):
        if r_hi <= 1.0:
            continue
        if not math.isfinite(r_hi) or r_hi <= r_lo:
            x = lo.load
        else:
            x = lo.load + (1.0 - r_lo) / (r_hi - r_lo) * (hi.load - lo.load)
        if x < best or not which:
            best, which = min(best, x), str(o)
    if integer:
        best = max(lo.load, float(math.floor(best + 1e-9)))
        best = min(best, hi.load - 1) if hi.load - 1 >= lo.load else lo.load
    rps = None
    if lo.req_per_s is not None and hi.req_per_s is not None:
        rps = lo.req_per_s + (best - lo.load) / (hi.load - lo.load) * (hi.req_per_s - lo.req_per_s)
    elif best == lo.load:
        rps = lo.req_per_s
    return SessionCapacity(best, rps, BRACKETED, low=lo.load, high=hi.load, limited_by=which,
                           non_monotone=non_monotone)


def _binding(lv: LevelJudged, slo: Sequence[Objective]) -> str:
    worst = max(range(len(slo)), key=lambda i: lv.ratios[i])
    return str(slo[worst])


def capacity_from_levels(requests_by_load: Mapping[float, Sequence[RequestRecord]],
                         slo: Sequence[Objective], integer: bool = False) -> SessionCapacity:
    """One session's (or one sweep setting's) capacity from its measured requests per load level
    (`integer`: concurrency levels): what `abtest sweep --objective capacity` can rank settings by."""
    return session_capacity(judge_levels(requests_by_load, slo), slo, integer)


@dataclass(frozen=True)
class Interval:
    """The mean of the sessions' values with its 95 % t-interval over sessions (on the log scale,
    so it stays positive): M·exp(±t(k−1)·s/(√k·M)). No interval (nan) with fewer than 2 sessions."""

    mean: float
    low: float
    high: float
    k: int


def session_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    k = int(x.size)
    if k == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    m = float(x.mean())
    if k < 2 or m <= 0:
        return Interval(m, math.nan, math.nan, k)
    se = float(x.std(ddof=1)) / math.sqrt(k) / m
    half = float(scipy_stats().t.ppf(0.5 + confidence / 2, k - 1)) * se
    return Interval(m, m * math.exp(-half), m * math.exp(half), k)


@dataclass(frozen=True)
class ArmCapacity:
    """One arm group's capacity at the SLO over its sessions. `headline` is what the verdict
    quotes: the offered rate for rate levels, the throughput (req/s) for concurrency levels."""

    group: str
    kind: str  # CONCURRENCY | RATE: the levels' unit
    sessions: tuple[SessionCapacity, ...]
    load: Interval  # in the levels' unit
    req_per_s: Interval
    status: str  # BRACKETED (every session bracketed), AT_LEAST, NONE_MET, or "mixed"
    limited_by: str

    @property
    def headline(self) -> Interval:
        return self.load if self.kind == RATE else self.req_per_s

    @property
    def has_interval(self) -> bool:
        return self.status == BRACKETED and math.isfinite(self.headline.low)


@dataclass(frozen=True)
class CapacityDelta:
    """An arm's capacity over its baseline's (the headline), with the 95 % interval and p-value of
    one t statistic over sessions (`stratified.session_ratio` on one value per session)."""

    group: str
    baseline: str
    kind: str
    ratio: float
    low: float
    high: float
    p_value: float
    k_base: int
    k_other: int
    reason: str  # "" with an interval; else why not


def arm_capacity(g: ArmGroup, slo: Sequence[Objective]) -> list[ArmCapacity]:
    """The group's capacity per level kind it ran (concurrency levels, rate levels)."""
    by_kind: dict[str, dict[int, dict[float, list[RequestRecord]]]] = {}
    for point, sessions in level_sessions(g).items():
        for (i, _block), reqs in sessions.items():
            by_kind.setdefault(point.kind, {}).setdefault(i, {})[point.value] = reqs
    out = []
    for kind in (CONCURRENCY, RATE):
        if kind not in by_kind:
            continue
        per_session: list[tuple[str, Mapping[float, Sequence[RequestRecord]]]] = [
            (g.session_label(g.runs[i]), levels) for i, levels in sorted(by_kind[kind].items())]
        out.append(capacity_over_sessions(g.label, kind, per_session, slo))
    return out


def capacity_over_sessions(group: str, kind: str,
                           sessions: Sequence[tuple[str, Mapping[float, Sequence[RequestRecord]]]],
                           slo: Sequence[Objective]) -> ArmCapacity:
    """One arm's capacity from its sessions' requests per load level ((session label, load ->
    requests) in session order): each session's `capacity_from_levels`, combined with an interval
    over sessions (`arm_capacity` for a report's groups; the sweep for one setting's arm)."""
    caps = []
    for label, levels in sessions:
        cap = capacity_from_levels(levels, slo, integer=kind == CONCURRENCY)
        caps.append(SessionCapacity(**{**cap.__dict__, "session": label}))
    statuses = {c.status for c in caps if c.status != NO_DATA}
    status = statuses.pop() if len(statuses) == 1 else ("mixed" if statuses else NO_DATA)
    usable = [c for c in caps if c.load is not None]
    limits = [c.limited_by for c in caps if c.limited_by]
    return ArmCapacity(
        group=group, kind=kind, sessions=tuple(caps),
        load=session_interval([c.load for c in usable if c.load is not None]),
        req_per_s=session_interval([c.req_per_s for c in usable if c.req_per_s is not None]),
        status=status, limited_by=max(set(limits), key=limits.count) if limits else "",
    )


def capacity_delta(arm: ArmCapacity, base: ArmCapacity) -> CapacityDelta:
    """`arm`'s headline capacity over `base`'s. Only sessions with a bracketed estimate count; a
    censored one (every level met, or none) has no value to compare."""
    def values(c: ArmCapacity) -> list[float]:
        return [v for s in c.sessions if s.status == BRACKETED
                for v in [s.load if c.kind == RATE else s.req_per_s] if v is not None and v > 0]

    a, b = values(arm), values(base)
    nan = math.nan
    if not a or not b:
        return CapacityDelta(arm.group, base.group, arm.kind, nan, nan, nan, nan, len(b), len(a),
                             "a capacity outside the levels run, on one side or both")
    # one session a side: session_ratio gives the ratio of the means and no interval (ONE_SESSION)
    sr = stratified.session_ratio(b, list(range(len(b))), a, list(range(len(a))))
    ratio = 1.0 + sr.delta
    censored = arm.status != BRACKETED or base.status != BRACKETED
    if sr.reason or censored:
        why = ("fewer than 2 server sessions on a side" if sr.reason == stratified.ONE_SESSION
               else "some sessions' capacity lies beyond the levels run" if censored
               else "no variance between sessions" if sr.reason == stratified.NO_VARIANCE else sr.reason)
        return CapacityDelta(arm.group, base.group, arm.kind, ratio, nan, nan, nan, len(b), len(a), why)
    lo, hi = sr.interval(CONFIDENCE)
    return CapacityDelta(arm.group, base.group, arm.kind, ratio, 1.0 + lo, 1.0 + hi, sr.p_value, len(b), len(a), "")


def capacities(groups: Sequence[ArmGroup], slo: Sequence[Objective],
               paired: Mapping[str, str]) -> tuple[list[ArmCapacity], list[CapacityDelta]]:
    """Every group's capacity, and each non-baseline group's over its paired baseline's (`paired`:
    group label -> baseline group label); ([], []) without objectives or level runs."""
    if not slo:
        return [], []
    caps = [c for g in groups for c in arm_capacity(g, slo)]
    by = {(c.group, c.kind): c for c in caps}
    deltas = [capacity_delta(c, by[(paired[c.group], c.kind)]) for c in caps
              if c.group in paired and (paired[c.group], c.kind) in by]
    return caps, deltas


def load_text(v: float) -> str:
    """A load as the levels name it (4, 0.5) when it is one, else `fmt_num`."""
    return f"{v:g}" if math.isfinite(v) and v == round(v, 3) else fmt_num(v)


def _value(iv: Interval, unit: str = "", load: bool = False) -> str:
    """"7.80 (7.10–8.40)"; a load that is a whole level with no interval reads as the level: "12"."""
    spread = math.isfinite(iv.low) and not iv.low == iv.high == iv.mean  # sessions agreeing on one level: no range
    show = load_text if load and not spread else fmt_num
    rng = f" ({show(iv.low)}–{show(iv.high)})" if spread else ""
    return f"{show(iv.mean)}{unit}{rng}"


def capacity_clause(c: ArmCapacity, objective: str = "it") -> str:
    """What an arm carries within the SLO, without its name: "carries 7.8 req/s (7.1–8.4) at
    concurrency 5.2 (4.8–5.6)", "meets `objective` at none of the levels run (lowest concurrency
    1)" and the like. The one wording of a capacity: the report's verdict (`arm_phrase`) and the
    sweep's advice (`analysis.sweep.capacity_text`, objective "the SLO") both use it."""
    if c.status == NONE_MET:
        lowest = min((s.high for s in c.sessions if s.high is not None), default=math.nan)
        unit = "concurrency " if c.kind == CONCURRENCY else ""
        return f"meets {objective} at none of the levels run (lowest {unit}{load_text(lowest)}" + (
            " req/s)" if c.kind == RATE else ")")
    bound = "at least " if c.status in (AT_LEAST, "mixed") else ""
    if c.kind == RATE:
        text = f"carries {bound}{_value(c.load, ' req/s', load=c.status != BRACKETED)}"
    else:
        text = f"carries {bound}{_value(c.req_per_s, ' req/s')} at concurrency {_value(c.load, load=True)}"
    if c.status == AT_LEAST:
        text += f" (every level run met {objective})"
    elif c.status == "mixed":
        text += f" (some sessions met {objective} at every level run, or at none)"
    elif c.load.k == 1:
        text += " (one session: no interval)"
    return text


def arm_phrase(c: ArmCapacity) -> str:
    """"baseline carries 7.8 req/s (7.1–8.4) at concurrency 5.2 (4.8–5.6)" and the like."""
    return f"{c.group} {capacity_clause(c)}"


def delta_phrase(d: CapacityDelta) -> str:
    """"cpu-moe carries 0.14× baseline's (0.12–0.17, p < 0.001, 2 vs 2 sessions)"."""
    if not math.isfinite(d.ratio):
        return f"{d.group} vs {d.baseline}: no ratio ({d.reason})"
    if d.reason:
        return f"{d.group} carries {d.ratio:.3g}× {d.baseline}'s ({d.reason}: no interval)"
    return (f"{d.group} carries {d.ratio:.3g}× {d.baseline}'s ({d.low:.3g}–{d.high:.3g}, {fmt_p(d.p_value)}, "
            f"{d.k_other} vs {d.k_base} sessions)")


def capacity_verdict(caps: Sequence[ArmCapacity], deltas: Sequence[CapacityDelta],
                     slo: Sequence[Objective]) -> str | None:
    """The verdict's first line for a level run judged against an SLO: every arm's capacity with
    its interval over sessions, then each arm over its baseline; None without either."""
    if not caps or not slo:
        return None
    text = f"Within {', '.join(map(str, slo))}: " + ", ".join(arm_phrase(c) for c in caps)
    if deltas:
        text += "; " + "; ".join(delta_phrase(d) for d in deltas)
    return text + "."
