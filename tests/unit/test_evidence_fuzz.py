"""Property: whatever JSON the lines of an evidence file hold, `read_evidence` never raises, and
`build_report` on what it returns raises nothing but the documented one-line errors (AbtestError:
"no arms", mixed models, ...).

Lines are drawn three ways: arbitrary JSON values; lines of a real (fabricated) evidence file with
fields replaced by arbitrary JSON, dropped, or with kind and schema changed; and the same lines with
fields replaced by arbitrary values *of the right type*, which pass the reader's type check and so
reach the report's arithmetic."""

from __future__ import annotations

import json
import tempfile
import typing
from pathlib import Path
from typing import Any

import pytest
from helpers_evidence import Arm, fabricate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from abtest.analysis.report import build_report
from abtest.errors import AbtestError
from abtest.evidence import read_evidence
from abtest.records import KINDS, TokenEvent, _fields_of

with tempfile.TemporaryDirectory() as _tmp:
    _BASE = [json.loads(line) for line in fabricate(
        Path(_tmp) / "base.jsonl", seed=5, arms=[Arm("baseline"), Arm("other", decode_tps=40.0)], runs=2,
        prompts_per_bucket=1, warmup=1, completion_tokens=6,
    ).read_text().splitlines()]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")

JSON: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


def typed(hint: Any) -> st.SearchStrategy[Any]:
    """Arbitrary JSON values that fit an annotation of a record field (what the type check lets in)."""
    if hint is Any:
        return JSON
    if hint is type(None):
        return st.none()
    if hint is bool:
        return st.booleans()
    if hint is int:
        return st.integers(-(2**63), 2**63 - 1)
    if hint is float:
        return st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**63), 2**63 - 1)
    if hint is str:
        return st.text(max_size=12)
    if hint is TokenEvent:
        return st.lists(st.integers(-(2**63), 2**63 - 1), min_size=2, max_size=2)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list:
        return st.lists(typed(args[0]), max_size=6)
    if origin is dict:
        return st.dictionaries(st.text(max_size=6), typed(args[1]), max_size=4)
    if args:  # a union
        return st.one_of(*(typed(a) for a in args))
    raise AssertionError(hint)


@st.composite
def mutated(draw: st.DrawFn) -> Any:
    obj = dict(draw(st.sampled_from(_BASE)))
    fields = _fields_of(KINDS[obj["kind"]])
    how = draw(st.sampled_from(["typed", "typed", "typed", "any", "drop", "kind", "schema"]))
    for _ in range(draw(st.integers(1, 3))):
        name, hint, _ = draw(st.sampled_from(fields))
        if how == "typed":
            obj[name] = draw(typed(hint))
        elif how == "any":
            obj[name] = draw(JSON)
        elif how == "drop":
            obj.pop(name, None)
        elif how == "kind":
            obj["kind"] = draw(st.sampled_from(list(KINDS)) | JSON)
        else:
            obj["schema"] = draw(JSON)
    return obj


LINE = st.one_of(JSON, mutated(), st.sampled_from(_BASE))


# derandomize: the same examples every run, so the suite never fails at random; the search went
# wider by hand (12 000 examples, see docs/evidence.md) and found one crash, in the analysis (below).
@settings(deadline=None, max_examples=150, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(LINE, max_size=40), cut=st.booleans())
def test_no_line_makes_the_reader_or_the_report_raise(work: Path, lines: list[Any], cut: bool) -> None:
    text = "".join(json.dumps(v) + "\n" for v in lines)
    if cut and text:
        text = text[: len(text) // 2]
    path = work / "fuzz.jsonl"
    path.write_text(text, encoding="utf-8")
    ev = read_evidence(path)
    assert ev.bad_lines <= len(lines)
    try:
        build_report([ev], resamples=50)
    except AbtestError:
        pass


def test_the_unchanged_base_reads_clean_and_reports(work: Path) -> None:
    path = work / "clean.jsonl"
    path.write_text("".join(json.dumps(v) + "\n" for v in _BASE), encoding="utf-8")
    ev = read_evidence(path)
    assert ev.problems == [] and ev.bad_lines == 0 and not ev.partial
    assert build_report([ev], resamples=50).baseline == "baseline"


@pytest.mark.parametrize("value", [[1, 2], "text", 42, None])
def test_the_values_of_the_issue(work: Path, value: Any) -> None:
    path = work / "issue.jsonl"
    path.write_text("".join(json.dumps(v) + "\n" for v in [*_BASE, value]), encoding="utf-8")
    ev = read_evidence(path)
    assert ev.bad_lines == 1
    build_report([ev], resamples=50)


def test_equal_values_in_one_arm_do_not_crash_the_stratified_ci() -> None:
    """Found by the search above: math.expm1 overflowed when one arm's values were all equal. The
    interval of such a degenerate sample is unbounded (and so never significant), not an exception."""
    from abtest.analysis.stratified import ratio_ci_stratified

    ci = ratio_ci_stratified([12.4243794, 12.7733418, 12.531465], ["short", "long", "long"],
                             [26.296156000000003] * 3, ["long"] * 3, weights={"short": 1 / 6, "long": 5 / 6})
    assert ci.low <= ci.delta <= ci.high
