"""Compiler test fixtures: a session signing key, built models and a package cache."""

from __future__ import annotations

from pathlib import Path

import pytest
from compiler_testlib import (
    small_onnx_cnn,
    small_tflite_cnn,
)  # tests/compiler is on sys.path (pytest rootdir-less conftest)

from edgefleet.signing import SigningKey, create_signing_key, public_path

LIGHT = Path(__import__("onnx").__file__).parent / "backend" / "test" / "data" / "light"


@pytest.fixture(scope="session")
def session_key(tmp_path_factory: pytest.TempPathFactory) -> SigningKey:
    return create_signing_key(tmp_path_factory.mktemp("key") / "signing.key")


@pytest.fixture(scope="session")
def session_pub(session_key: SigningKey) -> Path:
    return public_path(session_key.path)


@pytest.fixture(scope="session")
def built_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {
        "small_cnn": small_onnx_cnn(root / "small_cnn.onnx"),
        "small_tflite": small_tflite_cnn(root / "small_tflite.tflite"),
        "squeezenet": LIGHT / "light_squeezenet.onnx",
        "resnet50": LIGHT / "light_resnet50.onnx",
    }


@pytest.fixture(scope="session")
def package_for(tmp_path_factory: pytest.TempPathFactory, built_models: dict[str, Path], session_key: SigningKey):
    """Compile (once per session) model x target with the session key; returns the CompileResult."""
    from edgefleet.compiler.compile import compile_model

    cache: dict[tuple, object] = {}
    out_dir = tmp_path_factory.mktemp("packages")

    def get(model: str, target: str, *, verify: bool = True, labels: Path | None = None):
        key = (model, target, verify, labels)
        if key not in cache:
            cache[key] = compile_model(
                str(built_models[model]),
                target,
                output=out_dir / f"{model}-{target}-{len(cache)}.tar.gz",
                key=session_key.path,
                verify=verify,
                labels=labels,
                quiet=True,
            )
        return cache[key]

    return get


@pytest.fixture
def no_forced_library(monkeypatch):
    """No library forced by environment or by an earlier test: the agent's own choice by CPU flags."""
    from edgefleet.agent.variants import FLAGS_ENV, FORCE_ENV, force_library

    monkeypatch.delenv(FORCE_ENV, raising=False)
    monkeypatch.delenv(FLAGS_ENV, raising=False)
    force_library(None)
    yield
    force_library(None)
