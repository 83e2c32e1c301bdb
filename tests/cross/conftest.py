"""Cross fixtures: the ARM sysroots, built once per test session (or per CI run) and cached.

The cache is $EDGEFLEET_CROSS_CACHE when set (CI points it at one folder for the whole run),
else a folder beside pytest's temporary directories that later local sessions reuse. A build
that fails (no network, say) fails the tests loudly; only EDGEFLEET_SKIP_QEMU=1 skips them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tinycnn import write_tiny_cnn

from edgefleet.cross.runtime_build import build_runtime
from edgefleet.cross.sysroot import Sysroot, build_sysroot


@pytest.fixture(scope="session")
def cross_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    env = os.environ.get("EDGEFLEET_CROSS_CACHE")
    return Path(env) if env else tmp_path_factory.getbasetemp().parent / "edgefleet-cross-cache"


@pytest.fixture(autouse=True)
def _cross_cache_env(cross_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # compile() finds the sysroot through the environment, as it does for users.
    monkeypatch.setenv("EDGEFLEET_CROSS_CACHE", str(cross_cache))


def _sysroot(arch: str, cache: Path, suite: str = "bookworm") -> Sysroot:
    if os.environ.get("EDGEFLEET_SKIP_QEMU") == "1":
        pytest.skip("EDGEFLEET_SKIP_QEMU=1")
    sysroot = build_sysroot(arch, cache=cache, quiet=True, suite=suite)
    # Guests run packages on their architecture's runtime bundle (cached by input hash).
    build_runtime(sysroot.arch.target_arch, quiet=True)
    return sysroot


@pytest.fixture(scope="session")
def arm64_sysroot(cross_cache: Path) -> Sysroot:
    return _sysroot("arm64", cross_cache)


@pytest.fixture(scope="session")
def arm64_trixie_sysroot(cross_cache: Path) -> Sysroot:
    """Debian 13 (Raspberry Pi OS trixie): Python 3.13."""
    return _sysroot("arm64", cross_cache, "trixie")


@pytest.fixture(scope="session")
def armhf_sysroot(cross_cache: Path) -> Sysroot:
    return _sysroot("armhf", cross_cache)


@pytest.fixture(scope="module")
def docker_client():
    docker = pytest.importorskip("docker")
    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:  # no daemon here: CI starts one (see docs/cross.md)
        pytest.skip(f"no docker daemon: {exc}")
    return client


@pytest.fixture(scope="session")
def tiny_cnn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_cnn(tmp_path_factory.mktemp("tiny-cnn") / "tiny_cnn.onnx")


@pytest.fixture(scope="session")
def cross_key(tmp_path_factory: pytest.TempPathFactory):
    from edgefleet.signing import create_signing_key

    return create_signing_key(tmp_path_factory.mktemp("cross-key") / "signing.key")
