"""The wheel, installed non-editable into a fresh venv, runs an A/B and reports it from there.

`make venv` installs abtest editable, so the rest of the suite reads prompts and arm profiles from
the repository; a wheel holds only what pyproject declares. This test builds the wheel from the
repository's files, installs it into a new venv and runs `abtest run` (default prompts, a shipped
profile) and `abtest report` from that install.

Offline and fast: the wheel is built with this interpreter's setuptools (no build isolation), it
is installed with `--no-index --no-deps`, and the new venv borrows the dependencies (numpy,
httpx, ...) from this interpreter's site-packages through a `.pth` path line. A path line only
appends the directory to sys.path: the `.pth` files inside it (the editable install of this venv)
are not processed, so `import abtest` in the new venv finds the wheel's copy; the test checks it.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import abtest as abtest_here
from abtest.evidence import read_evidence

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
DIST = PYPROJECT["project"]["name"]
# What the build reads: everything else in the repository stays out of the copy it builds from
# (a stale build/ or *.egg-info in the checkout cannot leak into the wheel).
BUILD_INPUTS = ("pyproject.toml", "README.md", "LICENSE", "abtest")
# Variables that would let the new venv import abtest from somewhere else (the test runner's).
_LEAKY_ENV = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "VIRTUAL_ENV")


def _setuptools_floor() -> tuple[int, ...]:
    for req in PYPROJECT["build-system"]["requires"]:
        m = re.fullmatch(r"setuptools\s*>=\s*([\d.]+)", req)
        if m:
            return tuple(int(x) for x in m.group(1).split("."))
    return (0,)


def _check_setuptools() -> None:
    version = importlib.metadata.version("setuptools")  # not imported: it patches distutils
    have = tuple(int(x) for x in re.findall(r"\d+", version)[:3])
    floor = _setuptools_floor()
    if have < floor:
        pytest.fail(f"the wheel is built with this venv's setuptools {version}, but "
                    f"pyproject needs >= {'.'.join(map(str, floor))}: run `make venv` "
                    "(or pip install -e '.[dev]') to update it")


def _sh(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout_s: float = 300) -> str:
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s)
    assert res.returncode == 0, f"{' '.join(cmd)} -> rc {res.returncode}\n{res.stdout}\n{res.stderr}"
    return res.stdout + res.stderr


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _check_setuptools()
    src = tmp_path_factory.mktemp("src")
    for name in BUILD_INPUTS:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, src / name)
    dist = tmp_path_factory.mktemp("dist")
    out = _sh([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
               "-w", str(dist), str(src)], cwd=src)
    # Our own config builds without a warning (setuptools' are Python warnings: `...Warning: text`).
    assert not re.search(r"\w+Warning\b", out), out
    (whl,) = dist.glob("*.whl")
    return whl


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("venv") / "v"
    _sh([sys.executable, "-m", "venv", "--without-pip", str(root)], cwd=root.parent)
    py = root / "bin" / "python"
    purelib = Path(_sh([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                       cwd=root).strip())
    ours = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (purelib / "_borrowed_deps.pth").write_text("".join(f"{p}\n" for p in ours), encoding="utf-8")
    _sh([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", str(wheel)],
        cwd=root)
    return root


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in _LEAKY_ENV}


def test_wheel_holds_the_prompts_and_arm_profiles(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "abtest/data/prompts/default.jsonl" in names
    for profile in (REPO / "abtest" / "data" / "servers").glob("*.toml"):
        assert f"abtest/data/servers/{profile.name}" in names
    assert {"abtest/data/servers/llama-server.toml", "abtest/data/servers/shimmy.toml"} <= names
    for graph in (REPO / "abtest" / "data" / "graphs").glob("*.json"):  # vram's compute-buffer programs
        assert f"abtest/data/graphs/{graph.name}" in names
    assert wheel.name.startswith(DIST.replace("-", "_") + "-")


def test_installed_abtest_is_the_wheel_not_the_checkout(venv: Path) -> None:
    out = _sh([str(venv / "bin" / "python"), "-c",
               "import abtest, importlib.metadata as m, json, sys; "
               f"print(json.dumps([abtest.__file__, abtest.__version__, m.version({DIST!r}), "
               "[n for n in sys.modules if n.startswith('__editable__')]]))"],
              cwd=venv, env=_env())
    file, version, dist_version, editable_finders = json.loads(out.strip().splitlines()[-1])
    assert Path(file).is_relative_to(venv), file
    # Not the checkout under test, nor the copy this test process imported (/work/main's, say).
    assert not Path(file).is_relative_to(REPO), file
    assert not Path(file).is_relative_to(Path(abtest_here.__file__).parent), file
    assert editable_finders == []  # the borrowed site-packages' editable .pth was not processed
    assert version == dist_version  # the wheel's metadata and the evidence's abtest_version agree


def test_installed_abtest_runs_an_ab_and_reports_it(venv: Path, llama_server: Path,
                                                     tmp_path: Path) -> None:
    abtest = str(venv / "bin" / "abtest")
    out_dir = tmp_path / "evidence"
    # No --prompts: the shipped default set; --arms-file by name: a shipped profile.
    ran = subprocess.run([abtest, "run", "--model", "tiny-moe", "--arms-file", "llama-server", "--runs", "1",
                          "--warmup", "0", "--max-tokens", "8", "--buckets", "tok8", "--threads", "1",
                          "--quiet", "--out", str(out_dir)],
                         cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    evidence_file = Path(ran.stdout.strip().splitlines()[-1])
    ev = read_evidence(evidence_file)
    assert [a.arm for a in ev.arm_starts] == ["baseline", "cpu-moe", "cpu-moe", "baseline"]  # --blocks 2: A B B A
    assert [a.status for a in ev.arm_ends] == ["ok"] * 4
    assert len(ev.requests) == 2 * 2 * 4 and all(r.ok for r in ev.requests)  # arms x blocks x prompts
    assert {a.server_bin for a in ev.arm_starts} == {str(llama_server)}

    rep = subprocess.run([abtest, "report", str(evidence_file), "--format", "markdown"],
                         cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
    assert rep.returncode == 0, rep.stdout + rep.stderr
    assert "baseline" in rep.stdout and "cpu-moe" in rep.stdout, rep.stdout
