"""The one-way flow, enforced: each stage of the package imports only the stages before it.

docs/layout.md draws the arrows; this test walks every module's `import` statements with `ast`
(nothing is imported) and fails on any arrow not in ALLOWED. The report side (analysis, render)
can therefore never reach a server, a socket or the GPU, however deep the import chain.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "abtest"

# Top-level modules: the contract (records, the evidence files), shared leaves and the config.
LEAVES = {"abtest", "abtest.errors", "abtest.records", "abtest.cache", "abtest.fmt", "abtest.argv", "abtest.interrupts"}
STAGE_OF_TOP = {"abtest.config": "config", "abtest.evidence": "evidence", "abtest.__main__": "cli"}
# stage -> the stages it may import (leaves are always allowed)
ALLOWED: dict[str, set[str]] = {
    "leaf": set(),
    "config": set(),
    "evidence": set(),
    "models": {"models"},
    "server": {"server", "config"},
    "measure": {"measure", "config", "evidence", "models", "server"},
    "analysis": {"analysis", "evidence"},
    "render": {"render", "analysis"},
    "cli": {"cli", "config", "evidence", "models", "server", "measure", "analysis", "render"},
}
# Single modules another stage may use: the one definition of each metric serves run's live
# display and the sweep as well as the report; the one SLO judgement (analysis.slo, itself on
# metrics only) serves the capacity search's probes as well as the report.
ALLOWED_MODULES: dict[str, set[str]] = {"measure": {"abtest.analysis.metrics", "abtest.analysis.slo"}}


def stage(module: str) -> str:
    if module in LEAVES:
        return "leaf"
    if module in STAGE_OF_TOP:
        return STAGE_OF_TOP[module]
    parts = module.split(".")
    if len(parts) >= 2 and (PKG / parts[1]).is_dir():
        return parts[1]
    raise AssertionError(f"{module} belongs to no stage: add it to docs/layout.md and to this test")


def all_modules() -> list[str]:
    out = []
    for p in sorted(PKG.rglob("*.py")):
        parts = ["abtest", *p.relative_to(PKG).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out.append(".".join(parts))
    return out


def _module_file(name: str) -> Path | None:
    parts = name.split(".")[1:]
    base = PKG.joinpath(*parts)
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.exists():
            return cand
    return None


def imported_modules(module: str) -> set[str]:
    """Every abtest module `module`'s file imports (relative imports resolved; `from x import name`
    counts as importing x.name when that is a module, else x)."""
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
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.add(sub if _module_file(sub) is not None else base)
    return out


def violations(module: str) -> list[str]:
    mine = stage(module)
    allowed = ALLOWED[mine] | {mine}
    bad = []
    for dep in sorted(imported_modules(module)):
        dep_stage = stage(dep)
        if dep_stage == "leaf" or dep_stage in allowed or dep in ALLOWED_MODULES.get(mine, set()):
            continue
        bad.append(f"{module} ({mine}) imports {dep} ({dep_stage})")
    return bad


@pytest.mark.parametrize("module", all_modules())
def test_imports_follow_the_flow(module: str) -> None:
    assert not violations(module), "; ".join(violations(module))


def test_every_stage_is_documented() -> None:
    layout = (PKG.parent / "docs" / "layout.md").read_text()
    for st in ALLOWED:
        if st != "leaf":
            assert f"`{st}" in layout, f"docs/layout.md does not describe the stage {st}"


def test_the_walker_sees_relative_and_absolute_imports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted offenders are caught, so the flow test cannot pass vacuously."""
    pkg = tmp_path / "abtest"
    for sub in ("analysis", "measure", "render"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "analysis" / "report.py").write_text("from ..measure import runner\nfrom . import stats\n")
    (pkg / "analysis" / "stats.py").write_text("")
    (pkg / "measure" / "runner.py").write_text("")
    (pkg / "render" / "tables.py").write_text("import abtest.measure.runner\nfrom abtest.analysis.stats import x\n")
    monkeypatch.setitem(globals(), "PKG", pkg)
    assert imported_modules("abtest.analysis.report") == {"abtest.measure.runner", "abtest.analysis.stats"}
    assert violations("abtest.analysis.report") == [
        "abtest.analysis.report (analysis) imports abtest.measure.runner (measure)"]
    assert violations("abtest.render.tables") == ["abtest.render.tables (render) imports abtest.measure.runner (measure)"]
