"""Models that end in their own NMS: [1, N, 6] rows of x1, y1, x2, y2, score, class (Ultralytics
YOLOv10 / `nms=True` exports), or [N, 7] rows of batch, x1, y1, x2, y2, class, score (YOLOv7
--end2end for onnxruntime). Boxes in input pixels; the agent runs no NMS of its own.
"""

from __future__ import annotations

import numpy as np

from edgefleet.agent.detectors.base import Candidates, Head, HeadConfig, Shapes, single_output

LAYOUT = "[1, N, 6]: x1, y1, x2, y2, score, class; or [N, 7]: batch, x1, y1, x2, y2, class, score"
# Column positions of (x1, y1, x2, y2), score, class per row width.
COLUMNS = {6: ([0, 1, 2, 3], 4, 5), 7: ([1, 2, 3, 4], 6, 5)}


class End2endConfig(HeadConfig):
    pass


class End2endHead(Head):
    name = "end2end"
    layout = LAYOUT
    config_class = End2endConfig
    applies_nms = True

    @staticmethod
    def matches(shapes: Shapes) -> bool:
        if len(shapes.outputs) != 1:
            return False
        shape = shapes.outputs[0]
        return (len(shape) == 3 and shape[0] == 1 and shape[2] == 6) or (len(shape) == 2 and shape[1] == 7)

    def decode(self, outputs, names, cfg, input_hw, score_threshold):
        out = single_output(outputs, self.name, LAYOUT)
        if out.shape[1] not in COLUMNS:
            raise ValueError(f"end2end: rows of {out.shape[1]} values; expected {LAYOUT}")
        box_cols, score_col, class_col = COLUMNS[out.shape[1]]
        out = out[out[:, score_col] > score_threshold]
        return Candidates(
            out[:, box_cols].astype(np.float32),
            out[:, score_col].astype(np.float32),
            np.rint(out[:, class_col]).astype(np.int64),
        )
