"""Box geometry for detectors: frame <-> model input (stretch or letterbox), IoU, NMS, zones.

Boxes are numpy arrays of x1, y1, x2, y2 rows. Decoders give them in model-input pixels;
`Geometry.to_frame` maps them to frame pixels, where the rules (areas, zones) work.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgefleet.agent.detectors.base import MAX_CANDIDATES


@dataclass(frozen=True)
class Geometry:
    """Where the frame lies in the model input: input = frame * scale + pad (per axis)."""

    frame_w: int
    frame_h: int
    scale_x: float
    scale_y: float
    pad_x: int = 0
    pad_y: int = 0

    @classmethod
    def fit(cls, frame_w: int, frame_h: int, in_w: int, in_h: int, letterbox: bool) -> Geometry:
        if not letterbox:
            return cls(frame_w, frame_h, in_w / frame_w, in_h / frame_h)
        new_w, new_h = resized_size(frame_w, frame_h, in_w, in_h)
        # The scale actually applied per axis (sizes are rounded), and the image centred.
        return cls(frame_w, frame_h, new_w / frame_w, new_h / frame_h, (in_w - new_w) // 2, (in_h - new_h) // 2)

    def to_frame(self, boxes: np.ndarray) -> np.ndarray:
        """Model-input pixel boxes -> frame pixel boxes, clipped to the frame."""
        out = np.empty_like(boxes, dtype=np.float32)
        out[:, 0::2] = np.clip((boxes[:, 0::2] - self.pad_x) / self.scale_x, 0, self.frame_w)
        out[:, 1::2] = np.clip((boxes[:, 1::2] - self.pad_y) / self.scale_y, 0, self.frame_h)
        return out

    def to_input(self, boxes: np.ndarray) -> np.ndarray:
        out = np.empty_like(boxes, dtype=np.float32)
        out[:, 0::2] = boxes[:, 0::2] * self.scale_x + self.pad_x
        out[:, 1::2] = boxes[:, 1::2] * self.scale_y + self.pad_y
        return out


def resized_size(frame_w: int, frame_h: int, in_w: int, in_h: int) -> tuple[int, int]:
    """The letterboxed image's size inside an in_w x in_h input (at least 1 pixel each way)."""
    scale = min(in_w / frame_w, in_h / frame_h)
    return max(1, min(in_w, round(frame_w * scale))), max(1, min(in_h, round(frame_h * scale)))


def cxcywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    half = boxes[:, 2:4] / 2
    return np.concatenate([boxes[:, :2] - half, boxes[:, :2] + half], axis=1)


def area(boxes: np.ndarray) -> np.ndarray:
    return np.clip(boxes[..., 2] - boxes[..., 0], 0, None) * np.clip(boxes[..., 3] - boxes[..., 1], 0, None)


def iou(one: np.ndarray, many: np.ndarray) -> np.ndarray:
    """IoU of one box [4] with each of many [K, 4]."""
    x1 = np.maximum(one[0], many[:, 0])
    y1 = np.maximum(one[1], many[:, 1])
    x2 = np.minimum(one[2], many[:, 2])
    y2 = np.minimum(one[3], many[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    return inter / np.maximum(area(one) + area(many) - inter, 1e-9)


# Boxes taken per NMS round (see nms): fewer rounds of Python overhead, a little more arithmetic.
LEADERS = 8


def nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    iou_threshold: float,
    max_detections: int,
    max_candidates: int = MAX_CANDIDATES,
) -> np.ndarray:
    """Class-aware greedy NMS; returns the kept indices, best score first.

    Boxes of different classes never suppress each other: each class is shifted to its own
    region of the plane (the offset trick), so one pass serves every class. Only the best
    `max_candidates` enter, which bounds the cost of a frame full of low-quality candidates.
    Each round keeps the best remaining box and drops the rest that overlap it; the columns
    are compacted every round, so the rounds get cheaper and no index array is gathered twice.
    """
    order = np.argsort(-scores, kind="stable")[:max_candidates]
    if order.size == 0:
        return order
    picked = boxes[order].astype(np.float64)  # float64: the class offsets must not eat box precision
    span = float(np.abs(picked).max()) + 1.0
    picked += (classes[order] * span)[:, None]
    x1, y1, x2, y2 = (picked[:, i : i + 1].T.copy() for i in range(4))  # [1, K] rows
    areas = (x2 - x1).clip(0) * (y2 - y1).clip(0)
    ids = order
    keep: list[int] = []
    while ids.size and len(keep) < max_detections:
        # The best `lead` boxes against all remaining at once; a round costs a few numpy calls.
        lead = min(LEADERS, ids.size)
        w = np.minimum(x2[:, :lead].T, x2) - np.maximum(x1[:, :lead].T, x1)
        h = np.minimum(y2[:, :lead].T, y2) - np.maximum(y1[:, :lead].T, y1)
        inter = np.maximum(w, 0) * np.maximum(h, 0)
        over = inter > iou_threshold * (areas[:, :lead].T + areas - inter)  # IoU > t without a division
        kept = resolve_leaders(over)
        keep += ids[kept].tolist()
        gone = over[kept].any(axis=0)
        gone[:lead] = True
        stay = ~gone
        x1, y1, x2, y2, areas = (a[:, stay] for a in (x1, y1, x2, y2, areas))
        ids = ids[stay]
    return np.asarray(keep[:max_detections], dtype=np.int64)


def resolve_leaders(over: np.ndarray) -> list[int]:
    """Greedy among the leaders (best first): one is kept unless a kept, better one overlaps it.

    The boxes after the leaders all score lower, so whatever a kept leader overlaps goes, and
    the greedy order of the one-box-per-round algorithm is kept exactly.
    """
    kept: list[int] = []
    for j in range(over.shape[0]):
        if not any(over[k, j] for k in kept):
            kept.append(j)
    return kept


def point_in_polygon(x: float, y: float, polygon: list[tuple[float, float]]) -> bool:
    """Even-odd ray casting: is (x, y) inside the polygon (frame pixels)?"""
    inside = False
    j = len(polygon) - 1
    for i, (xi, yi) in enumerate(polygon):
        xj, yj = polygon[j]
        if (yi > y) != (yj > y) and x < (xj - xi) * (y - yi) / (yj - yi) + xi:
            inside = not inside
        j = i
    return inside
