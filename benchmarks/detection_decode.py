"""What decoding a detector's output + NMS costs the agent per frame (agent/postprocess.py).

A YOLOv8-style [1, 84, 8400] output (640x640 input, 80 classes) goes through the agent's own
path: the head plugin, class-aware NMS, mapping to a 1920x1080 frame through the letterbox.
Scenes: "typical" (20 objects, each with ~40 overlapping candidates over the 0.25 threshold,
the rest background noise under it), "crowded" (150 objects), and "dense" (every score random
in 0..1: ~8,400 candidates pass, NMS sees its 1,024 cap) as the worst case.
Also the transposed [1, 8400, 84] layout, and a YOLOX [1, 8400, 85] output with the typical scores but
random (unclustered) regressions, so NMS keeps more than the 33 of the typical scene.

    .venv/bin/python benchmarks/detection_decode.py [--repeat 200]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from edgefleet.agent.boxes import Geometry
from edgefleet.agent.postprocess import decode_boxes, to_detections
from edgefleet.package import DetectionInfo

HW = (640, 640)
LABELS = [f"class{i}" for i in range(80)]


def yolo_scene(rng: np.random.Generator, objects: int | None) -> np.ndarray:
    """[1, 84, 8400]: boxes everywhere, background scores under 0.05, objects' candidates over 0.25."""
    n = 8400
    out = np.empty((84, n), np.float32)
    out[0:2] = rng.uniform(0, 640, (2, n))
    out[2:4] = rng.uniform(8, 200, (2, n))
    if objects is None:
        out[4:] = rng.uniform(0, 1, (80, n))
        return out[None]
    out[4:] = rng.uniform(0, 0.05, (80, n))
    for _ in range(objects):
        idx = rng.choice(n, 40, replace=False)
        centre, size = rng.uniform(50, 590, 2), rng.uniform(20, 200, 2)
        out[0:2, idx] = centre[:, None] + rng.normal(0, 3, (2, 40))
        out[2:4, idx] = size[:, None] + rng.normal(0, 3, (2, 40))
        out[4 + rng.integers(80), idx] = rng.uniform(0.3, 0.95, 40)
    return out[None]


def yolox_scene(yolo: np.ndarray) -> np.ndarray:
    """The typical scene's class scores with YOLOX's raw regression (cell offsets, log sizes) and an
    objectness that is high where a class scores (the objects' candidates) and low elsewhere."""
    rng = np.random.default_rng(1)
    offsets, log_sizes = rng.uniform(0, 1, (2, 8400)), np.log(rng.uniform(1, 25, (2, 8400)))
    objectness = np.where(yolo[0, 4:].max(axis=0) > 0.25, 0.95, 0.02)[None]
    raw = np.concatenate([offsets, log_sizes, objectness]).astype(np.float32)
    return np.ascontiguousarray(np.concatenate([raw[None], yolo[:, 4:]], axis=1).transpose(0, 2, 1))


def per_frame_ms(outputs: list[np.ndarray], info: DetectionInfo, repeat: int) -> tuple[float, int]:
    geometry = Geometry.fit(1920, 1080, HW[1], HW[0], letterbox=True)
    times, kept = [], 0
    for _ in range(repeat):
        start = time.perf_counter()
        boxes, scores, classes = decode_boxes(outputs, ["output0"], info, HW)
        kept = len(to_detections(boxes, scores, classes, LABELS, geometry).detections)
        times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times)), kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    scenes = (("typical", 20), ("crowded", 150), ("dense", None))
    cases = [(name, yolo_scene(rng, objects), "yolo") for name, objects in scenes]
    cases.append(("typical, [1, 8400, 84]", np.ascontiguousarray(cases[0][1].transpose(0, 2, 1)), "yolo"))
    cases.append(("yolox [1, 8400, 85], typical", yolox_scene(cases[0][1]), "yolox"))
    print(f"decode + NMS + map to frame, 8,400 candidates x 80 classes, median of {args.repeat} (target < 2 ms)")
    for name, output, head in cases:
        ms, kept = per_frame_ms([output], DetectionInfo(head=head), args.repeat)
        print(f"  {name:30s} {ms:7.3f} ms   {kept:3d} detections kept")


if __name__ == "__main__":
    main()
