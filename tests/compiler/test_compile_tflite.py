"""The TFLite path end to end: a float32 CNN flatbuffer built by the tests, compiled and checked against LiteRT."""

from __future__ import annotations

import io

import numpy as np
from compiler_testlib import CLASSES, assert_cli_error
from PIL import Image

from edgefleet.errors import UnsupportedOperatorsError
from edgefleet.package import open_package


def test_tflite_model_compiles_and_matches_litert(package_for, built_models, session_key):
    from ai_edge_litert.interpreter import Interpreter

    from edgefleet.agent.runtime_worker import open_tvm_model

    result = package_for("small_tflite", "x86_64")
    m = result.manifest
    assert m.provenance.source_format == "tflite" and m.preprocessing.layout == "NHWC"
    assert [(t.name, t.shape, t.dtype) for t in m.inputs] == [("input", [1, 16, 16, 3], "float32")]
    assert m.outputs[0].shape == [1, CLASSES]
    assert m.verification.status == "passed" and m.verification.reference.startswith("ai-edge-litert")
    # An independent check on another input: the package's library against LiteRT.
    x = np.random.default_rng(7).random((1, 16, 16, 3), dtype=np.float32)
    interpreter = Interpreter(model_path=str(built_models["small_tflite"]))
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    expected = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    with open_package(result.package, [session_key.public]) as opened:
        actual = open_tvm_model(opened.library).run([x])[0]
    assert expected.std() > 0.01
    np.testing.assert_allclose(actual, expected, atol=1e-5, rtol=1e-4)


def test_tflite_compiles_for_arm(package_for):
    result = package_for("small_tflite", "rasp4b", verify=False)
    assert result.manifest.target.arch == "aarch64" and result.manifest.preprocessing.layout == "NHWC"


def test_tflite_package_runs_on_an_image(package_for, session_pub, tmp_path, cli):
    package = package_for("small_tflite", "x86_64").package
    image = tmp_path / "frame.png"
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(buf, "PNG")
    image.write_bytes(buf.getvalue())
    result = cli("run", package, "--image", image, "--trust", session_pub, "--top-k", "2")
    assert result.code == 0, result.text
    assert "class " in result.out and "latency: median" in result.out


def test_unsupported_tflite_operator_is_reported(tmp_path, signing_key, cli, monkeypatch):
    """Every op the test model uses is supported; drop MEAN from TVM's table to see the report (a faked gap)."""
    from edgefleet.compiler.frontends import tflite as frontend

    real = frontend.supported_operators
    monkeypatch.setattr(frontend, "supported_operators", lambda model: real(model) - {"MEAN"})
    from compiler_testlib import small_tflite_cnn

    model = small_tflite_cnn(tmp_path / "m.tflite")
    result = cli("compile", model, "--target", "x86_64")
    assert_cli_error(
        result,
        UnsupportedOperatorsError,
        "1 operator type(s) TVM's TFLite importer cannot convert",
        "MEAN x1",
        "TensorFlow model",
    )
    assert "opset" not in result.err  # TFLite terms, not ONNX's
