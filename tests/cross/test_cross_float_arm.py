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


def _disassembly(library: Path) -> dict[str, list[str]]:
    """The instruction lines of each function of an AArch64 shared library (binutils comes with the
    cross compiler)."""
    listing = subprocess.run(
        ["aarch64-linux-gnu-objdump", "-d", str(library)], check=True, capture_output=True, text=True
    ).stdout
    functions: dict[str, list[str]] = {}
    lines: list[str] = []
    for line in listing.splitlines():
        if line.endswith(">:"):
            lines = functions.setdefault(line[line.index("<") + 1 : -2], [])
        elif "\t" in line:
            lines.append(line)
    return functions


def _calls(library: Path, symbol: str) -> int:
    """Calls to `symbol` in an AArch64 shared library."""
    return sum(
        1
        for lines in _disassembly(library).values()
        for line in lines
        if "\tbl\t" in line and f"<{symbol}@plt>" in line
    )


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


def _ragged_rows_cnn(path: Path) -> Path:
    """Convolutions on rows of 13 pixels, which no AArch64 tile divides: after a stride-2 first layer,
    a 3x3 into 16-channel blocks (tiles of 4, 4, 4 and 1), a 1x1 into an 8-channel block (tiles of 7
    and 6), then a stride-2 3x3 on rows of 7 (4 and 3)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    inits, nodes, x = [], [], "input"
    for i, (cin, cout, k, stride) in enumerate([(3, 16, 3, 2), (16, 32, 3, 1), (32, 8, 1, 1), (8, 16, 3, 2)]):
        inits += [
            numpy_helper.from_array(rng.normal(0, 0.2, (cout, cin, k, k)).astype(np.float32), f"w{i}"),
            numpy_helper.from_array(rng.normal(0, 0.1, (cout,)).astype(np.float32), f"b{i}"),
        ]
        nodes += [
            helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], pads=[k // 2] * 4, strides=[stride] * 2),
            helper.make_node("Relu", [f"c{i}"], [f"r{i}"]),
        ]
        x = f"r{i}"
    graph = helper.make_graph(
        nodes,
        "ragged_rows",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 26, 26])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, 16, 7, 7])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _longest_fmla_runs(library: Path) -> list[int]:
    """Per convolution kernel, the most `fmla` between two branches: an unrolled tile's multiply-adds
    run straight; a kept channel loop or a pixel's predicate branches between them."""
    runs = []
    for name, lines in _disassembly(library).items():
        if "conv2d_NCHWc" not in name:
            continue
        longest = run = 0
        for line in lines:
            op = line.split("\t")[2] if line.count("\t") >= 2 else ""
            if op in ("b", "br", "bl", "blr", "ret", "cbz", "cbnz", "tbz", "tbnz") or op.startswith("b."):
                longest, run = max(longest, run), 0
            run += op == "fmla"
        runs.append(max(longest, run))
    return runs


def test_rasp4b_ragged_rows_take_unrolled_tiles_with_a_partitioned_rest_and_match_onnxruntime(
    arm64_sysroot, cross_key, tmp_path
):
    """Rows that no tile divides get the unrolled channel loop too, the last tile of a row
    partitioned off (compiler/schedules.py `_unrolled_tile`): the library has the unrolled tile,
    compile's verification under QEMU passes against ONNX Runtime, as does another input."""
    import onnxruntime as ort

    model = _ragged_rows_cnn(tmp_path / "ragged.onnx")
    package = compile_model(
        str(model), "rasp4b", output=tmp_path / "r.tar.gz", name="ragged", version="1", key=cross_key.path, quiet=True
    )
    v = package.manifest.verification
    assert v.status == "passed" and "qemu-aarch64" in v.ran_on, v
    assert package.manifest.runtime.kernel_fallbacks == []
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(5).random((1, 3, 26, 26), dtype=np.float32)
    with open_package(package.package, None) as opened:
        # The 16 -> 32 3x3 on rows of 13: 16 input channels x 4 pixels x 4 accumulator vectors in one
        # run (before: ragged tiles of 6 kept their channel loop, 64 at most).
        assert 16 * 4 * 4 in _longest_fmla_runs(opened.library)
        actual = run_library_emulated(arm64_sysroot, opened.library, [x]).outputs[0]
    expected = sess.run(None, {"input": x})[0]
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)
