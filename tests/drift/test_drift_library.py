"""fleet/drift.py: distances, the alarm transition table, and summary parsing."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from edgefleet.agent.metrics import BRIGHTNESS_EDGES, CONFIDENCE_EDGES, CONTRAST_EDGES, _hist
from edgefleet.contracts.drift import parse_summary
from edgefleet.errors import BadInputError
from edgefleet.fleet import drift
from edgefleet.fleet.drift import ALARM, OK, PENDING, RECOVERING, AlarmState, DriftConfig, judge, parse_baseline, step


def summary(
    brightness: list[float],
    contrast: list[float] | None = None,
    labels: list[str] | None = None,
    conf: list[float] | None = None,
) -> drift.DriftSummary:
    n = len(brightness)
    labels = labels or ["a"] * n
    return parse_summary(
        {
            "brightness": _hist(brightness, BRIGHTNESS_EDGES),
            "contrast": _hist(contrast or [0.2] * n, CONTRAST_EDGES),
            "predictions": {k: labels.count(k) for k in set(labels)},
            "confidence": _hist(conf or [0.9] * n, CONFIDENCE_EDGES),
        }
    )


def test_psi_and_js_are_zero_for_equal_and_grow_with_shift() -> None:
    base = np.array([10, 20, 40, 20, 10])
    assert (
        drift.psi(base, base) == pytest.approx(0.0, abs=1e-12) and drift.psi(base, base * 3) < 1e-3
    )  # pseudo-count: tiny, not 0
    assert drift.js_distance(base, base * 3) == pytest.approx(0.0, abs=1e-7)
    small, big = np.array([12, 22, 38, 18, 10]), np.array([60, 30, 10, 0, 0])
    assert 0 < drift.psi(base, small) < 0.1 < 0.25 < drift.psi(base, big)
    assert 0 < drift.js_distance(base, small) < drift.js_distance(base, big) < 1
    # Disjoint supports: JS distance (base 2) is exactly 1; PSI stays finite thanks to the pseudo-count.
    assert drift.js_distance(np.array([5, 0]), np.array([0, 5])) == pytest.approx(1.0)
    assert np.isfinite(drift.psi(np.array([5, 0]), np.array([0, 5])))


def test_psi_matches_the_textbook_formula() -> None:
    e, a = np.array([25, 25, 50]), np.array([50, 25, 25])
    pe, pa = (e + 0.5) / (e + 0.5).sum(), (a + 0.5) / (a + 0.5).sum()  # with the Jeffreys pseudo-count
    assert drift.psi(e, a) == pytest.approx(sum((x - y) * np.log(x / y) for x, y in zip(pa, pe)))
    assert drift.psi(e * 1000, a * 1000) == pytest.approx(0.5 * np.log(2), rel=1e-3)  # textbook value for large counts


def test_judge_flags_dark_frames_and_names_the_feature() -> None:
    rng = np.random.default_rng(0)
    base = summary(list(rng.uniform(0.4, 0.7, 500)))
    same = summary(list(rng.uniform(0.4, 0.7, 60)))
    dark = summary(list(rng.uniform(0.02, 0.15, 60)))
    cfg = DriftConfig()
    assert not judge(base, same, cfg).over
    verdict = judge(base, dark, cfg)
    assert verdict.over and verdict.worst == "brightness" and verdict.score > 1
    assert judge(base, dark, DriftConfig(metric="js", threshold=0.5)).over
    # Only the configured features count.
    assert not judge(base, dark, DriftConfig(features=["contrast", "confidence"])).over


def test_predictions_compare_over_the_union_of_classes() -> None:
    base = summary([0.5] * 100, labels=["cat"] * 50 + ["dog"] * 50)
    shifted = summary([0.5] * 100, labels=["cat"] * 5 + ["dog"] * 5 + ["fox"] * 90)
    d = drift.compare(base, shifted)
    assert d["predictions"].psi > 1 and d["brightness"].psi == pytest.approx(0, abs=1e-9)


def test_alarm_raises_after_k_windows_and_clears_after_recovery() -> None:
    cfg = DriftConfig(windows_to_alarm=3, windows_to_clear=2)
    state, seen = AlarmState(), []
    for over in [True, True, False, True, True, True, True, False, True, False, False, False]:
        state, change = step(state, over, cfg)
        seen.append((state.state, change))
    assert seen == [
        (PENDING, None),
        (PENDING, None),
        (OK, None),  # a broken streak does not alarm
        (PENDING, None),
        (PENDING, None),
        (ALARM, "raised"),
        (ALARM, None),
        (RECOVERING, None),
        (ALARM, None),  # one good window is not recovery
        (RECOVERING, None),
        (OK, "cleared"),
        (OK, None),
    ]


def test_k_of_one_alarms_and_clears_at_once() -> None:
    cfg = DriftConfig(windows_to_alarm=1, windows_to_clear=1)
    state, change = step(AlarmState(), True, cfg)
    assert (state.state, change) == (ALARM, "raised")
    state, change = step(state, False, cfg)
    assert (state.state, change) == (OK, "cleared")


def test_transition_table_is_total_and_only_alarm_states_follow_over_enough() -> None:
    events = (drift.OVER, drift.OVER_ENOUGH, drift.UNDER, drift.UNDER_ENOUGH)
    assert set(drift.TRANSITIONS) == set(itertools.product(drift.STATES, events))
    assert all(drift.TRANSITIONS[(s, drift.OVER_ENOUGH)] == ALARM for s in drift.STATES)
    assert all(drift.TRANSITIONS[(s, drift.UNDER_ENOUGH)] == OK for s in drift.STATES)


def test_malformed_summaries_and_baselines_are_refused_clearly() -> None:
    with pytest.raises(BadInputError, match="brightness"):
        parse_summary(
            {
                "brightness": {"edges": [0, 1], "counts": [1, 2]},
                "contrast": {"edges": [0, 1], "counts": [1]},
                "confidence": {"edges": [0, 1], "counts": [1]},
            }
        )
    with pytest.raises(BadInputError, match="format version 7"):
        parse_baseline({"format_version": 7})
    base = summary([0.5] * 10)
    other = base.model_copy(update={"brightness": drift.Histogram(edges=[0.0, 0.5, 1.0], counts=[3, 7])})
    with pytest.raises(BadInputError, match="bin edges differ"):
        drift.compare(base, other)


def test_config_is_strict() -> None:
    with pytest.raises(ValueError):
        DriftConfig(threshold=0.2, webhook_url="https://hooks.example/secret")
    with pytest.raises(ValueError):
        DriftConfig(windows_to_alarm=0)


def test_sparkline_scales_and_marks_gaps() -> None:
    assert drift.sparkline([0.0, 0.25, 0.5, None, 5.0], top=0.5) == "▁▅█ █"
