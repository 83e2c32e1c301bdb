"""Float kernels on AArch64: SiLU's sigmoid and softmax without libm's scalar expf, checked under QEMU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgefleet.compiler.compile import compile_model
from edgefleet.cross.verify import run_library_emulated
from edgefleet.package import open_package

pytestmark = pytest.mark.qemu

_ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(_ROOT / "benchmarks")]
from latency import yolov8  # noqa: E402  (benchmarks/ is not a package)


def _calls(library: Path, symbol: str) -> int:
    """Calls to `symbol` in an AArch64 shared library (binutils comes with the cross compiler)."""
    listing = subprocess.run(
        ["aarch64-linux-gnu-objdump", "-d", str(library)], check=True, capture_output=True, text=True
    ).stdout
    return sum(1 for line in listing.splitlines() if "\tbl\t" in line and f"<{symbol}@plt>" in line)


def test_rasp4b_detector_runs_sigmoid_and_softmax_in_vectors_and_matches_onnxruntime(
    arm64_sysroot, cross_key, tmp_path
):
    """The YOLOv8-style detector (SiLU after every convolution, a softmax in its box head) for rasp4b:
    no call to expf in the library (compiler/vector_math.py; before, 47% of its instructions were libm's
    expf), and compile's verification under QEMU against ONNX Runtime passes, as do further inputs."""
    import onnxruntime as ort

    model = yolov8(tmp_path / "yolov8.onnx", size=64)
    package = compile_model(
        str(model), "rasp4b", output=tmp_path / "d.tar.gz", name="det", version="1", key=cross_key.path, quiet=True
    )
    v = package.manifest.verification
    assert v.status == "passed" and "qemu-aarch64" in v.ran_on, v
    assert package.manifest.runtime.kernel_fallbacks == []
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(4).random((1, 3, 64, 64), dtype=np.float32)
    with open_package(package.package, None) as opened:
        assert _calls(opened.library, "expf") == 0
        actual = run_library_emulated(arm64_sysroot, opened.library, [x]).outputs[0]
    expected = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(actual, expected, rtol=1e-3, atol=1e-3)
