"""Session fixtures over the synthetic scenes, shared by tests/models and tests/agent: one
dataset, and one scene detector trained on it (the suite trains it once)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def scene_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgefleet.models.scenes import write_dataset

    out = tmp_path_factory.mktemp("scenes") / "data"
    write_dataset(out, per_class=150, validation_per_class=40, seed=1)
    return out


def box_iou(a, b) -> float:
    """IoU of two x1, y1, x2, y2 boxes: the tests' own, to check the agent's boxes against."""
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@dataclass
class TrainedDetector:
    job: object  # edgefleet.models.job.TrainingJobResult
    package: Path  # compiled for this machine, signed
    trusted: Path  # the signing key's public half


@pytest.fixture(scope="session")
def scene_detector(tmp_path_factory: pytest.TempPathFactory, scene_dataset: Path) -> TrainedDetector:
    """models/train_detector.py run as a SageMaker job, its model.tar.gz compiled by compile_model
    with --task detection --head yolo for x86_64."""
    from edgefleet.compiler.compile import compile_model
    from edgefleet.models.job import DETECTOR_ENTRY_POINT, TrainingJobConfig, run_training_job
    from edgefleet.signing import create_signing_key, public_path

    root = tmp_path_factory.mktemp("scene-detector")
    config = TrainingJobConfig(
        data=scene_dataset,
        out=root / "job",
        job_name="scene-detector-test",
        entry_point=DETECTOR_ENTRY_POINT,
        hyperparameters={"epochs": 20, "seed": 0},
    )
    job = run_training_job(config, stream=None)
    key = create_signing_key(root / "signing.key")
    result = compile_model(
        str(job.model_artifact),
        "x86_64",
        output=root / "scenedet.tar.gz",
        name="scenedet",
        version="1",
        task="detection",
        head="yolo",
        key=key.path,
        quiet=True,
    )
    return TrainedDetector(job, result.package, public_path(key.path))
