"""scripts/check-q4km.py and scripts/record-graph-programs.py build their llama.cpp tool through
one helper (scripts/_llama_build.py): the same configure flags, their own target, a patch applied
before configuring. cmake and the sdist are scripted here (CI never builds these tools)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name.replace("-", "_"), SCRIPTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def scripted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[ModuleType, list[list[str]]]:
    monkeypatch.syspath_prepend(str(SCRIPTS))
    sys.modules.pop("_llama_build", None)
    import _llama_build as lb  # type: ignore[import-not-found]

    sdist = tmp_path / "cache" / "sdist" / "x.tar.gz"
    sdist.parent.mkdir(parents=True)
    sdist.write_text("")
    calls: list[list[str]] = []

    def extract(_sdist: Path, dest: Path) -> Path:
        for rel, text in (("ggml/src/ggml-alloc.c", "#define AT_PRINTF(...)\n"),
                          ("tools/fit-params/fit-params.cpp",
                           "    auto cparams = common_context_params_to_llama(params);\n")):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            (dest / rel).write_text(text)
        return dest

    def run(cmd: list[str], check: bool) -> None:
        calls.append(cmd)
        if cmd[1] == "--build":
            out = Path(cmd[2]) / "bin" / cmd[4]
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text("#!/bin/sh\n")

    monkeypatch.setattr(lb, "cache_root", lambda: tmp_path / "cache")
    monkeypatch.setattr(lb, "sdist_filename", lambda *a: "x.tar.gz")
    monkeypatch.setattr(lb, "extract_llama_source", extract)
    monkeypatch.setattr(lb.subprocess, "run", run)
    return lb, calls


def test_both_scripts_build_their_tool_with_one_set_of_flags(scripted, tmp_path: Path) -> None:
    lb, calls = scripted
    q = _load("check-q4km").build_quantize(tmp_path / "q", 3)
    g = _load("record-graph-programs").build_fit_params(tmp_path / "g", 2)
    assert q == tmp_path / "q" / "bin" / "llama-quantize" and q.is_file()
    assert g == tmp_path / "g" / "bin" / "llama-fit-params" and g.is_file()
    (cq, bq), (cg, bg) = calls[:2], calls[2:]
    assert cq == ["cmake", "-S", str(tmp_path / "q" / "src"), "-B", str(tmp_path / "q" / "build"), *lb.TOOL_CMAKE_FLAGS]
    assert cg == ["cmake", "-S", str(tmp_path / "g" / "src"), "-B", str(tmp_path / "g" / "build"), *lb.TOOL_CMAKE_FLAGS]
    assert bq[3:] == ["--target", "llama-quantize", "-j", "3"] and bg[3:] == ["--target", "llama-fit-params", "-j", "2"]
    # the graph recorder's two patches went in before cmake saw the source
    src = tmp_path / "g" / "src"
    assert "fprintf(stderr, __VA_ARGS__)" in (src / "ggml/src/ggml-alloc.c").read_text()
    assert "cparams.n_outputs_max = params.n_parallel;" in (src / "tools/fit-params/fit-params.cpp").read_text()
    assert "fprintf" not in (tmp_path / "q" / "src" / "ggml/src/ggml-alloc.c").read_text()
    # a second call finds the binary and builds nothing
    assert _load("check-q4km").build_quantize(tmp_path / "q", 3) == q and len(calls) == 4
