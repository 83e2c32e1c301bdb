"""YOLOX (Megvii's ONNX export, decode_in_inference off): one output [1, N, 5+nc] of raw grid
offsets: x, y (cells), log w, log h, sigmoided objectness and class scores, one row per grid
cell of each stride (8, 16, 32), row-major. Decoding: cx = (x + col) * stride, w = exp(w) * stride.
"""

from __future__ import annotations

from functools import lru_cache

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

LAYOUT = "[1, N, 5+nc]: raw x, y, log w, log h per grid cell, objectness, nc class scores; N = grid (8400 at 640)"


class YoloxConfig(HeadConfig):
    strides: list[int] = [8, 16, 32]


@lru_cache(maxsize=8)
def grid(input_hw: tuple[int, int], strides: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(cell column/row [N, 2], stride [N, 1]) in the export's row order; computed once per size."""
    h, w = input_hw
    cells, steps = [], []
    for s in strides:
        ys, xs = np.mgrid[0 : h // s, 0 : w // s]
        cells.append(np.stack([xs.ravel(), ys.ravel()], axis=1))
        steps.append(np.full((xs.size, 1), s))
    return np.concatenate(cells).astype(np.float32), np.concatenate(steps).astype(np.float32)


class YoloxHead(Head):
    name = "yolox"
    layout = LAYOUT
    config_class = YoloxConfig

    @staticmethod
    def matches(shapes: Shapes) -> bool:
        dims = one_3d(shapes)
        strides = YoloxConfig().strides
        return (
            dims is not None and dims[0] == grid_points(shapes.input_hw, strides) and classes_fit(dims[1] - 5, shapes)
        )

    def decode(self, outputs, names, cfg, input_hw, score_threshold):
        out = single_output(outputs, self.name, LAYOUT)
        cells, steps = grid(tuple(input_hw), tuple(cfg.strides))
        if len(cells) != len(out):
            raise ValueError(f"yolox: {len(out)} rows; strides {cfg.strides} at {input_hw} make {len(cells)} cells")
        rows = np.flatnonzero(out[:, 4] > score_threshold)
        out, cells, steps = out[rows], cells[rows], steps[rows]
        keep, classes, scores = best_class(out[:, 5:] * out[:, 4:5], score_threshold)
        centre = (out[keep, :2] + cells[keep]) * steps[keep]
        # Clipped: a garbage log-size must give a huge box, not inf (inf - inf makes NaN in NMS).
        size = np.exp(np.minimum(out[keep, 2:4], 20)) * steps[keep]
        boxes = cxcywh_to_xyxy(np.concatenate([centre, size], axis=1).astype(np.float32))
        return Candidates(boxes, scores.astype(np.float32), classes.astype(np.int64))
