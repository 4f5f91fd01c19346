"""Bad input is refused before any server is launched and before any evidence file is opened: one
line naming the cause and the fix, and the exit code of docs/cli.md (2 usage, 3 missing)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from abtest.cli import main
from abtest.errors import EXIT_MISSING, EXIT_USAGE
from abtest.server.process import ServerProcess


@pytest.fixture
def no_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: ServerProcess) -> None:
        raise AssertionError(f"a server was launched for arm {self.spec.name!r}")

    monkeypatch.setattr(ServerProcess, "_spawn", refuse)


@pytest.fixture
def abtest_run(tmp_path: Path, scripted, tiny_moe: Path, prompts: Path, no_launch,
               capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, list[str]]]:
    """abtest_run(*extra, model=..., server_bin=..., out=...) -> (exit code, non-empty stderr lines)."""
    healthy = scripted({})

    def run(*extra: str, model: str | Path = tiny_moe, server_bin: str | Path = healthy,
            out: str | Path = tmp_path / "evidence", prompts_file: str | Path | None = prompts) -> tuple[int, list[str]]:
        argv = ["run", "--model", str(model), "--server-bin", str(server_bin), "--out", str(out),
                "--arm", "a=-ngl 99", "--runs", "1", "--warmup", "0", "--max-tokens", "4", "--quiet"]
        if prompts_file is not None:
            argv += ["--prompts", str(prompts_file)]
        with pytest.raises(SystemExit) as exc:
            main([*argv, *extra])
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert not list(Path(out).glob("*.jsonl")) if Path(out).is_dir() else True, "evidence opened"
        return int(exc.value.code or 0), err

    return run


def _one_error(err: list[str]) -> str:
    assert len(err) == 1, err
    assert err[0].startswith("abtest: error: ")
    return err[0]


# ------------------------------------------------------------------------------ server binary


def test_server_binary_missing(abtest_run, tmp_path: Path) -> None:
    code, err = abtest_run(server_bin=tmp_path / "nope" / "llama-server")
    line = _one_error(err)
    assert code == EXIT_MISSING and "does not exist" in line and "abtest server install" in line


def test_server_binary_not_executable(abtest_run, tmp_path: Path) -> None:
    plain = tmp_path / "llama-server"
    plain.write_text("#!/bin/sh\n")
    plain.chmod(0o644)
    code, err = abtest_run(server_bin=plain)
    line = _one_error(err)
    assert code == EXIT_MISSING and "is not executable; run: chmod +x" in line


def test_server_binary_that_is_not_llama_server(abtest_run) -> None:
    code, err = abtest_run(server_bin=shutil.which("false") or "/bin/false")
    line = _one_error(err)
    assert code == EXIT_MISSING and "--version exited 1" in line and "--server-bin" in line


# ------------------------------------------------------------------------------ model


def test_model_missing(abtest_run, tmp_path: Path) -> None:
    code, err = abtest_run(model=tmp_path / "nope.gguf")
    line = _one_error(err)
    assert code == EXIT_MISSING and "not found" in line and "abtest model list" in line


def test_model_unknown_name(abtest_run) -> None:
    code, err = abtest_run(model="no-such-model")
    line = _one_error(err)
    assert code == EXIT_MISSING and "unknown model name 'no-such-model'" in line


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda good: b"PK\x03\x04" + good[4:], "not a GGUF file (bad magic"),
        (lambda good: good[: len(good) * 2 // 3], "truncated ("),
        (lambda good: good[:200], "the file ends inside its GGUF header"),
        (lambda good: b"", "no GGUF header"),
    ],
    ids=["bad-magic", "truncated-data", "truncated-header", "empty"],
)
def test_model_not_a_complete_gguf(abtest_run, tiny_moe: Path, tmp_path: Path, make, words: str) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(make(tiny_moe.read_bytes()))
    code, err = abtest_run(model=bad)
    line = _one_error(err)
    assert code == EXIT_USAGE and words in line and ("re-download" in line or "re-create" in line)


# ------------------------------------------------------------------------------ evidence directory


def test_evidence_dir_under_a_regular_file(abtest_run, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, err = abtest_run(out=blocker / "evidence")
    line = _one_error(err)
    assert code == EXIT_USAGE and "cannot be created" in line and "pass --out DIR" in line


def test_evidence_dir_not_writable(abtest_run) -> None:
    code, err = abtest_run(out="/proc/abtest-evidence")  # even root cannot create files here
    line = _one_error(err)
    assert code == EXIT_USAGE and "/proc/abtest-evidence" in line and "pass --out DIR" in line


def test_evidence_disk_full(abtest_run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 4096, 4096))  # type: ignore[attr-defined]
    code, err = abtest_run()
    line = _one_error(err)
    assert code == EXIT_USAGE and "has only 4 KiB free" in line and "free some space" in line


# ------------------------------------------------------------------------------ CLI input


def _usage_error(err: list[str]) -> str:
    errors = [ln for ln in err if ln.startswith("Error: ")]
    assert len(errors) == 1, err
    return errors[0]


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--arm", "bad name=-ngl 99"], "--arm 'bad name=-ngl 99': expected NAME=\"ARGS\""),
        (["--arm", 'x=-ngl "99'], "--arm 'x=-ngl \"99': cannot split ARGS"),
        (["--arm", "nosuch"], "--arm 'nosuch': unknown ready-made arm"),
        (["--runs", "0"], "Invalid value for '--runs': must be >= 1, got 0"),
        (["--runs", "-2"], "Invalid value for '--runs': must be >= 1, got -2"),
        (["--stall-timeout", "0"], "Invalid value for '--stall-timeout'"),
        (["--buckets", "nope"], "Invalid value for '--buckets': --buckets nope: no such bucket in"),
    ],
    ids=["arm-name", "arm-quotes", "arm-unknown", "runs-0", "runs-negative", "stall-0", "buckets"],
)
def test_bad_flags_are_usage_errors(abtest_run, flags: list[str], words: str) -> None:
    code, err = abtest_run(*flags)
    assert code == EXIT_USAGE
    assert words in _usage_error(err)


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (None, "cannot read prompt file"),
        ('{"id": "p1", "text": "ok"}\n{"id": "p2", "text": \n', ":2: not a prompt (JSONDecodeError"),
        ('{"text": "no id"}\n', ":1: not a prompt (KeyError: 'id')"),
        ('{"id": "p", "text": "a"}\n{"id": "p", "text": "b"}\n', ":2: duplicate prompt id 'p'"),
        ("", "no prompts in"),
    ],
    ids=["missing", "malformed-json", "no-id", "duplicate-id", "empty"],
)
def test_bad_prompt_file_is_a_usage_error(abtest_run, tmp_path: Path, content: str | None, words: str) -> None:
    path = tmp_path / "bad-prompts.jsonl"
    if content is not None:
        path.write_text(content)
    code, err = abtest_run(prompts_file=path)
    assert code == EXIT_USAGE
    line = _usage_error(err)
    assert "Invalid value for '--prompts'" in line and str(path) in line and words in line
