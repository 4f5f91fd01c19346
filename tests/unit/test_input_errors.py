"""Bad input from a user gets a clear one-line ConfigError before anything is launched (issue 13's
list): interleaved with a load it cannot apply, arm names that cannot be file names, a prompt file
that is not UTF-8, buckets that do not exist."""

from __future__ import annotations

import dataclasses

import pytest

from abtest.config import ArmSpec, RunConfig, load_arms_file, validate
from abtest.errors import ConfigError
from abtest.measure.prompts import load_prompts


def _cfg(**kw) -> RunConfig:
    return dataclasses.replace(RunConfig(model="m", arms=(ArmSpec("a", ("-ngl", "99")), ArmSpec("b", ("-ngl", "99")))), **kw)


@pytest.mark.parametrize("kw", [{"concurrency": 4}, {"rate": 2.0}])
def test_interleaved_with_a_load_is_refused_by_validation(kw):
    """The CLI refused it, `validate` (the sweep's and every other caller's check) did not, and the
    records then carried a concurrency that was not applied."""
    with pytest.raises(ConfigError, match="interleaved"):
        validate(_cfg(schedule="interleaved", **kw))


def test_an_arm_name_with_a_slash_in_an_arms_file_is_a_config_error(tmp_path):
    f = tmp_path / "arms.toml"
    f.write_text('[arms."a/b"]\nargs = ["-ngl", "99"]\n')
    with pytest.raises(ConfigError, match="a/b"):
        load_arms_file(str(f))


def test_a_prompt_file_that_is_not_utf8_is_a_config_error(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_bytes(b'{"id": "x", "text": "caf\xe9", "bucket": "b"}\n')
    with pytest.raises(ConfigError, match="UTF-8"):
        load_prompts(f)


def test_an_unknown_bucket_is_named_not_dropped():
    with pytest.raises(ConfigError, match="nope"):
        load_prompts(None, ["tok8", "nope"])


def test_a_huge_runs_is_refused_before_a_plan_is_built():
    """--runs 1e9 built the whole plan in memory, sent nothing and left no arm_end."""
    with pytest.raises(ConfigError, match="--runs"):
        validate(_cfg(runs=10**9))
    validate(_cfg(runs=1000))


@pytest.mark.parametrize("value, words", [("1,x", "integers"), ("0,2", ">= 1"), ("2,2", "differ"), (",", ">= 1")])
def test_bad_concurrency_levels_are_a_usage_error(value: str, words: str, capsys: pytest.CaptureFixture[str]) -> None:
    from abtest.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["run", "--model", "m.gguf", "--concurrency", value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--concurrency" in err and words in err and "Traceback" not in err
