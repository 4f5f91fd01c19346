"""Output equivalence: do two arms generate the same tokens for the same prompt and run?"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def equivalence_of(g: ArmGroup, b: ArmGroup) -> Equivalence:
    base_index: dict[tuple[Path | None, str, int], RequestRecord] = {}
    for run in b.runs:
        for r in run.measured:
            if r.ok:
                base_index.setdefault((run.evidence.path, r.prompt_id, r.run_index), r)
                base_index.setdefault((None, r.prompt_id, r.run_index), r)
    pairs = identical = 0
    used: set[str] = set()
    divs: list[Divergence] = []
    for run in g.runs:
        for r in run.measured:
            if not r.ok:
                continue
            other = base_index.get((run.evidence.path, r.prompt_id, r.run_index)) or base_index.get(
                (None, r.prompt_id, r.run_index))
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
