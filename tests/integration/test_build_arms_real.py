"""Implementations as arms, on the one cached CPU build: each arm runs its own llama-server binary.

A second llama.cpp build costs CI another 7-29 minutes, so the mechanics are proved with copies of
the one build: arm `pinned` runs it, arm `copy` a byte-identical copy at another path, arm `altered`
a copy with one line appended (it still runs, but its bytes, hence its build id, differ). The run
must record each arm's own binary and build; the report must name both builds; the recogniser must
say `copy` cannot differ from `pinned` (same build id, same command line) and must not say so of
`altered` (another build id: two builds can differ, so the arms are ranked). The real
build-against-build A/B is benchmarks/build_ab.sh, on a GPU box.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from abtest.analysis.report import build_report
from abtest.analysis.verdict import CANNOT_DIFFER
from abtest.config import RunConfig, resolve_arms
from abtest.evidence import read_evidence
from abtest.measure.runner import Runner
from abtest.render.report import provenance_line, render_markdown
from abtest.server.builds import source_sha256
from abtest.server.discover import find_server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def binaries(tmp_path_factory: pytest.TempPathFactory, llama_server: Path) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("builds")
    copy = d / "copy" / "llama-server"
    altered = d / "altered" / "llama-server"
    for p in (copy, altered):
        p.parent.mkdir()
        shutil.copy2(llama_server, p)
    with altered.open("ab") as f:  # trailing bytes after the ELF image: the loader ignores them
        f.write(b"\n# abtest: an altered copy\n")
    return {"pinned": llama_server, "copy": copy, "altered": altered}


@pytest.fixture(scope="module")
def evidence(tmp_path_factory: pytest.TempPathFactory, binaries: dict[str, Path], tiny_moe: Path):
    out = tmp_path_factory.mktemp("evidence")
    arms = resolve_arms(["pinned=-ngl 99", "copy=-ngl 99", "altered=-ngl 99"], None,
                        servers=[f"copy={binaries['copy']}", f"altered={binaries['altered']}"])
    cfg = RunConfig(
        model=str(tiny_moe), arms=arms, runs=1, blocks=1, warmup=0, max_tokens=16,
        buckets=("seed004",), out_dir=str(out), server_bin=str(binaries["pinned"]), threads=1,
    )
    result = Runner(cfg, argv=["pytest"]).execute()
    assert result.arms_failed == []
    return read_evidence(result.evidence_path)


def test_each_arm_records_its_own_binary_and_build(evidence, binaries: dict[str, Path]) -> None:
    starts = {a.arm: a for a in evidence.arm_starts}
    assert set(starts) == {"pinned", "copy", "altered"}
    for arm, path in binaries.items():
        assert starts[arm].server_bin == str(path.resolve())
        assert starts[arm].argv[0] == str(path.resolve())
    pinned_id = find_server(binaries["pinned"]).build_id
    assert starts["pinned"].server_build["build_id"] == starts["copy"].server_build["build_id"] == pinned_id
    assert starts["altered"].server_build["build_id"] == "file-" + source_sha256(binaries["altered"])[:12]
    assert starts["altered"].server_build["build_id"] != pinned_id
    assert starts["copy"].server_build["found_via"] == "--server-bin"


def test_report_names_both_builds_and_recognises_only_the_identical_one(evidence) -> None:
    report = build_report([evidence], baseline="pinned")
    builds = {p.group: p.server_build for p in report.provenance}
    assert builds["pinned"] == builds["copy"] != builds["altered"]
    line = provenance_line(report)
    assert builds["pinned"] in line and builds["altered"] in line
    md = render_markdown(report)
    assert builds["pinned"] in md and builds["altered"] in md
    verdicts = {v.group: v for v in report.verdicts}
    assert verdicts["copy"].status == CANNOT_DIFFER, verdicts["copy"].text
    assert "the same model, build, host and GPU" in (verdicts["copy"].cannot_differ or "")
    # Another build id: the recogniser does not vouch for it, whatever its bytes compute.
    assert verdicts["altered"].status != CANNOT_DIFFER, verdicts["altered"].text
    assert verdicts["altered"].cannot_differ is None
    # Greedy on the same weights: all three generate the same tokens.
    eq = {e.group: e for e in report.equivalence}
    for arm in ("copy", "altered"):
        assert eq[arm].pairs > 0 and eq[arm].identical == eq[arm].pairs, eq[arm]
