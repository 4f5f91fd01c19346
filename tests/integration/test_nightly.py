"""scripts/nightly.sh on CPU: one real night on tiny-moe, and the overlap guard."""

from __future__ import annotations

import fcntl
import os
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "nightly.sh"


def _config(tmp_path: Path, model: Path) -> Path:
    cfg = tmp_path / "nightly.conf"
    cfg.write_text(
        f'MODELS="{model}"\nARMS="baseline cpu-moe"\nRUNS=1\nBUCKETS="seed004"\nMAX_TOKENS=8\n'
        f'EVIDENCE_DIR="{tmp_path / "nightly"}"\nRETENTION_DAYS=60\n'
    )
    return cfg


def _env(llama_server: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["ABTEST_LLAMA_SERVER"] = str(llama_server)
    return env


def test_one_night_writes_evidence_and_reports(tmp_path: Path, llama_server: Path, tiny_moe: Path) -> None:
    proc = subprocess.run(["bash", str(SCRIPT), "--config", str(_config(tmp_path, tiny_moe))],
                          capture_output=True, text=True, timeout=300, env=_env(llama_server))
    # A single night has no trailing window: no regression can be claimed.
    assert proc.returncode == 0, proc.stdout + proc.stderr
    nights = list((tmp_path / "nightly").glob("????-??-??"))
    assert len(nights) == 1
    assert list(nights[0].glob("*.jsonl")) and (nights[0] / "report.md").stat().st_size > 0
    assert "abtest nightly" in proc.stdout
    assert "run " in (tmp_path / "nightly" / "nightly.log").read_text()


def test_overlapping_second_nightly_exits_at_once(tmp_path: Path, llama_server: Path, tiny_moe: Path) -> None:
    cfg = _config(tmp_path, tiny_moe)
    (tmp_path / "nightly").mkdir()
    with open(tmp_path / "nightly" / ".nightly.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a first nightly is "running"
        t0 = time.monotonic()
        proc = subprocess.run(["bash", str(SCRIPT), "--config", str(cfg)], capture_output=True, text=True,
                              timeout=30, env=_env(llama_server))
        assert time.monotonic() - t0 < 5
    assert proc.returncode == 75
    assert "another nightly run holds" in proc.stderr
    assert not list((tmp_path / "nightly").glob("????-??-??"))


def test_missing_config_is_a_usage_error(tmp_path: Path) -> None:
    proc = subprocess.run(["bash", str(SCRIPT), "--config", str(tmp_path / "nope.conf")],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "nightly.conf.example" in proc.stderr
