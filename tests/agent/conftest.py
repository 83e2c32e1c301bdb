"""Agent test fixtures: a real compiled package and a real mosquitto (support.broker)."""

from __future__ import annotations

from pathlib import Path

import pytest

# agent_package: the fixture
from agent_support import agent_package, compile_test_package, detection_onnx, square_detector_onnx  # noqa: F401
from support.broker import mqtt_broker  # noqa: F401  (the fixture, shared with the fleet tests)


@pytest.fixture(scope="session")
def detection_package(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(package, trusted public key): the tiny SSD-layout detector compiled with --task detection."""
    from edgefleet.package import Preprocessing

    root = tmp_path_factory.mktemp("detection-package")
    return compile_test_package(
        root,
        detection_onnx,
        "detector",
        ["person", "car"],
        task="detection",
        preprocessing=Preprocessing(resize=(16, 16)),
    )


@pytest.fixture(scope="session")
def square_package(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(package, trusted public key): the bright-square YOLO-layout detector; its head is read from the shape."""
    return compile_test_package(
        tmp_path_factory.mktemp("square-package"),
        square_detector_onnx,
        "squares",
        ["square"],
        task="detection",
        preprocessing={},
    )
