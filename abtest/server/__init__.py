"""The inference server: building and finding llama-server, running one process, reading its log.

The public surface of building and discovery is re-exported here (tests/unit/test_server_build.py
checks `__all__`); `process` (one running server) and `log` (its log) are used by module.
"""

from .build import BuildEvent, check_toolchain, cmake_flags, install, parse_progress_line
from .builds import (
    BACKENDS,
    LLAMA_CPP_PYTHON_VERSION,
    BuildInfo,
    ServerBinary,
    build_id_for,
    builds_dir,
    default_backend,
    find_nvcc,
    list_builds,
    name_build,
    source_sha256,
)
from .discover import find_build, find_server

__all__ = [
    "BACKENDS",
    "LLAMA_CPP_PYTHON_VERSION",
    "BuildEvent",
    "BuildInfo",
    "ServerBinary",
    "build_id_for",
    "builds_dir",
    "check_toolchain",
    "cmake_flags",
    "default_backend",
    "find_build",
    "find_nvcc",
    "find_server",
    "install",
    "list_builds",
    "name_build",
    "parse_progress_line",
    "source_sha256",
]
