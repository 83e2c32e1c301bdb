"""A compiled YOLO-layout detector in a real agent process, against a real mosquitto: the alerts'
boxes land on the squares drawn in the frames; zones and areas decide which frames alert. Then
the trained scene detector (models/train_detector.py) on generated scenes whose boxes are known."""

from __future__ import annotations

import base64
import io
import time

import numpy as np
import pytest
from agent_support import (
    agent_config,
    box_iou,
    brightness_onnx,
    compile_test_package,
    drop_frame,
    square_jpeg,
    start_agent,
    write_config,
)
from PIL import Image

from edgefleet.errors import UsageError

# (name, square drawn in the 96x64 frame or None, alerts?)
FRAMES = [
    ("f000.jpg", (10, 20, 28, 38), True),  # in the left zone
    ("f001.jpg", (60, 20, 80, 40), False),  # right of the zone
    ("f002.jpg", (10, 10, 16, 16), False),  # in the zone, 36 px: under min_area
    ("f003.jpg", (20, 30, 44, 54), True),
    ("f004.jpg", None, False),  # nothing drawn
]
RULES = {
    "labels": ["square"],
    "min_score": 0.5,
    "min_area": 100,
    "thumbnail": True,
    "draw_boxes": True,
    "thumbnail_max_side": 96,
    "thumbnail_max_bytes": 16384,
    "zones": {"left": {"coordinates": [[0, 0], [48, 0], [48, 64], [0, 64]]}},
}


def frame_bytes(square) -> bytes:
    return square_jpeg(square) if square else square_jpeg((0, 0, 0, 0))


def red_pixels(thumb: dict) -> np.ndarray:
    pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(thumb["data"]))).convert("RGB")).astype(int)
    return (pixels[..., 0] > 150) & (pixels[..., 1] < 100) & (pixels[..., 2] < 100)


@pytest.mark.mqtt
def test_a_real_agent_alerts_with_boxes_on_the_drawn_squares(tmp_path, mqtt_broker, square_package):
    alerts = mqtt_broker.subscriber("edgefleet/v1/cam-1/alerts")
    for name, square, _ in FRAMES:
        drop_frame(tmp_path / "incoming", name, frame_bytes(square))
    config = write_config(tmp_path / "agent.toml", agent_config(tmp_path, mqtt_broker, square_package, rules=RULES))
    agent = start_agent(config, "--max-frames", str(len(FRAMES)), log=tmp_path / "agent.log")
    try:
        assert agent.wait(timeout=90) == 0, (tmp_path / "agent.log").read_text()[-2000:]
        alerts.wait_for(2)
        time.sleep(0.5)  # would a frame that must not alert have alerted late?
        got = [m.json() for m in alerts.messages]
    finally:
        agent.kill()
    assert [a["frame"].split(":")[0] for a in got] == [name for name, _, alerts_ in FRAMES if alerts_]
    truth = {name: square for name, square, _ in FRAMES}
    for body in got:
        square = truth[body["frame"].split(":")[0]]
        box = body["detections"][0]
        assert len(body["detections"]) == 1, "NMS collapsed the model's duplicate anchors"
        assert box_iou(box["box_px"], square) >= 0.5, (box, square)
        assert box["zones"] == ["left"] and body["frame_size"] == [96, 64] and body["schema"] == 1
        ymin, xmin, ymax, xmax = box["box"]
        assert [xmin * 96, ymin * 64, xmax * 96, ymax * 64] == pytest.approx(box["box_px"], abs=0.1)
        red = red_pixels(body["thumbnail"])
        assert red.any() and not red[:, 60:].any(), "the box is drawn around the square, in the left part"


@pytest.mark.mqtt
def test_a_real_agent_running_the_trained_scene_detector_alerts_on_the_drawn_objects(
    tmp_path, mqtt_broker, scene_detector
):
    from edgefleet.models.scenes import render_scene_boxes

    truth = {}
    for label in ("person", "vehicle", "empty"):
        for i in range(20):  # the frames stream, another seed: never seen in training
            scene = render_scene_boxes(label, seed=11, index=i, stream="frames", size=(320, 240))
            name = f"{label}-{i:05d}.jpg"
            buf = io.BytesIO()
            scene.image.save(buf, "JPEG", quality=90)
            drop_frame(tmp_path / "incoming", name, buf.getvalue())
            truth[name] = scene.boxes
    alerts = mqtt_broker.subscriber("edgefleet/v1/cam-1/alerts")
    rules = {"labels": ["person", "vehicle"], "min_score": 0.5}
    config = write_config(
        tmp_path / "agent.toml",
        agent_config(tmp_path, mqtt_broker, (scene_detector.package, scene_detector.trusted), rules=rules),
    )
    agent = start_agent(config, "--max-frames", str(len(truth)), log=tmp_path / "agent.log")
    try:
        assert agent.wait(timeout=120) == 0, (tmp_path / "agent.log").read_text()[-2000:]
        alerts.wait_for(20)
        time.sleep(0.5)  # the last alerts in flight
        got = [m.json() for m in alerts.messages]
    finally:
        agent.kill()
    boxes = [(d, truth[body["frame"].split(":")[0]]) for body in got for d in body["detections"]]
    hits = sum(
        any(d["label"] == b.label and box_iou(d["box_px"], b.box_px) >= 0.5 for b in drawn) for d, drawn in boxes
    )
    found = {body["frame"].split(":")[0] for body in got}
    objects = [name for name, drawn in truth.items() if drawn]
    print(
        f"\nscene detector in the agent: {hits}/{len(boxes)} alert boxes overlap a drawn object of their label at IoU >= 0.5 "
        f"({hits / len(boxes):.3f}); {len(found & set(objects))}/{len(objects)} frames with an object alerted, "
        f"{len(found - set(objects))}/{len(truth) - len(objects)} empty ones"
    )
    assert len(boxes) >= 20 and hits / len(boxes) >= 0.8
    assert len(found & set(objects)) >= 0.7 * len(objects)


def test_a_model_whose_outputs_match_no_head_is_refused_at_compile_time(tmp_path):
    with pytest.raises(UsageError) as err:
        compile_test_package(
            tmp_path,
            brightness_onnx,
            "brightness",
            ["dark", "bright"],
            task="detection",
            preprocessing={"resize": (16, 16)},
        )
    assert "no detection head reads outputs [[1, 2]]" in err.value.cause and "yolo: [1, 4+nc, N]" in err.value.cause


def test_head_options_at_compile_time():
    from edgefleet.compiler.compile import resolve_detection
    from edgefleet.package import TensorSpec

    outputs = [TensorSpec(name="output_0", shape=[1, 84, 8400], dtype="float32")]
    labels = [f"c{i}" for i in range(80)]
    assert resolve_detection("classification", "auto", outputs, (640, 640), labels, "onnx") is None
    with pytest.raises(UsageError, match="--head yolo applies to --task detection"):
        resolve_detection("classification", "yolo", outputs, (640, 640), labels, "onnx")
    with pytest.raises(UsageError, match="'detr' is not a detection head"):
        resolve_detection("detection", "detr", outputs, (640, 640), labels, "onnx")
    thresholds = {"score_threshold": 0.4, "iou_threshold": None}
    info = resolve_detection("detection", None, outputs, (640, 640), labels, "tflite", thresholds)
    assert (info.head, info.options) == ("yolo", {"coords": "normalized"})
    assert (info.score_threshold, info.iou_threshold) == (0.4, 0.45)
