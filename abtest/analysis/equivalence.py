"""Equivalence of two arms: can they differ at all, and do they generate the same tokens?

`cannot_differ` recognises arms whose servers compute the same thing (the same effective command
line, or only offload flags apart on a server with no GPU to offload to): the verdict says so
instead of ranking them. `equivalence_of` compares the generated tokens for the same prompt and run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..argv import split_offload
from ..records import RequestRecord
from .arms import ArmGroup


@dataclass
class Divergence:
    bucket: str
    prompt_id: str
    run_index: int
    position: int  # first differing token index (or character index when compared by text)


@dataclass
class Equivalence:
    group: str
    baseline: str
    pairs: int
    identical: int
    compared_by: str  # "token_ids", "text" or "token_ids+text"
    greedy: bool | None
    divergences: list[Divergence]


def _find_key(obj: Any, key: str) -> Any:
    if isinstance(obj, dict):
        if key in obj:
            return obj[key]
        for v in obj.values():
            found = _find_key(v, key)
            if found is not None:
                return found
    elif isinstance(obj, list):
        for v in obj:
            found = _find_key(v, key)
            if found is not None:
                return found
    return None


def first_divergence(a: Sequence[Any], b: Sequence[Any]) -> int | None:
    """Index of the first differing element; the shorter length if one is a prefix; None if equal."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def _no_gpu_backend(g: ArmGroup) -> str:
    """Why the group's servers had no GPU to offload to ("" when they may have had one): a build
    without a GPU backend, or a host where the manifest found no GPU."""
    backends = {str((run.start.server_build or {}).get("backend") or "") for run in g.runs if run.start}
    if backends == {"cpu"}:
        return "the server build has no GPU backend (cpu)"
    gpus = [run.evidence.manifest.gpu for run in g.runs if run.evidence.manifest]
    if gpus and all(gpu and gpu.get("available") is False for gpu in gpus):
        return "the host had no GPU (manifest)"
    return ""


def cannot_differ(g: ArmGroup, b: ArmGroup) -> str | None:
    """Why arm group `g` cannot differ from `b`, or None when it can.

    Both ran the same model file and server build on the same host and GPU (their `Identity`
    apart from the argv), and either the same command line after `argv.normalize` (port, model
    path and log file masked), or command lines that differ only in `argv.OFFLOAD` flags on servers
    with no GPU to offload to (a CPU build, or no GPU on the host)."""
    a, c = g.identity, b.identity
    if not g.runs or not b.runs or any(r.start is None for r in (*g.runs, *b.runs)):
        return None
    if (a.host, a.gpu, a.model_sha256, a.server_build) != (c.host, c.gpu, c.model_sha256, c.server_build):
        return None
    if a.argv == c.argv:
        return ("the same server command line after normalisation (port, model path and log file masked), "
                "the same model, build, host and GPU")
    (rest_a, off_a), (rest_c, off_c) = split_offload(a.argv), split_offload(c.argv)
    why = _no_gpu_backend(g)
    if rest_a == rest_c and why and why == _no_gpu_backend(b):
        flags = " vs ".join(" ".join(f) or "none" for f in (off_a, off_c))
        return f"only offload flags differ ({flags}) and {why}: there is nothing to offload to"
    return None


def equivalence_of(g: ArmGroup, b: ArmGroup) -> Equivalence:
    # the same prompt and run of the same session (file, block), else of the same file, else any
    base_index: dict[tuple[Path | None, int | None, str, int], RequestRecord] = {}
    for run in b.runs:
        for r in run.measured:
            if r.ok:
                base_index.setdefault((run.evidence.path, run.block, r.prompt_id, r.run_index), r)
                base_index.setdefault((run.evidence.path, None, r.prompt_id, r.run_index), r)
                base_index.setdefault((None, None, r.prompt_id, r.run_index), r)
    pairs = identical = 0
    used: set[str] = set()
    divs: list[Divergence] = []
    for run in g.runs:
        for r in run.measured:
            if not r.ok:
                continue
            other = (base_index.get((run.evidence.path, run.block, r.prompt_id, r.run_index))
                     or base_index.get((run.evidence.path, None, r.prompt_id, r.run_index))
                     or base_index.get((None, None, r.prompt_id, r.run_index)))
            if other is None:
                continue
            pairs += 1
            if r.token_ids is not None and other.token_ids is not None:
                used.add("token_ids")
                pos = first_divergence(r.token_ids, other.token_ids)
            else:
                used.add("text")
                pos = first_divergence(r.text, other.text)
            if pos is None:
                identical += 1
            else:
                divs.append(Divergence(r.bucket, r.prompt_id, r.run_index, pos))
    temps = [_find_key(run.evidence.manifest.config, "temperature") for run in g.runs + b.runs if run.evidence.manifest]
    temps = [t for t in temps if isinstance(t, (int, float))]
    greedy = (all(t == 0 for t in temps)) if temps else None
    return Equivalence(g.label, b.label, pairs, identical, "+".join(sorted(used)) or "-", greedy, divs)
