"""Equivalence of two arms: can they differ at all, and do they generate the same tokens?

`cannot_differ` recognises arms whose servers compute the same thing (the same effective command
line, or only offload flags apart on a server with no GPU to offload to): the verdict says so
instead of ranking them. `equivalence_of` compares the generated tokens for the same prompt and run;
at a divergence it names both tokens and, where a `--margins` probe recorded the top logprobs of
that output, the logit margin there (how close the call was).
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
    # what the two arms chose there and how close the call was; None where the evidence cannot say
    # (compared by text, or no `--margins` probe of that output)
    token_id: int | None = None  # this arm's token at `position`
    baseline_token_id: int | None = None
    token: str | None = None  # its text piece (from a margins probe)
    baseline_token: str | None = None
    # the logit margin at `position`: the baseline's chosen token minus its runner-up, from its
    # top logprobs (a logprob difference is a logit difference; an end-of-generation token listed
    # above the chosen one is skipped: ignore_eos bars it); `margin_is_exact` when the runner-up is
    # this arm's token (else this arm's token is further behind than `margin`)
    margin: float | None = None
    margin_is_exact: bool | None = None
    arm_margin: float | None = None  # the same from this arm's side: its token minus its runner-up


@dataclass
class Equivalence:
    group: str
    baseline: str
    pairs: int
    identical: int
    compared_by: str  # "token_ids", "text" or "token_ids+text"
    greedy: bool | None
    divergences: list[Divergence]
    # ok outputs of this arm with no baseline output of the same prompt and run (the baseline's
    # session was cut, or ran fewer runs): not pairs, counted so that the rate does not hide them
    unpaired: int = 0


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


def _probed(groups_records: list[RequestRecord], r: RequestRecord, i: int) -> list[list[Any]] | None:
    """The probe's top list at position i of an output that shares r's first i + 1 tokens (the same prompt),
    from a `--margins` probe folded into one of the group's records; None when there is none."""
    ids = r.token_ids
    if ids is None:
        return None
    for q in groups_records:
        top = q.top_logprobs
        if (top is not None and q.prompt_id == r.prompt_id and q.token_ids is not None and len(top) > i
                and q.token_ids[:i + 1] == ids[:i + 1]):
            return top[i]
    return None


def _top_entries(top: Any) -> list[tuple[int, float, str]] | None:
    """A probe's top list at one position as (id, logprob, piece), or None when the file's list is
    not one (a hand-edited or damaged file: no margin from it, never a traceback)."""
    if not isinstance(top, list):
        return None
    out = []
    for entry in top:
        if not isinstance(entry, list | tuple) or len(entry) < 3:
            return None
        try:
            out.append((int(entry[0]), float(entry[1]), str(entry[2])))
        except (TypeError, ValueError):
            return None
    return out


def _chosen_rank(top: list[tuple[int, float, str]], chosen: int | None) -> int | None:
    """Where the chosen token stands in a probe's top list: 0, or later when every entry above it is
    a token greedy decoding could not take (an end-of-generation token that ignore_eos bars: the
    server lists it, the sampler skips it). None when the chosen token is not listed."""
    return next((k for k, (tid, _, _) in enumerate(top) if tid == chosen), None)


def _explain(d: Divergence, r: RequestRecord, other: RequestRecord, mine: list[RequestRecord],
             theirs: list[RequestRecord]) -> Divergence:
    """The divergence with the two tokens and the logit margins there, as far as the evidence says."""
    i = d.position
    if r.token_ids is None or other.token_ids is None:
        return d
    top_b, top_a = _probed(theirs, other, i), _probed(mine, r, i)
    if top_b is None and top_a is None:
        return d  # no probe: the position is all the report says (as it did before --margins)
    d.token_id = r.token_ids[i] if i < len(r.token_ids) else None
    d.baseline_token_id = other.token_ids[i] if i < len(other.token_ids) else None
    for raw, side in ((top_b, "baseline"), (top_a, "arm")):
        mine_id, their_id = (d.baseline_token_id, d.token_id) if side == "baseline" else (d.token_id, d.baseline_token_id)
        top = _top_entries(raw)
        k = None if top is None else _chosen_rank(top, mine_id)
        if top is None or k is None:
            continue  # not the output it was probed for (or no usable list): nothing from this side
        _, lp1, piece1 = top[k]
        if side == "baseline":
            d.baseline_token = piece1
        else:
            d.token = piece1
        if k + 1 >= len(top):
            continue  # no runner-up listed (the top held barred tokens): no margin from this side
        id2, lp2, piece2 = top[k + 1]
        if side == "baseline":
            d.margin, d.margin_is_exact = lp1 - lp2, id2 == their_id
            if id2 == their_id and d.token is None:
                d.token = piece2
        else:
            d.arm_margin = lp1 - lp2
            if id2 == their_id and d.baseline_token is None:
                d.baseline_token = piece2
    return d


def equivalence_of(g: ArmGroup, b: ArmGroup) -> Equivalence:
    # the same prompt and run of the same session (file, block), else of the same file, else any
    base_index: dict[tuple[Path | None, int | None, str, int], RequestRecord] = {}
    for run in b.runs:
        for r in run.measured:
            if r.ok:
                base_index.setdefault((run.evidence.path, run.block, r.prompt_id, r.run_index), r)
                base_index.setdefault((run.evidence.path, None, r.prompt_id, r.run_index), r)
                base_index.setdefault((None, None, r.prompt_id, r.run_index), r)
    pairs = identical = unpaired = 0
    used: set[str] = set()
    divs: list[Divergence] = []
    mine: list[RequestRecord] | None = None  # the groups' records, for the margins: read once, on the first divergence
    theirs: list[RequestRecord] = []
    for run in g.runs:
        for r in run.measured:
            if not r.ok:
                continue
            other = (base_index.get((run.evidence.path, run.block, r.prompt_id, r.run_index))
                     or base_index.get((run.evidence.path, None, r.prompt_id, r.run_index))
                     or base_index.get((None, None, r.prompt_id, r.run_index)))
            if other is None:
                unpaired += 1
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
            elif r.token_ids is not None and other.token_ids is not None:
                if mine is None:
                    mine, theirs = g.measured, b.measured
                divs.append(_explain(Divergence(r.bucket, r.prompt_id, r.run_index, pos), r, other, mine, theirs))
            else:
                divs.append(Divergence(r.bucket, r.prompt_id, r.run_index, pos))
    temps = [_find_key(run.evidence.manifest.config, "temperature") for run in g.runs + b.runs if run.evidence.manifest]
    temps = [t for t in temps if isinstance(t, (int, float))]
    greedy = (all(t == 0 for t in temps)) if temps else None
    return Equivalence(g.label, b.label, pairs, identical, "+".join(sorted(used)) or "-", greedy, divs, unpaired)
