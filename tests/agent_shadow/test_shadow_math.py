"""The shadow runner's arithmetic, table-driven: box matching, agreement counts, sampling and the budget."""

from __future__ import annotations

import pytest

from edgefleet.agent.postprocess import Detection, FrameResult
from edgefleet.agent.shadow import AgreementTally, ShadowBudget, Window, match_boxes
from edgefleet.contracts.shadow import ClassificationAgreement, DetectionAgreement, ShadowSettings


def box(label: str, score: float, x1: float, y1: float, x2: float, y2: float) -> Detection:
    return Detection(label, score, [y1 / 100, x1 / 100, y2 / 100, x2 / 100], [x1, y1, x2, y2])


def frame(*boxes: Detection) -> FrameResult:
    return FrameResult("", 0.0, {}, list(boxes), (100, 100))


# (active boxes, candidate boxes, IoU threshold, expected pairs)
MATCHES = [
    ([], [box("a", 0.9, 0, 0, 10, 10)], 0.5, []),
    ([box("a", 0.9, 0, 0, 10, 10)], [box("a", 0.8, 0, 0, 10, 10)], 0.5, [(0, 0)]),
    # IoU 50/150 = 1/3: under 0.5, over 0.3
    ([box("a", 0.9, 0, 0, 10, 10)], [box("a", 0.8, 5, 0, 15, 10)], 0.5, []),
    ([box("a", 0.9, 0, 0, 10, 10)], [box("a", 0.8, 5, 0, 15, 10)], 0.3, [(0, 0)]),
    # Greedy by IoU, not by box order: the candidate overlaps active 0 by 80/120 and active 1 by 90/110.
    ([box("a", 0.9, 0, 0, 10, 10), box("b", 0.7, 3, 0, 13, 10)], [box("a", 0.8, 2, 0, 12, 10)], 0.5, [(1, 0)]),
    # Then the next best pair of unused boxes: active 0 takes the second candidate (IoU 1).
    (
        [box("a", 0.9, 0, 0, 10, 10), box("b", 0.7, 3, 0, 13, 10)],
        [box("a", 0.8, 2, 0, 12, 10), box("b", 0.6, 0, 0, 10, 10)],
        0.5,
        [(0, 1), (1, 0)],
    ),
    # One active box, two candidates over it: only the better one matches.
    ([box("a", 0.9, 0, 0, 10, 10)], [box("a", 0.8, 1, 0, 11, 10), box("a", 0.7, 0, 0, 10, 10)], 0.5, [(0, 1)]),
]


@pytest.mark.parametrize("active, candidate, threshold, pairs", MATCHES)
def test_boxes_are_matched_greedily_one_to_one_at_the_iou_threshold(active, candidate, threshold, pairs):
    assert match_boxes(active, candidate, threshold) == pairs


def test_detection_agreement_counts_boxes_matches_labels_and_score_deltas():
    tally = AgreementTally()
    tally.add(
        frame(box("person", 0.9, 0, 0, 10, 10), box("car", 0.5, 50, 50, 70, 70)),
        frame(box("person", 0.7, 0, 0, 10, 10), box("person", 0.6, 50, 50, 70, 70), box("car", 0.4, 80, 80, 90, 90)),
        0.5,
    )
    tally.add(frame(), frame(box("car", 0.3, 0, 0, 5, 5)), 0.5)
    assert tally.contract("detection") == DetectionAgreement(
        frames=2,
        active_boxes=2,
        candidate_boxes=4,
        matched=2,
        label_agree=1,
        score_delta_sum=round((0.7 - 0.9) + (0.6 - 0.5), 6),
        score_abs_delta_sum=round(0.2 + 0.1, 6),
    )


@pytest.mark.parametrize(
    "pairs, agree",
    [([], 0), ([("a", "a")], 1), ([("a", "b")], 0), ([("a", "a"), ("b", "a"), ("b", "b")], 2)],
)
def test_classification_agreement_counts_equal_top_labels(pairs, agree):
    tally = AgreementTally()
    for active, candidate in pairs:
        tally.add(FrameResult(active, 0.9, {}), FrameResult(candidate, 0.8, {}), 0.5)
    assert tally.contract("classification") == ClassificationAgreement(frames=len(pairs), agree=agree)


@pytest.mark.parametrize("share, frames, sampled", [(1.0, 10, 10), (0.25, 100, 25), (0.1, 95, 9), (0.0, 50, 0)])
def test_sampling_takes_the_share_of_frames(share, frames, sampled):
    window = Window(0.0, ShadowBudget(ShadowSettings(), 0.0))
    assert sum(window.sampled(share) for _ in range(frames)) == sampled


def simulate(settings: ShadowSettings, frame_s: float, candidate_s: float, frames: int) -> tuple[float, float, int]:
    """A loop on a simulated clock: every frame takes frame_s, plus candidate_s when the candidate runs.
    Returns (frame-rate drop, candidate share of the wall clock, runs)."""
    now, runs = 0.0, 0
    budget = ShadowBudget(settings, now)
    for _ in range(frames):
        now += frame_s
        budget.active_frame(frame_s, now)
        if budget.allows():
            runs += 1
            now += candidate_s
            budget.spend(candidate_s)
    return 1 - (frames * frame_s) / now, runs * candidate_s / now, runs


# (cpu_share, max_fps_drop_percent, active frame s, candidate s, expected drop, expected CPU share): the
# expected numbers are where the binding limit puts them; the controller must reach them within 10 %.
BUDGETS = [
    (1.0, 10.0, 0.001, 0.050, 0.10, None),  # the frame rate binds: drop 10 %
    (1.0, 50.0, 0.010, 0.005, 1 / 3, None),  # the candidate is cheap: it runs on every frame (5/15 of the time)
    (0.05, 50.0, 0.010, 0.020, None, 0.05),  # the CPU share binds: 5 % of the wall clock
    (0.2, 5.0, 0.002, 0.030, 0.05, None),  # both set: the tighter (5 % drop) binds
]


@pytest.mark.parametrize("cpu_share, max_drop, frame_s, candidate_s, drop, share", BUDGETS)
def test_the_budget_keeps_the_candidate_within_its_cpu_share_and_the_frame_rate_drop(
    cpu_share, max_drop, frame_s, candidate_s, drop, share
):
    settings = ShadowSettings(cpu_share=cpu_share, max_fps_drop_percent=max_drop)
    got_drop, got_share, runs = simulate(settings, frame_s, candidate_s, 20_000)
    # One run may overshoot by its own cost (paid back by later frames): 50 ms in 20 s of frames here.
    assert got_drop <= max_drop / 100 + 0.005 and got_share <= cpu_share + 0.005
    if drop is not None:
        assert got_drop == pytest.approx(drop, rel=0.1)
    if share is not None:
        assert got_share == pytest.approx(share, rel=0.1)


@pytest.mark.parametrize("cpu_share, max_drop", [(0.0, 50.0), (1.0, 0.0)])
def test_a_zero_budget_never_runs_the_candidate(cpu_share, max_drop):
    settings = ShadowSettings(cpu_share=cpu_share, max_fps_drop_percent=max_drop)
    assert simulate(settings, 0.01, 0.001, 1000)[2] == 0
