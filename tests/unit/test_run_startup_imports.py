"""`abtest run`'s start-up stays light: a whole quiet run never imports httpx, rich, numpy or gguf-py.

Those imports were most of the run's start-up CPU (docs/performance.md, issue 13's target: at
most 1 s for the smallest run); each is now imported where it is needed (the live display, the
httpx transport, tensor data, a capacity search, a report). This runs the real command, against
the scripted llama-server impostor, and lists what was imported when it ended.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("httpx", "rich", "numpy", "gguf", "scipy", "matplotlib", "pygments")
SCHEDULE = {"schedule": {"ttft_ms": 5, "itl_ms": 1, "tokens_per_event": [1, 2, 3]}}

_RUN = """
import atexit, json, runpy, sys
out = sys.argv[1]
atexit.register(lambda: open(out, "w").write(json.dumps(sorted(sys.modules))))
sys.argv = ["abtest", *sys.argv[2:]]
runpy.run_module("abtest", run_name="__main__")
"""


def _scripted_server(d: Path) -> Path:
    (d / "script.json").write_text(json.dumps(SCHEDULE))
    w = d / "llama-server"
    w.write_text(f'#!/bin/sh\nexec {sys.executable} {ROOT / "tests/fakes/scripted.py"} --script @{d / "script.json"} "$@"\n')
    w.chmod(0o755)
    return w


def _run(tmp_path: Path, model: Path, *flags: str) -> tuple[list[str], Path]:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "bucket": "b", "text": f"Prompt {i}: say something.",
                                           "target_tokens": None}) + "\n" for i in range(2)))
    mods = tmp_path / "modules.json"
    cmd = [sys.executable, "-c", _RUN, str(mods), "run", "--model", str(model),
           "--server-bin", str(_scripted_server(tmp_path)), "--arm", "a=-ngl 99", "--runs", "1", "--blocks", "1",
           "--warmup", "0", "--max-tokens", "8", "--prompts", str(prompts), "--out", str(tmp_path / "ev"), *flags]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=str(tmp_path), timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "ABTEST_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(mods.read_text()), next((tmp_path / "ev").glob("*.jsonl"))


def test_a_quiet_run_imports_none_of_the_heavy_packages(tmp_path: Path, tiny_moe: Path) -> None:
    modules, evidence = _run(tmp_path, tiny_moe, "--quiet")
    assert {"abtest.measure.runner", "abtest.models.gguf"} <= set(modules)  # it did run, and read the header
    assert [m for m in modules if m in HEAVY] == []
    # the untimed requests went out too (multi-token events: ids back-filled over abtest.server.api)
    kinds = [json.loads(line)["kind"] for line in evidence.read_text().splitlines()]
    assert "token_ids" in kinds, kinds


def test_the_live_display_and_the_httpx_transport_still_import_theirs(tmp_path: Path, tiny_moe: Path) -> None:
    """The other side of the test above: the same run with the display on and --http-client httpx
    does import rich and httpx, so an empty list above means they were kept off, not unseen."""
    modules, _ = _run(tmp_path, tiny_moe, "--http-client", "httpx")
    assert {"rich", "httpx"} <= set(modules)
