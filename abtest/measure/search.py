"""The sweep's search: which --n-cpu-moe N to measure next, a pure function of what was measured so far.

The search calls two callbacks (measure a setting, predict a setting's VRAM), so it is tested
without servers; `abtest.measure.sweep` gives it a runner and the VRAM prediction.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Measurement:
    """What running one setting gave. vram_mib None: no per-process GPU figure (no NVML)."""

    ok: bool
    vram_mib: float | None = None
    decode_tps: float | None = None
    note: str = ""


@dataclass(frozen=True)
class Probe:
    n: int
    status: str  # "measured" | "skipped" (predicted over free VRAM, not launched) | "failed"
    predicted_mib: float | None
    vram_mib: float | None  # measured (peak, per PID); None when skipped/failed/unmeasurable
    decode_tps: float | None
    under_budget: bool
    basis: str  # what under_budget was judged on: "measured" | "predicted" | "skipped" | "failed" | "no budget"
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SearchResult:
    probes: tuple[Probe, ...]
    best: int | None  # the fastest setting under budget among those run
    boundary: int | None  # the smallest N under budget (most weights on the GPU)
    over_neighbour: int | None  # boundary - 1, known over budget (measured, failed or skipped)

    def to_dict(self) -> dict[str, Any]:
        return {"probes": [p.to_dict() for p in self.probes], "best": self.best, "boundary": self.boundary,
                "over_neighbour": self.over_neighbour}


def judge(
    n: int, m: Measurement | None, predicted: float | None, budget_mib: float | None, skip_reason: str = ""
) -> Probe:
    """A probe's verdict: under budget on the measured VRAM, or on the prediction when nothing was
    measured (no NVML); a skipped or failed setting counts as over."""
    if m is None:
        return Probe(n, "skipped", predicted, None, None, False, "skipped", skip_reason)
    if not m.ok:
        return Probe(n, "failed", predicted, m.vram_mib, None, False, "failed", m.note)
    if budget_mib is None:
        return Probe(n, "measured", predicted, m.vram_mib, m.decode_tps, True, "no budget", m.note)
    if m.vram_mib is not None:
        return Probe(n, "measured", predicted, m.vram_mib, m.decode_tps, m.vram_mib <= budget_mib, "measured", m.note)
    under = predicted is not None and predicted <= budget_mib
    return Probe(n, "measured", predicted, None, m.decode_tps, under, "predicted", m.note)


def _bias(probes: Sequence[Probe]) -> float:
    """Median (measured - predicted) so far: the correction applied to the next guess."""
    errs = [p.vram_mib - p.predicted_mib for p in probes if p.vram_mib is not None and p.predicted_mib is not None
            and p.status == "measured"]
    return statistics.median(errs) if errs else 0.0


def next_probe(
    lo: int, hi: int, budget_mib: float, predict_mib: Callable[[int], float] | None, probes: Sequence[Probe],
    guided: bool,
) -> int:
    """The next N strictly between lo (over budget) and hi (under budget).

    Guided: the smallest N whose prediction, corrected by the error seen so far, fits the
    budget (hi - 1 if none in range does, to confirm the neighbour). Unguided (no prediction, or
    the last guided guess was wrong about its side): the midpoint, so the search stays
    logarithmic when the prediction is off.
    """
    assert hi - lo > 1
    mid = (lo + hi) // 2
    if predict_mib is None or not guided:
        return mid
    bias = _bias(probes)
    for n in range(lo + 1, hi):
        if predict_mib(n) + bias <= budget_mib:
            return n
    return hi - 1


def search(
    n_layer: int,
    budget_mib: float | None,
    measure: Callable[[int], Measurement | None],
    predict_mib: Callable[[int], float] | None = None,
    settings: Sequence[int] | None = None,
    top_first: bool = True,
) -> SearchResult:
    """Run the settings (a given list, or auto) and pick the fastest one under budget.

    measure(n) runs setting n and returns its Measurement, or None if it was skipped (the caller
    decides skipping: predicted over the free VRAM). Auto (settings None): N = n_layer (all
    experts on the CPU) and N = 0 (all on the GPU) first; if 0 fits, it is the answer; otherwise
    bisect between the largest N known over budget and the smallest known under, until they are
    neighbours. The answer is the fastest measured setting under budget (with a monotone speed,
    the boundary); its neighbour one step toward the GPU is known to be over budget.

    ``top_first=False`` (with a prediction and a budget): N = n_layer is not measured first but
    taken as the upper end of the bisection, and measured only if the search ends there (nothing
    smaller fits). With an accurate prediction the search then launches N = 0 only when it is
    not ruled out, the boundary, and its neighbour only when it is not ruled out either.
    """
    probes: list[Probe] = []
    by_n: dict[int, Probe] = {}

    def run(n: int) -> Probe:
        if n in by_n:
            return by_n[n]
        pred = predict_mib(n) if predict_mib else None
        p = judge(n, measure(n), pred, budget_mib, "predicted over the free VRAM")
        probes.append(p)
        by_n[n] = p
        return p

    def bisect(lo: int, hi: int) -> int:
        """Between lo (over budget) and hi (under, or not yet measured), until neighbours; the new hi."""
        assert budget_mib is not None
        guided = True
        while hi - lo > 1:
            n = next_probe(lo, hi, budget_mib, predict_mib, probes, guided)
            p = run(n)
            if predict_mib is not None and guided:
                expected_under = predict_mib(n) + _bias(probes[:-1]) <= budget_mib
                guided = expected_under == p.under_budget
            else:
                guided = True
            if p.under_budget:
                hi = n
            else:
                lo = n
        return hi

    if settings is not None:
        for n in settings:
            run(n)
    elif not top_first and predict_mib is not None and budget_mib is not None and n_layer > 0:
        if not run(0).under_budget:
            hi = bisect(0, n_layer)
            if hi == n_layer:  # nothing smaller fits: the all-on-CPU end decides
                run(n_layer)
    else:
        top = run(n_layer)
        if top.under_budget and n_layer > 0:
            bottom = run(0)
            if not bottom.under_budget and budget_mib is not None:
                bisect(0, n_layer)
    return summarize_search(probes)


def summarize_search(probes: Sequence[Probe]) -> SearchResult:
    under = [p for p in probes if p.under_budget]
    boundary = min((p.n for p in under), default=None)
    with_speed = [p for p in under if p.decode_tps is not None]
    if with_speed:
        best: int | None = max(with_speed, key=lambda p: (p.decode_tps or 0.0, -p.n)).n
    else:
        best = boundary
    over = {p.n for p in probes if not p.under_budget}
    neighbour = boundary - 1 if boundary is not None and boundary - 1 in over else None
    return SearchResult(tuple(probes), best, boundary, neighbour)
