"""The CLI's last line of defence: an unexpected exception (a bug, or an OS failure nobody caught)
is one line and its own exit code, never a traceback and never 1, which means "regression found"
to a nightly cron job."""

from __future__ import annotations

import pytest

from abtest import cli
from abtest.errors import EXIT_INTERNAL, EXIT_REGRESSION


def test_an_unexpected_exception_is_one_line_and_exit_internal(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("ABTEST_CACHE", str(tmp_path))

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cli.cli, "main", boom)
    with pytest.raises(SystemExit) as exc:
        cli.main(["report", "x.jsonl"])
    assert exc.value.code == EXIT_INTERNAL != EXIT_REGRESSION
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    assert "No space left on device" in err[0] and "internal error" in err[0]
    saved = err[0].rsplit(" ", 1)[-1]
    assert "OSError" in open(saved).read()  # the traceback is kept for the bug report
