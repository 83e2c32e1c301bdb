"""Quantized TFLite and the detection post-process op, through `edgefleet compile`, against LiteRT.

The models are flatbuffers the tests write (compiler_testlib: int8_tflite_cnn, detection_tflite).
Int8 results are compared for equality: edgefleet computes TFLite's integer arithmetic, so there
is nothing to round differently (docs/operators.md, "TFLite").
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from compiler_testlib import detection_tflite, int8_tflite_cnn, write_tflite

from edgefleet.package import open_package


def _litert(model, feeds, resolver="AUTO"):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(model_path=str(model), experimental_op_resolver_type=OpResolverType[resolver])
    interpreter.allocate_tensors()
    for detail, x in zip(interpreter.get_input_details(), feeds):
        interpreter.set_tensor(detail["index"], x)
    interpreter.invoke()
    return [interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()]


def _compile(cli, model, tmp_path, signing_key, *options):
    from edgefleet.agent.runtime_worker import open_tvm_model

    package = tmp_path / "pkg.tar.gz"
    result = cli("compile", model, "--target", "x86_64", "-o", package, *options)
    assert result.code == 0, result.text
    # The blocked layout took every convolution: the NCHWc step failed on int8 graphs once (a
    # boolean layout transform), and the compile then only warned.
    assert "layout step failed" not in result.text, result.text
    opened = open_package(package, [signing_key.public]).__enter__()
    return opened, open_tvm_model(opened.library)


@pytest.mark.parametrize("float_io", [False, True], ids=["int8-io", "float-io-quantize-dequantize"])
def test_int8_cnn_compiles_and_equals_litert(float_io, tmp_path, signing_key, cli):
    model = int8_tflite_cnn(tmp_path / "int8.tflite", float_io=float_io)
    opened, compiled = _compile(cli, model, tmp_path, signing_key)
    m = opened.manifest
    assert m.verification.status == "passed" and m.verification.max_abs_diff == 0.0
    assert m.runtime.pipeline == "edgefleet-cpu" and m.runtime.kernel_fallbacks == []
    assert [(t.dtype, t.shape) for t in m.inputs] == [("float32" if float_io else "int8", [1, 16, 16, 3])]
    outputs = []
    for seed in range(4):
        rng = np.random.default_rng(100 + seed)
        x = (
            rng.random((1, 16, 16, 3), dtype=np.float32)
            if float_io
            else rng.integers(-128, 128, (1, 16, 16, 3)).astype(np.int8)
        )
        actual = compiled.run([x])[0]
        # LiteRT's default kernels and its reference kernels: both, bit for bit.
        np.testing.assert_array_equal(actual, _litert(model, [x])[0])
        np.testing.assert_array_equal(actual, _litert(model, [x], "BUILTIN_REF")[0])
        outputs.append(actual)
    # Unsaturated, input-dependent outputs: a wrong rounding or zero point would show.
    stacked = np.stack(outputs).astype(np.float64)
    assert len({a.tobytes() for a in outputs}) == 4 and stacked.std() > (0.05 if float_io else 10)


def test_int8_intermediates_equal_litert_reference_kernels(tmp_path, signing_key, cli):
    """Every activation of the int8 CNN as a graph output (about 6,000 int8 values per input), equal to
    LiteRT's reference kernels. LiteRT's default kernels (XNNPACK) round some ties differently from
    its reference kernels (up to 2 steps apart on these activations), so compile verifies quantized
    models against the reference kernels: at the default tolerance, with no difference at all."""
    model = int8_tflite_cnn(tmp_path / "int8.tflite", intermediates=True)
    opened, compiled = _compile(cli, model, tmp_path, signing_key)
    assert opened.manifest.verification.status == "passed" and opened.manifest.verification.max_abs_diff == 0.0
    assert "reference kernels" in opened.manifest.verification.reference
    x = np.random.default_rng(200).integers(-128, 128, (1, 16, 16, 3)).astype(np.int8)
    default_kernels = max(
        int(np.abs(a.astype(int) - r.astype(int)).max()) for a, r in zip(compiled.run([x]), _litert(model, [x]))
    )
    assert default_kernels >= 1  # the reason for the reference kernels: XNNPACK rounds differently here
    for seed in range(3):
        x = np.random.default_rng(200 + seed).integers(-128, 128, (1, 16, 16, 3)).astype(np.int8)
        actual = compiled.run([x])
        assert len({a.tobytes() for a in actual}) > 1
        for a, ref in zip(actual, _litert(model, [x], "BUILTIN_REF")):
            np.testing.assert_array_equal(a, ref)


def test_quantized_operator_without_exact_lowering_compiles_and_litert_decides(tmp_path, signing_key, cli):
    """No exact integer lowering for int8 LOGISTIC / TANH here: TVM's float lowering compiles them (never
    a refusal), the compile says so, and verification against LiteRT judges the result."""
    from tflite.BuiltinOperator import BuiltinOperator as Op
    from tflite.TensorType import TensorType as T

    model = write_tflite(
        tmp_path / "logistic.tflite",
        [
            ("x", [1, 64], T.INT8, None, {"scale": [0.05], "zero_point": [-3]}),
            ("y", [1, 64], T.INT8, None, {"scale": [1 / 256], "zero_point": [-128]}),
            ("z", [1, 64], T.INT8, None, {"scale": [1 / 128], "zero_point": [0]}),
        ],
        [(Op.LOGISTIC, ["x"], ["y"], None), (Op.TANH, ["y"], ["z"], None)],
        ["x"],
        ["z"],
    )
    check = cli("compile", model, "--check", "--json")
    assert check.code == 0, check.text
    assert json.loads(check.out)["approximated"] == {"LOGISTIC (int8 quantized)": 1, "TANH (int8 quantized)": 1}
    table = cli("compile", model, "--check").out
    assert table.count("yes, int8 quantized x1 by TVM's") == 2 and "float lowering" in table
    result = cli("compile", model, "--target", "x86_64", "-o", tmp_path / "p.tar.gz")
    assert result.code == 0, result.text
    assert "float lowering" in result.err and "LOGISTIC (int8 quantized) x1, TANH (int8 quantized) x1" in result.err
    with open_package(tmp_path / "p.tar.gz", [signing_key.public]) as opened:
        assert opened.manifest.verification.status == "passed"  # within the default 1e-3: equal int8 outputs


@pytest.mark.parametrize("regular_nms", [False, True], ids=["fast-nms", "regular-nms"])
def test_detection_postprocess_compiles_and_matches_litert(regular_nms, tmp_path, signing_key, cli):
    model = detection_tflite(tmp_path / "det.tflite", regular_nms=regular_nms)
    opened, compiled = _compile(cli, model, tmp_path, signing_key)
    assert opened.manifest.verification.status == "passed"
    assert [t.shape for t in opened.manifest.outputs] == [[1, 10, 4], [1, 10], [1, 10], [1]]
    counts = set()
    for seed, power in ((0, 1.0), (1, 40.0), (2, 300.0)):  # higher powers leave fewer boxes above the 0.3 threshold
        rng = np.random.default_rng(seed)
        feeds = [rng.normal(0, 1, (1, 64, 4)).astype(np.float32), (rng.random((1, 64, 4)) ** power).astype(np.float32)]
        actual, expected = compiled.run(feeds), _litert(model, feeds)
        boxes, classes, scores, num = expected
        n = int(num[0])
        counts.add(n)
        assert int(actual[3][0]) == n
        np.testing.assert_array_equal(actual[1][0, :n], classes[0, :n])
        np.testing.assert_array_equal(actual[2][0, :n], scores[0, :n])
        np.testing.assert_allclose(actual[0][0, :n], boxes[0, :n], atol=1e-6)
    assert len(counts) == 3 and min(counts) < 10  # full, partial and (near) empty results were all compared


@pytest.mark.parametrize("head", ["pool", "mean"])
def test_uint8_io_full_integer_model_compiles_and_equals_litert(head, tmp_path, signing_key, cli):
    """What TensorFlow's converter writes with uint8 input/output (QUANTIZE uint8 <-> int8 at the edges),
    with MobileNet's int8 MEAN head or the pool head: compiled, never refused, equal to LiteRT."""
    model = int8_tflite_cnn(tmp_path / "u8.tflite", uint8_io=True, mean_head=head == "mean")
    opened, compiled = _compile(cli, model, tmp_path, signing_key)
    assert [(t.dtype, t.shape) for t in opened.manifest.inputs] == [("uint8", [1, 16, 16, 3])]
    assert opened.manifest.outputs[0].dtype == "uint8" and opened.manifest.verification.status == "passed"
    outputs = []
    for seed in range(3):
        # different brightness per image: a global MEAN head averages uniform noise to the same value
        x = np.random.default_rng(300 + seed).integers(0, 64 + 96 * seed, (1, 16, 16, 3)).astype(np.uint8)
        actual = compiled.run([x])[0]
        np.testing.assert_array_equal(actual, _litert(model, [x])[0])
        outputs.append(actual.tobytes())
    assert len(set(outputs)) == 3  # the outputs depend on the input


def test_exact_import_failure_falls_back_to_tvms_converter(tmp_path, signing_key, cli, monkeypatch):
    """A failure inside edgefleet's exact integer converter (faked here) is not the user's problem:
    TVM's own converter imports the model, the compile says so, and LiteRT verification judges it."""
    from edgefleet.compiler.tflite_quant import ExactQuantConverter

    def broken(self, op, conv_type):
        raise RuntimeError("exact lowering declined")

    monkeypatch.setattr(ExactQuantConverter, "convert_conv", broken)
    model = int8_tflite_cnn(tmp_path / "int8.tflite")
    result = cli("compile", model, "--target", "x86_64", "-o", tmp_path / "p.tar.gz", "--atol", "2")
    assert result.code == 0, result.text
    assert (
        "exact integer import failed (exact lowering declined)" in result.err
        and "TVM's own TFLite converter" in result.err
    )
    with open_package(tmp_path / "p.tar.gz", [signing_key.public]) as opened:
        assert opened.manifest.verification.status == "passed"


def test_per_channel_fully_connected_rounds_once_like_litert(tmp_path, signing_key, cli):
    """Full-integer MobileNetV2-0.35 at 32x32 (benchmarks/qemu_insn/tflite_models.py): its 1000-class head
    is a per-channel FULLY_CONNECTED, which LiteRT's reference kernels requantize with one rounding.
    Over these 8 inputs 4 of the 8,000 logits sit on a double-rounding tie (one step off before)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks" / "qemu_insn"))
    from tflite_models import mobilenetv2_tflite

    model = mobilenetv2_tflite(tmp_path / "mnv2.tflite", size=32, width=0.35, int8=True)
    _, compiled = _compile(cli, model, tmp_path, signing_key)
    outputs = []
    for seed in range(8):
        x = np.random.default_rng(seed).integers(-128, 128, (1, 32, 32, 3)).astype(np.int8)
        actual = compiled.run([x])[0]
        np.testing.assert_array_equal(actual, _litert(model, [x], "BUILTIN_REF")[0])
        outputs.append(actual)
    assert len({a.tobytes() for a in outputs}) == 8 and np.stack(outputs).astype(np.float64).std() > 1
