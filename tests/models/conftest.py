"""models/ fixtures: one real local training job of the classifier (the scene dataset and the
trained detector are session fixtures in tests/support/scenes.py)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def trained_job(tmp_path_factory: pytest.TempPathFactory, scene_dataset: Path):
    """One real training job: models/train.py as a subprocess with SageMaker's environment."""
    from edgefleet.models.job import TrainingJobConfig, run_training_job

    config = TrainingJobConfig(
        data=scene_dataset,
        out=tmp_path_factory.mktemp("job") / "job",
        job_name="scenes-test-1",
        hyperparameters={"epochs": 10, "seed": 0},
    )
    return run_training_job(config, stream=None)
