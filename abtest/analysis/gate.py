"""`abtest report --history DIR`: tonight against the trailing nights, and a regression gate.

DIR holds one sub-directory per night, named YYYY-MM-DD, of evidence files (one per model). Per
(model, arm) and metric:

* nightly value   — decode tok/s and TTFT: the mean over buckets of the median of that night's
                    measured requests in the bucket; VRAM: the peak of the server process (MiB).
* reference       — the median of the nightly values of the last `window` nights before tonight
                    whose configuration (`ArmConfig`: model file, argv, buckets, ...) is tonight's
                    (7 by default; with fewer than `min_nights`: "no verdict yet").
* regression      — a change in the bad direction that is BOTH beyond the threshold AND
                    statistically significant (see `gate_samples`, `gate_values`).

Why both tests: requests of one night share that night's conditions (thermal state, background
load, a driver's mood), so nights differ by more than request noise explains. A request-level test
alone (tonight's requests vs the window's) would flag such ordinary night-to-night moves; a
prediction bound from the trailing *nightly* values measures exactly that spread; and the
threshold keeps the alarm to changes large enough to matter. docs/report.md has the measured
false-alarm and detection rates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .. import __version__
from ..errors import ConfigError, MissingNight, RegressionFound
from ..fmt import fmt_num, fmt_p_cell, fmt_pct
from . import stats, stratified
from .metrics import METRIC_BY_KEY
from .nights import (
    GATE_METRICS,
    MAX_PROBLEM_NOTES,
    PROVENANCE_FIELDS,
    ArmKey,
    KeyedByModelArm,
    Night,
    NightArm,
    key_label,
)


@dataclass(frozen=True)
class Thresholds:
    """What counts as a regression (all settable from the CLI)."""

    decode_pct: float = 5.0  # decode tok/s down by more than this %
    ttft_pct: float = 5.0  # TTFT up by more than this %
    vram_pct: float = 2.0  # VRAM up by more than this % ...
    vram_mib: float = 64.0  # ... and by more than this many MiB
    alpha: float = 0.01  # one-sided significance level of each test
    window: int = 7  # trailing nights in the reference
    min_nights: int = 3  # fewer trailing nights than this: no verdict




# --------------------------------------------------------------------------------------------------
# The gate (pure; the 200-seed tests call these directly)


@dataclass(frozen=True)
class GateResult:
    value: float  # tonight's nightly value
    reference: float  # median of the trailing nightly values
    change: float  # value / reference - 1
    p_value: float  # request-level one-sided Mann-Whitney (nan for single-valued metrics)
    bound: float  # one-sided (1-α) prediction bound from the trailing nightly values
    beyond_threshold: bool
    significant: bool
    regression: bool
    improvement: bool
    # the bound in the bad direction could not be crossed: a higher-is-better rate whose lower
    # prediction bound fell to 0 or below (a window spread so widely that no drop tonight can lie
    # beyond it; `bound` is then clamped at 0, the least a rate can be)
    blind: bool = False


def gate_samples(
    tonight: Sequence[float] | np.ndarray,
    window: Sequence[Sequence[float] | np.ndarray],
    *,
    higher_is_better: bool,
    threshold_pct: float,
    alpha: float = 0.01,
    nightly: tuple[float, Sequence[float]] | None = None,
    strata: tuple[Sequence[str] | np.ndarray, Sequence[Sequence[str] | np.ndarray]] | None = None,
) -> GateResult:
    """Gate a per-request metric: tonight's requests against the trailing nights' requests.

    Each night is summarised by one nightly value: the median of its requests, or the values given
    in `nightly` = (tonight's, [each window night's]) (the history uses the mean of per-bucket
    medians, which does not wobble with a mix of short and long prompts). Regression when all
    three hold, in the bad direction:
      1. tonight's value moved beyond `threshold_pct` % from the median of the window's values;
      2. a one-sided Mann-Whitney test of tonight's requests vs the pooled window's has p < α
         (van Elteren's stratified version when `strata` gives each request's bucket);
      3. tonight's value lies beyond the one-sided (1-α) prediction bound of the window's values
         (mean ± t·s·sqrt(1 + 1/n)), which carries the night-to-night spread.
    An improvement is the mirror image (reported, never an alarm).
    """
    t_all = np.asarray(tonight, dtype=float)
    t = t_all[np.isfinite(t_all)]
    arrays = [np.asarray(w, dtype=float) for w in window]
    keep = [i for i, w in enumerate(arrays) if np.isfinite(w).any()]
    nights = [arrays[i][np.isfinite(arrays[i])] for i in keep]
    if nightly is None:
        meds = np.array([np.median(w) for w in nights])
        value = float(np.median(t)) if t.size else math.nan
    else:
        meds = np.array([nightly[1][i] for i in keep], dtype=float)
        value = float(nightly[0])
    if t.size == 0 or meds.size == 0 or not math.isfinite(value):
        nan = math.nan
        return GateResult(nan, nan, nan, nan, nan, False, False, False, False)
    ref = float(np.median(meds))
    change = value / ref - 1 if ref else math.nan
    pooled = np.concatenate(nights)
    thr = threshold_pct / 100.0
    # bad direction first
    bad_alt, good_alt = ("less", "greater") if higher_is_better else ("greater", "less")
    if strata is None:
        def rank_test(alternative: str) -> float:
            return stats.mann_whitney(t, pooled, alternative=alternative).p_value
    else:
        t_lab = np.asarray(strata[0])[np.isfinite(t_all)]
        w_lab = np.concatenate([np.asarray(strata[1][i])[np.isfinite(arrays[i])] for i in keep])

        def rank_test(alternative: str) -> float:
            return stratified.van_elteren(t, t_lab, pooled, w_lab, alternative=alternative).p_value

    p_bad = rank_test(bad_alt)
    lo = stats.prediction_bound(meds, alpha=alpha, upper=False)
    hi = stats.prediction_bound(meds, alpha=alpha, upper=True)
    blind = False
    if higher_is_better:
        # a rate is never below 0: a lower bound at or below it can never be crossed (three nights
        # of 80, 20, 90 tok/s give −241) — clamp it there, and say the gate is blind
        blind = bool(lo <= 0)
        lo = max(lo, 0.0)
        beyond_bad, beyond_good = change < -thr, change > thr
        out_bad, out_good = value < lo, value > hi
        bound = lo
    else:
        beyond_bad, beyond_good = change > thr, change < -thr
        out_bad, out_good = value > hi, value < lo
        bound = hi
    sig_bad = bool(p_bad < alpha and out_bad)
    # the improvement test only where it can matter (it costs a second rank test)
    sig_good = bool(beyond_good and out_good and rank_test(good_alt) < alpha)
    return GateResult(
        value=value, reference=ref, change=change, p_value=p_bad, bound=bound,
        beyond_threshold=bool(beyond_bad), significant=sig_bad,
        regression=bool(beyond_bad and sig_bad), improvement=bool(beyond_good and sig_good), blind=blind,
    )


def gate_values(
    tonight: float,
    window: Sequence[float],
    *,
    threshold_pct: float,
    floor_abs: float = 0.0,
    alpha: float = 0.01,
) -> GateResult:
    """Gate a once-per-night metric where up is bad (peak VRAM).

    Regression when tonight is above the median of the window by more than `threshold_pct` % AND
    by more than `floor_abs` (VRAM barely varies, so a relative threshold alone would fire on a few
    MiB), AND above the one-sided (1-α) prediction bound of the window (which is the window's value
    itself when VRAM never moved).
    """
    w = np.asarray([v for v in window if v is not None and math.isfinite(v)], dtype=float)
    if tonight is None or not math.isfinite(tonight) or w.size == 0:
        nan = math.nan
        return GateResult(nan, nan, nan, nan, nan, False, False, False, False)
    ref = float(np.median(w))
    change = tonight / ref - 1 if ref else math.nan
    diff = tonight - ref
    thr = threshold_pct / 100.0
    hi = stats.prediction_bound(w, alpha=alpha, upper=True)
    lo = stats.prediction_bound(w, alpha=alpha, upper=False)
    if not math.isfinite(hi):  # a single trailing value
        hi = lo = ref
    beyond_bad = bool(change > thr and diff > floor_abs)
    beyond_good = bool(change < -thr and -diff > floor_abs)
    sig_bad, sig_good = bool(tonight > hi), bool(tonight < lo)
    return GateResult(
        value=float(tonight), reference=ref, change=change, p_value=math.nan, bound=hi,
        beyond_threshold=beyond_bad, significant=sig_bad,
        regression=beyond_bad and sig_bad, improvement=beyond_good and sig_good,
    )


# --------------------------------------------------------------------------------------------------
# Evaluation


@dataclass(frozen=True)
class ProvenanceChange:
    night: str
    model: str
    arm: str
    field: str
    old: str
    new: str

    @property
    def key(self) -> ArmKey:
        return (self.model, self.arm)

    def __str__(self) -> str:
        names = {"model_sha256": "model SHA256", "server_build": "server build", "driver": "driver", "gpu": "GPU"}
        return f"{names.get(self.field, self.field)} {self.old} → {self.new} ({self.night})"


@dataclass(frozen=True)
class ConfigChange:
    """Nights of a (model, arm) left out of tonight's window: their `ArmConfig` differs from tonight's."""

    model: str
    arm: str
    nights: tuple[str, ...]  # left out, among the key's last `window` nights before tonight
    what: tuple[str, ...]  # tonight's configuration against the latest of them, in words

    @property
    def key(self) -> ArmKey:
        return (self.model, self.arm)

    def __str__(self) -> str:
        span = self.nights[0] if len(self.nights) == 1 else f"{self.nights[0]} … {self.nights[-1]}"
        n = len(self.nights)
        return (f"{key_label(self.key)}: configuration changed ({'; '.join(self.what)}); "
                f"{n} night{'s' if n != 1 else ''} of the other configuration ({span}) not compared")


@dataclass
class Check(KeyedByModelArm):
    """One metric of one (model, arm) tonight."""

    model: str
    arm: str
    metric: str
    night: str
    # "regression", "improvement", "ok", "no verdict yet" (fewer than min_nights trailing nights
    # of tonight's configuration), "no data", or "missing" (evidence on a trailing night, none tonight)
    status: str
    gate: GateResult | None
    window_nights: list[str]
    threshold: str
    causes: list[ProvenanceChange] = field(default_factory=list)
    detail: str = ""  # for checks without a gate (no successful request, missing tonight)

    @property
    def regression(self) -> bool:
        return self.status == "regression"

    @property
    def missing(self) -> bool:
        return self.status == "missing"

    @property
    def verdict(self) -> bool:
        """Whether the gate judged this check (it had the nights and the data)."""
        return self.status in ("regression", "improvement", "ok")

    @property
    def reference(self) -> float:
        return self.gate.reference if self.gate else math.nan


@dataclass
class Series(KeyedByModelArm):
    model: str
    arm: str
    metric: str
    nights: list[str]
    values: np.ndarray


@dataclass
class HistoryResult:
    tonight: str
    nights: list[str]
    thresholds: Thresholds
    checks: list[Check]
    changes: list[ProvenanceChange]
    series: list[Series]
    metrics: list[str]
    notes: list[str]
    config_changes: list[ConfigChange] = field(default_factory=list)
    no_evidence: str = ""  # why tonight holds no readable run ("" when it does)
    abtest_version: str = __version__

    @property
    def regressions(self) -> list[Check]:
        return [c for c in self.checks if c.regression]

    @property
    def missing(self) -> list[Check]:
        return [c for c in self.checks if c.missing]

    @property
    def no_verdict(self) -> list[Check]:
        return [c for c in self.checks if c.status == "no verdict yet"]

    @property
    def outcome(self) -> str:
        """"no evidence" (exit 5), "regression" (exit 1), "missing" (exit 5), "no verdict yet" (no
        check could be judged: exit 0, and the headline says so) or "ok" (exit 0)."""
        if self.no_evidence:
            return "no evidence"
        if self.regressions:
            return "regression"
        if self.missing:
            return "missing"
        if not any(c.verdict for c in self.checks):
            return "no verdict yet"
        return "ok"


def provenance_changes(nights: Sequence[Night]) -> list[ProvenanceChange]:
    """Every change of model SHA256, server build, driver or GPU between consecutive nights of a key."""
    out = []
    last: dict[ArmKey, dict[str, str]] = {}
    for n in nights:
        for key, na in n.arms.items():
            prev = last.get(key)
            if prev is not None:
                for f in PROVENANCE_FIELDS:
                    if prev.get(f) != na.provenance.get(f):
                        out.append(ProvenanceChange(n.night, key[0], key[1], f, prev.get(f, "?"),
                                                    na.provenance.get(f, "?")))
            last[key] = na.provenance
    return out


def threshold_text(metric: str, th: Thresholds) -> str:
    if metric == "decode_tps":
        return f"−{th.decode_pct:g} %"
    if metric == "ttft_ms":
        return f"+{th.ttft_pct:g} %"
    return f"+{th.vram_pct:g} % and +{th.vram_mib:g} MiB"


def _strata(tonight: NightArm, window: Sequence[NightArm]) -> tuple[np.ndarray, list[np.ndarray]] | None:
    """Each request's bucket, tonight and per window night; None unless every night has them."""
    labels = [w.strata for w in window]
    if tonight.strata is None or any(x is None for x in labels):
        return None
    return tonight.strata, [x for x in labels if x is not None]


def check_night(
    tonight: NightArm, window: Sequence[NightArm], metric: str, th: Thresholds
) -> tuple[str, GateResult | None]:
    """Gate one metric of one key; ("no verdict yet", None) with too few trailing nights."""
    spec = METRIC_BY_KEY[metric]
    if len(window) < th.min_nights:
        return "no verdict yet", None
    if metric == "vram_peak_mib":
        g = gate_values(tonight.vram_peak_mib, [w.vram_peak_mib for w in window],
                        threshold_pct=th.vram_pct, floor_abs=th.vram_mib, alpha=th.alpha)
    else:
        g = gate_samples(tonight.samples(metric), [w.samples(metric) for w in window],
                         higher_is_better=spec.higher_is_better,
                         threshold_pct=th.decode_pct if metric == "decode_tps" else th.ttft_pct, alpha=th.alpha,
                         nightly=(tonight.value(metric), [w.value(metric) for w in window]),
                         strata=_strata(tonight, window))
    if not math.isfinite(g.value):
        return "no data", g
    return ("regression" if g.regression else "improvement" if g.improvement else "ok"), g


def evaluate_history(nights: Sequence[Night], thresholds: Thresholds | None = None) -> HistoryResult:
    """Tonight (the last night) against the trailing window, per (model, arm) and metric.

    The window of a key is its last `window` nights whose `ArmConfig` equals tonight's: nights of
    another configuration (argv, buckets, model file, ...) are never compared, and are named in
    `config_changes`; with fewer than `min_nights` of them the check is "no verdict yet". A key
    with evidence on one of the last `window` nights before tonight (nights with evidence) and
    none tonight is "missing": a model whose run wrote nothing tonight is a failure, never
    compared with another model's numbers.
    """
    th = thresholds or Thresholds()
    if not nights:
        raise ConfigError("no nights to evaluate")
    tonight = nights[-1]
    past_nights = [n for n in nights[:-1] if n.arms]
    changes = provenance_changes(nights)
    checks: list[Check] = []
    # a garbled file has a problem per line: the first few say enough
    notes = [f"{tonight.night}: {p}" for p in tonight.problems[:MAX_PROBLEM_NOTES]]
    if len(tonight.problems) > MAX_PROBLEM_NOTES:
        notes.append(f"{tonight.night}: … and {len(tonight.problems) - MAX_PROBLEM_NOTES} more problems")
    keys = list(dict.fromkeys(k for n in nights for k in n.arms))
    expected = {k for n in past_nights[-th.window:] for k in n.arms}
    config_changes: list[ConfigChange] = []
    for key in keys:
        model, arm = key
        recent = [n.arms[key] for n in past_nights if key in n.arms]  # every night of the key, oldest first
        if key not in tonight.arms:
            last_seen = max(n.night for n in nights if key in n.arms)
            if model in tonight.configured and arm not in tonight.configured[model]:
                notes.append(f"{key_label(key)}: not in tonight's configuration of {model} (last seen {last_seen})")
            elif key in expected:
                checks.append(Check(model, arm, "evidence", tonight.night, "missing", None,
                                    [w.night for w in recent[-th.window:]], "evidence tonight",
                                    detail=f"no evidence tonight (last seen {last_seen})"))
            else:
                notes.append(f"{key_label(key)}: not run since {last_seen} (outside the window of "
                             f"{th.window} nights: no longer expected)")
            continue
        na = tonight.arms[key]
        if na.n_failed:
            notes.append(f"{key_label(key)}: {na.n_failed} requests failed tonight")
        if na.decode_tps.size == 0 and na.ttft_ms.size == 0 and any(w.ttft_ms.size for w in recent):
            # a key that worked before and has no successful request tonight is the loudest
            # regression, whatever its configuration (a server that never started has no argv)
            window_nights = [w.night for w in recent[-th.window:]]
            checks.append(Check(model, arm, "requests", tonight.night, "regression", None, window_nights,
                                "a successful request", _causes(changes, key, window_nights, tonight.night),
                                detail=f"no successful request tonight ({na.n_failed} failed)"))
            continue
        past = [p for p in recent if _same_config(p, na)][-th.window:]
        other = [p for p in recent[-th.window:] if not _same_config(p, na)]
        if other and na.config is not None and other[-1].config is not None:
            config_changes.append(ConfigChange(model, arm, tuple(p.night for p in other),
                                               tuple(na.config.changes_from(other[-1].config))))
        window_nights = [w.night for w in past]
        for spec in GATE_METRICS:
            status, g = check_night(na, past, spec.key, th)
            c = Check(model, arm, spec.key, tonight.night, status, g, window_nights, threshold_text(spec.key, th))
            if g is not None and g.blind:
                notes.append(f"{key_label(key)} {spec.label}: the last {len(window_nights)} nights spread so "
                             "widely that their lower prediction bound is at or below 0 "
                             f"{spec.unit}: the gate cannot call any drop a regression tonight (a steadier box, "
                             "or more nights: --window, narrows it)")
            if c.regression:
                c.causes = _causes(changes, key, window_nights, tonight.night)
            checks.append(c)
    series = []
    night_names = [n.night for n in nights]
    for key in keys:
        for spec in GATE_METRICS:
            vals = np.array([n.arms[key].value(spec.key) if key in n.arms else math.nan for n in nights])
            series.append(Series(key[0], key[1], spec.key, night_names, vals))
    return HistoryResult(tonight=tonight.night, nights=night_names, thresholds=th, checks=checks, changes=changes,
                         series=series, metrics=[m.key for m in GATE_METRICS], notes=notes,
                         config_changes=config_changes, no_evidence=tonight.missing)


def _causes(changes: Sequence[ProvenanceChange], key: ArmKey, window_nights: Sequence[str],
            tonight: str) -> list[ProvenanceChange]:
    """The provenance changes of a key since its window began, newest first."""
    since = window_nights[0] if window_nights else ""
    return sorted((ch for ch in changes if ch.key == key and since < ch.night <= tonight),
                  key=lambda ch: ch.night, reverse=True)


def _same_config(a: NightArm, b: NightArm) -> bool:
    return a.config is None or b.config is None or a.config == b.config


def raise_for_outcome(result: HistoryResult) -> None:
    """MissingNight (exit 5) when tonight holds no readable run; RegressionFound (exit 1) when
    tonight regressed; MissingNight when a key of the trailing nights has no evidence tonight.
    The message is the one-line summary."""
    if result.no_evidence:
        raise MissingNight(f"no evidence for tonight ({result.tonight}): {result.no_evidence} — did tonight's "
                           "`abtest run` fail? (scripts/nightly.sh logs it in nightly.log)")
    regs, missing = result.regressions, result.missing
    gone = ""
    if missing:
        gone = (f"{len(missing)} missing on {result.tonight}: "
                + ", ".join(f"{c.label} ({c.detail.removeprefix('no evidence tonight (')}" for c in missing))
    if regs:
        text = (f"{len(regs)} regression{'s' if len(regs) != 1 else ''} on {result.tonight}: "
                + "; ".join(check_line(c) for c in regs))
        raise RegressionFound(text + (f"; and {gone}" if gone else ""))
    if missing:
        raise MissingNight(gone + " — did their `abtest run` fail? (scripts/nightly.sh: nightly.log)")


def check_line(c: Check) -> str:
    g = c.gate
    if g is None:
        text = f"{c.label}: {c.detail or c.status}"
    else:
        spec = METRIC_BY_KEY[c.metric]
        text = (f"{c.label} {spec.label} {fmt_num(g.value)} {spec.unit} vs {fmt_num(g.reference)} "
                f"({fmt_pct(g.change)}; threshold {c.threshold}")
        text += f", p {fmt_p_cell(g.p_value)})" if math.isfinite(g.p_value) else ")"
    if c.causes:
        text += " — likely cause: " + ", ".join(str(ch) for ch in c.causes)
    return text
