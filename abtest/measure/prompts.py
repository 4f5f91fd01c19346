"""Bucketed prompts, cut to an exact token count for each model with the arm's own server.

A prompt file is JSONL, one object per line: ``{"id": str, "bucket": str, "text": str,
"target_tokens": int | null}``. With ``target_tokens`` set, the text is repeated as needed and cut
so that the server's own ``/tokenize`` (with special tokens, as the server will count the prompt)
says exactly that many tokens, or the nearest it can reach; ``null`` keeps the text as written
(the seed-004 prompts). The count actually reached is recorded per arm, never guessed.

The default set ships inside the package (``abtest/data/prompts/default.jsonl``, read with
importlib.resources), so an installed abtest finds it wherever it runs.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from ..errors import ConfigError
from ..server.api import ApiClient

if sys.version_info >= (3, 11):
    from importlib.resources.abc import Traversable
else:  # pragma: no cover
    from importlib.abc import Traversable

DEFAULT_PROMPTS: Traversable = files("abtest") / "data" / "prompts" / "default.jsonl"


@dataclass(frozen=True)
class PromptCase:
    id: str
    bucket: str
    text: str
    target_tokens: int | None = None


@dataclass(frozen=True)
class FittedPrompt:
    """A prompt as sent to one server: its text and the token count that server reports."""

    case: PromptCase
    text: str
    n_tokens: int


def load_prompts(path: str | Path | None = None, buckets: list[str] | None = None) -> list[PromptCase]:
    """Read a prompt JSONL (the shipped default set without `path`); a bad line is a ConfigError quoting it."""
    source: Path | Traversable = Path(path) if path else DEFAULT_PROMPTS
    try:
        lines = source.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read prompt file {source}: {exc.strerror} — check --prompts") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"prompt file {source} is not UTF-8 (byte {exc.start}: {exc.reason}) — "
                          "save it as UTF-8") from exc
    cases: list[PromptCase] = []
    seen: set[str] = set()
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            case = PromptCase(
                id=str(obj["id"]),
                bucket=str(obj.get("bucket", "default")),
                text=str(obj["text"]),
                target_tokens=None if obj.get("target_tokens") is None else int(obj["target_tokens"]),
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ConfigError(
                f"{source}:{lineno}: not a prompt ({type(exc).__name__}: {exc}); each line needs "
                '{"id": ..., "text": ..., "bucket": ..., "target_tokens": N|null} — fix --prompts'
            ) from exc
        if case.id in seen:
            raise ConfigError(f"{source}:{lineno}: duplicate prompt id {case.id!r} — ids must be unique")
        if case.target_tokens is not None and case.target_tokens < 1:
            raise ConfigError(f"{source}:{lineno}: target_tokens must be >= 1, got {case.target_tokens}")
        seen.add(case.id)
        cases.append(case)
    if buckets:
        unknown = [b for b in buckets if b not in {c.bucket for c in cases}]
        if unknown:
            have = ", ".join(dict.fromkeys(c.bucket for c in cases))
            raise ConfigError(f"--buckets {','.join(unknown)}: no such bucket in {source} (it has: {have})")
        cases = [c for c in cases if c.bucket in buckets]
    if not cases:
        wanted = f" in buckets {buckets}" if buckets else ""
        raise ConfigError(f"no prompts{wanted} in {source} — check --prompts / --buckets")
    return cases


def _tokenize(client: ApiClient, text: str) -> list[int]:
    answer = client.post_json("/tokenize", {"content": text, "add_special": True})
    return [t if isinstance(t, int) else int(t["id"]) for t in answer["tokens"]]


def _detokenize(client: ApiClient, tokens: list[int]) -> str:
    return str(client.post_json("/detokenize", {"tokens": tokens})["content"])


def fit_prompts(cases: list[PromptCase], base_url: str, timeout_s: float = 60.0) -> list[FittedPrompt]:
    """Cut every case to its target with this server's tokenizer and count it exactly."""
    fitted: list[FittedPrompt] = []
    with ApiClient(base_url, timeout_s) as client:
        n_special = len(_tokenize(client, ""))  # BOS etc. that the server adds
        for case in cases:
            if case.target_tokens is None:
                fitted.append(FittedPrompt(case, case.text, len(_tokenize(client, case.text))))
                continue
            fitted.append(_fit_one(client, case, case.target_tokens, n_special))
    return fitted


def _fit_one(client: ApiClient, case: PromptCase, target: int, n_special: int) -> FittedPrompt:
    source = case.text
    part = 2
    while len(_tokenize(client, source)) < target + 8:
        source += f"\n\nPart {part}. " + case.text
        part += 1
    body = _tokenize(client, source)[n_special:]
    want = max(target - n_special, 1)
    best: FittedPrompt | None = None
    # Detokenize-then-retokenize can merge across the cut; step the cut until the count is exact.
    for _ in range(8):
        text = _detokenize(client, body[:want])
        n = len(_tokenize(client, text))
        if best is None or abs(n - target) < abs(best.n_tokens - target):
            best = FittedPrompt(case, text, n)
        if n == target:
            break
        want = max(1, want + (target - n))
    assert best is not None
    return best
