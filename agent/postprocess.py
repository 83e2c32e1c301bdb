"""Model outputs -> what the rules look at: per-label scores (and boxes for detection).

Classification: the first output is one score per class; logits go through a softmax.
Detection: the TFLite SSD post-processing layout (boxes [1,N,4] as ymin,xmin,ymax,xmax in
0..1, classes [1,N], scores [1,N], count [1]). Outputs are matched by name when the names
say box/class/score/num, else taken in that order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgefleet.agent.infer import softmax_if_logits
from edgefleet.errors import BadInputError
from edgefleet.package import Manifest


@dataclass
class Detection:
    label: str
    score: float
    box: list[float]  # ymin, xmin, ymax, xmax, relative to the frame


@dataclass
class FrameResult:
    top_label: str
    top_score: float
    scores: dict[str, float]  # best score per label seen in this frame
    detections: list[Detection] = field(default_factory=list)


def _label(labels: list[str], index: int) -> str:
    return labels[index] if 0 <= index < len(labels) else f"class {index}"


def classification(outputs: list[np.ndarray], labels: list[str]) -> FrameResult:
    scores = softmax_if_logits(np.asarray(outputs[0]).reshape(-1))
    best = int(np.argmax(scores))
    return FrameResult(_label(labels, best), float(scores[best]), {_label(labels, i): float(s) for i, s in enumerate(scores)})


def _pick(outputs: list[np.ndarray], names: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    keys = ("box", "class", "score", "num")
    by_name: dict[str, np.ndarray] = {}
    for name, out in zip(names, outputs):
        for key in keys:
            if key in name.lower() and key not in by_name:
                by_name[key] = out
    if len(by_name) == 4:
        return tuple(by_name[k] for k in keys)  # type: ignore[return-value]
    if len(outputs) < 3:
        raise BadInputError(f"a detection model needs boxes, classes and scores outputs; this one has {len(outputs)}", "compile the model with --task classification, or export the SSD post-processing")
    count = outputs[3] if len(outputs) > 3 else np.asarray([np.asarray(outputs[2]).size])
    return outputs[0], outputs[1], outputs[2], count


def detection(outputs: list[np.ndarray], names: list[str], labels: list[str], min_score: float = 0.05) -> FrameResult:
    boxes, classes, scores, count = _pick(outputs, names)
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    classes = np.asarray(classes).reshape(-1)
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    n = min(int(np.asarray(count).reshape(-1)[0]), len(scores), len(boxes), len(classes))
    found: list[Detection] = []
    best: dict[str, float] = {}
    for i in range(n):
        score = float(scores[i])
        if score < min_score:
            continue
        label = _label(labels, int(classes[i]))
        found.append(Detection(label, score, [round(float(v), 4) for v in boxes[i]]))
        best[label] = max(best.get(label, 0.0), score)
    found.sort(key=lambda d: -d.score)
    top = found[0] if found else None
    return FrameResult(top.label if top else "", top.score if top else 0.0, best, found)


def interpret(outputs: list[np.ndarray], manifest: Manifest) -> FrameResult:
    if manifest.task == "detection":
        return detection(outputs, [o.name for o in manifest.outputs], manifest.labels)
    return classification(outputs, manifest.labels)
