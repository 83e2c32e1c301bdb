"""edgefleet's ONNX import rewrites and refusals, each on a small model through the real compile
path (EdgefleetBackend: import, optimize, build, export, run) against onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgefleet.compiler import conformance as c
from edgefleet.compiler.compile import check_operators
from edgefleet.compiler.frontends import onnx as frontend
from edgefleet.errors import UnsupportedOperatorsError


def _model(nodes, inputs, outputs, initializers=(), opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _ort(model, feeds):
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _backend():
    return c._backend_class()


@pytest.fixture(autouse=True)
def _home(edgefleet_home):
    return edgefleet_home


def test_constant_value_floats_form_is_imported():
    model = _model(
        [
            helper.make_node("Constant", [], ["k"], value_floats=[1.5, -2.0, 3.0]),
            helper.make_node("Add", ["x", "k"], ["y"]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
    )
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    with pytest.raises(UnsupportedOperatorsError, match="Constant"):
        _backend().prepare(model, plain=True).run([x])  # TVM's importer alone cannot read it
    np.testing.assert_allclose(_backend().run_model(model, [x])[0], _ort(model, {"x": x})[0])


def test_shape_arithmetic_is_folded_into_a_constant_reshape():
    # PyTorch's flatten as exported: Shape -> Gather -> Unsqueeze -> Concat -> Reshape.
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus1"], ["shape"], axis=0),
        helper.make_node("Reshape", ["x", "shape"], ["y"]),
        helper.make_node("Relu", ["y"], ["z"]),
    ]
    inits = [
        numpy_helper.from_array(np.array(0, np.int64), "zero"),
        numpy_helper.from_array(np.array([0], np.int64), "axes"),
        numpy_helper.from_array(np.array([-1], np.int64), "minus1"),
    ]
    model = _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 12])],
        inits,
    )
    prepared = frontend.prepare(model, {"x": [2, 3, 4]})
    assert [n.op_type for n in prepared.graph.node] == ["Reshape", "Relu"]
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    np.testing.assert_allclose(_backend().run_model(model, [x])[0], _ort(model, {"x": x})[0])


def test_operator_tvm_lacks_is_expanded_from_its_onnx_function():
    model = _model(
        [helper.make_node("Celu", ["x"], ["y"], alpha=2.0)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4])],
    )
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    assert "Celu" not in _get_convert_map()  # TVM alone cannot import it
    assert not frontend.unsupported(model)
    x = np.linspace(-3, 3, 12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_allclose(_backend().run_model(model, [x])[0], _ort(model, {"x": x})[0], rtol=1e-5, atol=1e-6)


def test_known_wrong_attribute_is_refused_before_building(tmp_path, capsys):
    c_ = 3
    inits = [numpy_helper.from_array(np.ones(c_, np.float32), n) for n in ("scale", "bias", "mean", "var")]
    model = _model(
        [helper.make_node("BatchNormalization", ["x", "scale", "bias", "mean", "var"], ["y"], training_mode=1)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, c_, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, c_, 4, 4])],
        inits,
        opset=15,
    )
    path = tmp_path / "bn_train.onnx"
    onnx.save(model, path)
    report = check_operators(str(path))
    assert report.unsupported == {"BatchNormalization (training_mode=1)": 1}
    with pytest.raises(UnsupportedOperatorsError, match=r"BatchNormalization \(training_mode=1\)"):
        _backend().prepare(model)
    # `edgefleet compile --check` names the attribute in the operator's row and exits 10.
    from edgefleet.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main(["compile", str(path), "--check"])
    out, err = capsys.readouterr()
    assert exited.value.code == UnsupportedOperatorsError.exit_code
    assert "no: training_mode=1" in out and "BatchNormalization (training_mode=1) x1" in err


def test_nms_parameter_inputs_need_constant_values_and_iou_ties_are_kept():
    # Box 1 overlaps box 0 with IoU exactly 0.5: ONNX keeps it (suppresses only IoU > threshold).
    boxes = np.array([[[0, 0, 1, 1], [0, 0, 1, 0.5], [0, 10, 1, 11]]], np.float32)
    scores = np.array([[[0.9, 0.75, 0.6]]], np.float32)
    node = helper.make_node("NonMaxSuppression", ["boxes", "scores", "max_out", "iou", "score"], ["sel"])
    io = [
        helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 3, 4]),
        helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 1, 3]),
    ]
    out = [helper.make_tensor_value_info("sel", TensorProto.INT64, ["K", 3])]
    params = {
        "max_out": np.array([3], np.int64),
        "iou": np.array([0.5], np.float32),
        "score": np.array([0.0], np.float32),
    }
    runtime = _model(
        [node],
        io
        + [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), [1]) for n, v in params.items()],
        out,
    )
    specs = frontend.input_specs(runtime, {})
    with pytest.raises(UnsupportedOperatorsError, match=r"iou \(NonMaxSuppression input #3\).*") as refused:
        frontend.to_relax(runtime, specs)
    assert "--constant-input iou=VALUES" in refused.value.fix
    expected = _ort(runtime, {"boxes": boxes, "scores": scores, **params})[0]
    assert len(expected) == 3
    # The conformance adapter binds them as --constant-input does.
    np.testing.assert_array_equal(_backend().run_model(runtime, [boxes, scores, *params.values()])[0], expected)
    constant = _model([node], io, out, [numpy_helper.from_array(v, n) for n, v in params.items()])
    np.testing.assert_array_equal(_backend().run_model(constant, [boxes, scores])[0], expected)


def test_conv_transpose_output_shape_becomes_pads():
    # TVM ignores output_shape; edgefleet turns it into pads + output_padding by ONNX's formula.
    rng = np.random.default_rng(1)
    w = rng.standard_normal((1, 2, 3, 3)).astype(np.float32)
    model = _model(
        [helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[3, 2], output_shape=[10, 8])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 10, 8])],
        [numpy_helper.from_array(w, "w")],
    )
    x = rng.standard_normal((1, 1, 3, 3)).astype(np.float32)
    y = _backend().run_model(model, [x])[0]
    assert y.shape == (1, 2, 10, 8)
    np.testing.assert_allclose(y, _ort(model, {"x": x})[0], rtol=1e-5, atol=1e-5)


def test_reduce_max_of_a_row_of_minus_infinity_is_minus_infinity():
    # TVM alone gives the lowest finite float (-3.4e38) here, which breaks masked-row checks.
    model = _model(
        [helper.make_node("ReduceMax", ["x", "axes"], ["y"], keepdims=0)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        [numpy_helper.from_array(np.array([1], np.int64), "axes")],
        opset=18,
    )
    x = np.array([[-np.inf, -np.inf, -np.inf], [1.0, 2.0, -np.inf]], np.float32)
    assert _backend().prepare(model, plain=True).run([x])[0][0] == np.finfo(np.float32).min
    np.testing.assert_array_equal(_backend().run_model(model, [x])[0], [-np.inf, 2.0])


def test_importer_failures_name_the_operator_and_attributes_in_plain_words():
    """TVM's MaxUnpool converter calls .tolist() on a constant it cannot read: the refusal says so
    in the model's terms, not as "'GenericConst' object has no attribute 'tolist'"."""
    from onnx.backend.test.loader import load_model_tests

    case = next(t for t in load_model_tests(kind="node") if t.name == "test_maxunpool_export_with_output_shape")
    result = c.run_case(case)
    assert result.outcome == "unsupported"
    expected = "MaxUnpool (kernel_shape=2,2, strides=2,2): TVM's converter could not read an input"
    assert result.detail.startswith(expected), result.detail
    assert "GenericConst" not in result.detail and "tolist" not in result.detail


def test_converter_failure_texts():
    from edgefleet.compiler.frontends.onnx.converters import converter_failure

    cast = converter_failure("Cast", {"saturate": 1}, KeyError("to"))
    assert cast == "Cast (saturate=1): TVM's converter needs the attribute to, which the node leaves to its default"
    assert "constant" in converter_failure("Resize", {"mode": b"linear"}, ValueError("no value in Constant"))
    assert (
        converter_failure("Foo", {"w": np.zeros(3)}, RuntimeError("bad\nthing")) == "Foo: TVM's converter failed: thing"
    )
    length = converter_failure("SequenceLength", {}, TypeError("object of type 'Call' has no len()"))
    assert "shape or length" in length
