"""Browser tests need Debian's chromium: with CI=true a missing browser fails them (never skips)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/headless.py

from headless import find_chromium  # noqa: E402


@pytest.fixture(scope="session")
def chromium() -> str:
    exe = find_chromium()
    if exe is None:
        why = ("the browser tests need chromium: `apt-get install -y chromium` (make browser does it when root), "
               "or set $ABTEST_CHROMIUM")
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(why)
        pytest.skip(why)
    return exe
