"""Where abtest keeps per-user state: llama-server builds, the sdist, synthesised models, hashes."""

from __future__ import annotations

import os
from pathlib import Path

ENV_CACHE = "ABTEST_CACHE"


def cache_root() -> Path:
    """`$ABTEST_CACHE`, else `~/.cache/abtest`."""
    env = os.environ.get(ENV_CACHE)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "abtest"
