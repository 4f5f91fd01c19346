"""Which llama-server a run uses: an explicit path, $ABTEST_LLAMA_SERVER, PATH, then the cache.

`find_server(server_bin=None)` -> `ServerBinary`. In the cache, the newest build of the pinned
source and the current recipe whose backend matches the preference wins; a build of another source
(`install --source`) runs only when asked for: `find_build(name_or_id)`. An explicit path or env
var that is wrong is an error, never a silent fall-through to the next place. A binary outside the
cache that is byte for byte a cache build's llama-server (a copy) is that build.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from ..cache import cache_root
from ..errors import BinaryNotFound, ProvisionError
from .builds import (
    BENCH_NAME,
    BUILD_JSON,
    BUILD_RECIPE,
    FIT_PARAMS_NAME,
    LLAMA_CPP_PYTHON_VERSION,
    SERVER_NAME,
    BuildInfo,
    ServerBinary,
    builds_dir,
    default_backend,
    list_builds,
    source_sha256,
)

ENV_SERVER = "ABTEST_LLAMA_SERVER"


def find_server(
    server_bin: str | os.PathLike[str] | None = None, *, backend: str | None = None
) -> ServerBinary:
    """The llama-server a run would use; see the module docstring for the order.

    `backend` ("cpu"/"cuda") restricts the cache search to that backend; by default the cache prefers
    `default_backend()` and falls back to the newest build of any backend.
    """
    looked: list[str] = []
    if server_bin is not None:
        return describe_binary(_check_explicit(Path(server_bin), "--server-bin"), "--server-bin")
    env = os.environ.get(ENV_SERVER)
    if env:
        return describe_binary(_check_explicit(Path(env), f"${ENV_SERVER}"), f"${ENV_SERVER}")
    looked.append(f"${ENV_SERVER} (unset)")
    on_path = shutil.which(SERVER_NAME)
    if on_path:
        return describe_binary(Path(on_path).resolve(), "PATH")
    looked.append(f"{SERVER_NAME} on PATH (none)")
    root = cache_root()
    hit = _newest_cached(root, backend)
    if hit is not None:
        return describe_binary(builds_dir(root) / hit.build_id / "bin" / SERVER_NAME, "cache")
    want = f" with backend {backend}" if backend else ""
    looked.append(f"the cache {builds_dir(root)} (no build{want})")
    raise BinaryNotFound(f"no llama-server found; looked at: {'; '.join(looked)}; run: abtest server install")


def find_build(ref: str) -> ServerBinary:
    """The cache build named `ref` (`install --name`), else the one whose build id is `ref`."""
    root = cache_root()
    builds = list_builds(root)
    hit = next((b for b in builds if b.name == ref), None) or next((b for b in builds if b.build_id == ref), None)
    if hit is None:
        known = ", ".join(f"{b.name} ({b.build_id})" if b.name else b.build_id for b in builds) or "none"
        raise BinaryNotFound(
            f"no cache build named {ref!r} in {builds_dir(root)} (builds: {known}); build it: "
            f"abtest server install --source SDIST --name {ref}"
        )
    return describe_binary(builds_dir(root) / hit.build_id / "bin" / SERVER_NAME, "cache")


def _newest_cached(root: Path, backend: str | None) -> BuildInfo | None:
    # The pinned source first, then the current recipe (newest first within each): another source
    # runs only when an arm names it, and an older recipe may crash here (AMX).
    builds = sorted(list_builds(root), key=lambda b: (b.version != LLAMA_CPP_PYTHON_VERSION, b.recipe != BUILD_RECIPE))
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


def describe_binary(path: Path, found_via: str) -> ServerBinary:
    if not os.access(path, os.X_OK):
        raise BinaryNotFound(
            f"{path} (found via {found_via}) is not executable; run: chmod +x {path} (or use --server-bin)"
        )
    version_text = _run_version(path, found_via)
    info = _build_info_beside(path)
    if info is None:
        info = _cache_twin(path)
    if info is not None:
        build_id, backend = info.build_id, info.backend
    else:
        build_id = "file-" + source_sha256(path)[:12]
        backend = _guess_backend(path, version_text)
    return ServerBinary(
        path=path,
        found_via=found_via,
        version_text=version_text,
        build_id=build_id,
        backend=backend,
        bench_path=_beside(path, BENCH_NAME),
        build_info=info,
        fit_params_path=_beside(path, FIT_PARAMS_NAME),
    )


def _beside(server: Path, name: str) -> Path | None:
    """The executable `name` in llama-server's directory, or None."""
    p = server.parent / name
    return p if p.is_file() and os.access(p, os.X_OK) else None


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


def _cache_twin(path: Path) -> BuildInfo | None:
    """The cache build whose llama-server has the same bytes as `path` (a copy of it), else None.
    Sizes are compared first, so only a same-size candidate is hashed."""
    root = cache_root()
    try:
        size = path.stat().st_size
        builds = list_builds(root)
    except OSError:
        return None
    own: str | None = None
    for b in builds:
        server = builds_dir(root) / b.build_id / "bin" / SERVER_NAME
        try:
            if server.stat().st_size != size:
                continue
            own = own or source_sha256(path)
            if source_sha256(server) == own:
                return b
        except OSError:
            continue
    return None


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


LIST_DEVICES_TIMEOUT_S = 10.0  # `--list-devices` answers in well under a second on a working build


def _guess_backend(path: Path, version_text: str) -> str:
    """From `--version` (a CUDA build logs ggml_cuda_init there), else from `--list-devices`, else
    cpu; "unknown" when `--list-devices` does not answer (a hung driver is not a CPU build)."""
    hit = _backend_from_text(version_text)
    if hit:
        return hit
    try:
        proc = subprocess.run(
            [str(path), "--list-devices"], capture_output=True, text=True, errors="replace",
            timeout=LIST_DEVICES_TIMEOUT_S,
        )
        hit = _backend_from_text(proc.stdout + proc.stderr)
    except subprocess.TimeoutExpired:
        return "unknown"
    except OSError:
        hit = None
    return hit or "cpu"
