"""A model whose graph inputs are float8 compiles; its verification is skipped with the reason."""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto, helper


def test_float8_input_model_compiles_unverified_with_the_reason(tmp_path, signing_key, cli):
    node = helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT8E4M3FN, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), tmp_path / "f8.onnx")
    result = cli("compile", tmp_path / "f8.onnx", "--target", "x86_64", "-o", tmp_path / "p.tar.gz", "-q", "--json")
    assert result.code == 0, result.text
    manifest = json.loads(result.out)["manifest"]
    assert manifest["inputs"][0]["dtype"] == "float8_e4m3fn"
    assert manifest["verification"]["status"] == "skipped"
    assert "float8_e4m3fn" in manifest["verification"]["reason"]

    from edgefleet.agent.runtime_worker import open_tvm_model
    from edgefleet.package import open_package

    opened = open_package(tmp_path / "p.tar.gz", None, dest=tmp_path / "open")
    x = np.array([[0.0, 1.0, -2.5, 448.0, 0.015625, -0.0, 3.25, 240.0]], ml_dtypes.float8_e4m3fn)
    np.testing.assert_array_equal(open_tvm_model(opened.root / "model.so").run([x])[0], x.astype(np.float32))
