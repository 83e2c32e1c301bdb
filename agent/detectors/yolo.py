"""Anchor-free YOLO (Ultralytics v8, v9, 11): one output
[1, 4+nc, N] (the default export) or its transpose [1, N, 4+nc]; each anchor is cx, cy, w, h
then one already-sigmoided score per class. No objectness.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from edgefleet.agent.boxes import cxcywh_to_xyxy
from edgefleet.agent.detectors.base import (
    Candidates,
    Head,
    HeadConfig,
    Shapes,
    best_class,
    classes_fit,
    one_3d,
    single_output,
)
from edgefleet.errors import BadInputError

LAYOUT = "[1, 4+nc, N] or [1, N, 4+nc]: cx, cy, w, h, nc class scores"


class YoloConfig(HeadConfig):
    # Ultralytics' TFLite exports divide the boxes by the input size; ONNX exports do not.
    coords: Literal["pixels", "normalized"] = "pixels"


def scaled(boxes: np.ndarray, coords: str, input_hw: tuple[int, int]) -> np.ndarray:
    if coords == "pixels":
        return boxes
    h, w = input_hw
    return boxes * np.asarray([w, h, w, h], dtype=np.float32)


class YoloHead(Head):
    name = "yolo"
    layout = LAYOUT
    config_class = YoloConfig

    @staticmethod
    def matches(shapes: Shapes) -> bool:
        dims = one_3d(shapes)
        return dims is not None and dims[0] != dims[1] and classes_fit(min(dims) - 4, shapes)

    def decode(self, outputs, names, cfg, input_hw, score_threshold):
        out = single_output(outputs, self.name, LAYOUT)
        if min(out.shape) < 5:
            raise BadInputError(
                f"the yolo head expects one output {LAYOUT} with nc >= 1; output 0 has shape "
                f"{list(np.shape(outputs[0]))}",
                "compile with the --head that matches the export",
            )
        # Anchors outnumber channels in every real export: that tells [4+nc, N] from [N, 4+nc].
        first = out.shape[0] < out.shape[1]
        rows, classes, scores = best_class(out[4:] if first else out[:, 4:], score_threshold, axis=0 if first else 1)
        xywh = out[:4, rows].T if first else out[rows, :4]
        boxes = cxcywh_to_xyxy(xywh.astype(np.float32))
        return Candidates(scaled(boxes, cfg.coords, input_hw), scores.astype(np.float32), classes.astype(np.int64))
