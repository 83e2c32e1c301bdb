"""Grouped and depthwise-multiplier convolutions (AlexNet, ShuffleNet, ResNeXt style) compile with
edgefleet's CPU pipeline and match onnxruntime (issue 15). Fallbacks for single kernels: test_compile_kernel_fallbacks.py."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from support import torch_models  # noqa: E402

from edgefleet.package import open_package  # noqa: E402


@pytest.fixture(scope="module")
def grouped_model(tmp_path_factory):
    return torch_models.export("grouped", tmp_path_factory.mktemp("grouped") / "grouped.onnx")


def test_grouped_convolutions_compile_blocked_and_verify(grouped_model, tmp_path, signing_key, cli):
    result = cli("compile", grouped_model, "--target", "x86_64", "--task", "other", "-o", tmp_path / "p.tar.gz")
    assert result.code == 0, result.text
    assert "warning" not in result.err
    with open_package(tmp_path / "p.tar.gz", [signing_key.public]) as pkg:
        assert pkg.manifest.runtime.pipeline == "edgefleet-cpu" and pkg.manifest.verification.status == "passed"


def test_failing_layout_step_keeps_the_rest_of_the_cpu_pipeline(grouped_model, tmp_path, signing_key, cli, monkeypatch):
    """A layout step that raises (faked) leaves the graph in NCHW with a warning; the other steps,
    schedules included, still run: the package says edgefleet-cpu, not TVM's fallback."""
    import tvm

    from edgefleet.compiler import graph

    @tvm.transform.module_pass(opt_level=0, name="Broken")
    def broken(mod, _ctx):
        raise RuntimeError("layout inference failed on this graph")

    monkeypatch.setattr(graph, "nchwc_layout", lambda: broken)
    result = cli("compile", grouped_model, "--target", "x86_64", "--task", "other", "-o", tmp_path / "p.tar.gz")
    assert result.code == 0, result.text
    said = " ".join(result.err.split())
    assert "the NCHWc layout step failed (layout inference failed on this graph); convolutions stay in NCHW" in said
    with open_package(tmp_path / "p.tar.gz", [signing_key.public]) as pkg:
        assert pkg.manifest.runtime.pipeline == "edgefleet-cpu" and pkg.manifest.verification.status == "passed"


def test_kernels_without_a_schedule_are_named(grouped_model, tmp_path, signing_key, cli, monkeypatch):
    import tvm

    from edgefleet.compiler import schedules

    monkeypatch.setattr(
        schedules, "default_schedules", lambda _on_failure: tvm.transform.Sequential([], name="NoSchedules")
    )
    result = cli("compile", grouped_model, "--target", "x86_64", "--task", "other", "-o", tmp_path / "p.tar.gz")
    assert result.code == 0, result.text
    text = " ".join(result.err.split())
    assert "kernel(s) without a default schedule, left as written (correct, slower): fused_" in text


def _grouped_onnx(groups: int):
    """Two grouped 3x3 convolutions, 64 channels: 64/groups channels per group (one or two NCHW16c
    blocks per group, the second stride 2)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(groups)
    w1 = numpy_helper.from_array(rng.standard_normal((64, 64 // groups, 3, 3)).astype(np.float32) * 0.1, "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((64, 64 // groups, 3, 3)).astype(np.float32) * 0.1, "w2")
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=groups),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node(
            "Conv", ["r", "w2"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2], group=groups
        ),
    ]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 20, 20])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64, 10, 10])],
        [w1, w2],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("groups", [4, 2])
def test_grouped_kernels_get_the_register_blocked_schedule_and_match_onnxruntime(groups):
    """The grouped NCHWc kernel gets the blocked conv's tiling (pixel tile unrolled, epilogue at the
    tile), not the generic fallback, and the built model matches ONNX Runtime."""
    import numpy as np
    import onnxruntime as ort
    import tvm
    from tvm import relax, tirx
    from tvm.relax.frontend.onnx import from_onnx

    from edgefleet.compiler import graph
    from edgefleet.compiler.build import KernelFallbacks, _optimize_pipeline, tvm_target
    from edgefleet.compiler.schedules import schedule_func
    from edgefleet.compiler.targets import resolve_target

    model, target = _grouped_onnx(groups), resolve_target("x86_64")
    tgt = tvm_target(target)
    passes = [
        graph.cleanup(),
        graph.nchwc_layout(),
        graph.legalize(KernelFallbacks(print).layout_failed),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
    ]
    with tgt:
        fused = tvm.transform.Sequential(passes)(from_onnx(model, keep_params_in_input=False))
    kernels = [
        f for gv, f in fused.functions.items() if isinstance(f, tirx.PrimFunc) and "group_conv2d_NCHWc" in gv.name_hint
    ]
    assert len(kernels) == 2
    for func in kernels:
        trace = str(schedule_func(func, tgt).trace)
        assert "sch.unroll" in trace and "sch.reverse_compute_at" in trace, trace

    with tgt:
        mod = _optimize_pipeline(target, 0, KernelFallbacks(lambda m: pytest.fail(m)))(
            from_onnx(model, keep_params_in_input=False)
        )
    vm = relax.VirtualMachine(tvm.compile(mod, target=tgt, relax_pipeline=None), tvm.cpu())
    x = np.random.default_rng(1).standard_normal((1, 64, 20, 20)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(vm["main"](tvm.runtime.tensor(x)).numpy(), want, rtol=1e-4, atol=1e-4)
