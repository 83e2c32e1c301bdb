"""Inputs that are really parameters (--constant-input), and the pipeline fallback, through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
from compiler_testlib import assert_cli_error
from onnx import TensorProto, helper

from edgefleet.errors import UnsupportedOperatorsError, UsageError
from edgefleet.package import open_package


def conv_then_parameter_ops(path: Path) -> Path:
    """conv -> Resize(scales input) -> ReduceMean(axes input): two graph inputs that are parameters."""
    rng = np.random.default_rng(3)
    weight = helper.make_tensor(
        "w", TensorProto.FLOAT, [16, 3, 3, 3], rng.standard_normal((16, 3, 3, 3)).astype(np.float32).ravel()
    )
    nodes = [
        helper.make_node("Conv", ["image", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Resize", ["c", "", "scales"], ["r"], mode="nearest"),
        helper.make_node("ReduceMean", ["r", "axes"], ["out"], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "params",
        [
            helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8]),
            helper.make_tensor_value_info("scales", TensorProto.FLOAT, [4]),
            helper.make_tensor_value_info("axes", TensorProto.INT64, [2]),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 16])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(model, path)
    return path


def test_parameter_inputs_are_named_with_the_flag_to_fix_them(tmp_path, signing_key, cli):
    model = conv_then_parameter_ops(tmp_path / "params.onnx")
    result = cli("compile", model, "--target", "x86_64", "-o", tmp_path / "p.tar.gz")
    assert_cli_error(
        result,
        UnsupportedOperatorsError,
        "axes (ReduceMean input #1)",
        "scales (Resize input #2)",
        "--constant-input axes=VALUES --constant-input scales=VALUES",
    )
    assert not (tmp_path / "p.tar.gz").exists()
    check = cli("compile", model, "--check", "--json")
    assert check.code == 0, check.text
    assert json.loads(check.out)["constant_inputs_needed"] == {
        "axes": ["ReduceMean input #1"],
        "scales": ["Resize input #2"],
    }


def test_constant_inputs_are_compiled_in_and_verified(tmp_path, signing_key, cli):
    model = conv_then_parameter_ops(tmp_path / "params.onnx")
    np.save(tmp_path / "scales.npy", np.array([1, 1, 2, 2], np.float32))
    out = tmp_path / "p.tar.gz"
    result = cli(
        "compile",
        model,
        "--target",
        "x86_64",
        "-o",
        out,
        "--constant-input",
        "axes=2,3",
        "--constant-input",
        f"scales=@{tmp_path / 'scales.npy'}",
        "-q",
        "--json",
    )
    assert result.code == 0, result.text
    manifest = json.loads(result.out)["manifest"]
    assert [i["name"] for i in manifest["inputs"]] == ["image"]
    assert manifest["verification"]["status"] == "passed"
    assert manifest["outputs"][0]["shape"] == [1, 16]
    assert manifest["runtime"]["pipeline"] == "edgefleet-cpu"

    # The package computes what ONNX Runtime computes with the same values fed at run time.
    from edgefleet.agent.runtime_worker import open_tvm_model

    image = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    expected = onnxruntime.InferenceSession(str(model)).run(
        None, {"image": image, "scales": np.array([1, 1, 2, 2], np.float32), "axes": np.array([2, 3])}
    )[0]
    opened = open_package(out, None, dest=tmp_path / "open")
    got = open_tvm_model(opened.root / "model.so").run([image])[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_constant_input_mistakes(tmp_path, signing_key, cli):
    model = conv_then_parameter_ops(tmp_path / "params.onnx")
    assert_cli_error(
        cli("compile", model, "--target", "x86_64", "--constant-input", "axes"), UsageError, "'axes' is not NAME=VALUES"
    )
    assert_cli_error(
        cli("compile", model, "--target", "x86_64", "--constant-input", "size=1,2"),
        UsageError,
        "--constant-input names size",
        "axes, image, scales",
    )
    assert_cli_error(
        cli("compile", model, "--target", "x86_64", "--constant-input", "axes=1.5,2"),
        UsageError,
        "do not fit the input's type int64",
    )
    assert_cli_error(
        cli("compile", model, "--target", "x86_64", "--constant-input", "axes=a,b"),
        UsageError,
        "not comma-separated numbers",
    )


def test_cpu_pipeline_failure_falls_back_to_tvm_default_failure_injected(tmp_path, signing_key, cli, monkeypatch):
    """A graph edgefleet's CPU pipeline cannot handle still compiles, slower, and the package says so."""
    from compiler_testlib import small_onnx_cnn

    from edgefleet.compiler import build

    def failing_pipeline(target, tune_trials, report=print, rpc=None):
        def run(mod):
            raise RuntimeError("injected: layout inference failed")

        return run

    monkeypatch.setattr(build, "_cpu_pipeline", failing_pipeline)
    model = small_onnx_cnn(tmp_path / "cnn.onnx")
    result = cli("compile", model, "--target", "x86_64", "-o", tmp_path / "p.tar.gz")
    assert result.code == 0, result.text
    assert "edgefleet's CPU pipeline failed (injected: layout inference failed)" in result.text
    manifest = open_package(tmp_path / "p.tar.gz", None, dest=tmp_path / "open").manifest
    assert manifest.runtime.pipeline == "tvm-default"
    assert manifest.runtime.pipeline_fallback_reason == "injected: layout inference failed"
    assert manifest.verification.status == "passed"
