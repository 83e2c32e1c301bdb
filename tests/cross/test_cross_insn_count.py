"""The ARM instruction counter (benchmarks/qemu_insn): built from source here, counting real guest work.

Builds the QEMU plugin (header from Debian's qemu source package), then counts single
inferences under qemu-aarch64 -cpu cortex-a72: the same inference must count the same within a
small tolerance, a model with ~30x the multiply-adds must count several times more, and ONNX
Runtime must run in the guest (the overlay's ARM /proc/cpuinfo) and agree with the package.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from edgefleet.compiler.compile import compile_model
from edgefleet.package import open_package
from edgefleet.signing import create_signing_key

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks" / "qemu_insn"))
import insn_counter as counter  # noqa: E402

BOARD = counter.BOARDS["rasp4b"]


@pytest.fixture(scope="module")
def plugin() -> Path:
    counter.require_qemu_series(BOARD.qemu)
    return counter.build_plugin()


def _package_count(model: Path, tmp: Path, sysroot, plugin: Path, feed: np.ndarray) -> counter.Counted:
    key = create_signing_key(tmp / f"{model.stem}.key")
    pkg = compile_model(
        str(model), "rasp4b", output=tmp / f"{model.stem}.tar.gz", key=key.path, verify=False, quiet=True
    )
    with open_package(pkg.package, None) as opened:
        return counter.count(BOARD, sysroot, "edgefleet", opened.library, feed, windows=3, plugin=plugin)


@pytest.mark.slow
def test_counts_repeat_and_grow_with_the_model(plugin: Path, arm64_sysroot, tiny_cnn: Path, tmp_path: Path) -> None:
    from edgefleet.models.mobilenetv2 import save

    small = np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)
    tiny = _package_count(tiny_cnn, tmp_path, arm64_sysroot, plugin, small)
    # Repeat: the three windows are the same inference; QEMU's counts vary by a few thousand.
    assert tiny.per_inference > 10_000
    assert tiny.spread <= max(50_000, tiny.per_inference // 100), tiny.thread
    # One thread: the package's work happens on the thread that called it.
    assert min(tiny.all_threads) >= tiny.per_inference

    bigger = save(tmp_path / "mnv2.onnx", size=64, width=0.35)
    mnv2 = _package_count(
        bigger, tmp_path, arm64_sysroot, plugin, np.random.default_rng(1).random((1, 3, 64, 64), dtype=np.float32)
    )
    assert mnv2.per_inference > 5 * tiny.per_inference, (mnv2.thread, tiny.thread)


@pytest.mark.slow
def test_onnxruntime_runs_in_the_guest_and_agrees(plugin: Path, arm64_sysroot, tiny_cnn: Path, tmp_path: Path) -> None:
    feed = np.random.default_rng(2).random((1, 3, 32, 32), dtype=np.float32)
    ours = _package_count(tiny_cnn, tmp_path, arm64_sysroot, plugin, feed)
    theirs = counter.count(BOARD, arm64_sysroot, "onnxruntime", tiny_cnn, feed, windows=2, plugin=plugin)
    assert theirs.per_inference > 10_000
    np.testing.assert_allclose(ours.output.ravel(), theirs.output.ravel(), rtol=1e-4, atol=1e-5)
    # The output depends on the input (else the comparison above would prove nothing).
    other = counter.count(
        BOARD, arm64_sysroot, "onnxruntime", tiny_cnn, feed[..., ::-1].copy(), windows=1, plugin=plugin
    )
    assert np.max(np.abs(other.output - theirs.output)) > 1e-4


@pytest.mark.slow
def test_profile_places_the_windows_instructions_in_the_packages_kernels(
    plugin: Path, arm64_sysroot, tmp_path: Path
) -> None:
    """profile=True: the per-block counts add up to the windows' (two windows here), and most of a
    MobileNetV2-0.35 inference's instructions land in the library's own kernels, which lead the list."""
    from edgefleet.models.mobilenetv2 import save

    model = save(tmp_path / "mnv2.onnx", size=64, width=0.35)
    key = create_signing_key(tmp_path / "profile.key")
    pkg = compile_model(str(model), "rasp4b", output=tmp_path / "p.tar.gz", key=key.path, verify=False, quiet=True)
    feed = np.random.default_rng(3).random((1, 3, 64, 64), dtype=np.float32)
    with open_package(pkg.package, None) as opened:
        counted = counter.count(
            BOARD, arm64_sysroot, "edgefleet", opened.library, feed, windows=2, plugin=plugin, profile=True
        )
        per_function = counter.by_function(counted)
        library = opened.library.name
    assert sum(per_function.values()) == sum(counted.thread)
    in_kernels = sum(n for name, n in per_function.items() if name.startswith(f"{library}:"))
    assert in_kernels > 0.5 * sum(counted.thread), list(per_function.items())[:5]
    top = list(per_function)[:2]  # the 1000-way classifier (a matmul) and a convolution, at 64x64
    assert all(name.startswith(f"{library}:") for name in top) and any("conv2d" in name for name in top), top


def test_another_qemu_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "qemu-aarch64"
    fake.write_text("#!/bin/sh\necho 'qemu-aarch64 version 9.1.0'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    from edgefleet.errors import UsageError

    with pytest.raises(UsageError, match="is 9.1; the instruction counter is built for QEMU 7.2"):
        counter.require_qemu_series("qemu-aarch64")
