"""Detection on the camera: heads against hand-computed boxes, letterbox, NMS, rules with boxes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from agent_support import box_iou, square_jpeg

from edgefleet.agent.boxes import Geometry, nms, point_in_polygon
from edgefleet.agent.config import RulesConfig, parse_config
from edgefleet.agent.detectors import detect_head, get_head, head_config, heads
from edgefleet.agent.detectors.base import Shapes
from edgefleet.agent.postprocess import Detection, detection, effective
from edgefleet.agent.preprocess import decode_image, geometry, preprocess
from edgefleet.agent.rules import AlertRules
from edgefleet.errors import BadInputError, UsageError
from edgefleet.package import DetectionInfo, Manifest, Preprocessing, TensorSpec

f32 = np.float32


def yolo_rows() -> np.ndarray:
    """2 classes, channels first [1, 6, 8]: cx, cy, w, h, score0, score1; anchors 3-7 score nothing.

    Anchors outnumber channels, as in every real export (that is how the orientation is read).
    """
    out = np.zeros((1, 6, 8), f32)
    out[0, :, :3] = [[50, 40, 10], [40, 40, 10], [20, 4, 4], [10, 4, 6], [0.9, 0.1, 0.3], [0.1, 0.2, 0.7]]
    return out


def yolox_output() -> np.ndarray:
    """64x64 input, strides 8/16/32: 64 + 16 + 4 = 84 rows of x, y, log w, log h, obj, 2 classes."""
    out = np.zeros((1, 84, 7), f32)
    out[0, 9] = [0.5, 0.5, math.log(2), 0, 0.9, 0.8, 0.1]  # stride 8, row 1, col 1: centre (12, 12), 16x8
    out[0, 64 + 5] = [0, 0, 0, 0, 0.5, 0.1, 0.6]  # stride 16, row 1, col 1: centre (16, 16), 16x16
    return out


def yolov5_output() -> np.ndarray:
    return np.array([[[50, 40, 20, 10, 0.8, 0.5, 0.9], [5, 5, 2, 2, 0.2, 1, 1], [30, 30, 10, 20, 0.9, 0.3, 0.1]]], f32)


SSD = [
    np.array([[[0.1, 0.2, 0.5, 0.6], [0, 0, 1, 1]]], f32),
    np.array([[3, 1]], f32),
    np.array([[0.9, 0.1]], f32),
    np.array([2], f32),
]
NORMALIZED = yolo_rows() / np.array([100, 200, 100, 200, 1, 1], f32)[None, :, None]
E2E_6 = np.array([[[10, 20, 30, 40, 0.9, 2], [0, 0, 5, 5, 0.1, 0]]], f32)
E2E_7 = np.array([[0, 10, 20, 30, 40, 1, 0.8], [0, 1, 1, 2, 2, 0, 0.2]], f32)

# head, outputs, options, input (h, w), expected (x1, y1, x2, y2, class, score) rows, best first, at threshold 0.25
CASES = [
    ("yolo", [yolo_rows()], {}, (64, 64), [(40, 35, 60, 45, 0, 0.9), (8, 7, 12, 13, 1, 0.7)]),
    ("yolo", [yolo_rows().transpose(0, 2, 1)], {}, (64, 64), [(40, 35, 60, 45, 0, 0.9), (8, 7, 12, 13, 1, 0.7)]),
    ("yolo", [NORMALIZED], {"coords": "normalized"}, (200, 100), [(40, 35, 60, 45, 0, 0.9), (8, 7, 12, 13, 1, 0.7)]),
    ("yolov5", [yolov5_output()], {}, (64, 64), [(40, 35, 60, 45, 1, 0.72), (25, 20, 35, 40, 0, 0.27)]),
    ("yolox", [yolox_output()], {}, (64, 64), [(4, 8, 20, 16, 0, 0.72), (8, 8, 24, 24, 1, 0.3)]),
    ("end2end", [E2E_6], {}, (64, 64), [(10, 20, 30, 40, 2, 0.9)]),
    ("end2end", [E2E_7], {}, (64, 64), [(10, 20, 30, 40, 1, 0.8)]),
    ("ssd", SSD, {}, (100, 200), [(40, 10, 120, 50, 3, 0.9)]),
]


@pytest.mark.parametrize(
    "head, outputs, options, hw, expected", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)]
)
def test_each_head_decodes_known_outputs_to_hand_computed_boxes(head, outputs, options, hw, expected):
    info = DetectionInfo(head=head, options=options, score_threshold=0.25)
    identity = Geometry(hw[1], hw[0], 1, 1)
    result = detection(outputs, ["out"] * len(outputs), [f"c{i}" for i in range(4)], info, hw, identity)
    got = [(*d.px, d.label, d.score) for d in result.detections]
    assert len(got) == len(expected)
    for row, want in zip(got, expected):
        assert row[:4] == pytest.approx(want[:4], abs=0.05) and row[4] == f"c{want[4]}"
        assert row[5] == pytest.approx(want[5], abs=1e-5)


def test_only_the_best_candidates_reach_nms():
    from edgefleet.agent.detectors.base import MAX_CANDIDATES

    out = np.zeros((1, 5, 3000), f32)
    out[0, :4] = [[50], [50], [10], [10]]
    out[0, 4] = np.random.default_rng(0).permutation(3000) / 3000 + 0.3  # every anchor passes, scores distinct
    found = get_head("yolo")().decode([out], ["o"], head_config("yolo", {}), (64, 64), 0.25)
    assert len(found.scores) == MAX_CANDIDATES and found.scores.min() == pytest.approx(0.3 + (3000 - 1024) / 3000)


@pytest.mark.parametrize(
    "outputs, hw, labels, head",
    [
        ([[1, 84, 8400]], (640, 640), 80, "yolo"),
        ([[1, 8400, 84]], (640, 640), 80, "yolo"),
        ([[1, 25200, 85]], (640, 640), 80, "yolov5"),
        ([[1, 8400, 85]], (640, 640), 80, "yolox"),
        ([[1, 3549, 85]], (416, 416), 80, "yolox"),
        ([[1, 300, 6]], (640, 640), 80, "end2end"),
        ([[100, 7]], (640, 640), None, "end2end"),
        ([[1, 10, 4], [1, 10], [1, 10], [1]], (300, 300), None, "ssd"),
    ],
)
def test_the_head_is_read_from_output_shapes(outputs, hw, labels, head):
    assert detect_head(Shapes(outputs, hw, labels)) == head


def test_ambiguous_or_unreadable_outputs_are_refused_naming_the_candidates():
    with pytest.raises(UsageError) as ambiguous:
        detect_head(Shapes([[1, 8400, 84]], (640, 640), None))
    assert "yolo, yolox" in ambiguous.value.cause and "--head" in ambiguous.value.fix
    with pytest.raises(UsageError) as none:
        detect_head(Shapes([[1, 1000]], (224, 224), 1000))
    assert "[[1, 1000]]" in none.value.cause and all(f"{name}:" in none.value.cause for name in heads())


def test_bad_head_options_and_a_wrong_output_say_what_was_expected():
    with pytest.raises(BadInputError, match="yolo option coords"):
        head_config("yolo", {"coords": "inches"})
    with pytest.raises(BadInputError, match="unknown detection head 'detr'"):
        get_head("detr")
    with pytest.raises(BadInputError, match=r"one output \[1, 4\+nc, N\].*shape \[1, 2, 3, 4\]"):
        detection([np.zeros((1, 2, 3, 4), f32)], ["x"], [], DetectionInfo(head="yolo"), (32, 32))
    with pytest.raises(BadInputError, match=r"nc >= 1; output 0 has shape \[1, 4, 100\]"):
        detection([np.zeros((1, 4, 100), f32)], ["x"], [], DetectionInfo(head="yolo"), (32, 32))


@pytest.mark.parametrize(
    "frame, letterbox", [((96, 64), True), ((64, 96), True), ((640, 480), True), ((101, 37), False)]
)
def test_letterbox_round_trip(frame, letterbox):
    g = Geometry.fit(*frame, 32, 32, letterbox)
    boxes = np.array([[0, 0, frame[0], frame[1]], [10, 5, 30, 20]], f32)
    assert g.to_frame(g.to_input(boxes)) == pytest.approx(boxes, abs=1e-3)
    if letterbox:  # the whole frame fills one axis and is centred on the other
        whole = g.to_input(boxes[:1])[0]
        assert min(whole[2] - whole[0], whole[3] - whole[1]) < 32
        assert max(whole[2], whole[3]) == pytest.approx(32, abs=1)
        assert whole[0] == pytest.approx(32 - whole[2], abs=1) and whole[1] == pytest.approx(32 - whole[3], abs=1)


def test_letterboxed_input_puts_a_drawn_square_where_the_geometry_says():
    spec, pre = TensorSpec(name="image", shape=[1, 3, 32, 32], dtype="float32"), Preprocessing(resize_mode="letterbox")
    image = decode_image(square_jpeg((30, 12, 60, 42)))  # 96x64 frame
    batch = preprocess(image, spec, pre)[0].mean(axis=0)
    ys, xs = np.nonzero(batch > 0.6)
    found = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], f32)
    assert box_iou(geometry(image.size, spec, pre).to_frame(found)[0], (30, 12, 60, 42)) > 0.7
    assert batch[0, 0] == pytest.approx(114 / 255, abs=0.01), "the padding is the letterbox grey"


def brute_force_nms(boxes, scores, classes, threshold):
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    kept: list[int] = []
    for i in order:
        if all(classes[i] != classes[k] or box_iou(boxes[i], boxes[k]) <= threshold for k in kept):
            kept.append(i)
    return kept


@pytest.mark.parametrize("seed", range(6))
def test_nms_matches_a_brute_force_reference(seed):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 80, (150, 2)).astype(f32)
    boxes = np.concatenate([xy, xy + rng.uniform(5, 40, (150, 2)).astype(f32)], axis=1)
    scores = rng.uniform(0, 1, 150).astype(f32)
    classes = rng.integers(0, 3, 150)
    kept = nms(boxes, scores, classes, 0.45, 1000)
    assert kept.tolist() == brute_force_nms(boxes, scores, classes, 0.45)
    assert len(nms(boxes, scores, classes, 0.45, 5)) == 5


def det(label: str, score: float, px: list[float]) -> Detection:
    return Detection(label, score, [], px)


def test_rules_apply_per_label_score_area_and_zones():
    rules = AlertRules(
        RulesConfig(
            labels=["person", "car"],
            min_score=0.5,
            min_area=100,
            filters={"person": {"min_score": 0.8}, "car": {"min_area": 400}},
            zones={"drive": {"coordinates": [(0, 0), (50, 0), (50, 50), (0, 50)], "labels": ["car"]}},
        )
    )
    frame = [
        det("person", 0.7, [60, 60, 80, 80]),  # under the person's 0.8
        det("person", 0.9, [60, 60, 65, 65]),  # 25 px: under min_area
        det("car", 0.9, [10, 10, 30, 30]),  # 400 px, foot (20, 30) in the drive
        det("car", 0.95, [60, 10, 90, 40]),  # foot (75, 40) outside the drive
    ]
    hits = rules.observe({}, 0.0, frame)
    assert [(h.label, h.score) for h in hits] == [("car", pytest.approx(0.9))]
    assert hits[0].detections[0].zones == ["drive"] and len(hits[0].detections) == 1
    person = det("person", 0.85, [0, 0, 20, 20])  # persons are not limited to the zone
    assert [h.label for h in rules.observe({}, 1.0, [person])] == ["person"]


def test_box_rules_keep_consecutive_runs_and_cooldown():
    rules = AlertRules(RulesConfig(labels=["car"], min_area=1, min_consecutive=2, cooldown_s=10))
    inside, tiny = det("car", 0.9, [0, 0, 20, 20]), det("car", 0.9, [0, 0, 0.5, 0.5])
    seen = [len(rules.observe({}, t, [d])) for t, d in enumerate([inside, tiny, inside, inside, inside])]
    assert seen == [0, 0, 0, 1, 0], "a box under the area limit breaks the run; the run needs 2; then the cooldown"


def test_point_in_polygon_with_a_concave_zone():
    zone = [(0, 0), (10, 0), (10, 10), (5, 5), (0, 10)]
    assert point_in_polygon(2, 2, zone) and not point_in_polygon(5, 8, zone) and not point_in_polygon(11, 1, zone)


def config(rules: dict | None = None, model: dict | None = None) -> dict:
    return {
        "version": 1,
        "state_dir": "/tmp/x",
        "sources": [{"type": "folder", "path": "/tmp/in"}],
        "mqtt": {"host": "b", "device_id": "cam-1", "tls": {"ca_file": "a", "cert_file": "b", "key_file": "c"}},
        "rules": rules or {"labels": ["car"]},
        "model": model or {},
    }


@pytest.mark.parametrize(
    "rules, model, where",
    [
        ({"labels": ["car"], "zones": {"drive": {"coordinates": [[0, 0], [1, 1]]}}}, None, "zones.drive.coordinates"),
        (
            {"labels": ["car"], "filters": {"person": {"min_score": 0.9}}},
            None,
            "filters.person: label 'person' is not in",
        ),
        ({"labels": ["car"], "zones": {"bad name!": {"coordinates": [[0, 0], [1, 0], [1, 1]]}}}, None, "rules.zones"),
        ({"labels": ["car"], "min_area": -1}, None, "rules.min_area"),
        (None, {"detection": {"iou": 0.5}}, "model.detection.iou"),
        (None, {"detection": {"score_threshold": 2}}, "model.detection.score_threshold"),
    ],
)
def test_malformed_detection_config_is_refused_naming_the_key(rules, model, where):
    with pytest.raises(BadInputError) as err:
        parse_config(config(rules, model))
    assert where in err.value.cause


def test_a_package_with_a_head_this_agent_does_not_know_is_refused_before_loading(agent_package):
    from edgefleet.agent.model_slot import check_detection
    from edgefleet.package import open_package
    from edgefleet.signing import load_public_key

    pkg, trust = agent_package
    with open_package(pkg, [load_public_key(trust)]) as opened:
        manifest = opened.manifest.model_copy(update={"task": "detection", "detection": DetectionInfo(head="rtdetr")})
    with pytest.raises(BadInputError, match="unknown detection head 'rtdetr'; this agent knows end2end, ssd, yolo"):
        check_detection(manifest)


def test_agent_config_thresholds_override_the_packages():
    cfg = parse_config(config(model={"detection": {"score_threshold": 0.6}}))
    info = effective(DetectionInfo(head="yolo", iou_threshold=0.5), cfg.model.detection.model_dump())
    assert (info.head, info.score_threshold, info.iou_threshold) == ("yolo", 0.6, 0.5)
    assert effective(None).head == "ssd", "packages without a head keep the SSD layout"


def test_manifests_without_detection_read_as_classification_and_a_head_round_trips(agent_package):
    from edgefleet.package import open_package
    from edgefleet.signing import load_public_key

    pkg, trust = agent_package
    with open_package(pkg, [load_public_key(trust)]) as opened:
        manifest = opened.manifest
    # detection, resize_mode and pad_value are part of format 2 (docs/package-format.md): a
    # format-1 reader refuses the format before it meets them.
    assert manifest.detection is None and manifest.preprocessing.resize_mode == "stretch"
    with_head = manifest.model_copy(update={"detection": DetectionInfo(head="yolo")})
    assert Manifest.model_validate_json(with_head.to_bytes()).detection.head == "yolo"
