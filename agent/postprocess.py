"""Model outputs -> what the rules look at: per-label scores (and boxes for detection).

Classification: the first output is one score per class; logits go through a softmax.
Detection: the package's head (agent/detectors/, manifest `detection.head`; SSD for packages
without one) decodes candidates, class-aware NMS keeps the best (unless the model ran its
own), and the boxes are mapped from the model input back to the frame (agent/boxes.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgefleet.agent.boxes import Geometry, nms
from edgefleet.agent.detectors import get_head, head_config
from edgefleet.agent.infer import softmax_if_logits
from edgefleet.package import DetectionInfo, Manifest

# Packages from before detection heads: SSD, and its old score floor.
LEGACY_DETECTION = DetectionInfo(head="ssd", score_threshold=0.05)


@dataclass
class Detection:
    label: str
    score: float
    box: list[float]  # ymin, xmin, ymax, xmax, relative to the frame (the payload's "box")
    px: list[float] = field(default_factory=list)  # x1, y1, x2, y2 in frame pixels
    zones: list[str] = field(default_factory=list)  # set by the rules

    @property
    def area(self) -> float:
        return max(0.0, self.px[2] - self.px[0]) * max(0.0, self.px[3] - self.px[1]) if self.px else 0.0


@dataclass
class FrameResult:
    top_label: str
    top_score: float
    scores: dict[str, float]  # best score per label seen in this frame
    detections: list[Detection] | None = None  # None for classification
    frame_size: tuple[int, int] | None = None  # width, height (detection)


def _label(labels: list[str], index: int) -> str:
    return labels[index] if 0 <= index < len(labels) else f"class {index}"


def classification(outputs: list[np.ndarray], labels: list[str]) -> FrameResult:
    scores = softmax_if_logits(np.asarray(outputs[0]).reshape(-1))
    best = int(np.argmax(scores))
    by_label = {_label(labels, i): float(s) for i, s in enumerate(scores)}
    return FrameResult(_label(labels, best), float(scores[best]), by_label)


def effective(info: DetectionInfo | None, overrides: dict | None = None) -> DetectionInfo:
    """The package's detection settings with the agent config's overrides (non-None ones) applied."""
    base = info or LEGACY_DETECTION
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    return base.model_copy(update=given) if given else base


def decode_boxes(outputs: list[np.ndarray], names: list[str], info: DetectionInfo, input_hw: tuple[int, int]):
    """Head decoding + NMS: (boxes in input pixels [K, 4], scores [K], classes [K]), best first."""
    head = get_head(info.head)()
    found = head.decode(outputs, names, head_config(info.head, info.options), input_hw, info.score_threshold)
    if head.applies_nms:
        keep = np.argsort(-found.scores, kind="stable")[: info.max_detections]
    else:
        keep = nms(found.boxes, found.scores, found.classes, info.iou_threshold, info.max_detections)
    return found.boxes[keep], found.scores[keep], found.classes[keep]


def to_detections(
    boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, labels: list[str], geometry: Geometry
) -> FrameResult:
    px = geometry.to_frame(boxes.reshape(-1, 4))
    rel = px[:, [1, 0, 3, 2]] / np.asarray([geometry.frame_h, geometry.frame_w] * 2, dtype=np.float32)
    found = [
        Detection(_label(labels, int(c)), float(s), [round(float(v), 4) for v in r], [round(float(v), 1) for v in p])
        for p, r, s, c in zip(px, rel, scores, classes)
    ]
    best: dict[str, float] = {}
    for d in found:
        best[d.label] = max(best.get(d.label, 0.0), d.score)
    top = found[0] if found else None
    size = (geometry.frame_w, geometry.frame_h)
    return FrameResult(top.label if top else "", top.score if top else 0.0, best, found, size)


def detection(
    outputs: list[np.ndarray],
    names: list[str],
    labels: list[str],
    info: DetectionInfo | None = None,
    input_hw: tuple[int, int] = (1, 1),
    geometry: Geometry | None = None,
) -> FrameResult:
    """Decode a detector's outputs; without a geometry boxes stay relative to the input (0..1)."""
    info = info or LEGACY_DETECTION
    boxes, scores, classes = decode_boxes(outputs, names, info, input_hw)
    geometry = geometry or Geometry(1, 1, input_hw[1], input_hw[0])
    return to_detections(boxes, scores, classes, labels, geometry)


def interpret(
    outputs: list[np.ndarray], manifest: Manifest, geometry: Geometry | None = None, overrides: dict | None = None
) -> FrameResult:
    if manifest.task == "detection":
        info = effective(manifest.detection, overrides)
        names = [o.name for o in manifest.outputs]
        return detection(outputs, names, manifest.labels, info, model_hw(manifest), geometry)
    return classification(outputs, manifest.labels)


def model_hw(manifest: Manifest) -> tuple[int, int]:
    from edgefleet.agent.preprocess import input_hw

    return input_hw(manifest.inputs[0], manifest.preprocessing)
