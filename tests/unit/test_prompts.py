from __future__ import annotations

from pathlib import Path

import pytest

import abtest
from abtest.errors import ConfigError
from abtest.measure.prompts import DEFAULT_PROMPTS, load_prompts


def test_default_prompts_are_package_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default set ships inside the package (a wheel has no repository around it)."""
    assert Path(str(DEFAULT_PROMPTS)).is_relative_to(Path(abtest.__file__).parent)
    monkeypatch.chdir(tmp_path)
    cases = load_prompts(None, ["tok8", "seed004"])
    assert {c.bucket for c in cases} == {"tok8", "seed004"}
    assert len({c.id for c in cases}) == len(cases)


def test_prompts_path_still_read(tmp_path: Path) -> None:
    p = tmp_path / "p.jsonl"
    p.write_text('{"id": "a", "bucket": "b", "text": "hi", "target_tokens": null}\n')
    assert [c.id for c in load_prompts(p)] == ["a"]
    with pytest.raises(ConfigError, match="cannot read prompt file .*missing.jsonl"):
        load_prompts(tmp_path / "missing.jsonl")
