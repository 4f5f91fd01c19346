"""scripts/nightly.sh on CPU: one real night on tiny-moe, a model gone, a night with no evidence,
and the overlap guard."""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers_evidence import Arm, fabricate

from abtest.errors import EXIT_MISSING, EXIT_MISSING_NIGHT

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "nightly.sh"


def _config(tmp_path: Path, *models: Path | str) -> Path:
    cfg = tmp_path / "nightly.conf"
    cfg.write_text(
        f'MODELS="{" ".join(map(str, models))}"\nARMS="baseline cpu-moe"\nRUNS=1\nBUCKETS="seed004"\n'
        f'MAX_TOKENS=8\nEVIDENCE_DIR="{tmp_path / "nightly"}"\nRETENTION_DAYS=60\n'
    )
    return cfg


def _env(llama_server: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    if llama_server is not None:
        env["ABTEST_LLAMA_SERVER"] = str(llama_server)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])  # this checkout's abtest
    return env


def _past_nights(evidence_dir: Path, models: tuple[str, ...], n: int = 4) -> list[str]:
    """`n` fabricated nights before today (nightly.sh names tonight by `date`), one file per model."""
    today = dt.date.today()
    nights = [(today - dt.timedelta(days=k)).isoformat() for k in range(n, 0, -1)]
    for i, night in enumerate(nights):
        for m, name in enumerate(models):
            fabricate(evidence_dir / night / f"{night.replace('-', '')}T010000-{name}.jsonl", seed=10 * i + m,
                      arms=[Arm("baseline"), Arm("cpu-moe", ["--cpu-moe"], decode_tps=9.0)], model_name=name,
                      runs=2, prompts_per_bucket=2, completion_tokens=8, started_at=f"{night}T01:00:00Z")
    return nights


def test_one_night_writes_evidence_and_reports(tmp_path: Path, llama_server: Path, tiny_moe: Path) -> None:
    proc = subprocess.run(["bash", str(SCRIPT), "--config", str(_config(tmp_path, tiny_moe))],
                          capture_output=True, text=True, timeout=300, env=_env(llama_server))
    # A single night has no trailing window: no regression can be claimed.
    assert proc.returncode == 0, proc.stdout + proc.stderr
    nights = list((tmp_path / "nightly").glob("????-??-??"))
    assert len(nights) == 1
    assert list(nights[0].glob("*.jsonl")) and (nights[0] / "report.md").stat().st_size > 0
    # the index page in the evidence root links tonight's own report page, which exists
    index = (tmp_path / "nightly" / "index.html").read_text()
    assert f'href="{nights[0].name}/report/report.html"' in index and (nights[0] / "report" / "report.html").is_file()
    assert "<h2>Trends</h2>" in index and index.count("<svg") >= 1
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


def test_a_model_gone_tonight_is_missing_not_compared_with_the_other(tmp_path: Path, llama_server: Path,
                                                                     tiny_moe: Path) -> None:
    """The issue's night: one model's file is gone. Its run exits 3, the gate names it missing (5);
    the other model is not compared with it; nightly.sh returns the run's 3, the cause."""
    from abtest.models.desc import read_model

    name = read_model(tiny_moe).name  # the model's name as a run records it (its GGUF header)
    nights = _past_nights(tmp_path / "nightly", (name, "gone"))
    proc = subprocess.run(["bash", str(SCRIPT), "--config", str(_config(tmp_path, tiny_moe, tmp_path / "gone.gguf"))],
                          capture_output=True, text=True, timeout=300, env=_env(llama_server))
    assert proc.returncode == EXIT_MISSING, proc.stdout + proc.stderr
    assert f"history exit {EXIT_MISSING_NIGHT}" in proc.stdout
    flat = " ".join(proc.stdout.split())
    assert f"gone · baseline (last seen {nights[-1]})" in flat
    assert "regression" not in flat.replace("no regression", "")
    # tiny-moe tonight is a real server, unlike the fabricated nights: another configuration
    assert f"{name} · cpu-moe: configuration changed" in flat
    assert f"{name} · cpu-moe (last seen" not in flat


def _stub_checkout(tmp_path: Path) -> Path:
    """A copy of scripts/nightly.sh whose `abtest run` succeeds and writes nothing (the runs'
    evidence went elsewhere); `abtest report` is the real one."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(SCRIPT, repo / "scripts" / "nightly.sh")
    stub = repo / ".venv" / "bin" / "abtest"
    stub.parent.mkdir(parents=True)
    stub.write_text(f'#!/bin/bash\n[ "$1" = run ] && exit 0\nexec "{sys.executable}" -m abtest "$@"\n')
    stub.chmod(0o755)
    return repo / "scripts" / "nightly.sh"


def test_a_night_without_evidence_exits_5_and_says_so(tmp_path: Path) -> None:
    _past_nights(tmp_path / "nightly", ("tiny-moe",))
    tonight = dt.date.today().isoformat()
    proc = subprocess.run(["bash", str(_stub_checkout(tmp_path)), "--config", str(_config(tmp_path, "tiny-moe"))],
                          capture_output=True, text=True, timeout=120, env=_env())
    assert proc.returncode == EXIT_MISSING_NIGHT, proc.stdout + proc.stderr
    assert f"abtest: error: no evidence for tonight ({tonight})" in proc.stdout  # in the cron mail
    history = (tmp_path / "nightly" / tonight / "history.md").read_text()
    assert history.startswith(f"**abtest nightly {tonight}: no evidence tonight**")
