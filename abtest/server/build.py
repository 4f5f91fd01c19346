"""Finding or building `llama-server` (and `llama-bench` beside it).

Two public entry points:

- `find_server(server_bin=None)` -> `ServerBinary`: which binary a run would use. Discovery order:
  the explicit `server_bin`, `$ABTEST_LLAMA_SERVER`, `llama-server` on PATH, then the cache (the
  newest build whose backend matches the preference). An explicit path or env var that is wrong is
  an error, never a silent fall-through to the next place.
- `install(...)` -> `ServerBinary`: builds `llama-server` and `llama-bench` with cmake from the
  llama.cpp source vendored in the pinned llama-cpp-python sdist (or from a local `--source` directory
  or .tar.gz for air-gapped boxes) and installs them into a per-user cache:

      <cache>/sdist/llama_cpp_python-<version>.tar.gz          the downloaded sdist (rebuilds need no network)
      <cache>/llama-server/<build_id>/bin/{llama-server,llama-bench}
      <cache>/llama-server/<build_id>/build.json               `BuildInfo`
      <cache>/logs/<build_id>.log                              cmake's output of the last attempt

  `build_id` is `<version>-<sha12>-<backend>`: the vendored source has no git metadata, so the
  binary's `--version` says `0.5.0-dev (build 0, commit unknown)` whatever it was built from. The
  build id is therefore the build's identity, and a run records it wherever the server version is.

The library never prints: progress goes to a callback as `BuildEvent`s, errors are `AbtestError`s.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..cache import cache_root
from ..errors import BinaryNotFound, ConfigError, ProvisionError

__all__ = [
    "BACKENDS",
    "LLAMA_CPP_PYTHON_VERSION",
    "BuildEvent",
    "BuildInfo",
    "ServerBinary",
    "build_id_for",
    "builds_dir",
    "cache_root",
    "check_toolchain",
    "cmake_flags",
    "default_backend",
    "find_nvcc",
    "find_server",
    "install",
    "list_builds",
    "parse_progress_line",
    "source_sha256",
]

# The pinned source of llama.cpp: the sdist of llama-cpp-python vendors it (pyproject's [tool.abtest]).
LLAMA_CPP_PYTHON_VERSION = "0.3.36"

SERVER_NAME = "llama-server"
BENCH_NAME = "llama-bench"
BUILD_JSON = "build.json"
ENV_SERVER = "ABTEST_LLAMA_SERVER"
BUILD_INFO_VERSION = 1

# Verified on the 2-core dev box and the H100 box. No UI (no npm, no download), no OpenSSL, no
# tests/examples; static libs so the two binaries are self-contained and can be copied anywhere.
# GGML_NATIVE stays at its default ON (-march=native, CUDA arch "native"): fine for a per-machine
# cache, and recorded in build.json. LLAMA_CURL is deprecated in this llama.cpp; not passed.
BASE_CMAKE_FLAGS: tuple[str, ...] = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DBUILD_SHARED_LIBS=OFF",
)
# The pinned llama.cpp's AMX kernels crash (SIGILL at `tilezero`, SIGSEGV at `ldtilecfg`) wherever
# -march=native enables them: its tile config lives on the stack and can be optimised away
# (llama.cpp PR 26954; issues 20824, 28756). Seen on this project's 2-core CPU box (an AMX Xeon VM),
# where every Q4_0 model died while warming up. An explicit -mno- wins over -march=native in GCC
# and Clang wherever it stands, so CMAKE_<LANG>_FLAGS suffice. x86-64 only: other compilers reject
# the flags.
NO_AMX_FLAGS = ("-mno-amx-tile", "-mno-amx-int8", "-mno-amx-bf16")
# Bumped whenever the recipe (the flags above or below) changes what a build of the same source
# is, so that a cached build of an older recipe is not taken for this one. Recorded in the id.
BUILD_RECIPE = 2
BACKENDS = ("cpu", "cuda")
CUDA_DEFAULT_DIRS = (Path("/usr/local/cuda/bin"),)

# cmake's Makefile generator prints "[ 45%] Building CXX ..."; Ninja prints "[123/456] Building ...".
_MAKE_PROGRESS = re.compile(r"^\[\s*(\d{1,3})%\]")
_NINJA_PROGRESS = re.compile(r"^\[(\d+)/(\d+)\]")


# --------------------------------------------------------------------------------------------- types


@dataclass(frozen=True)
class ServerBinary:
    """A `llama-server` that a run can launch, and what is known about it."""

    path: Path  # absolute path of the llama-server executable
    found_via: str  # "--server-bin", "$ABTEST_LLAMA_SERVER", "PATH" or "cache"
    version_text: str  # stripped output of `llama-server --version` (stdout + stderr)
    build_id: str  # build.json's build_id, else "file-<sha12 of the executable>"
    backend: str  # "cpu", "cuda", ... from build.json, else guessed from --version/--list-devices
    bench_path: Path | None  # llama-bench beside it, or None
    build_info: BuildInfo | None = None  # build.json beside it (cache builds), or None


@dataclass(frozen=True)
class BuildInfo:
    """The contents of build.json, written beside the installed binaries."""

    build_id: str  # "<version>-<sha12>-<backend>", also the cache directory's name
    version: str  # llama-cpp-python sdist version the llama.cpp source came from ("local" if unknown)
    sha256: str  # of the sdist/tarball file, or over a source directory's sorted paths + contents
    source: str  # what was built: "pypi:llama-cpp-python==0.3.36" or the --source path
    backend: str  # "cpu" or "cuda"
    cmake_flags: tuple[str, ...]  # the configure flags, exactly as passed
    ggml_native: bool  # -march=native (and CUDA arch "native" unless cuda_arch is set)
    cuda_arch: str | None  # CMAKE_CUDA_ARCHITECTURES when given, e.g. "90"
    llama_cpp_commit: str | None  # the vendored llama.cpp's git commit (full hash) when known
    jobs: int  # cmake --build -j
    build_seconds: float  # configure + build, wall time
    built_at: str  # ISO 8601 UTC, a label only
    host: str  # os.uname().nodename at build time
    schema: int = BUILD_INFO_VERSION
    recipe: int = 1  # BUILD_RECIPE at build time; build.json files before recipe 2 have none

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["cmake_flags"] = list(self.cmake_flags)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BuildInfo:
        return cls(
            build_id=str(d["build_id"]),
            version=str(d["version"]),
            sha256=str(d["sha256"]),
            source=str(d.get("source", "")),
            backend=str(d["backend"]),
            cmake_flags=tuple(str(f) for f in d.get("cmake_flags", ())),
            ggml_native=bool(d.get("ggml_native", True)),
            cuda_arch=None if d.get("cuda_arch") is None else str(d["cuda_arch"]),
            llama_cpp_commit=None if d.get("llama_cpp_commit") is None else str(d["llama_cpp_commit"]),
            jobs=int(d.get("jobs", 0)),
            build_seconds=float(d.get("build_seconds", 0.0)),
            built_at=str(d.get("built_at", "")),
            host=str(d.get("host", "")),
            schema=int(d.get("schema", BUILD_INFO_VERSION)),
            recipe=int(d.get("recipe", 1)),
        )

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def read(cls, path: Path) -> BuildInfo:
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ProvisionError(
                f"{path} is unreadable ({exc}); delete its directory and re-run: abtest server install"
            ) from exc


@dataclass(frozen=True)
class BuildEvent:
    """One step of `install`, for a progress display. `percent` is set for build lines cmake numbered."""

    phase: str  # "download", "hash", "extract", "configure", "build", "install", "cached"
    message: str  # a human line: what is happening, or the raw cmake line
    percent: int | None = None  # 0..100 during "build"


ProgressCallback = Callable[[BuildEvent], None]


# --------------------------------------------------------------------------------------------- cache


def builds_dir(root: Path | None = None) -> Path:
    return (root or cache_root()) / "llama-server"


def build_id_for(version: str, sha256: str, backend: str, cuda_arch: str | None = None) -> str:
    """The cache key: `<version>-<sha12>-<backend>-r<recipe>`; a CUDA build for one arch adds it
    (`cuda-sm90`). Recipe 1 (the first, before AMX was turned off) had no `-r` part."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    tag = backend
    if backend == "cuda" and cuda_arch:
        tag = "cuda-sm" + re.sub(r"[^0-9A-Za-z]+", "_", cuda_arch)
    return f"{version}-{sha256[:12]}-{tag}-r{BUILD_RECIPE}"


def list_builds(root: Path | None = None) -> list[BuildInfo]:
    """Every complete build in the cache (build.json and llama-server present), newest first."""
    d = builds_dir(root)
    found: list[BuildInfo] = []
    if not d.is_dir():
        return found
    for entry in d.iterdir():
        bj = entry / BUILD_JSON
        if not (bj.is_file() and (entry / "bin" / SERVER_NAME).is_file()):
            continue
        try:
            found.append(BuildInfo.read(bj))
        except ProvisionError:
            continue  # a half-written or foreign directory is not a build; skip it
    found.sort(key=lambda b: b.built_at, reverse=True)
    return found


def source_sha256(path: Path) -> str:
    """SHA256 of a file; for a directory, over its sorted relative paths and contents.

    In a directory, `.git` and any cmake build directory (one holding CMakeCache.txt) are left out,
    so building or checking out does not change the key. A symlink hashes as its target text.
    """
    h = hashlib.sha256()
    if path.is_file():
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
    if not path.is_dir():
        raise ConfigError(f"--source {path} does not exist; give a llama.cpp directory or .tar.gz")
    for rel, full in _walk_sorted(path):
        h.update(b"P" + rel.encode() + b"\0")
        if full.is_symlink():
            h.update(b"L" + os.readlink(full).encode() + b"\0")
            continue
        h.update(b"F" + str(full.stat().st_size).encode() + b"\0")
        with full.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _walk_sorted(root: Path) -> Iterator[tuple[str, Path]]:
    files: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [
            d for d in dirnames if d != ".git" and not (Path(dirpath) / d / "CMakeCache.txt").exists()
        ]
        for name in filenames:
            full = Path(dirpath) / name
            files.append((full.relative_to(root).as_posix(), full))
    files.sort()
    yield from files


# --------------------------------------------------------------------------------------- toolchain


def find_nvcc() -> Path | None:
    """nvcc on PATH, else in /usr/local/cuda/bin."""
    hit = shutil.which("nvcc")
    if hit:
        return Path(hit)
    for d in CUDA_DEFAULT_DIRS:
        if (d / "nvcc").is_file() and os.access(d / "nvcc", os.X_OK):
            return d / "nvcc"
    return None


def default_backend() -> str:
    """The backend `install` picks by default: cuda when nvcc is found, else cpu."""
    return "cuda" if find_nvcc() else "cpu"


def _gpu_visible() -> bool:
    if Path("/dev/nvidiactl").exists() or Path("/dev/nvidia0").exists():
        return True
    smi = shutil.which("nvidia-smi")
    if not smi:
        return False
    try:
        return subprocess.run([smi, "-L"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def check_toolchain(backend: str) -> dict[str, str]:
    """Paths of cmake, the C++ compiler, the build tool (and nvcc for CUDA); one-line error naming the fix."""
    tools: dict[str, str] = {}
    cmake = shutil.which("cmake")
    if not cmake:
        raise ProvisionError(
            "cmake not found on PATH; install it: apt-get install cmake (or: pip install cmake)"
        )
    tools["cmake"] = cmake
    cxx_env = os.environ.get("CXX")
    cxx = shutil.which(cxx_env) if cxx_env else None
    cxx = cxx or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if not cxx:
        raise ProvisionError(
            "no C++ compiler (c++/g++) on PATH; install one: apt-get install build-essential"
        )
    tools["cxx"] = cxx
    make = shutil.which("make") or shutil.which("gmake")
    ninja = shutil.which("ninja")
    if make:
        tools["make"] = make
    elif ninja:
        tools["ninja"] = ninja
    else:
        raise ProvisionError(
            "neither make nor ninja on PATH; install one: apt-get install build-essential (or: pip install ninja)"
        )
    if backend == "cuda":
        nvcc = find_nvcc()
        if not nvcc:
            raise ProvisionError(
                "--cuda needs nvcc, not found on PATH or in /usr/local/cuda/bin; install the CUDA toolkit or build with --cpu"
            )
        tools["nvcc"] = str(nvcc)
    return tools


def cmake_flags(
    backend: str, *, cuda_arch: str | None = None, nvcc: str | None = None, ninja: bool = False,
    machine: str | None = None,
) -> list[str]:
    """The configure flags for one backend (without -S/-B); `machine` defaults to this one's."""
    machine = machine or platform.machine()
    flags = list(BASE_CMAKE_FLAGS)
    if machine in ("x86_64", "AMD64"):
        no_amx = " ".join(NO_AMX_FLAGS)
        flags += [f"-DCMAKE_C_FLAGS={no_amx}", f"-DCMAKE_CXX_FLAGS={no_amx}"]
    if ninja:
        flags = ["-G", "Ninja", *flags]
    if backend == "cuda":
        flags.append("-DGGML_CUDA=ON")
        if nvcc:
            flags.append(f"-DCMAKE_CUDA_COMPILER={nvcc}")
        if cuda_arch:
            flags.append(f"-DCMAKE_CUDA_ARCHITECTURES={cuda_arch}")
    return flags


def parse_progress_line(line: str) -> int | None:
    """Percent done from a cmake build line (`[ 45%] Building ...` or Ninja's `[12/40] ...`), else None."""
    m = _MAKE_PROGRESS.match(line)
    if m:
        return min(int(m.group(1)), 100)
    m = _NINJA_PROGRESS.match(line)
    if m and int(m.group(2)) > 0:
        return min(100, int(m.group(1)) * 100 // int(m.group(2)))
    return None


# --------------------------------------------------------------------------------------- discovery


def find_server(
    server_bin: str | os.PathLike[str] | None = None, *, backend: str | None = None
) -> ServerBinary:
    """The llama-server a run would use; see the module docstring for the order.

    `backend` ("cpu"/"cuda") restricts the cache search to that backend; by default the cache prefers
    `default_backend()` and falls back to the newest build of any backend.
    """
    looked: list[str] = []
    if server_bin is not None:
        return _describe(_check_explicit(Path(server_bin), "--server-bin"), "--server-bin")
    env = os.environ.get(ENV_SERVER)
    if env:
        return _describe(_check_explicit(Path(env), f"${ENV_SERVER}"), f"${ENV_SERVER}")
    looked.append(f"${ENV_SERVER} (unset)")
    on_path = shutil.which(SERVER_NAME)
    if on_path:
        return _describe(Path(on_path).resolve(), "PATH")
    looked.append(f"{SERVER_NAME} on PATH (none)")
    root = cache_root()
    hit = _newest_cached(root, backend)
    if hit is not None:
        return _describe(builds_dir(root) / hit.build_id / "bin" / SERVER_NAME, "cache")
    want = f" with backend {backend}" if backend else ""
    looked.append(f"the cache {builds_dir(root)} (no build{want})")
    raise BinaryNotFound(f"no llama-server found; looked at: {'; '.join(looked)}; run: abtest server install")


def _newest_cached(root: Path, backend: str | None) -> BuildInfo | None:
    # The current recipe first (newest first within each): an older recipe may crash here (AMX).
    builds = sorted(list_builds(root), key=lambda b: b.recipe != BUILD_RECIPE)
    if backend is not None:
        builds = [b for b in builds if b.backend == backend]
        return builds[0] if builds else None
    preferred = default_backend()
    # Newest of the preferred backend first, then the newest of any other (list is newest first).
    for b in builds:
        if b.backend == preferred:
            return b
    return builds[0] if builds else None


def _check_explicit(path: Path, via: str) -> Path:
    path = path.expanduser()
    if path.is_dir():
        path = path / SERVER_NAME
    if not path.exists():
        raise BinaryNotFound(
            f"{via} {path} does not exist; point it at a llama-server binary or run: abtest server install"
        )
    if not path.is_file():
        raise BinaryNotFound(f"{via} {path} is not a file; point it at a llama-server binary")
    if not os.access(path, os.X_OK):
        raise BinaryNotFound(
            f"{via} {path} is not executable; run: chmod +x {path} (or point {via} elsewhere)"
        )
    return path.resolve()


def _describe(path: Path, found_via: str) -> ServerBinary:
    if not os.access(path, os.X_OK):
        raise BinaryNotFound(
            f"{path} (found via {found_via}) is not executable; run: chmod +x {path} (or use --server-bin)"
        )
    version_text = _run_version(path, found_via)
    info = _build_info_beside(path)
    if info is not None:
        build_id, backend = info.build_id, info.backend
    else:
        build_id = "file-" + source_sha256(path)[:12]
        backend = _guess_backend(path, version_text)
    bench = path.parent / BENCH_NAME
    bench_path = bench if bench.is_file() and os.access(bench, os.X_OK) else None
    return ServerBinary(
        path=path,
        found_via=found_via,
        version_text=version_text,
        build_id=build_id,
        backend=backend,
        bench_path=bench_path,
        build_info=info,
    )


def _run_version(path: Path, found_via: str) -> str:
    try:
        proc = subprocess.run(
            [str(path), "--version"], capture_output=True, text=True, errors="replace", timeout=60
        )
    except OSError as exc:
        raise BinaryNotFound(
            f"{path} (found via {found_via}) cannot run ({exc.strerror}); rebuild it: abtest server install"
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise BinaryNotFound(
            f"{path} --version did not finish in 60 s; is it really llama-server? use --server-bin"
        ) from exc
    text = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0:
        last = text.splitlines()[-1] if text else "no output"
        raise BinaryNotFound(
            f"{path} --version exited {proc.returncode} ({last}); rebuild it: abtest server install, or use --server-bin"
        )
    return text


def _build_info_beside(path: Path) -> BuildInfo | None:
    """build.json in the binary's directory or its parent (the cache's <id>/bin/ layout)."""
    for d in (path.parent, path.parent.parent):
        bj = d / BUILD_JSON
        if bj.is_file():
            try:
                return BuildInfo.read(bj)
            except ProvisionError:
                return None
    return None


def _backend_from_text(text: str) -> str | None:
    low = text.lower()
    for needle, name in (
        ("cuda", "cuda"),
        ("rocm", "rocm"),
        ("hip", "rocm"),
        ("metal", "metal"),
        ("vulkan", "vulkan"),
        ("sycl", "sycl"),
    ):
        if re.search(rf"\b{needle}", low):
            return name
    return None


def _guess_backend(path: Path, version_text: str) -> str:
    """From `--version` (a CUDA build logs ggml_cuda_init there), else from `--list-devices`, else cpu."""
    hit = _backend_from_text(version_text)
    if hit:
        return hit
    try:
        proc = subprocess.run(
            [str(path), "--list-devices"], capture_output=True, text=True, errors="replace", timeout=60
        )
        hit = _backend_from_text(proc.stdout + proc.stderr)
    except (OSError, subprocess.TimeoutExpired):
        hit = None
    return hit or "cpu"


# ----------------------------------------------------------------------------------------- install


def install(
    *,
    backend: str | None = None,
    jobs: int | None = None,
    source: str | os.PathLike[str] | None = None,
    cuda_arch: str | None = None,
    if_missing: bool = False,
    force: bool = False,
    keep_build_dir: bool = False,
    progress: ProgressCallback | None = None,
    root: Path | None = None,
) -> ServerBinary:
    """Build llama-server + llama-bench into the cache and return the installed `ServerBinary`.

    backend: "cpu" or "cuda"; None means cuda when nvcc is found, else cpu.
    source: a llama.cpp source directory, a .tar.gz of one (scripts/make-llama-tarball.sh) or a
        llama-cpp-python sdist; None downloads the pinned sdist once into <cache>/sdist/.
    if_missing: return an existing cache build of the same version, recipe and backend (and source,
        when given) without downloading, hashing or building.
    force: rebuild even when the exact build id is already in the cache.
    """
    emit = progress or (lambda _e: None)
    root = root or cache_root()
    backend = backend or default_backend()
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; use --cpu or --cuda")
    if cuda_arch and backend != "cuda":
        raise ConfigError("--cuda-arch only applies to CUDA builds; drop it or use --cuda")
    jobs = jobs or os.cpu_count() or 1
    if jobs < 1:
        raise ConfigError(f"--jobs {jobs} must be at least 1")
    src_path = Path(source).expanduser().resolve() if source is not None else None
    if src_path is not None and not src_path.exists():
        raise ConfigError(f"--source {src_path} does not exist; give a llama.cpp directory or .tar.gz")

    if if_missing and src_path is None and not force:
        for b in list_builds(root):
            if (
                b.version == LLAMA_CPP_PYTHON_VERSION
                and b.recipe == BUILD_RECIPE
                and b.backend == backend
                and (cuda_arch is None or b.cuda_arch == cuda_arch)
            ):
                emit(BuildEvent("cached", f"cached build {b.build_id} found; nothing to do"))
                return _describe(builds_dir(root) / b.build_id / "bin" / SERVER_NAME, "cache")

    tools = check_toolchain(backend)
    if backend == "cuda" and not cuda_arch and not _gpu_visible():
        # GGML_NATIVE=ON makes llama.cpp ask for CMAKE_CUDA_ARCHITECTURES=native, which fails without a GPU.
        raise ProvisionError(
            "no NVIDIA GPU visible for a native CUDA build; pass --cuda-arch 90 (H100) or build with --cpu"
        )

    if src_path is None:
        archive = _ensure_sdist(root, emit)
        version, label = LLAMA_CPP_PYTHON_VERSION, f"pypi:llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}"
    else:
        archive, label = src_path, str(src_path)
        version = _version_of_source(src_path)

    emit(BuildEvent("hash", f"hashing {archive.name}"))
    sha = source_sha256(archive)
    build_id = build_id_for(version, sha, backend, cuda_arch)
    dest = builds_dir(root) / build_id
    # One build per id at a time (parallel CI jobs calling install): the second waits, then finds it cached.
    with _exclusive(root / "locks" / f"{build_id}.lock", emit):
        if (dest / BUILD_JSON).is_file() and (dest / "bin" / SERVER_NAME).is_file() and not force:
            emit(BuildEvent("cached", f"cached build {build_id} found; nothing to do (--force rebuilds)"))
            return _describe(dest / "bin" / SERVER_NAME, "cache")

        work = root / "work" / f"{build_id}.{os.getpid()}"
        log_path = root / "logs" / f"{build_id}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            if archive.is_dir():
                llama_src = _locate_llama_source(archive)
            else:
                emit(BuildEvent("extract", f"extracting {archive.name}"))
                llama_src = _extract(archive, work / "src")
            flags = cmake_flags(backend, cuda_arch=cuda_arch, nvcc=tools.get("nvcc"), ninja="ninja" in tools)
            commit, number, git_checkout = _llama_commit(llama_src)
            if commit and not git_checkout:
                # Without git objects cmake would stamp "build 0, commit unknown". Stamp what llama.cpp's
                # cmake stamps from the full sdist instead, so every route to the same source says the same.
                flags += [f"-DLLAMA_BUILD_COMMIT={commit[:7]}", f"-DLLAMA_BUILD_NUMBER={number or 0}"]
            build_dir = work / "build"
            t0 = time.perf_counter_ns()
            with log_path.open("w") as log:
                log.write(f"# abtest build {build_id} from {label}\n")
                emit(BuildEvent("configure", "configuring with cmake"))
                _run_logged(
                    [tools["cmake"], "-S", str(llama_src), "-B", str(build_dir), *flags],
                    log,
                    log_path,
                    "configure",
                    emit,
                )
                emit(BuildEvent("build", f"building {SERVER_NAME} and {BENCH_NAME} with -j {jobs}", 0))
                build_cmd = [
                    tools["cmake"],
                    "--build",
                    str(build_dir),
                    "--target",
                    SERVER_NAME,
                    BENCH_NAME,
                    "-j",
                    str(jobs),
                ]
                _run_logged(build_cmd, log, log_path, "build", emit)
            build_seconds = (time.perf_counter_ns() - t0) / 1e9
            emit(BuildEvent("install", f"installing into {dest}", 100))
            info = BuildInfo(
                build_id=build_id,
                version=version,
                sha256=sha,
                source=label,
                backend=backend,
                cmake_flags=tuple(flags),
                ggml_native=not any(f.startswith("-DGGML_NATIVE=OFF") for f in flags),
                cuda_arch=cuda_arch,
                llama_cpp_commit=commit,
                jobs=jobs,
                build_seconds=round(build_seconds, 1),
                built_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                host=os.uname().nodename,
                recipe=BUILD_RECIPE,
            )
            _install_binaries(build_dir / "bin", dest, info, log_path)
        finally:
            if not keep_build_dir:
                shutil.rmtree(work, ignore_errors=True)
    return _describe(dest / "bin" / SERVER_NAME, "cache")


@contextlib.contextmanager
def _exclusive(lock_path: Path, emit: ProgressCallback) -> Iterator[None]:
    """An exclusive flock on lock_path for the duration; says so when it has to wait."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            emit(BuildEvent("wait", f"another abtest is building {lock_path.stem}; waiting for it"))
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _ensure_sdist(root: Path, emit: ProgressCallback) -> Path:
    """The pinned sdist in <cache>/sdist/, downloaded with pip on first use."""
    sdist_dir = root / "sdist"
    name = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz"
    target = sdist_dir / name
    if target.is_file():
        return target
    sdist_dir.mkdir(parents=True, exist_ok=True)
    emit(BuildEvent("download", f"downloading llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION} sdist"))
    with tempfile.TemporaryDirectory(dir=sdist_dir, prefix=".download-") as tmp:
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
            f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}", "-d", tmp,
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
        got = sorted(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if proc.returncode != 0 or not got:
            lines = (proc.stderr or proc.stdout).strip().splitlines()
            last = lines[-1] if lines else "no output"
            raise ProvisionError(
                f"pip could not download llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION} ({last}); "
                f"offline? use --source with a tarball from scripts/make-llama-tarball.sh, or copy the sdist to {target}"
            )
        os.replace(got[0], target)
    return target


_SDIST_NAME = re.compile(r"llama[_-]cpp[_-]python-(\d+(?:\.\d+)+)")
# Written by scripts/make-llama-tarball.sh at the tarball's llama.cpp root, e.g.
#   llama-cpp-python 0.3.36
#   llama.cpp commit 0c1e57098bba43ac29e6e3b677cdceebdd22334f
#   llama.cpp build 1
VERSION_MARKER = ".abtest-source"
_SDIST_GIT = ".git/modules/vendor/llama.cpp"  # the sdist ships its submodule's git dir (39 MB)
_HEX = re.compile(r"\b([0-9a-f]{40})\b")


def _version_of_source(path: Path) -> str:
    """The llama-cpp-python version a --source came from, or "local" when nothing says so."""
    m = _SDIST_NAME.search(str(path))
    if m:
        return m.group(1)
    marker: str | None = None
    if path.is_dir():
        for cand in (path / VERSION_MARKER, *(p / VERSION_MARKER for p in path.iterdir() if p.is_dir())):
            if cand.is_file():
                marker = cand.read_text()
                break
    elif tarfile.is_tarfile(path):
        with tarfile.open(path) as tf:
            for member in tf:
                if (
                    member.isfile()
                    and Path(member.name).name == VERSION_MARKER
                    and member.name.count("/") <= 1
                ):
                    f = tf.extractfile(member)
                    marker = f.read().decode(errors="replace") if f else None
                    break
    if marker:
        m = re.search(r"(\d+(?:\.\d+)+)", marker)
        if m:
            return m.group(1)
    return "local"


def _extract(archive: Path, dest: Path) -> Path:
    if not tarfile.is_tarfile(archive):
        raise ConfigError(
            f"--source {archive} is neither a directory nor a tar archive; give a llama.cpp directory or .tar.gz"
        )
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive) as tf:
            members = tf.getmembers()
            # An sdist carries the Python package too; only its vendored llama.cpp is needed.
            # Of its submodule's git dir, HEAD and shallow say which commit is vendored (and its
            # build number); the objects are not needed.
            vendored = [
                m
                for m in members
                if ("/vendor/llama.cpp/" in m.name and f"/{_SDIST_GIT}/" not in m.name)
                or m.name.endswith("/vendor/llama.cpp")
                or m.name.endswith((f"/{_SDIST_GIT}/HEAD", f"/{_SDIST_GIT}/shallow"))
            ]
            # filter="data" (refuse links out of dest, absolute paths) exists from 3.10.12/3.11.4 on.
            safe: dict[str, Any] = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tf.extractall(dest, members=vendored or members, **safe)
    except (tarfile.TarError, OSError) as exc:
        raise ProvisionError(
            f"could not extract {archive} ({exc}); re-download it or make a new tarball"
        ) from exc
    return _locate_llama_source(dest)


def _llama_commit(llama_src: Path) -> tuple[str | None, int | None, bool]:
    """(llama.cpp commit or None, its build number or None, whether cmake can read it from git itself).

    From the tarball's marker file, else from `.git`: a gitlink file ("gitdir: ...") in an sdist,
    whose target holds only HEAD and `shallow` after `_extract`, or a checkout's .git directory.
    The build number is what llama.cpp's cmake would stamp (`git rev-list --count HEAD`), known
    here only for a depth-1 clone (HEAD listed in `shallow`: 1), as the sdist's submodule is.
    """
    marker = llama_src / VERSION_MARKER
    if marker.is_file():
        text = marker.read_text()
        m = _HEX.search(text)
        n = re.search(r"llama\.cpp build (\d+)", text)
        if m:
            return m.group(1), (int(n.group(1)) if n else None), False
    dot_git = llama_src / ".git"
    if dot_git.is_file():
        text = dot_git.read_text().strip()
        git_dir = (llama_src / text.removeprefix("gitdir:").strip()) if text.startswith("gitdir:") else None
    elif dot_git.is_dir():
        git_dir = dot_git
    else:
        return None, None, False
    if git_dir is None or not (git_dir / "HEAD").is_file():
        return None, None, False
    head = (git_dir / "HEAD").read_text().strip()
    if head.startswith("ref:"):
        ref = git_dir / head[4:].strip()
        head = ref.read_text().strip() if ref.is_file() else ""
    m = _HEX.fullmatch(head) if head else None
    if not m:
        return None, None, False
    shallow = git_dir / "shallow"
    number = 1 if shallow.is_file() and m.group(1) in shallow.read_text().split() else None
    checkout = (git_dir / "objects").is_dir() and any((git_dir / "objects").iterdir())
    return m.group(1), number, checkout


def _locate_llama_source(root: Path) -> Path:
    """The llama.cpp root under `root`: itself, one directory down, or <sdist>/vendor/llama.cpp."""
    candidates = [root]
    subdirs = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    candidates += subdirs
    candidates += [p / "vendor" / "llama.cpp" for p in [root, *subdirs]]
    for c in candidates:
        if (c / "CMakeLists.txt").is_file() and (c / "tools" / "server").is_dir() and (c / "ggml").is_dir():
            return c
    raise ConfigError(
        f"no llama.cpp source (CMakeLists.txt, ggml/, tools/server/) found in {root}; give a llama.cpp directory or .tar.gz"
    )


def _run_logged(cmd: Sequence[str], log: Any, log_path: Path, step: str, emit: ProgressCallback) -> None:
    """Run a cmake step, teeing its output to the log; build lines become progress events."""
    log.write("$ " + " ".join(cmd) + "\n")
    log.flush()
    tail: list[str] = []
    errors: list[str] = []
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,  # its own process group, so make and the compilers can be stopped together
    )
    assert proc.stdout is not None
    try:
        for raw in proc.stdout:
            log.write(raw)
            line = raw.rstrip()
            if not line:
                continue
            tail = (tail + [line])[-20:]
            if "CMake Error" in line or "error:" in line.lower():
                errors.append(line.strip())
            pct = parse_progress_line(line)
            if step == "build":
                emit(BuildEvent("build", line, pct))
            else:
                emit(BuildEvent(step, line))
        rc = proc.wait()
    except BaseException:
        # Ctrl-C or a failing callback: don't leave make and the compilers running after we return.
        _stop_group(proc)
        raise
    if rc != 0:
        why = errors[0] if errors else (tail[-1] if tail else "no output")
        raise ProvisionError(f"cmake {step} failed (exit {rc}): {why[:300]}; full log: {log_path}")


def _stop_group(proc: subprocess.Popen[str]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            continue


def _install_binaries(bin_dir: Path, dest: Path, info: BuildInfo, log_path: Path) -> None:
    """Copy the two binaries and build.json into a staging dir, then rename it into place."""
    staging = dest.with_name(dest.name + f".tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "bin").mkdir(parents=True)
    for name in (SERVER_NAME, BENCH_NAME):
        built = bin_dir / name
        if not built.is_file():
            raise ProvisionError(f"the build finished but {built} is missing; see {log_path}")
        shutil.copy2(built, staging / "bin" / name)
    info.write(staging / BUILD_JSON)
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(staging, dest)
