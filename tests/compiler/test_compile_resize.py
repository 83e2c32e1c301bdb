"""Resize and Upsample that TVM 0.27 computes differently from ONNX compile exactly (issue 15):
fractional scales, nearest ties at fractional size ratios, antialias, half_pixel_symmetric and
opset 9's Upsample become per-axis Gather/MatMul with ONNX's own weights (compiler/frontends/onnx/resize.py)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgefleet.compiler.frontends.onnx.resize import axis_matrix


def _resize_model(path, attrs: dict, *, scales=None, sizes=None, shape=(1, 3, 10, 13), opset=19) -> str:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(3, 3, 3, 3)).astype(np.float32), "w")]
    inputs = ["conv", "", ""]
    if scales is not None:
        inits.append(numpy_helper.from_array(np.array(scales, np.float32), "scales"))
        inputs[2] = "scales"
    else:
        inits.append(numpy_helper.from_array(np.array(sizes, np.int64), "sizes"))
        inputs.append("sizes")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Resize", inputs, ["y"], **attrs),
    ]
    graph = helper.make_graph(
        nodes,
        "resize",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_empty_tensor_value_info("y")],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    inferred = onnx.shape_inference.infer_shapes(model)
    del model.graph.output[:]
    model.graph.output.extend(inferred.graph.output)
    onnx.save(model, str(path))
    return str(path)


CASES = {
    "linear-fractional-scale": (dict(mode="linear"), dict(scales=[1, 1, 1.7, 0.6])),
    "cubic-fractional-scale": (dict(mode="cubic"), dict(scales=[1, 1, 0.8, 1.3])),
    "nearest-ties-sizes": (dict(mode="nearest", nearest_mode="round_prefer_floor"), dict(sizes=[1, 3, 15, 7])),
    "linear-antialias": (dict(mode="linear", antialias=1), dict(sizes=[1, 3, 4, 5])),
    "half-pixel-symmetric": (
        dict(mode="linear", coordinate_transformation_mode="half_pixel_symmetric"),
        dict(scales=[1, 1, 2.5, 1.5]),
    ),
    "nearest-not-larger-axes": (
        dict(mode="nearest", axes=[2, 3], keep_aspect_ratio_policy="not_larger"),
        dict(sizes=[7, 9]),
    ),
    "nearest-not-smaller-asymmetric": (
        dict(mode="nearest", coordinate_transformation_mode="asymmetric", keep_aspect_ratio_policy="not_smaller"),
        dict(sizes=[1, 3, 17, 8]),
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_resize_tvm_gets_wrong_compiles_and_verifies(case, tmp_path, signing_key, cli):
    attrs, params = CASES[case]
    model = _resize_model(tmp_path / "m.onnx", attrs, **params)
    result = cli("compile", model, "--target", "x86_64", "--task", "other", "-o", tmp_path / "p.tar.gz", "--json")
    assert result.code == 0, result.text
    assert json.loads(result.out)["manifest"]["verification"]["status"] == "passed"


def test_opset9_upsample_with_scales_input_compiles(tmp_path, signing_key, cli):
    torch = pytest.importorskip("torch")
    nn = torch.nn
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(4, 2, 1)
    ).eval()
    path = tmp_path / "up.onnx"
    torch.onnx.export(
        model, (torch.rand(1, 3, 12, 12),), str(path), opset_version=9, dynamo=False, input_names=["images"]
    )
    assert "Upsample" in {n.op_type for n in onnx.load(str(path)).graph.node}
    result = cli("compile", path, "--target", "x86_64", "--task", "other", "-o", tmp_path / "p.tar.gz", "--json")
    assert result.code == 0, result.text
    assert json.loads(result.out)["manifest"]["verification"]["status"] == "passed"


def test_axis_weights_are_onnx_reference_sampling():
    """Nearest 4 -> 6 (round_prefer_floor, asymmetric): output j copies input floor-or-tie(j * 4/6)."""
    node = helper.make_node(
        "Resize", ["x", "", "", "sizes"], ["y"], mode="nearest", coordinate_transformation_mode="asymmetric"
    )
    graph = helper.make_graph([node], "g", [], [], [numpy_helper.from_array(np.array([1, 6], np.int64), "sizes")])
    weights = axis_matrix(node, graph, 19, axis=1, rank=2, n=4)
    assert weights.shape == (4, 6)
    assert weights.argmax(axis=0).tolist() == [0, 1, 1, 2, 3, 3]  # x = 0, .67, 1.33, 2, 2.67, 3.33 rounded


@pytest.mark.parametrize("case", [*CASES, "cubic-align-corners"])
def test_rewrite_equals_onnx_reference(case, tmp_path):
    """The rewritten graph computes what ONNX's reference does (onnxruntime's cubic align_corners at a
    fractional scale differs from both, by up to 4.4 here: why compile's check uses other cases)."""
    from onnx.reference import ReferenceEvaluator

    from edgefleet.compiler.frontends import onnx as frontend

    align_corners = (dict(mode="cubic", coordinate_transformation_mode="align_corners"), dict(scales=[1, 1, 0.8, 1.3]))
    attrs, params = CASES.get(case) or align_corners
    model = onnx.load(_resize_model(tmp_path / "m.onnx", attrs, **params))
    prepared = frontend.prepare(model, {"x": [1, 3, 10, 13]})
    assert "Resize" not in {n.op_type for n in prepared.graph.node}
    x = np.random.default_rng(1).random((1, 3, 10, 13), dtype=np.float32)
    expected, actual = (ReferenceEvaluator(m).run(None, {"x": x})[0] for m in (model, prepared))
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)
