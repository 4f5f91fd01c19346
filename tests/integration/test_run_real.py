"""`abtest run` against the real llama-server on the tiny MoE model (CPU).

The acceptance check of the run: for every request, the tokens the client counted from the events
equal the server's own timings.predicted_n, and the client's decode rate over the same request
agrees with the server's predicted_per_second within 10 % (consistency within one request, not a
speed target).
"""

from __future__ import annotations

import os
import statistics
from pathlib import Path

import pytest

from abtest.analysis.metrics import decode_tps, decode_unmeasurable, server_decode_tps
from abtest.config import RunConfig, resolve_arms
from abtest.evidence import read_evidence
from abtest.measure.protocol import implausible
from abtest.measure.runner import Runner
from abtest.server.process import process_group_alive

pytestmark = pytest.mark.integration

MAX_TOKENS = 96


@pytest.fixture(scope="module", params=["raw", "httpx"])
def evidence(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, llama_server: Path,
             tiny_moe: Path):
    out = tmp_path_factory.mktemp("evidence")
    cfg = RunConfig(
        model=str(tiny_moe),
        arms=resolve_arms([], None),
        runs=2,
        blocks=2,  # the default: A B B A, a server session per block
        warmup=1,
        max_tokens=MAX_TOKENS,
        buckets=("seed004", "tok128"),
        out_dir=str(out),
        server_bin=str(llama_server),
        threads=1,
        http_client=request.param,  # both HTTP layers must pass the same acceptance checks
    )
    result = Runner(cfg, argv=["pytest"]).execute()
    assert result.arms_failed == []
    return read_evidence(result.evidence_path)


def test_evidence_is_complete(evidence) -> None:
    assert evidence.problems == []
    assert not evidence.partial
    assert [(a.arm, a.block) for a in evidence.arm_starts] == [("baseline", 0), ("cpu-moe", 0),
                                                                ("cpu-moe", 1), ("baseline", 1)]
    assert [a.status for a in evidence.arm_ends] == ["ok"] * 4
    assert len({a.pid for a in evidence.arm_starts}) == 4
    m = evidence.manifest
    assert m is not None and len(m.models[0]["sha256"]) == 64
    assert m.gpu["available"] is False and m.gpu["reason"]  # no GPU here: said, not crashed
    for start in evidence.arm_starts:
        assert "--fit" in start.argv and "-ngl" in start.argv and "-c" in start.argv
        assert start.argv[-4:-1] == ["--host", "127.0.0.1", "--port"]
        assert start.ready_ms > 0
        assert start.prompt_tokens["tok128-systems"] == 128
    assert "--cpu-moe" in evidence.arm_starts[1].argv
    # 8 prompts x 2 runs x 2 blocks measured per arm, 1 warm-up per session
    measured = [r for r in evidence.requests if not r.warmup]
    assert len(measured) == 2 * 8 * 2 * 2
    assert sum(r.warmup for r in evidence.requests) == 4
    assert {(r.arm, r.block) for r in measured} == {(a.arm, a.block) for a in evidence.arm_starts}
    assert len(evidence.memory) > 0


def test_client_token_count_equals_server_predicted_n(evidence) -> None:
    for r in evidence.requests:
        assert r.ok, r.error
        assert r.completion_tokens == r.server_predicted_n == MAX_TOKENS, r
        assert r.cache_n == 0  # cache_prompt false held: no KV-cache hits between repetitions
    # Every (arm, prompt) has its ids: streamed when complete, else backfilled once after the runs
    # (a non-streamed request with return_tokens); repetitions without ids generated the same text.
    measured = [r for r in evidence.requests if not r.warmup]
    for key in {(r.arm, r.prompt_id) for r in measured}:
        group = [r for r in measured if (r.arm, r.prompt_id) == key]
        with_ids = [r for r in group if r.token_ids is not None]
        assert with_ids and all(len(r.token_ids) == MAX_TOKENS for r in with_ids), key
        assert {r.text for r in group} == {with_ids[0].text}, key


def test_prompt_tokens_match_tokenize(evidence) -> None:
    counted = {(a.arm, pid): n for a in evidence.arm_starts for pid, n in a.prompt_tokens.items()}
    for r in evidence.requests:
        assert r.prompt_tokens == counted[(r.arm, r.prompt_id)]


def test_client_decode_rate_agrees_with_server(evidence) -> None:
    """Issue 4's bar, as a test that holds on a busy 2-core box: the client's decode rate agrees
    with the server's own — no bias (median within 3 %) and most requests within 10 % (three
    CPU hogs beside it on 2 cores left 26 of 32 within; a quiet box all 32). A request the client
    could not observe — every token in one read because the client was descheduled (tiny-moe makes
    96 tokens in ~30 ms) — is flagged by `protocol.implausible`, or has no rate
    (`metrics.decode_unmeasurable`), and is left out, but at most a quarter may be. The
    every-request bar of a quiet box is the accuracy benchmark's (docs/performance.md)."""
    ratios, stalled = [], []
    for r in evidence.requests:
        if r.warmup:
            continue
        if implausible(r) or decode_unmeasurable(r):
            stalled.append(r.seq)
            continue
        ours, theirs = decode_tps(r), server_decode_tps(r)
        assert ours and theirs
        ratios.append(ours / theirs)
    assert len(stalled) <= 0.25 * (len(stalled) + len(ratios)), stalled
    assert 0.97 < statistics.median(ratios) < 1.03
    within = [abs(x - 1) <= 0.10 for x in ratios]
    assert sum(within) >= 0.75 * len(within), [round(x, 3) for x in ratios]


def test_ttft_is_after_headers_and_before_end(evidence) -> None:
    for r in evidence.requests:
        assert r.ttft_ms is not None and r.e2e_ms is not None
        assert 0 < r.ttft_ms <= r.e2e_ms
        assert r.headers_ms is not None and r.headers_ms <= r.ttft_ms + 1e-6


def test_no_server_left_running(evidence) -> None:
    for start in evidence.arm_starts:
        assert not process_group_alive(start.pid)
        assert not os.path.exists(f"/proc/{start.pid}")


def test_report_of_a_real_run_prints_every_section(evidence, tmp_path: Path) -> None:
    """Issue 5's bar: `abtest report` on real tiny-moe evidence prints every section and writes plots."""
    from abtest.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["report", str(evidence.path), "--format", "markdown", "--out", str(tmp_path / "rep")])
    assert exc.value.code == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    # a bucket's table may be split by column groups ("**bucket: seed004 — baseline**", ...)
    for section in ("## Verdict", "## Latency and throughput per bucket", "**bucket: seed004", "**bucket: tok128",
                    "## Memory", "## Output equivalence", "## Cost", "**throughput projection**", "## Provenance"):
        assert section in md, section
    assert "cpu-moe (vs baseline)" in md
    assert evidence.manifest.models[0]["sha256"][:12] in md  # provenance: model SHA256 (short)
    assert {p.name for p in (tmp_path / "rep").glob("*.png")} >= {"ttft_ms.png", "decode_tps.png"}
