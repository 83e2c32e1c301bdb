"""MetaSchedule tuning through edgefleet: progress per task, database kept, resumable, and the
tuned build still matches ONNX Runtime. Real MetaSchedule builds and runs (slow on 2 cores)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgefleet.compiler.targets import resolve_target

tvm = pytest.importorskip("tvm")
from tvm import relax  # noqa: E402
from tvm.relax.frontend.onnx import from_onnx  # noqa: E402

from edgefleet.compiler import tuning  # noqa: E402
from edgefleet.compiler.build import _cpu_pipeline, tuning_dir, tvm_target  # noqa: E402


def _model():
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((16, 16, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 8, 8])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 8, 8])], [w])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


@pytest.mark.slow
def test_tuning_reports_progress_keeps_database_and_resumes(edgefleet_home):
    target = resolve_target("x86_64")
    model = _model()
    first: list[str] = []
    with tvm_target(target):
        lowered = _cpu_pipeline(target, 6, first.append)(from_onnx(model, keep_params_in_input=False))
    work = tuning_dir(target)
    assert tuning.has_database(work) and (work / tuning.WORKLOAD_FILE).stat().st_size > 0
    assert any("fused_conv2d_NCHWc" in line and "default schedule" in line for line in first), first
    assert all(line.startswith("task ") for line in first)
    # Same budget again: every task already has its records, nothing is re-tuned.
    second: list[str] = []
    with tvm_target(target):
        _cpu_pipeline(target, 6, second.append)(from_onnx(model, keep_params_in_input=False))
    assert second and all(line.endswith("skipped") for line in second), second
    x = np.random.default_rng(1).random((1, 16, 8, 8), dtype=np.float32)
    vm = relax.VirtualMachine(tvm.compile(lowered, target=tvm_target(target), relax_pipeline=None), tvm.cpu())
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(vm["main"](tvm.runtime.tensor(x)).numpy(), expected, rtol=1e-4, atol=1e-4)
