"""Shadow models on a real camera process: `edgefleet agent run`, real mosquitto, real compiled packages.

The fleet is a test client publishing the jobs it would send on edgefleet/v1/<device>/jobs/notify
and reading what the camera publishes (job updates, shadow reports, alerts, status).
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
from agent_support import jpeg
from PIL import Image
from shadow_support import ShadowCamera

from edgefleet.contracts.shadow import ShadowReport

pytestmark = pytest.mark.mqtt

INSTALL_STATES = ["idle", "downloading", "verifying", "staged", "switching", "probation", "committed"]


@pytest.fixture
def camera(tmp_path, mqtt_broker, shadow_packages, static_server):
    cam = ShadowCamera(tmp_path, mqtt_broker, shadow_packages, static_server)
    yield cam
    cam.stop()


def top_label(value: int, threshold: float) -> str:
    """What a brightness classifier answers on the frame, worked out here from its decoded pixels."""
    pixels = np.asarray(Image.open(io.BytesIO(jpeg(value))).convert("RGB"), dtype=np.float64) / 255.0
    return "bright" if pixels.mean() > threshold else "dark"


def totals(reports: list[dict], key: str) -> int:
    return sum(r["agreement"][key] for r in reports)


def test_a_shadow_model_runs_beside_the_active_one_and_its_agreement_is_the_hand_computed_one(camera):
    camera.start()
    online = [m.json() for m in camera.status.messages if m.json()["state"] == "online"]
    assert online[-1]["features"] == ["shadow"]
    camera.send("s1", "2")
    state, detail = camera.final("s1")
    assert state == "committed" and detail.startswith("smoke test 2 runs"), detail
    assert camera.states("s1") == INSTALL_STATES
    assert camera.active_link() == "brightness-1", "the active model never changes"
    assert camera.shadow_dirs() == ["brightness-2", "current"]
    values = [20, 60, 100, 140, 200, 240, 90, 170]
    camera.drop(values)
    camera.wait(lambda: totals(camera.compared("s1"), "frames") == len(values), "every frame compared")
    reports = camera.compared("s1")
    for report in reports:
        ShadowReport.model_validate(report)  # the fleet's parser takes it
    expected = sum(top_label(v, 0.5) == top_label(v, 0.3) for v in values)
    assert expected == 6  # the two classifiers disagree on 90 and 100 only
    assert totals(reports, "agree") == expected
    assert sum(r["frames_seen"] for r in reports) == len(values)
    assert sum(r["skipped_budget"] for r in reports) == 0
    first = reports[0]
    assert (first["active"], first["candidate"], first["rollout"]) == (
        {"name": "brightness", "version": "1"},
        {"name": "brightness", "version": "2"},
        7,
    )
    assert sum(r["candidate_latency_ms"]["count"] for r in reports) == len(values)
    predictions: dict[str, int] = {}
    for r in reports:
        for label, count in r["drift"]["predictions"].items():
            predictions[label] = predictions.get(label, 0) + count
    assert predictions == {"bright": 6, "dark": 2}
    # Alerts come from the active model alone.
    camera.wait(lambda: len(camera.alerts.messages) >= 1, "an alert from the active model")
    assert {m.json()["model"]["version"] for m in camera.alerts.messages} == {"1"}


def test_a_candidate_that_would_alert_on_every_frame_raises_no_alert(camera):
    camera.start()
    camera.send("s1", "3")  # labels swapped: 'bright' on dark frames, with its own (8x8) preprocessing
    assert camera.final("s1")[0] == "committed"
    camera.drop([30] * 6)
    camera.wait(lambda: totals(camera.compared("s1"), "frames") == 6, "every frame compared")
    reports = camera.compared("s1")
    assert totals(reports, "agree") == 0
    assert all(r["candidate_confidence"] > 0.9 for r in reports), "over the rule's min_score: it would alert"
    time.sleep(1.0)
    assert camera.alerts.messages == []
    camera.drop([250])  # the active model does alert, so the silence above means something
    camera.wait(lambda: len(camera.alerts.messages) == 1, "the active model's alert")
    assert camera.alerts.messages[0].json()["model"]["version"] == "1"


def test_a_shadow_detector_reports_matched_boxes_label_agreement_and_score_deltas(
    tmp_path, mqtt_broker, shadow_packages, static_server
):
    camera = ShadowCamera(tmp_path, mqtt_broker, shadow_packages, static_server, active="det-1")
    try:
        camera.start()
        camera.send("d1", "det-2")
        assert camera.final("d1")[0] == "committed"
        values = [128, 204, 153]
        camera.drop(values)
        camera.wait(lambda: totals(camera.compared("d1"), "frames") == len(values), "every frame compared")
    finally:
        camera.stop()
    reports = camera.compared("d1")
    # By hand, with m the frame's mean pixel and the packages' score threshold 0.25 (boxes as
    # ymin, xmin, ymax, xmax; scores in brackets):
    #   active:    A0 [.1 .2 .5 .6] person (m)      A1 [.3 .3 .9 .8] car (1 - m)
    #   candidate: C0 [.1 .2 .5 .6] car (1 - m)     C1 [.35 .3 .95 .8] car (m)
    # IoU(A0, C0) = 1, IoU(A1, C1) = 0.275 / 0.325 = 0.85, IoU(A0, C1) = 0.045 / 0.415 = 0.11 (under 0.5).
    #   m = 128/255: every score near 0.5: 2 + 2 boxes, pairs (A0, C0) labels differ, (A1, C1) agree;
    #                deltas (1 - m) - m and m - (1 - m)
    #   m = 204/255 = 0.8: A1 and C0 score 0.2, under the threshold: A0 and C1 do not match
    #   m = 153/255 = 0.6: as for 128, deltas -0.2 and +0.2
    m = [np.asarray(Image.open(io.BytesIO(jpeg(v))).convert("RGB"), dtype=np.float64).mean() / 255 for v in values]
    assert {k: sum(r["agreement"][k] for r in reports) for k in ("active_boxes", "candidate_boxes")} == {
        "active_boxes": 5,
        "candidate_boxes": 5,
    }
    assert (totals(reports, "matched"), totals(reports, "label_agree")) == (4, 2)
    assert sum(r["agreement"]["score_delta_sum"] for r in reports) == pytest.approx(0.0, abs=1e-4)
    abs_sum = 2 * abs(1 - 2 * m[0]) + 2 * abs(1 - 2 * m[2])
    assert sum(r["agreement"]["score_abs_delta_sum"] for r in reports) == pytest.approx(abs_sum, abs=1e-4)
    assert all(r["agreement"]["task"] == "detection" for r in reports)


def frames_per_second(camera: ShadowCamera, count: int) -> float:
    """The camera's frame rate measured from outside: frames dropped at once, time until the folder is empty."""
    staging = camera.tmp_path / "staging"
    staging.mkdir(exist_ok=True)
    for i in range(count):
        (staging / f"f{camera.frames + i:06d}.jpg").write_bytes(jpeg(40 + (i % 5) * 40, (320, 240)))
    names = sorted(staging.iterdir())
    camera.frames += count
    start = time.monotonic()
    for path in names:
        path.rename(camera.incoming / path.name)
    camera.wait(lambda: not any(camera.incoming.iterdir()), "every frame handled", timeout=300)
    return count / (time.monotonic() - start)


def test_the_budget_keeps_a_slow_candidate_within_the_frame_rate_drop(
    tmp_path, mqtt_broker, shadow_packages, static_server
):
    camera = ShadowCamera(tmp_path, mqtt_broker, shadow_packages, static_server, max_fps=5000.0)
    baseline, budgeted = [], []
    try:
        camera.start()
        frames_per_second(camera, 50)  # warm up
        # Rounds of (no shadow, slow shadow within a 10 % drop), best of each: the machine is shared,
        # and other load only ever slows a round down.
        for r in range(3):
            baseline.append(frames_per_second(camera, 900))
            camera.send(f"s{r}", "4", max_fps_drop_percent=10.0)
            assert camera.final(f"s{r}")[0] == "committed"
            budgeted.append(frames_per_second(camera, 900))
            camera.send(f"r{r}", "4", kind="shadow_remove")  # its last window is reported
            assert camera.final(f"r{r}")[0] == "committed"
        # The same candidate allowed to take the loop (100 % drop): what it costs without the budget.
        camera.send("unbounded", "4", max_fps_drop_percent=100.0)
        assert camera.final("unbounded")[0] == "committed"
        unbounded = frames_per_second(camera, 40)
    finally:
        camera.stop()
    reports = [r for i in range(3) for r in camera.compared(f"s{i}")]
    drop = 1 - max(budgeted) / max(baseline)
    print(
        f"frames/s: no shadow {max(baseline):.1f} (rounds {', '.join(f'{b:.0f}' for b in baseline)}), "
        f"slow shadow within 10 %: {max(budgeted):.1f} ({', '.join(f'{b:.0f}' for b in budgeted)}), "
        f"drop {drop:.1%}; unbounded {unbounded:.1f}; compared {totals(reports, 'frames')}, "
        f"skipped {sum(r['skipped_budget'] for r in reports)} of {sum(r['frames_seen'] for r in reports)}"
    )
    assert 1 - unbounded / max(baseline) > 0.4, "the candidate is slow enough to matter"
    assert totals(reports, "frames") > 0 and sum(r["skipped_budget"] for r in reports) > 0
    assert drop < 0.10 + 0.08, f"the active frame rate dropped {drop:.1%} (limit 10 %, 8 points for a shared machine)"


def journal(camera: ShadowCamera) -> dict:
    return json.loads((camera.state / "shadow" / "journal" / "current.json").read_text())


KILLS = [
    "killed_while_running",  # resumes
    "killed_while_switching",  # dropped: half-way
    "unknown_journaled_state",  # dropped: what the journal says is not known
    "job_document_unreadable",  # dropped: its settings cannot be read
    "package_altered_on_disk",  # dropped: the candidate no longer verifies
]


@pytest.mark.parametrize("how", KILLS)
def test_a_camera_killed_while_holding_a_shadow_model_keeps_its_active_model(camera, how):
    if how == "killed_while_switching":
        camera.start(env={"EDGEFLEET_UPDATE_FAULT": "switching"})
        camera.send("s1", "2")
        camera.process.wait(60)  # the fault hook SIGKILLs the agent right after journaling `switching`
        assert camera.process.returncode == -9
    else:
        camera.start()
        camera.send("s1", "2")
        assert camera.final("s1")[0] == "committed"
        camera.drop([240])
        camera.wait(lambda: camera.compared("s1"), "a first report")
        camera.kill()
        shadow = camera.state / "shadow"
        if how == "unknown_journaled_state":
            (shadow / "journal" / "current.json").write_text(json.dumps(journal(camera) | {"state": "teleporting"}))
        elif how == "job_document_unreadable":
            (shadow / "jobs" / "s1.json").write_text('{"schema": 1, "job": ')
        elif how == "package_altered_on_disk":
            library = shadow / "packages" / "brightness-2" / "model.so"
            library.write_bytes(library.read_bytes()[:-16] + b"\0" * 16)
    assert camera.active_link() == "brightness-1"
    reports_before, alerts_before = len(camera.compared("s1")), len(camera.alerts.messages)
    camera.start()
    camera.drop([20, 240])
    camera.wait(lambda: len(camera.alerts.messages) > alerts_before, "an alert from the active model")
    assert camera.alerts.messages[-1].json()["model"]["version"] == "1"
    if how == "killed_while_running":
        camera.wait(lambda: len(camera.compared("s1")) > reports_before, "the shadow reports again")
        assert camera.compared("s1")[-1]["candidate"]["version"] == "2"
        assert camera.shadow_dirs() == ["brightness-2", "current"]
        return
    camera.wait(lambda: journal(camera)["state"] == "rolled_back", "the shadow dropped")
    assert camera.states("s1")[-2:] == ["rolling_back", "rolled_back"]
    assert camera.shadow_dirs() == []
    time.sleep(1.5)  # a window's worth: no report comes
    assert len(camera.compared("s1")) == reports_before


def test_shadow_remove_stops_the_candidate_and_deletes_its_files(camera):
    camera.start()
    camera.send("s1", "2")
    assert camera.final("s1")[0] == "committed"
    camera.send("r1", "2", kind="shadow_remove")
    assert camera.final("r1") == ("committed", "shadow model removed")
    assert camera.shadow_dirs() == []
    assert list((camera.state / "shadow" / "jobs").iterdir()) == []
    camera.drop([240, 20])
    camera.wait(lambda: len(camera.alerts.messages) == 1, "the active model's alert")
    time.sleep(1.5)
    assert camera.compared("s1") == [] and camera.active_link() == "brightness-1"


def test_a_second_shadow_install_replaces_the_first(camera):
    camera.start()
    camera.send("s1", "2")
    assert camera.final("s1")[0] == "committed"
    camera.send("s2", "3")
    assert camera.final("s2")[0] == "committed"
    assert camera.shadow_dirs() == ["brightness-3", "current"]
    assert [p.name for p in (camera.state / "shadow" / "jobs").iterdir()] == ["s2.json"]
    camera.drop([30])
    camera.wait(lambda: camera.compared("s2"), "s2's report")
    assert camera.compared("s2")[0]["candidate"]["version"] == "3"


def test_untrusted_tampered_unsigned_or_not_newer_candidates_are_refused(camera):
    camera.start()
    cases = {
        "5-untrusted": "does not verify against any trusted key",
        "2-tampered": "sha256",
        "2-unsigned": "unsigned",
        "1": "not newer than the active 1",
    }
    for i, (package, why) in enumerate(cases.items()):
        camera.send(f"bad{i}", package)
        state, detail = camera.final(f"bad{i}")
        assert (state, why in detail) == ("failed", True), detail
        assert camera.shadow_dirs() == [] and camera.active_link() == "brightness-1"
    camera.drop([240])
    camera.wait(lambda: len(camera.alerts.messages) == 1, "the active model's alert")
    assert list(Path(camera.state / "shadow" / "packages").iterdir()) == []
