"""The report side reads evidence only: report/stats/plots/history never reach the run side.

Walks the `import` statements with `ast` (nothing is imported), follows abtest-internal imports
transitively, and fails if any of them names server, stream, runner or gpu — whether or not those
modules exist yet.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "abtest"
REPORT_SIDE = ["report", "stats", "plots", "history"]
FORBIDDEN = {"server", "stream", "runner", "gpu"}


def _module_file(name: str) -> Path | None:
    """abtest.x.y -> its source file, if it exists."""
    parts = name.split(".")[1:]
    if not parts:
        return PKG / "__init__.py"
    base = PKG.joinpath(*parts)
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.exists():
            return cand
    return None


def imported_names(module: str) -> set[str]:
    """Every abtest.* module name `module`'s file imports (absolute, resolved from relative)."""
    path = _module_file(module)
    if path is None:
        return set()
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "abtest")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base.split(".")[0] != "abtest":
                continue
            out.add(base)
            # `from . import stats` imports the module abtest.stats
            out.update(f"{base}.{a.name}" for a in node.names)
    return out


def reachable(module: str) -> dict[str, str]:
    """Every abtest module reachable from `module`, mapped to the module that imported it."""
    seen: dict[str, str] = {}
    todo = [module]
    while todo:
        cur = todo.pop()
        for name in imported_names(cur):
            if name not in seen and name != module:
                seen[name] = cur
                todo.append(name)
    return seen


@pytest.mark.parametrize("name", REPORT_SIDE)
def test_report_side_never_imports_the_run_side(name):
    bad = {m: via for m, via in reachable(f"abtest.{name}").items() if set(m.split(".")[1:]) & FORBIDDEN}
    assert not bad, f"abtest.{name} reaches the run side: " + ", ".join(f"{m} (imported by {v})" for m, v in bad.items())


def test_the_walker_sees_relative_and_absolute_imports(tmp_path, monkeypatch):
    """A planted offender is caught, so the test above cannot pass vacuously."""
    pkg = tmp_path / "abtest"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "report.py").write_text("from . import helper\n")
    (pkg / "helper.py").write_text("from .gpu import sample\n")
    (pkg / "other.py").write_text("import abtest.stream\nfrom abtest import runner\n")
    monkeypatch.setitem(globals(), "PKG", pkg)
    assert "abtest.gpu" in reachable("abtest.report")
    assert {"abtest.stream", "abtest.runner"} <= imported_names("abtest.other")
