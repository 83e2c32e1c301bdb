"""SSD with TensorFlow Lite's post-processing: boxes [1,N,4] (ymin, xmin, ymax, xmax in 0..1),
classes [1,N], scores [1,N], count [1]; the model ran its own NMS.

Outputs are matched by name when the names say box/class/score/num, else taken in that order
(TVM-compiled packages name outputs output_N, so export them in that order).
"""

from __future__ import annotations

import numpy as np

from edgefleet.agent.detectors.base import Candidates, Head, HeadConfig, Shapes
from edgefleet.errors import BadInputError

KEYS = ("box", "class", "score", "num")


class SsdConfig(HeadConfig):
    pass


def pick(outputs: list[np.ndarray], names: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    by_name: dict[str, np.ndarray] = {}
    for name, out in zip(names, outputs):
        for key in KEYS:
            if key in name.lower() and key not in by_name:
                by_name[key] = out
    if len(by_name) == 4:
        return tuple(by_name[k] for k in KEYS)  # type: ignore[return-value]
    if len(outputs) < 3:
        raise BadInputError(
            f"the ssd head needs boxes, classes and scores outputs; this model has {len(outputs)}",
            "compile with the --head that matches its export, or export the SSD post-processing",
        )
    count = outputs[3] if len(outputs) > 3 else np.asarray([np.asarray(outputs[2]).size])
    return outputs[0], outputs[1], outputs[2], count


class SsdHead(Head):
    name = "ssd"
    layout = "boxes [1,N,4] ymin,xmin,ymax,xmax in 0..1, classes [1,N], scores [1,N], count [1] (TFLite)"
    config_class = SsdConfig
    applies_nms = True

    @staticmethod
    def matches(shapes: Shapes) -> bool:
        outs = shapes.outputs
        if len(outs) not in (3, 4) or len(outs[0]) != 3 or outs[0][2] != 4:
            return False
        n = outs[0][1]
        return all(len(o) == 2 and o[1] == n for o in outs[1:3]) and (len(outs) == 3 or outs[3][-1:] == [1])

    def decode(self, outputs, names, cfg, input_hw, score_threshold):
        boxes, classes, scores, count = pick(outputs, names)
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        classes = np.asarray(classes).reshape(-1)
        scores = np.asarray(scores, dtype=np.float32).reshape(-1)
        n = min(int(np.asarray(count).reshape(-1)[0]), len(scores), len(boxes), len(classes))
        keep = np.flatnonzero(scores[:n] >= score_threshold)
        h, w = input_hw
        # ymin, xmin, ymax, xmax relative -> x1, y1, x2, y2 in input pixels
        xyxy = boxes[keep][:, [1, 0, 3, 2]] * np.asarray([w, h, w, h], dtype=np.float32)
        return Candidates(xyxy, scores[keep], classes[keep].astype(np.int64))
