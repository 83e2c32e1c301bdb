"""The README's main job, headless: `edgefleet demo --exit-after-rollouts` runs to completion
with real training, compiles, mosquitto, the fleet service and four agent processes (three
classifier cameras, one running the scene detector). Five runs
in a row (does v2 ever abort by chance?): benchmarks/demo_runs.py."""

from __future__ import annotations

import re

import psutil
import pytest
from support.scenes import box_iou

from edgefleet.demo import DemoOptions, run_demo
from edgefleet.demo.ports import check_port
from edgefleet.models.scenes import FRAME_SIZE, render_scene_boxes

pytestmark = [pytest.mark.mqtt, pytest.mark.slow]


def _children_named(fragment: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if fragment in " ".join(proc.info["cmdline"] or []):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def test_demo_rolls_out_v1_then_v2_and_reports_real_alerts(tmp_path, edgefleet_home):
    workdir = tmp_path / "demo"
    result = run_demo(DemoOptions(workdir, devices=3, http_port=0, mqtt_port=0, exit_after_rollouts=True))

    assert [r["state"] for r in result.rollouts] == ["succeeded", "succeeded"]
    assert all(r["installs"] == {"committed": 3} for r in result.rollouts)
    # v2 ran in shadow beside v1 on the cameras until its promotion gate passed; the promotion
    # started the v2 rollout above.
    shadow = result.shadow
    assert shadow is not None and shadow["verdict"]["passed"], shadow
    assert shadow["total"]["frames"] >= 300 and shadow["total"]["agreement"] >= 0.6, shadow["total"]
    assert result.rollouts[1]["source"] == shadow["rollout"], result.rollouts[1]
    assert result.dashboard.endswith("/dashboard/")
    # Alert events are stored with the frame's snapshot (uploaded by the cameras, sha256 checked).
    assert result.alert_events["events"] >= 10
    assert result.alert_events["with_snapshot"] >= 10, result.alert_events

    # Alerts come from every camera, name only the labels of interest, and carry the frame they
    # were raised on: the frame files are named after the scene drawn in them.
    assert len(result.alerts) >= 10
    assert {a["device"] for a in result.alerts} == {"cam-1", "cam-2", "cam-3"}
    assert {a["label"] for a in result.alerts} <= {"person", "vehicle"}
    truth = [re.match(r"(person|vehicle|empty)-", a["frame"]).group(1) for a in result.alerts]
    correct = sum(t == a["label"] for t, a in zip(truth, result.alerts))
    assert correct / len(result.alerts) >= 0.7, list(zip(truth, [a["label"] for a in result.alerts]))
    assert {a["model"]["version"] for a in result.alerts} == {"1", "2"}  # before and after the second rollout

    # The detector camera got its own model and alerts with boxes on the objects drawn in its frames.
    assert result.detector_rollout["state"] == "succeeded" and result.detector_rollout["installs"] == {"committed": 1}
    boxes = [(a["frame"], d) for a in result.detections for d in a["detections"]]
    assert len(boxes) >= 10 and {a["model"]["name"] for a in result.detections} == {"scenedet"}
    hits = 0
    for frame, d in boxes:
        label, index = re.match(r"(person|vehicle|empty)-(\d+)\.jpg", frame).groups()
        drawn = render_scene_boxes(label, seed=7, index=int(index), stream="frames", size=FRAME_SIZE).boxes
        hits += any(b.label == d["label"] and box_iou(b.box_px, d["box_px"]) >= 0.5 for b in drawn)
    print(f"\ndemo detector camera: {hits}/{len(boxes)} alert boxes on a drawn object of their label (IoU >= 0.5)")
    assert hits / len(boxes) >= 0.7

    # Night falls on one camera: its drift alarm is raised, and cleared when the light returns,
    # each within two minutes; the cameras left alone never alarm.
    drift = result.drift
    assert drift["device"] == "cam-3" and drift["feature"] in ("brightness", "contrast", "confidence", "predictions")
    assert drift["raised_after_s"] < 120 and drift["cleared_after_s"] < 120, drift
    assert drift["false_alarms"] == 0

    # Nothing it started is left running, and its ports are free again the moment it returns.
    assert _children_named(str(workdir)) == []
    assert len(result.ports) == 2
    assert {option: check_port(port, option) for option, port in result.ports.items()} == result.ports
