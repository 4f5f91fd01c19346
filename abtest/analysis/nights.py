"""The nights of a history directory: one folder per night of evidence files, read into
per-(model, arm) nightly values with each arm's configuration (`ArmConfig`) and provenance.

`load_history` finds tonight (the newest YYYY-MM-DD folder, or `--night`) even when it holds no
readable run (then `MissingNight`); `abtest.analysis.gate` judges what this reads.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError, EvidenceError
from ..evidence import Evidence, read_evidence
from . import stats
from .arms import ArmRun, arm_runs, build_id, gpu_devices, group_runs
from .memory import memory_row
from .metrics import METRIC_BY_KEY, VRAM_PEAK, MetricDef

NIGHT_DIR = re.compile(r"^\d{4}-\d{2}-\d{2}$")
MAX_PROBLEM_NOTES = 5  # tonight's evidence problems listed one by one; the rest are counted

# The metrics the gate watches, from the one metric table.
GATE_METRICS: tuple[MetricDef, ...] = (METRIC_BY_KEY["decode_tps"], METRIC_BY_KEY["ttft_ms"], VRAM_PEAK)


# (model, arm): the model as the report names it (`ArmRun.model_name`), then the arm. Every
# comparison of the gate is between nights of one key: a night folder holds one evidence file per
# model of the nightly config, and the same arm name on two models is two different servers.
ArmKey = tuple[str, str]


class KeyedByModelArm:
    """What every record of the gate shares: its (model, arm) key and the label that names it."""

    model: str
    arm: str

    @property
    def key(self) -> ArmKey:
        return (self.model, self.arm)

    @property
    def label(self) -> str:
        return key_label(self.key)


def key_label(key: ArmKey) -> str:
    """"gpt-oss-20b · cpu-moe"."""
    return f"{key[0]} · {key[1]}"


@dataclass(frozen=True)
class ArmConfig:
    """What must be equal for two nights of one (model, arm) to be compared: the model file, the
    server argv (normalised by `abtest.argv.normalize`, as the report's `Identity.argv` is), the
    buckets and concurrency measured, and the max tokens. Several values when files of one night
    differ. Server build, driver and GPU are not here: their changes are what the gate is for."""

    model_sha256: tuple[str, ...]
    argv: tuple[tuple[str, ...], ...]
    buckets: tuple[str, ...]
    concurrency: tuple[int, ...]
    max_tokens: tuple[str, ...]

    @classmethod
    def of(cls, runs: Sequence[ArmRun]) -> ArmConfig:
        measured = [q for r in runs for q in r.measured]
        manifests = [r.evidence.manifest for r in runs if r.evidence.manifest]
        return cls(
            model_sha256=tuple(sorted({r.identity.model_sha256 for r in runs})),
            argv=tuple(sorted({r.identity.argv for r in runs})),
            buckets=tuple(sorted({q.bucket for q in measured})),
            concurrency=tuple(sorted({q.concurrency for q in measured})),
            max_tokens=tuple(sorted({str(m.config.get("max_tokens", "")) for m in manifests})),
        )

    def changes_from(self, before: ArmConfig) -> list[str]:
        """What differs, in words: e.g. ["server argv: --cpu-moe → --n-cpu-moe 12"]."""
        out = []
        if self.model_sha256 != before.model_sha256:
            out.append(f"model SHA256 {_joined(s[:12] for s in before.model_sha256)} → "
                       f"{_joined(s[:12] for s in self.model_sha256)}")
        if self.argv != before.argv:
            out.append("server argv: " + _argv_change(before.argv, self.argv))
        for name, old, new in (("buckets", before.buckets, self.buckets),
                               ("concurrency", before.concurrency, self.concurrency),
                               ("max tokens", before.max_tokens, self.max_tokens)):
            if old != new:
                out.append(f"{name} {_joined(map(str, old))} → {_joined(map(str, new))}")
        return out


def _joined(values: Iterable[str]) -> str:
    return ", ".join(v for v in values if v) or "?"


def _argv_change(old: tuple[tuple[str, ...], ...], new: tuple[tuple[str, ...], ...]) -> str:
    """The tokens that differ between two normalised argvs ("--cpu-moe → --n-cpu-moe 12")."""
    if len(old) != 1 or len(new) != 1:
        return f"{len(old)} → {len(new)} different command lines"
    a, b = old[0], new[0]
    parts = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if tag == "replace":
            parts.append(f"{' '.join(a[i1:i2])} → {' '.join(b[j1:j2])}")
        elif tag == "delete":
            parts.append(f"dropped {' '.join(a[i1:i2])}")
        elif tag == "insert":
            parts.append(f"added {' '.join(b[j1:j2])}")
    return "; ".join(parts)


@dataclass
class NightArm(KeyedByModelArm):
    """One (model, arm) on one night: the per-request samples and provenance the gate needs."""

    night: str
    arm: str
    decode_tps: np.ndarray  # per measured ok request
    ttft_ms: np.ndarray
    vram_peak_mib: float
    n_failed: int = 0
    provenance: dict[str, str] = field(default_factory=dict)
    strata: np.ndarray | None = None  # per request: its bucket (and concurrency); None = one stratum
    model: str = "?"
    config: ArmConfig | None = None  # None (in-memory tests): comparable with every night
    model_file: str = ""  # the GGUF's file name, which tells apart two files of one model name

    def samples(self, metric: str) -> np.ndarray:
        return np.asarray(getattr(self, metric), dtype=float)

    def value(self, metric: str) -> float:
        """The nightly value: the mean over buckets of each bucket's median (VRAM: the peak).

        Averaging per-bucket medians keeps the value steady when buckets differ a lot (TTFT of a
        32-token and a 2k-token prompt), where one median over the mix would jump between modes.
        """
        if metric == "vram_peak_mib":
            return self.vram_peak_mib
        a = self.samples(metric)
        ok = np.isfinite(a)
        if not ok.any():
            return math.nan
        if self.strata is None:
            return float(np.median(a[ok]))
        labels = np.asarray(self.strata)[ok]
        return float(np.mean([np.median(a[ok][labels == s]) for s in dict.fromkeys(labels.tolist())]))


@dataclass
class Night:
    night: str
    files: list[Path]
    arms: dict[ArmKey, NightArm]
    problems: list[str] = field(default_factory=list)
    missing: str = ""  # why the night holds no readable run ("" when it does)
    configured: dict[str, set[str]] = field(default_factory=dict)  # model -> arms its manifests list


# Changes named next to a regression as its likely cause (a new model file is an `ArmConfig`
# change instead: those nights are not compared at all).
PROVENANCE_FIELDS = ("server_build", "driver", "gpu")


def _provenance(runs: Sequence[ArmRun]) -> dict[str, str]:
    def joined(values: Sequence[str]) -> str:
        return " + ".join(dict.fromkeys(v for v in values if v)) or "?"

    manifests = [r.evidence.manifest for r in runs if r.evidence.manifest]
    return {
        "server_build": joined([build_id(r.start.server_build) for r in runs if r.start]),
        "driver": joined([str((m.gpu or {}).get("driver") or "") for m in manifests]),
        "gpu": joined([gpu_devices(m.gpu) for m in manifests]),
    }


def _model_file(run: ArmRun) -> str:
    return Path(run.start.model_path).name if run.start else Path(str(run.model_entry.get("path", ""))).name


def night_from_files(night: str, files: Sequence[Path]) -> Night:
    """One night's evidence reduced to per-(model, arm) samples (files of one key are pooled)."""
    return night_from_evidence(night, [read_evidence(f) for f in files])


def night_from_evidence(night: str, evidences: Sequence[Evidence]) -> Night:
    """The evidence files of one night, read, reduced to per-(model, arm) samples."""
    problems = [p for ev in evidences for p in ev.problems]
    problems += [f"{ev.path.name}: partial run (no run_end)" for ev in evidences if ev.partial and ev.manifest]
    runs = [r for ev in evidences for r in arm_runs(ev)]
    built: list[NightArm] = []
    for model, file, name in dict.fromkeys((r.model_name, _model_file(r), r.arm) for r in runs):
        mine = [r for r in runs if (r.model_name, _model_file(r), r.arm) == (model, file, name)]
        measured = [q for r in mine for q in r.measured]
        ok = [q for q in measured if q.ok]
        groups, _ = group_runs(mine)
        peaks = [memory_row(g).vram_peak_mib for g in groups]
        peaks = [p for p in peaks if math.isfinite(p)]
        built.append(NightArm(
            night=night, arm=name, model=model, model_file=file,
            decode_tps=np.array([stats.decode_tps(q) for q in ok], dtype=float),
            ttft_ms=np.array([stats.ttft_ms(q) for q in ok], dtype=float),
            vram_peak_mib=max(peaks) if peaks else math.nan,
            n_failed=len(measured) - len(ok),
            provenance=_provenance(mine),
            strata=np.array([f"{q.bucket}|c{q.concurrency}" for q in ok]),
            config=ArmConfig.of(mine),
        ))
    # Two files of one model name tonight (two quantisations whose GGUF headers share a name):
    # those keys carry the file name, so that they are never pooled.
    seen = [na.key for na in built]
    for na in built:
        if seen.count(na.key) > 1:
            na.model = f"{na.model} ({na.model_file})"
    arms = {na.key: na for na in built}
    configured: dict[str, set[str]] = {}
    for ev in evidences:
        if ev.manifest is None:
            continue
        models = {r.model_name for r in arm_runs(ev)} or {str(m.get("name", "?")) for m in ev.manifest.models}
        for model in models:
            configured.setdefault(model, set()).update(_configured_arms(ev))
    return Night(night=night, files=[ev.path for ev in evidences], arms=arms, problems=problems,
                 configured=configured)


def _configured_arms(ev: Evidence) -> set[str]:
    """The arm names a run was configured with (its manifest's config), as resolve_baseline reads them."""
    arms = ev.manifest.config.get("arms") if ev.manifest else None
    if isinstance(arms, dict):
        return {str(k) for k in arms}
    return {str(a.get("name") if isinstance(a, dict) else a) for a in arms or []}


def _read_night(night: str, sub: Path) -> Night:
    """One night folder; `Night.missing` says why it holds no readable run ("" when it does)."""
    if not sub.is_dir():
        return Night(night, [], {}, missing=f"{sub}/ does not exist")
    files = sorted(sub.glob("*.jsonl"))
    if not files:
        return Night(night, [], {}, missing=f"{sub}/ holds no *.jsonl evidence file")
    readable: list[Evidence] = []
    problems: list[str] = []
    for f in files:
        try:
            readable.append(read_evidence(f))
        except EvidenceError as exc:
            problems.append(str(exc))
    n = night_from_evidence(night, readable)
    n.files, n.problems = files, problems + n.problems
    if not n.arms:
        first = n.problems[0] if n.problems else "no arm records"
        n.missing = (f"{sub}/ holds no readable run in its {len(files)} evidence "
                     f"file{'s' if len(files) != 1 else ''} ({first})")
    return n


def load_history(directory: Path | str, night: str | None = None) -> list[Night]:
    """The YYYY-MM-DD sub-directories with evidence, oldest first, then tonight.

    Tonight is `night` (its folder may be absent) or else the newest YYYY-MM-DD folder; it is
    always the last element, with `missing` set when it holds no readable run, so that an empty
    tonight is reported as such and the previous night is never judged in its place. Later
    folders than `night` are ignored.
    """
    d = Path(directory)
    if not d.is_dir():
        raise ConfigError(f"--history {d} is not a directory — pass the folder holding YYYY-MM-DD/ nights")
    if night is not None and not NIGHT_DIR.match(night):
        raise ConfigError(f"--night {night!r} is not a date — pass YYYY-MM-DD, e.g. --night 2026-11-20")
    subs = sorted(p for p in d.iterdir() if p.is_dir() and NIGHT_DIR.match(p.name))
    if night is None:
        if not subs:
            raise ConfigError(f"--history {d} holds no YYYY-MM-DD/ sub-directories — pass the folder "
                              "scripts/nightly.sh writes (EVIDENCE_DIR)")
        night = subs[-1].name
    nights = []
    for sub in subs:
        if sub.name < night and any(sub.glob("*.jsonl")):
            past = _read_night(sub.name, sub)
            if past.arms:
                nights.append(past)
    nights.append(_read_night(night, d / night))
    return _same_keys(nights)


def _same_keys(nights: list[Night]) -> list[Night]:
    """A model name that two files shared on some night is told apart by file name on every night,
    so that each file keeps one history."""
    split = {na.model.removesuffix(f" ({na.model_file})") for n in nights for na in n.arms.values()
             if na.model_file and na.model.endswith(f" ({na.model_file})")}
    for n in nights:
        for na in n.arms.values():
            if na.model in split:
                na.model = f"{na.model} ({na.model_file})"
        n.arms = {na.key: na for na in n.arms.values()}
    return nights
