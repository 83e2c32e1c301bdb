"""What a detector head plugin is: a config class, shape matching and a decoder.

A head turns the model's raw outputs into candidates: boxes (x1, y1, x2, y2 in model-input
pixels), scores and class indices, already filtered by the score threshold. Heads whose
model ends in its own NMS say so (`applies_nms`), so the agent does not run it twice.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from edgefleet.errors import BadInputError
from edgefleet.strict import Strict

# The most candidates a frame hands to NMS: the best-scored ones (Ultralytics caps at 30,000
# before its NMS; 1,024 bounds the agent's cost per frame and still leaves ~10 per object for a
# frame with 100 objects).
MAX_CANDIDATES = 1024


class HeadConfig(Strict):
    """Options of one head (manifest `detection.options`); unknown keys are refused."""


@dataclass
class Candidates:
    boxes: np.ndarray  # [K, 4] float32, x1 y1 x2 y2 in model-input pixels
    scores: np.ndarray  # [K] float32
    classes: np.ndarray  # [K] int64

    @classmethod
    def empty(cls) -> Candidates:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))


@dataclass(frozen=True)
class Shapes:
    """What a head is matched on at compile time: output shapes, input size, label count."""

    outputs: list[list[int]]
    input_hw: tuple[int, int]
    num_labels: int | None  # None when the package has no labels file


class Head(ABC):
    name: ClassVar[str]
    layout: ClassVar[str]  # the output layout, for docs and refusals
    config_class: ClassVar[type[HeadConfig]] = HeadConfig
    applies_nms: ClassVar[bool] = False

    @staticmethod
    @abstractmethod
    def matches(shapes: Shapes) -> bool:
        """True when outputs of these shapes can only be read this way (with the label count)."""

    @abstractmethod
    def decode(
        self,
        outputs: list[np.ndarray],
        names: list[str],
        cfg: HeadConfig,
        input_hw: tuple[int, int],
        score_threshold: float,
    ) -> Candidates:
        """Raw outputs -> candidates over `score_threshold`."""


def single_output(outputs: list[np.ndarray], head: str, layout: str) -> np.ndarray:
    """The one 3-D (or 2-D) output most heads have, without its batch axis."""
    if not outputs:
        raise BadInputError(f"the {head} head expects one output {layout}; the model gave none", "check --head")
    out = np.asarray(outputs[0])
    if out.ndim == 3 and out.shape[0] == 1:
        return out[0]
    if out.ndim == 2:
        return out
    raise BadInputError(
        f"the {head} head expects one output {layout}; output 0 has shape {list(out.shape)}",
        "compile with the --head that matches the export (docs/agent.md lists them)",
    )


def one_3d(shapes: Shapes) -> tuple[int, int] | None:
    """(A, B) when the model has exactly one output shaped [1, A, B]."""
    if len(shapes.outputs) != 1 or len(shapes.outputs[0]) != 3 or shapes.outputs[0][0] != 1:
        return None
    return shapes.outputs[0][1], shapes.outputs[0][2]


def classes_fit(nc: int, shapes: Shapes) -> bool:
    return nc >= 1 and (shapes.num_labels is None or shapes.num_labels == nc)


def grid_points(input_hw: tuple[int, int], strides: list[int]) -> int:
    """Anchor points of a strided detection grid (8400 for 640x640 at strides 8, 16, 32)."""
    h, w = input_hw
    return sum((h // s) * (w // s) for s in strides)


def best_class(scores: np.ndarray, threshold: float, axis: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Class scores ([N, nc], or [nc, N] with axis=0) -> (kept anchors, their class, their score).

    An anchor is kept when its best class passes the threshold. The max over classes runs once
    over everything, in the layout the model gave (no transposed copy); the argmax only over the
    anchors kept, at most the MAX_CANDIDATES best of them, since NMS takes no more.
    """
    top = scores.max(axis=axis)
    rows = np.flatnonzero(top > threshold)
    if rows.size > MAX_CANDIDATES:
        rows = rows[np.argpartition(-top[rows], MAX_CANDIDATES)[:MAX_CANDIDATES]]
    kept = scores[rows] if axis == 1 else scores[:, rows]
    return rows, kept.argmax(axis=axis), top[rows]
