"""Drift test fixtures: the tiny classifier compiled with a baseline (once per session)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from drift_support import LABELS, brightness_classifier, scene, write_images


@pytest.fixture(scope="session")
def baseline_package(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(package, trusted public key, baseline image folder) compiled for this machine with --baseline-images."""
    from edgefleet.compiler.compile import compile_model
    from edgefleet.package import Preprocessing
    from edgefleet.signing import create_signing_key, public_path

    root = tmp_path_factory.mktemp("drift-package")
    key = create_signing_key(root / "signing.key")
    brightness_classifier(root / "brightness.onnx")
    (root / "labels.txt").write_text("\n".join(LABELS) + "\n")
    rng = np.random.default_rng(1)
    images = write_images(root / "train", [scene(rng) for _ in range(300)])
    result = compile_model(str(root / "brightness.onnx"), "x86_64", output=root / "brightness.tar.gz", name="brightness", version="1",
                           labels=root / "labels.txt", preprocessing=Preprocessing(resize=(16, 16)), key=key.path, quiet=True,
                           baseline_images=str(images))
    return result.package, public_path(key.path), images
