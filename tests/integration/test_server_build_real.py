"""A real llama-server, as a run would find it. Never skipped: no binary is a failure that says how to fix it."""

from __future__ import annotations

import re
import subprocess

import pytest

from abtest.errors import BinaryNotFound
from abtest.server import builds, discover

pytestmark = pytest.mark.integration


def _find() -> builds.ServerBinary:
    try:
        return discover.find_server()
    except BinaryNotFound as exc:
        why = str(exc)
    pytest.fail(  # outside the except: no chained traceback, just the message
        f"integration tests need a built llama-server: {why}\n"
        "build one with `abtest server install --if-missing --cpu` (~8.5 CPU-minutes: 6-8 min on a busy 2-core box), "
        "or point $ABTEST_LLAMA_SERVER at one",
        pytrace=False,
    )


def test_find_server_finds_a_real_binary_and_version_runs() -> None:
    b = _find()
    assert b.path.is_file(), b
    assert re.search(r"version: \S+ \(build \d+, commit \w+\)", b.version_text), b.version_text
    # Run it again here, independently of find_server, as a run would.
    proc = subprocess.run([str(b.path), "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "version:" in proc.stdout + proc.stderr
    assert b.backend in builds.BACKENDS or b.backend in ("rocm", "metal", "vulkan", "sycl"), b.backend
    assert b.build_id


def test_llama_bench_beside_a_cache_build_runs() -> None:
    b = _find()
    if b.found_via != "cache":
        # A binary from PATH or $ABTEST_LLAMA_SERVER may come without llama-bench; that is allowed.
        assert b.bench_path is None or b.bench_path.is_file()
        return
    assert b.build_info is not None and b.build_info.build_id == b.build_id
    assert b.bench_path is not None, (
        f"{b.path.parent} has no llama-bench; rebuild: abtest server install --force"
    )
    proc = subprocess.run([str(b.bench_path), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "-ncmoe" in proc.stdout + proc.stderr  # the MoE offload flag abtest compares against


def test_llama_fit_params_beside_a_cache_build_runs() -> None:
    """The competitor the fit/frontier comparison measures is built with the server (recipe 3)."""
    b = _find()
    if b.found_via != "cache":
        assert b.fit_params_path is None or b.fit_params_path.is_file()
        return
    assert b.build_info is not None and "llama-fit-params" in b.build_info.binaries, b.build_info
    assert b.fit_params_path is not None, (
        f"{b.path.parent} has no llama-fit-params; rebuild: abtest server install --force"
    )
    proc = subprocess.run([str(b.fit_params_path), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "--fit-print" in proc.stdout + proc.stderr  # an option only llama-fit-params has


def test_cache_build_is_stamped_with_its_llama_cpp_commit() -> None:
    b = _find()
    if b.build_info is None or b.build_info.llama_cpp_commit is None:
        return  # not a cache build from the sdist or a tarball: nothing was stamped
    assert f"commit {b.build_info.llama_cpp_commit[:7]}" in b.version_text, b.version_text
