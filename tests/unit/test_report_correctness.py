"""Report defects the house issue lists, each pinned by a test that failed before its fix: the "all"
row, the memory Δ, the first-request and noise warnings, the measured window, device counting."""

from __future__ import annotations

import math

from helpers_evidence import Arm, fabricate

from abtest.analysis.arms import load_evidence
from abtest.analysis.report import build_report
from abtest.render.report import render_markdown


def build(paths, **kw):
    return build_report(load_evidence(paths), **kw)


def _row(rep, group, bucket):
    return next(s for s in rep.buckets if s.group == group and s.bucket == bucket)


def _comp(rep, group, bucket, metric):
    return next(c for c in rep.comparisons if c.group == group and c.bucket == bucket and c.metric == metric)


# ----------------------------------------------------------------------------------- the "all" row


def test_the_all_row_shows_the_means_its_delta_compares(tmp_path):
    """Short requests of one arm fail: pooled means over what is left mix the buckets differently in
    the two arms (the issue: -42.6 % printed beside a stratified -1.1 %). The row's means, the
    comparison's means and its Δ must be one thing."""
    arms = [Arm("baseline", ["-ngl", "99"], ttft_ms=120.0, ttft_cv=0.02),
            Arm("other", ["-ngl", "99", "-t", "4"], ttft_ms=120.0, ttft_cv=0.02, failed_requests=4)]
    path = fabricate(tmp_path / "run.jsonl", seed=3, arms=arms)
    rep = build([path])
    c = _comp(rep, "other", "all", "ttft_ms")
    # the arms are the same within each bucket: the Δ is small, and so is the ratio of the shown means
    assert abs(c.ci.delta) < 0.05
    assert math.isclose(c.other_mean / c.base_mean - 1, c.ci.delta, rel_tol=1e-9, abs_tol=1e-12)
    for group, mean in (("baseline", c.base_mean), ("other", c.other_mean)):
        assert math.isclose(_row(rep, group, "all").summaries["ttft_ms"].mean, mean, rel_tol=1e-9)
    # no pooled spread, median or p95 beside a stratified mean
    s = _row(rep, "other", "all").summaries["ttft_ms"]
    assert math.isnan(s.std) and math.isnan(s.median) and math.isnan(s.p95)
    md = render_markdown(rep)
    assert "weighted by" in md
