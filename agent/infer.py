"""Run a model package on one image: what `edgefleet run` does."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgefleet.agent.preprocess import decode_image, preprocess
from edgefleet.agent.runtime import load_model
from edgefleet.agent.variants import select_library
from edgefleet.errors import BadInputError
from edgefleet.package import open_package
from edgefleet.signing import PublicKey


@dataclass
class Prediction:
    label: str
    index: int
    score: float


@dataclass
class RunResult:
    predictions: list[Prediction]  # classification: the top-k; empty for a detector
    latency_ms: list[float]
    detections: list | None = None  # detection: agent.postprocess.Detection, best first, boxes in frame pixels
    library: str = ""  # which of the package's libraries ran (agent/variants.py)

    @property
    def median_ms(self) -> float:
        return float(np.median(self.latency_ms))


def softmax_if_logits(scores: np.ndarray) -> np.ndarray:
    """Scores that already form a distribution stay; logits go through a softmax."""
    scores = scores.astype(np.float64)
    if scores.min() >= 0 and abs(scores.sum() - 1.0) < 1e-3:
        return scores
    exp = np.exp(scores - scores.max())
    return exp / exp.sum()


def top_k(output: np.ndarray, labels: list[str], k: int) -> list[Prediction]:
    scores = softmax_if_logits(np.asarray(output).reshape(-1))
    order = np.argsort(-scores)[:k]
    return [Prediction(labels[i] if i < len(labels) else f"class {i}", int(i), float(scores[i])) for i in order]


def run_package_on_image(
    package: Path, image: Path, trusted: list[PublicKey], *, k: int = 5, repeat: int = 5
) -> RunResult:
    """Verify `package`, run it `repeat` times on `image`, and return the latencies with the top-k
    classes, or for a detection package the decoded boxes as the agent's rules would see them."""
    try:
        data = Path(image).read_bytes()
    except OSError as exc:
        raise BadInputError(f"cannot read image {image}: {exc.strerror}", "check the path") from None
    frame = decode_image(data)
    with open_package(package, trusted) as opened:
        manifest = opened.manifest
        model = load_model(opened)  # refuses a package for another architecture
        library = select_library(opened).describe()  # the choice load_model made
        batch = preprocess(frame, manifest.inputs[0], manifest.preprocessing)
        latencies = []
        outputs = None
        for _ in range(max(1, repeat)):
            start = time.perf_counter()
            outputs = model.run([batch])
            latencies.append((time.perf_counter() - start) * 1000)
    if manifest.task == "detection":
        # postprocess imports this module (softmax_if_logits): imported here, not at the top.
        from edgefleet.agent.postprocess import interpret
        from edgefleet.agent.preprocess import geometry

        found = interpret(outputs, manifest, geometry(frame.size, manifest.inputs[0], manifest.preprocessing))
        return RunResult([], latencies, found.detections, library)
    return RunResult(top_k(outputs[0], manifest.labels, k), latencies, library=library)
