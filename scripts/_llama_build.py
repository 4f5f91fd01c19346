"""One llama.cpp tool target built from the pinned sdist, for the by-hand scripts (check-q4km.py,
record-graph-programs.py): extract the source, patch it if asked, configure a static CPU build
without the server, UI, tests or examples (AMX off, as abtest's server builds), build the one
target and copy its binary to <build_dir>/bin. A binary already there is used as it is.

Not part of the package: CI never builds these tools, and `abtest server install` (server/build.py)
stays the only build the CLI runs.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from abtest.cache import cache_root
from abtest.server.build import NO_AMX_FLAGS
from abtest.server.builds import LLAMA_CPP_PYTHON_VERSION
from abtest.server.source import extract_llama_source, sdist_filename

# the configure flags of a tool build: static, CPU, nothing but the libraries and the tools
TOOL_CMAKE_FLAGS = ("-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF",
                    "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
                    "-DLLAMA_BUILD_SERVER=OFF", "-DBUILD_SHARED_LIBS=OFF", "-DGGML_NATIVE=OFF",
                    f"-DCMAKE_C_FLAGS={' '.join(NO_AMX_FLAGS)}", f"-DCMAKE_CXX_FLAGS={' '.join(NO_AMX_FLAGS)}")


def build_tool(build_dir: Path, target: str, jobs: int, patch: Callable[[Path], None] | None = None) -> Path:
    """<build_dir>/bin/<target>, built once: the sdist extracted to <build_dir>/src, `patch(src)`
    applied, cmake in <build_dir>/build. Exits with a one-line message when the sdist is missing."""
    exe = build_dir / "bin" / target
    if exe.is_file():
        return exe
    sdist = cache_root() / "sdist" / sdist_filename("llama-cpp-python", LLAMA_CPP_PYTHON_VERSION)
    if not sdist.is_file():
        sys.exit(f"no sdist at {sdist}: run `abtest server install` first (it downloads it)")
    src = extract_llama_source(sdist, build_dir / "src")
    if patch is not None:
        patch(src)
    subprocess.run(["cmake", "-S", str(src), "-B", str(build_dir / "build"), *TOOL_CMAKE_FLAGS], check=True)
    subprocess.run(["cmake", "--build", str(build_dir / "build"), "--target", target, "-j", str(jobs)], check=True)
    exe.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(build_dir / "build" / "bin" / target, exe)
    return exe
