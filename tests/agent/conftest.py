"""Agent test fixtures: a real compiled package and a real mosquitto (support.broker)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent_support import agent_package, detection_onnx  # noqa: F401  (agent_package: the fixture)
from support.broker import mqtt_broker  # noqa: F401  (the fixture, shared with the fleet tests)


@pytest.fixture(scope="session")
def detection_package(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(package, trusted public key): the tiny detector compiled with --task detection."""
    from edgefleet.compiler.compile import compile_model
    from edgefleet.package import Preprocessing
    from edgefleet.signing import create_signing_key, public_path

    root = tmp_path_factory.mktemp("detection-package")
    key = create_signing_key(root / "signing.key")
    detection_onnx(root / "detector.onnx")
    (root / "labels.txt").write_text("person\ncar\n")
    result = compile_model(str(root / "detector.onnx"), "x86_64", output=root / "detector.tar.gz", name="detector", version="1", task="detection",
                           labels=root / "labels.txt", preprocessing=Preprocessing(resize=(16, 16)), key=key.path, quiet=True)
    return result.package, public_path(key.path)
