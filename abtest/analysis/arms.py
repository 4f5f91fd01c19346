"""Arms as the evidence recorded them: server sessions, identities, pooling into groups, the baseline.

The unit the report's inference counts is the server session: one (file, arm, block) — an arm's
server from its start to its stop (`ArmRun`). An arm restarted per block (`abtest run --blocks N`)
has several sessions in one file; files of the same identity pooled into one `ArmGroup` add theirs.
Requests of one session share that session's state (where the weights landed, the box's load while
it ran), so they are not independent samples of the arm: `stratified.session_ratio` compares arms
over sessions.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..argv import normalize
from ..errors import ConfigError, EvidenceError
from ..evidence import Evidence, read_evidence
from ..records import SCHEMA_VERSION, ArmEnd, ArmStart, RequestRecord, VramSample

# Keys of manifest.host that identify a machine (volatile ones such as free memory are ignored).
HOST_KEYS = ("hostname", "node", "machine", "cpu", "cpu_model", "cpu_count", "mem_total_mib")




@dataclass(frozen=True)
class Identity:
    """What must match for two files' requests of one arm to be pooled."""

    host: str
    gpu: str
    model_sha256: str
    server_build: str
    argv: tuple[str, ...]

    @property
    def env(self) -> tuple[str, str, str]:
        return (self.host, self.gpu, self.model_sha256)

    def differences(self, other: Identity) -> list[str]:
        names = {"host": "host", "gpu": "GPU/driver", "model_sha256": "model SHA256",
                 "server_build": "server build", "argv": "server argv"}
        return [label for key, label in names.items() if getattr(self, key) != getattr(other, key)]


def host_label(host: dict[str, Any]) -> str:
    return str(host.get("hostname") or host.get("node") or host.get("machine") or "?")


def _host_key(host: dict[str, Any]) -> str:
    picked = {k: host[k] for k in HOST_KEYS if k in host}
    return json.dumps(picked or host, sort_keys=True, default=str)


def gpu_devices(gpu: dict[str, Any]) -> str:
    """e.g. "NVIDIA H100 80GB HBM3", "2× NVIDIA H200", or "no GPU (reason)"."""
    if not gpu:
        return "GPU unknown"
    if not gpu.get("available", True):
        return f"no GPU ({gpu.get('reason') or 'not available'})"
    names = [str(d.get("name", "?")) for d in gpu.get("devices", []) if isinstance(d, dict)]
    counted = {n: names.count(n) for n in dict.fromkeys(names)}
    return ", ".join(f"{c}× {n}" if c > 1 else n for n, c in counted.items()) or "GPU"


def gpu_label(gpu: dict[str, Any]) -> str:
    """e.g. "NVIDIA H100 80GB HBM3 · driver 550.54.15", or "no GPU (reason)"."""
    dev = gpu_devices(gpu)
    if not gpu or not gpu.get("available", True):
        return dev
    return f"{dev} · driver {gpu.get('driver') or '?'}"


def _gpu_key(gpu: dict[str, Any]) -> str:
    devices = [
        {k: d.get(k) for k in ("name", "uuid", "memory_total_mib") if k in d}
        for d in gpu.get("devices", []) if isinstance(d, dict)
    ]
    return json.dumps({"available": gpu.get("available"), "driver": gpu.get("driver"), "devices": devices},
                      sort_keys=True, default=str)


def build_id(build: dict[str, Any] | None) -> str:
    build = build or {}
    return str(build.get("build_id") or build.get("version_text") or "?")


@dataclass
class ArmRun:
    """One server session: one arm's server from its start to its stop, as one evidence file
    recorded it (an arm restarted per block has one ArmRun per block)."""

    evidence: Evidence
    arm: str
    start: ArmStart | None
    end: ArmEnd | None
    requests: list[RequestRecord]  # every request of the session, warm-up included
    memory: list[VramSample]
    identity: Identity
    model_name: str
    model_entry: dict[str, Any]
    block: int = 0  # `ArmStart.block`: which of the arm's sessions in this file (0-based)
    order: int = 0  # the session's place among every arm's sessions of its file (0 = first started)

    @property
    def failed(self) -> bool:
        return self.end is not None and self.end.status == "failed"

    @property
    def measured(self) -> list[RequestRecord]:
        return [r for r in self.requests if not r.warmup]


@dataclass
class ArmGroup:
    """One or more server sessions pooled (identical identity), reported as one column."""

    label: str
    arm: str
    identity: Identity
    runs: list[ArmRun]  # the sessions, in the order they ran (files by start time, then file order)

    @property
    def measured(self) -> list[RequestRecord]:
        return [r for run in self.runs for r in run.measured]

    @property
    def ok(self) -> list[RequestRecord]:
        return [r for r in self.measured if r.ok]

    @property
    def sources(self) -> list[Path]:
        """The evidence files the sessions came from, each once."""
        return list(dict.fromkeys(run.evidence.path for run in self.runs))

    def session_label(self, run: ArmRun) -> str:
        """How a warning or the sessions table names one session: the file when the group pools
        several, the block when its file holds several of this arm ("" for a lone session)."""
        parts = []
        if len(self.sources) > 1:
            parts.append(run.evidence.path.name)
        if sum(1 for r in self.runs if r.evidence.path == run.evidence.path) > 1:
            parts.append(f"block {run.block}")
        return " ".join(parts)

    @property
    def model_name(self) -> str:
        return self.runs[0].model_name

    @property
    def model_entry(self) -> dict[str, Any]:
        return self.runs[0].model_entry


def _model_entry(ev: Evidence, start: ArmStart | None) -> tuple[str, dict[str, Any]]:
    models = ev.manifest.models if ev.manifest else []
    if start is not None:
        for m in models:
            if m.get("path") == start.model_path or (start.model_sha256 and m.get("sha256") == start.model_sha256):
                return str(m.get("name") or Path(start.model_path).stem), m
        return Path(start.model_path).stem or "?", {}
    if len(models) == 1:
        return str(models[0].get("name", "?")), models[0]
    return "?", {}


def _sessions(ev: Evidence) -> list[tuple[str, int]]:
    """Every (arm, block) of one file in the order the sessions started: arm_start order, then
    sessions known only from an arm_end (a server that never became healthy) or from requests."""
    keys = [(a.arm, a.block) for a in ev.arm_starts]
    keys += [(a.arm, a.block) for a in ev.arm_ends]
    keys += [(r.arm, r.block) for r in ev.requests]
    return list(dict.fromkeys(keys))


def arm_runs(ev: Evidence) -> list[ArmRun]:
    """The server sessions of one file, in the order they started (arms seen only in request
    records included); a version-1 file has one session per arm (block 0)."""
    manifest = ev.manifest
    host = manifest.host if manifest else {}
    gpu = manifest.gpu if manifest else {}
    out = []
    for order, (name, block) in enumerate(_sessions(ev)):
        start = next((a for a in reversed(ev.arm_starts) if a.arm == name and a.block == block), None)
        end = next((a for a in reversed(ev.arm_ends) if a.arm == name and a.block == block), None)
        model_name, entry = _model_entry(ev, start)
        sha = start.model_sha256 if start else str(entry.get("sha256", ""))
        ident = Identity(
            host=_host_key(host),
            gpu=_gpu_key(gpu),
            model_sha256=sha or "",
            server_build=build_id(start.server_build) if start else "?",
            argv=normalize(start.argv) if start else (),
        )
        out.append(ArmRun(
            evidence=ev, arm=name, start=start, end=end,
            requests=[r for r in ev.requests if r.arm == name and r.block == block],
            memory=[m for m in ev.memory if m.arm == name and m.block == block],
            identity=ident, model_name=model_name, model_entry=entry, block=block, order=order,
        ))
    # a session whose server never started (no arm_start) is still that arm's: it takes the identity
    # of a session of the same arm that did, so that it is not shown as another configuration
    for run in out:
        twin = next((r for r in out if r.arm == run.arm and r.start is not None), None)
        if run.start is None and twin is not None:
            run.identity, run.model_name, run.model_entry = twin.identity, twin.model_name, twin.model_entry
    return out


def check_models(runs: Iterable[ArmRun], *, allow_mixed_models: bool = False) -> None:
    """Refuse to pool files whose SHA256 differs for one model name (ConfigError)."""
    seen: dict[str, dict[str, Path]] = {}
    for run in runs:
        if run.identity.model_sha256:
            seen.setdefault(run.model_name, {}).setdefault(run.identity.model_sha256, run.evidence.path)
    for name, shas in seen.items():
        if len(shas) > 1 and not allow_mixed_models:
            listing = "; ".join(f"{sha[:12]} in {path.name}" for sha, path in shas.items())
            raise ConfigError(
                f"model {name!r} has {len(shas)} different SHA256s across the evidence files ({listing}); "
                "these are different weights, so their numbers are not comparable — report them separately, "
                "or pass --allow-mixed-models to show them side by side"
            )


def group_runs(runs: Sequence[ArmRun]) -> tuple[list[ArmGroup], list[str]]:
    """Pool runs with the same arm name and identity; label the rest side by side. Returns notes."""
    groups: list[ArmGroup] = []
    for run in runs:
        g = next((g for g in groups if g.arm == run.arm and g.identity == run.identity), None)
        if g is None:
            groups.append(ArmGroup(label=run.arm, arm=run.arm, identity=run.identity, runs=[run]))
        else:
            g.runs.append(run)
    files = {p: i for i, p in enumerate(dict.fromkeys(run.evidence.path for run in runs))}
    for g in groups:  # the order the sessions ran: files by start time, then the order in the file
        g.runs.sort(key=lambda r: (r.evidence.manifest.started_at if r.evidence.manifest else "",
                                   files[r.evidence.path], r.order))
    notes = []
    by_arm: dict[str, list[ArmGroup]] = {}
    for g in groups:
        by_arm.setdefault(g.arm, []).append(g)
    used = set()
    for arm, gs in by_arm.items():
        if len(gs) == 1:
            if len(gs[0].sources) > 1:
                notes.append(f"{arm}: pooled {len(gs[0].sources)} files ({', '.join(p.name for p in gs[0].sources)})")
            continue
        diffs = sorted({d for g in gs[1:] for d in gs[0].identity.differences(g.identity)})
        for g in gs:
            label = f"{arm} [{g.sources[0].stem}]"
            k = 2
            while label in used:
                label = f"{arm} [{g.sources[0].stem} #{k}]"
                k += 1
            used.add(label)
            g.label = label
        notes.append(
            f"{arm}: shown side by side, not pooled, across {', '.join(p.name for g in gs for p in g.sources)} "
            f"— {', '.join(diffs)} differ"
        )
    return groups, notes


def resolve_baseline(groups: Sequence[ArmGroup], evidences: Sequence[Evidence], name: str | None) -> str:
    """--baseline NAME, else an arm called "baseline", else the config's first arm, else the first seen."""
    arms = list(dict.fromkeys(g.arm for g in groups))
    if not arms:
        newer = [ev for ev in evidences if ev.newer_schema_lines]
        if newer:  # not an empty run: a file of a newer abtest
            raise EvidenceError(
                f"{', '.join(ev.path.name for ev in newer)}: written by a newer abtest (evidence schema above "
                f"{SCHEMA_VERSION}, {sum(ev.newer_schema_lines for ev in newer)} lines) — upgrade abtest "
                "(pip install -U abtest-llm) to read it"
            )
        raise EvidenceError("the evidence files hold no arms — was the run started? (no arm_start records)")
    if name is not None:
        if name not in arms:
            raise ConfigError(f"--baseline {name!r} is not an arm of these files; arms: {', '.join(arms)}")
        return name
    if "baseline" in arms:
        return "baseline"
    for ev in evidences:
        cfg_arms = ev.manifest.config.get("arms") if ev.manifest else None
        if isinstance(cfg_arms, dict):
            cfg_arms = [{"name": k} for k in cfg_arms]
        for a in cfg_arms or []:
            n = a.get("name") if isinstance(a, dict) else a
            if n in arms:
                return str(n)
    return arms[0]


def baseline_for(g: ArmGroup, baselines: Sequence[ArmGroup]) -> ArmGroup | None:
    if not baselines:
        return None

    def score(b: ArmGroup) -> tuple[int, int]:
        shared = bool(set(b.sources) & set(g.sources))
        return (int(shared), int(b.identity.env == g.identity.env))

    return max(baselines, key=score)  # max keeps the first of equals


def expand_paths(paths: Iterable[Path | str]) -> list[Path]:
    """Files as given; directories become their *.jsonl files (sorted). ConfigError if none."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(p.glob("*.jsonl")))
        elif p.exists():
            out.append(p)
        else:
            raise ConfigError(f"evidence file {p} does not exist — pass files written by `abtest run` (evidence/*.jsonl)")
    if not out:
        raise ConfigError("no evidence files given (directories are searched for *.jsonl) — e.g. abtest report evidence/")
    return list(dict.fromkeys(out))


def load_evidence(paths: Iterable[Path | str]) -> list[Evidence]:
    return [read_evidence(p) for p in expand_paths(paths)]
