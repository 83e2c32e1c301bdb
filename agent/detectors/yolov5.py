"""YOLOv5-style heads with objectness (YOLOv5, v7 without --end2end, Scaled-YOLOv4): one output
[1, N, 5+nc], anchors already applied by the export: cx, cy, w, h (input pixels), objectness,
then class probabilities; a box's score is objectness x class probability.
"""

from __future__ import annotations

import numpy as np

from edgefleet.agent.boxes import cxcywh_to_xyxy
from edgefleet.agent.detectors.base import (
    Candidates,
    Head,
    HeadConfig,
    Shapes,
    best_class,
    classes_fit,
    grid_points,
    one_3d,
    single_output,
)

LAYOUT = "[1, N, 5+nc]: cx, cy, w, h, objectness, nc class scores; N = 3 anchors x grid (25200 at 640)"


class Yolov5Config(HeadConfig):
    strides: list[int] = [8, 16, 32]
    anchors_per_cell: int = 3


class Yolov5Head(Head):
    name = "yolov5"
    layout = LAYOUT
    config_class = Yolov5Config

    @staticmethod
    def matches(shapes: Shapes) -> bool:
        dims = one_3d(shapes)
        cfg = Yolov5Config()
        return (
            dims is not None
            and dims[0] == cfg.anchors_per_cell * grid_points(shapes.input_hw, cfg.strides)
            and classes_fit(dims[1] - 5, shapes)
        )

    def decode(self, outputs, names, cfg, input_hw, score_threshold):
        out = single_output(outputs, self.name, LAYOUT)
        # Objectness first: it rules out most anchors before the per-class products.
        out = out[out[:, 4] > score_threshold]
        rows, classes, scores = best_class(out[:, 5:] * out[:, 4:5], score_threshold)
        boxes = cxcywh_to_xyxy(out[rows, :4].astype(np.float32))
        return Candidates(boxes, scores.astype(np.float32), classes.astype(np.int64))
