"""Verification feeds integer inputs values the model accepts (issue 15): Gather indices stay
inside the gathered axis, followed through Cast/Unsqueeze; arithmetic-only integers stay random."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgefleet.compiler.frontends import onnx as onnx_frontend
from edgefleet.compiler.verify import model_feeds
from edgefleet.package import TensorSpec


def _token_model(path) -> str:
    """Embedding lookup of int64 ids (vocabulary 7) and of cast int32 positions (4 rows), plus an int offset added."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["emb"], axis=0),
        helper.make_node("Cast", ["pos"], ["pos64"], to=TensorProto.INT64),
        helper.make_node("Gather", ["rows", "pos64"], ["pemb"], axis=0),
        helper.make_node("Add", ["emb", "pemb"], ["sum"]),
        helper.make_node("Cast", ["offset"], ["offset_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["sum", "offset_f"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tokens",
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 6]),
            helper.make_tensor_value_info("pos", TensorProto.INT32, [1, 6]),
            helper.make_tensor_value_info("offset", TensorProto.INT64, [1, 6, 1]),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 6, 8])],
        [
            numpy_helper.from_array(rng.normal(size=(7, 8)).astype(np.float32), "table"),
            numpy_helper.from_array(rng.normal(size=(4, 8)).astype(np.float32), "rows"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path)


def test_index_inputs_stay_inside_the_gathered_axis(tmp_path):
    path = _token_model(tmp_path / "tokens.onnx")
    specs = onnx_frontend.input_specs(onnx_frontend.load(path), {})
    assert onnx_frontend.integer_input_ranges(path, specs) == {"ids": (0, 6), "pos": (0, 3)}
    feeds = model_feeds(onnx_frontend, path, specs)
    assert feeds["ids"].min() >= 0 and feeds["ids"].max() <= 6 and len(np.unique(feeds["ids"])) > 1
    assert feeds["offset"].min() < 0 or feeds["offset"].max() > 6  # not an index: the wide default range
    onnx_frontend.reference_run(path, feeds)  # onnxruntime accepts them


def test_model_with_index_inputs_compiles_and_verifies(tmp_path, signing_key, cli):
    path = _token_model(tmp_path / "tokens.onnx")
    result = cli("compile", path, "--target", "x86_64", "--task", "other", "-o", tmp_path / "p.tar.gz", "--json")
    assert result.code == 0, result.text
    assert json.loads(result.out)["manifest"]["verification"]["status"] == "passed"
    from edgefleet.compiler.verify import sample_inputs

    # What verification fed before: values onnxruntime refuses (why the bounds exist).
    shapes = {"ids": ([1, 6], "int64"), "pos": ([1, 6], "int32"), "offset": ([1, 6, 1], "int64")}
    bad = sample_inputs([TensorSpec(name=n, shape=s, dtype=d) for n, (s, d) in shapes.items()])
    with pytest.raises(Exception, match="(?i)indices"):
        onnx_frontend.reference_run(path, bad)


def test_reference_refusing_the_sample_inputs_is_reported_not_a_traceback(tmp_path, signing_key, cli):
    """Indices computed by arithmetic (ids + 3) have no bound edgefleet can read: the package is built,
    its verification says why it was skipped."""
    nodes = [
        helper.make_node("Add", ["ids", "three"], ["shifted"]),
        helper.make_node("Gather", ["table", "shifted"], ["out"], axis=0),
    ]
    graph = helper.make_graph(
        nodes,
        "shifted",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 2])],
        [
            numpy_helper.from_array(np.ones((5, 2), np.float32), "table"),
            numpy_helper.from_array(np.array(3, np.int64), "three"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "m.onnx"))
    result = cli(
        "compile", tmp_path / "m.onnx", "--target", "x86_64", "--task", "other", "-o", tmp_path / "p.tar.gz", "--json"
    )
    assert result.code == 0, result.text
    verification = json.loads(result.out)["manifest"]["verification"]
    assert verification["status"] == "skipped" and "refused the sample inputs" in verification["reason"]


def test_tflite_gather_indices_stay_inside_the_table(tmp_path, signing_key, cli):
    from compiler_testlib import _options, write_tflite
    from tflite.BuiltinOperator import BuiltinOperator as Op
    from tflite.TensorType import TensorType as T

    from edgefleet.compiler.frontends import tflite as tflite_frontend

    table = np.random.default_rng(0).normal(size=(7, 4)).astype(np.float32)
    path = write_tflite(
        tmp_path / "gather.tflite",
        [
            ("ids", [1, 5], T.INT32, None, None),
            ("table", [7, 4], T.FLOAT32, table, None),
            ("out", [1, 5, 4], T.FLOAT32, None, None),
        ],
        [(Op.GATHER, ["table", "ids"], ["out"], _options("GatherOptions", Axis=0))],
        ["ids"],
        ["out"],
    )
    specs = tflite_frontend.input_specs(tflite_frontend.load(path), {})
    assert tflite_frontend.integer_input_ranges(path, specs) == {"ids": (0, 6)}
    result = cli("compile", path, "--target", "x86_64", "--task", "other", "-o", tmp_path / "p.tar.gz", "--json")
    assert result.code == 0, result.text
    assert json.loads(result.out)["manifest"]["verification"]["status"] == "passed"
