"""ONNX's backend conformance cases for the operators vision models use, through the real
compile path (import rewrites, optimize, build, export, load, run on this CPU).

A regression is a case in vision_pass_list.txt that no longer passes. Independently of the
list, no case may give a wrong answer: it must match ONNX or be refused as unsupported.
Refresh the list after a fix with
    python benchmarks/onnx_conformance.py --vision --pass-list tests/conformance/vision_pass_list.txt
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.compiler import conformance as c

PASS_LIST = Path(__file__).parent / "vision_pass_list.txt"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def vision_run(tmp_path_factory) -> dict[str, c.CaseResult]:
    home = tmp_path_factory.mktemp("edgefleet-home")
    mp = pytest.MonkeyPatch()
    mp.setenv("EDGEFLEET_HOME", str(home))  # inherited by the worker processes
    try:
        names = c.vision_case_names()
        results = c.run_suite(names, workers=2)
    finally:
        mp.undo()
    return {r.name: r for r in results}


@pytest.fixture
def vision_results(vision_run, report_table) -> dict[str, c.CaseResult]:
    """The run's results; each test reports the per-operator table for the terminal summary (tests/conftest.py)."""
    table = c.format_table(c.summarize(list(vision_run.values())))
    report_table("ONNX conformance, vision subset (passed / wrong / unsupported / error per operator)", table)
    return vision_run


def test_pass_list_is_well_formed():
    names = c.read_pass_list(PASS_LIST)
    assert names == sorted(set(names)) and len(names) > 400


def test_no_regression_of_the_pass_list(vision_results):
    expected = c.read_pass_list(PASS_LIST)
    regressed = [
        f"{n}: {vision_results[n].outcome}: {vision_results[n].detail}" if n in vision_results else f"{n}: not run"
        for n in expected
        if n not in vision_results or vision_results[n].outcome != "passed"
    ]
    assert not regressed, "cases in the pass list that no longer pass:\n" + "\n".join(regressed)


def test_no_silent_wrong_results(vision_results):
    wrong = [f"{r.name} ({r.operator}): {r.detail}" for r in vision_results.values() if r.outcome == "wrong"]
    assert not wrong, "compiled models gave wrong answers instead of being refused:\n" + "\n".join(wrong)
