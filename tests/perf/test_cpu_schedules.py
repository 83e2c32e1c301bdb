"""The CPU graph passes and default schedules: numerics against ONNX Runtime on small models,
and that the fast paths are really taken (blocked layout, scheduled kernels, few transforms)."""

from __future__ import annotations

import functools
import json
import pathlib
import re
import tempfile
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from support.pipeline import fused_kernels

from edgefleet.compiler.targets import ISA_LEVELS, resolve_target

tvm = pytest.importorskip("tvm")
from tvm import relax, tirx  # noqa: E402
from tvm.relax.frontend.onnx import from_onnx  # noqa: E402

from edgefleet.compiler import graph  # noqa: E402
from edgefleet.compiler.build import KernelFallbacks, _optimize_pipeline, tvm_target  # noqa: E402
from edgefleet.models.mobilenetv2 import build as mobilenetv2  # noqa: E402

TARGET = resolve_target("x86_64")
# An int8 convolution's rescale on x86: the high multiply of its int32 accumulator, never a widened one.
X86_HIGH_MUL = re.compile(r"edgefleet_x86_rounding_doubling_high_mul\(\w*conv2d_NCHWc\w*\[")
WIDENED_ACC = re.compile(r'T\.Cast\("int64", \w*conv2d_NCHWc\w*\[')


def _onnx_model(*graph_args) -> onnx.ModelProto:
    """An opset-13 ONNX model of `helper.make_graph(*graph_args)` (IR version 8, ORT's)."""
    model = helper.make_model(helper.make_graph(*graph_args), opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def _conv(rng, x, cin, cout, k, stride, groups=1, name="c"):
    w = numpy_helper.from_array(
        (rng.standard_normal((cout, cin // groups, k, k)) * 0.2).astype(np.float32), f"{name}_w"
    )
    b = numpy_helper.from_array((rng.standard_normal(cout) * 0.1).astype(np.float32), f"{name}_b")
    node = helper.make_node(
        "Conv", [x, w.name, b.name], [name], kernel_shape=[k, k], strides=[stride] * 2, pads=[k // 2] * 4, group=groups
    )
    return node, [w, b]


def _odd_channels_model() -> onnx.ModelProto:
    """First layer with 3 channels, a residual Sum, channels not divisible by 16, max pool, Gemm;
    13-pixel rows, which the 6-pixel AVX2 register tile covers with a ragged last tile."""
    rng = np.random.default_rng(1)
    nodes, inits = [], []
    for spec in [
        ("data", 3, 32, 3, 2, "c1"),
        ("r1", 32, 32, 3, 1, "c2"),
        ("r1", 32, 32, 1, 1, "c3"),
        ("s", 32, 24, 3, 1, "c4"),
    ]:
        n, i = _conv(rng, *spec[:5], name=spec[5])
        nodes.append(n)
        inits += i
        if spec[-1] == "c1":
            nodes.append(helper.make_node("Relu", ["c1"], ["r1"]))
        if spec[-1] == "c3":
            nodes.append(helper.make_node("Sum", ["c2", "c3"], ["s"]))
    nodes.append(helper.make_node("MaxPool", ["c4"], ["p"], kernel_shape=[2, 2], strides=[2, 2]))
    nodes.append(helper.make_node("Flatten", ["p"], ["f"]))
    inits.append(numpy_helper.from_array((rng.standard_normal((10, 24 * 6 * 6)) * 0.05).astype(np.float32), "fc_w"))
    inits.append(numpy_helper.from_array(np.zeros(10, np.float32), "fc_b"))
    nodes.append(helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["out"], transB=1))
    model = _onnx_model(
        nodes,
        "odd",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 26, 26])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 10])],
        inits,
    )
    return model


def _compile_and_compare(model: onnx.ModelProto):
    mod = from_onnx(model, keep_params_in_input=False)
    with tvm_target(TARGET):
        lowered = _optimize_pipeline(TARGET, 0, KernelFallbacks(print))(mod)
    ex = tvm.compile(lowered, target=tvm_target(TARGET), relax_pipeline=None)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    spec = model.graph.input[0]
    shape = [d.dim_value for d in spec.type.tensor_type.shape.dim]
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {spec.name: x}
    )[0]
    out = vm["main"](tvm.runtime.tensor(x))
    actual = (out if hasattr(out, "numpy") else out[0]).numpy()
    return lowered, actual, expected


def _kernels(mod) -> dict[str, bool]:
    return {
        gv.name_hint: bool(f.attrs and f.attrs.get("tirx.is_scheduled", False))
        for gv, f in mod.functions.items()
        if isinstance(f, tirx.PrimFunc)
    }


def test_mobilenetv2_matches_onnxruntime_blocked_depthwise_and_few_layout_transforms():
    model = mobilenetv2(size=32, width=1.0, classes=10)
    lowered, actual, expected = _compile_and_compare(model)
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)
    kernels = _kernels(lowered)
    assert sum(n.startswith("fused_depthwise_conv2d_NCHWc") for n in kernels) >= 10, sorted(kernels)
    assert all(kernels.values()), [n for n, s in kernels.items() if not s]
    # Transforms only around the 3-channel first layer and the (padded) 24-channel layers,
    # not two around each of the 17 depthwise convolutions.
    main = lowered["main"].script(show_meta=False)
    calls = re.findall(r"^\s+(\w+)\(", main, re.M)
    assert calls and sum("layout_transform" in c for c in calls) <= 8, Counter(calls)


def test_odd_channels_residual_sum_and_dense_match_onnxruntime():
    lowered, actual, expected = _compile_and_compare(_odd_channels_model())
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)
    kernels = _kernels(lowered)
    assert all(kernels.values()), [n for n, s in kernels.items() if not s]
    # 3 input channels -> NCHW3c, 24 output channels -> padded to 32 and sliced: all convs blocked.
    assert not [n for n in kernels if "conv2d" in n and "NCHWc" not in n], sorted(kernels)


@pytest.mark.parametrize(("op", "chain"), [("Sum", "add"), ("Max", "maximum"), ("Min", "minimum"), ("Mean", "add")])
def test_variadic_onnx_ops_become_element_wise_chains_and_dropout_disappears(op, chain):
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((1, 4)).astype(np.float32), "k")]
    nodes = [helper.make_node(op, ["x", "k", "x"], ["s"]), helper.make_node("Dropout", ["s"], ["y"])]
    model = _onnx_model(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        inits,
    )
    mod = graph.cleanup()(from_onnx(model, keep_params_in_input=False))
    ops = Counter(re.findall(r"R\.([a-z_.0-9]+)\(", mod["main"].script(show_meta=False)))
    assert ops[chain] == 2 and ops["stack"] == 0 and ops["nn.dropout"] == 0, ops
    assert ops["divide"] == (1 if op == "Mean" else 0), ops
    _, actual, expected = _compile_and_compare(model)
    np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-6)


def test_batch_norm_folds_into_computed_conv_weights():
    """ResNet-50 (onnx's light model) feeds its weights through broadcast_to: BN still folds."""
    path = (
        __import__("pathlib").Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / "light_resnet50.onnx"
    )
    mod = graph.cleanup()(from_onnx(onnx.load(path), keep_params_in_input=False))
    ops = Counter(re.findall(r"R\.([a-z_.0-9]+)\(", mod["main"].script(show_meta=False)))
    assert ops["nn.conv2d"] == 53 and ops["nn.batch_norm"] == 0 and ops["divide"] == 0 and ops["multiply"] == 0, ops


def test_pooling_after_a_first_layer_runs_blocked():
    rng = np.random.default_rng(2)
    nodes, inits = [], []
    for spec in [("data", 3, 16, 3, 2, "c1"), ("p", 16, 16, 1, 1, "c2")]:
        n, i = _conv(rng, *spec[:5], name=spec[5])
        nodes.append(n)
        inits += i
        if spec[-1] == "c1":
            nodes += [
                helper.make_node("Relu", ["c1"], ["r1"]),
                helper.make_node("MaxPool", ["r1"], ["p"], kernel_shape=[3, 3], strides=[2, 2]),
            ]
    model = _onnx_model(
        nodes,
        "pool",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("c2", TensorProto.FLOAT, [1, 16, 7, 7])],
        inits,
    )
    lowered, actual, expected = _compile_and_compare(model)
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)
    # Into NCHW3c and out to NCHW only; a pool left in NCHW would add a transform on each side.
    calls = re.findall(r"^\s+(\w+)\(", lowered["main"].script(show_meta=False), re.M)
    assert any("max_pool2d" in c for c in calls) and sum("layout_transform" in c for c in calls) == 2, Counter(calls)


def test_a_long_row_no_vector_width_divides_stays_a_row_loop():
    """The real ShuffleNet's max pool pads 24 x 112 x 112 to 114-pixel rows, which 16, 8 and 4 do
    not divide: the pad runs row by row (a serial row loop under the outer loops, parallel or not by
    the work threshold), not as one flattened loop whose index math (a div/mod per element) cost 2 ms.
    Its output matches a numpy max pool."""
    from tvm import te, topi

    from edgefleet.compiler.schedules import schedule_func

    x = te.placeholder((1, 24, 112, 112), name="x")
    y = topi.nn.pool2d(x, [3, 3], [2, 2], [1, 1], [1, 1, 1, 1], "max", layout="NCHW")
    tgt = tvm_target(resolve_target("x86_64"))
    sch = schedule_func(te.create_prim_func([x, y]), tgt)
    pad = sch.get_loops(sch.get_sblock("pad_temp"))
    extents = [int(sch.get(loop).extent) for loop in pad]
    assert extents[-1] == 114 and np.prod(extents) == 24 * 114 * 114, extents
    data = np.random.default_rng(3).standard_normal((1, 24, 112, 112)).astype(np.float32)
    out = tvm.runtime.tensor(np.zeros((1, 24, 56, 56), np.float32))
    tvm.compile(sch.mod, target=tgt)["main"](tvm.runtime.tensor(data), out)
    padded = np.pad(data, [(0, 0), (0, 0), (1, 1), (1, 1)], constant_values=-np.inf)
    windows = [padded[:, :, i : i + 112 : 2, j : j + 112 : 2] for i in range(3) for j in range(3)]
    np.testing.assert_array_equal(out.numpy(), np.max(windows, axis=0))


def test_tflite_mobilenetv2_runs_blocked_like_the_onnx_one(tmp_path):
    """TFLite's NHWC convolutions with (C,) bias adds and RELU6 clips get the ONNX graph's kernels:
    every convolution blocked with its epilogue fused, no transposes between them, as few transforms."""
    import sys
    from pathlib import Path

    from ai_edge_litert.interpreter import Interpreter

    from edgefleet.compiler.frontends import frontend_for

    root = Path(__file__).resolve().parents[2]
    sys.path[:0] = [str(root / "tests" / "compiler"), str(root / "benchmarks" / "qemu_insn")]
    from tflite_models import mobilenetv2_tflite

    path = mobilenetv2_tflite(tmp_path / "mnv2.tflite", size=32)
    tflite = frontend_for("tflite")
    parsed = tflite.load(path)
    mod = tflite.to_relax(parsed, tflite.input_specs(parsed, {}, []), [])
    with tvm_target(TARGET):
        lowered = _optimize_pipeline(TARGET, 0, KernelFallbacks(print))(mod)
    kernels = _kernels(lowered)
    assert not [n for n in kernels if "conv2d" in n and "NCHWc" not in n], sorted(kernels)
    # No transpose: the NHWC input is the first convolution's NCHW3c as it is (a reshape, no copy),
    # and the head's MEAN reduces the blocked tensor.
    assert not [n for n in kernels if "transpose" in n], sorted(kernels)
    assert sum(n.startswith("fused_depthwise_conv2d_NCHWc") for n in kernels) >= 10, sorted(kernels)
    calls = re.findall(r"^\s+(\w+)\(", lowered["main"].script(show_meta=False), re.M)
    assert sum("layout_transform" in c for c in calls) <= 8, Counter(calls)

    x = np.random.default_rng(0).random((1, 32, 32, 3), dtype=np.float32)
    interp = Interpreter(str(path), num_threads=1)
    interp.allocate_tensors()
    interp.set_tensor(interp.get_input_details()[0]["index"], x)
    interp.invoke()
    expected = interp.get_tensor(interp.get_output_details()[0]["index"])
    vm = relax.VirtualMachine(tvm.compile(lowered, target=tvm_target(TARGET), relax_pipeline=None), tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(x))
    np.testing.assert_allclose((out if hasattr(out, "numpy") else out[0]).numpy(), expected, rtol=1e-4, atol=1e-4)


def test_few_output_channels_take_a_narrow_block_and_a_mean_head_reduces_it_blocked():
    """Convolutions with 8 and 4 output channels (and an 8-channel depthwise) run in NCHW8c / NCHW4c,
    not padded to 16 channels and sliced; a ReduceMean over H, W reads the blocked tensor."""
    rng = np.random.default_rng(3)
    nodes, inits = [], []
    for spec in [("data", 3, 8, 3, 1, 1, "c1"), ("r1", 8, 8, 3, 1, 8, "dw"), ("r2", 8, 4, 1, 1, 1, "c3")]:
        n, i = _conv(rng, *spec[:6], name=spec[6])
        nodes.append(n)
        inits += i
        nodes.append(helper.make_node("Relu", [spec[6]], [{"c1": "r1", "dw": "r2", "c3": "r3"}[spec[6]]]))
    nodes.append(helper.make_node("ReduceMean", ["r3"], ["out"], axes=[2, 3], keepdims=0))
    model = _onnx_model(
        nodes,
        "narrow",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 20, 20])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4])],
        inits,
    )
    lowered, actual, expected = _compile_and_compare(model)
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5)
    assert len(np.unique(actual.round(4))) == 4 and np.abs(actual).max() > 1e-3  # input-dependent, not all zero
    kernels = _kernels(lowered)
    convs = sorted(n for n in kernels if "conv2d" in n)
    assert len(convs) == 3 and all("NCHWc" in n for n in convs), sorted(kernels)
    blocked = graph.nchwc_layout()(graph.cleanup()(from_onnx(model, keep_params_in_input=False)))["main"].script(
        show_meta=False
    )
    assert sorted(re.findall(r'out_layout="(NCHW\d+c)"', blocked)) == ["NCHW4c", "NCHW8c", "NCHW8c"], blocked
    calls = re.findall(r"^\s+(\w+)\(", lowered["main"].script(show_meta=False), re.M)
    assert not any("strided_slice" in c for c in calls), Counter(calls)
    # Into the first layer's NCHW3c; nothing back to NCHW before the mean.
    assert sum("layout_transform" in c for c in calls) == 1, Counter(calls)


def test_aarch64_float_convs_with_24_outputs_take_8_channel_blocks_without_padding_or_slice(monkeypatch):
    """rasp4b: a 1x1 convolution 32 -> 24 (MobileNetV2's projections) writes NCHW8c, which the
    next convolution reads, instead of 32 padded channels, a layout transform back to NCHW and a
    slice; x86 keeps the padded filters (and 1000 -> 1008 classes pad too little to change anywhere).
    The narrow graph, built for this host, matches ONNX Runtime."""
    rng = np.random.default_rng(5)
    nodes, inits = [], []
    for spec in [("data", 32, 24, 1, 1, "c1"), ("r1", 24, 48, 1, 1, "c2")]:
        n, i = _conv(rng, *spec[:5], name=spec[5])
        nodes.append(n)
        inits += i
    nodes.insert(1, helper.make_node("Relu", ["c1"], ["r1"]))
    model = _onnx_model(
        nodes,
        "project",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 32, 6, 6])],
        [helper.make_tensor_value_info("c2", TensorProto.FLOAT, [1, 48, 6, 6])],
        inits,
    )

    def kernels(target: str) -> list[str]:
        tgt = resolve_target(target)
        with tvm_target(tgt):
            lowered = _optimize_pipeline(tgt, 0, KernelFallbacks(print))(from_onnx(model, keep_params_in_input=False))
        return sorted(_kernels(lowered))

    arm, x86 = kernels("rasp4b"), kernels("x86_64")
    # In and out of NCHW at the graph's ends only; x86 compacts the padded 32 into NCHW8c in one pass.
    assert sum("conv2d_NCHWc" in k for k in arm) == 2 and sum("layout_transform" in k for k in arm) == 2, arm
    assert not any("strided_slice" in k for k in arm), arm
    assert any("channel_permute" in k for k in x86) and not any("channel_permute" in k for k in arm), x86
    assert graph._pads_much(24, 16) and graph._pads_much(56, 16) and not graph._pads_much(1000, 16)

    narrow = graph.nchwc_layout
    monkeypatch.setattr(graph, "nchwc_layout", lambda **_: narrow(narrow_float_outputs=True))
    lowered, actual, expected = _compile_and_compare(model)
    assert re.search(
        r"T\.Buffer\(\(T\.int64\(1\), T\.int64\(3\), T\.int64\(6\), T\.int64\(6\), T\.int64\(8\)\)", lowered.script()
    )
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)


def test_int8_tflite_mobilenetv2_runs_blocked_and_equals_litert_reference_kernels(tmp_path):
    """Full-integer int8 MobileNetV2: every convolution blocked (NCHWc kernels, scheduled, no layout
    fallback), the integer requantization carried into the blocked layout (as few transforms as the
    float graph), and the outputs equal to LiteRT's reference kernels. Before, the NCHWc step failed on
    these graphs (a boolean layout transform from the requantization's `where`) and every convolution
    ran unblocked."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    path, lowered = _lowered_int8_mobilenetv2(tmp_path, "x86_64", 32)
    kernels = _kernels(lowered)
    convs = [n for n in kernels if "conv2d" in n]
    assert len(convs) >= 30 and all("NCHWc" in n for n in convs), sorted(kernels)
    assert all(kernels.values()), [n for n, s in kernels.items() if not s]
    assert sum(n.startswith("fused_depthwise_conv2d_NCHWc") for n in kernels) >= 10, sorted(kernels)
    calls = re.findall(r"^\s+(\w+)\(", lowered["main"].script(show_meta=False), re.M)
    assert sum("layout_transform" in c for c in calls) <= 8, Counter(calls)
    # The requantization's high multiply is of the int32 accumulator (plus the bias) by an int32
    # multiplier on x86 (x86_intrin.RDHM_OP, vpmuldq on even and odd lanes): the accumulator is never
    # widened to 64 bits (before: an int64 multiplier constant, or the cast moved below the bias add).
    requantizing = [n for n in kernels if "conv2d" in n and "rounding_doubling_high_mul" in n]
    assert len(requantizing) >= 30, sorted(kernels)
    scripts = {n: lowered[n].script() for n in requantizing}
    assert not [n for n, s in scripts.items() if not X86_HIGH_MUL.search(s) or WIDENED_ACC.search(s)], requantizing

    vm = relax.VirtualMachine(tvm.compile(lowered, target=tvm_target(TARGET), relax_pipeline=None), tvm.cpu())
    interp = Interpreter(str(path), num_threads=1, experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    interp.allocate_tensors()
    outputs = []
    for seed in range(2):
        x = np.random.default_rng(seed).integers(-128, 128, (1, 32, 32, 3)).astype(np.int8)
        interp.set_tensor(interp.get_input_details()[0]["index"], x)
        interp.invoke()
        expected = interp.get_tensor(interp.get_output_details()[0]["index"])
        out = vm["main"](tvm.runtime.tensor(x))
        actual = (out if hasattr(out, "numpy") else out[0]).numpy()
        np.testing.assert_array_equal(actual, expected)
        outputs.append(actual)
    assert outputs[0].tobytes() != outputs[1].tobytes() and len(np.unique(outputs[0])) > 5  # input-dependent


def test_a_where_between_blocked_convolutions_keeps_the_layout_step(capsys):
    """Where(x > 0, x, 0.1 x) between two convolutions: ConvertLayout cannot carry `where`, so a
    boolean layout transform goes before it, which TVM's legalization cannot lower; the layout step
    failed on it and every convolution stayed in NCHW. Now the boolean moves as int8."""
    rng = np.random.default_rng(5)
    c1, i1 = _conv(rng, "data", 16, 32, 3, 1, name="c1")
    c2, i2 = _conv(rng, "w", 32, 16, 3, 1, name="c2")
    nodes = [
        c1,
        helper.make_node("Greater", ["c1", "zero"], ["pos"]),
        helper.make_node("Mul", ["c1", "slope"], ["scaled"]),
        helper.make_node("Where", ["pos", "c1", "scaled"], ["w"]),
        c2,
    ]
    consts = [numpy_helper.from_array(np.float32(0), "zero"), numpy_helper.from_array(np.float32(0.1), "slope")]
    model = _onnx_model(
        nodes,
        "where",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 16, 12, 12])],
        [helper.make_tensor_value_info("c2", TensorProto.FLOAT, [1, 16, 12, 12])],
        i1 + i2 + consts,
    )
    lowered, actual, expected = _compile_and_compare(model)
    assert "layout step failed" not in capsys.readouterr().out
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)
    kernels = _kernels(lowered)
    convs = [n for n in kernels if "conv2d" in n]
    assert len(convs) == 2 and all("NCHWc" in n for n in convs), sorted(kernels)


def _lowered_int8_mobilenetv2(tmp_path, target: str, size: int, width: float = 1.0, convs_only: bool = False):
    """(the .tflite path, the lowered module) of a size x size full-integer MobileNetV2 compiled for
    `target` (a name or a JSON target), no kernel fallen back (`convs_only`: no convolution)."""
    import sys
    from pathlib import Path

    from edgefleet.compiler.frontends import frontend_for

    root = Path(__file__).resolve().parents[2]
    sys.path[:0] = [str(root / "tests" / "compiler"), str(root / "benchmarks" / "qemu_insn")]
    from tflite_models import mobilenetv2_tflite

    path = mobilenetv2_tflite(tmp_path / f"mnv2_{width}_int8_{size}.tflite", size=size, width=width, int8=True)
    tflite = frontend_for("tflite")
    parsed = tflite.load(path)
    mod = tflite.to_relax(parsed, tflite.input_specs(parsed, {}, []), [])
    resolved = resolve_target(target)
    notes: list[str] = []
    fallbacks = KernelFallbacks(notes.append)
    with tvm_target(resolved):
        lowered = _optimize_pipeline(resolved, 0, fallbacks)(mod)
    if convs_only:
        assert "conv2d" not in " ".join(notes), notes
    else:
        assert not notes and not fallbacks.fallbacks, notes
    return path, lowered


VNNI_TARGET = json.dumps({"kind": "llvm", **ISA_LEVELS["x86-64-v4-vnni"].tvm_target})


def _assert_vnni_equals_litert_reference_kernels(lowered, path, size: int, seed: int) -> None:
    """Where the CPU has VNNI: the lowered int8 model's outputs on two inputs equal LiteRT's reference
    kernels bit for bit and depend on the input."""
    from compiler_testlib import litert_reference  # on sys.path from _lowered_int8_mobilenetv2

    from edgefleet.agent.variants import cpu_flags

    if "avx512_vnni" not in cpu_flags():
        return
    target = tvm_target(resolve_target(VNNI_TARGET))
    vm = relax.VirtualMachine(tvm.compile(lowered, target=target, relax_pipeline=None), tvm.cpu())
    outputs = []
    for offset in range(2):
        x = np.random.default_rng(seed + offset).integers(-128, 128, (1, size, size, 3)).astype(np.int8)
        out = vm["main"](tvm.runtime.tensor(x))
        actual = (out if hasattr(out, "numpy") else out[0]).numpy()
        np.testing.assert_array_equal(actual, litert_reference(path, x))
        outputs.append(actual)
    assert outputs[0].tobytes() != outputs[1].tobytes() and len(np.unique(outputs[0])) > 5


@functools.cache
def _int8_mobilenetv2_kernels(target: str) -> dict[str, str]:
    """TVMScript of each kernel of a 56x56 full-integer MobileNetV2 compiled for `target` (no fallback),
    once per target for all the tests that read it."""
    with tempfile.TemporaryDirectory() as work:
        _, lowered = _lowered_int8_mobilenetv2(pathlib.Path(work), target, 56)
    return {gv.name_hint: f.script() for gv, f in lowered.functions_items() if isinstance(f, tirx.PrimFunc)}


def test_rasp4b_int8_rescales_run_sqrdmulh_and_srshl_without_dot_product():
    """SQRDMULH and SRSHL are ARMv8.0 AdvSIMD: rasp4b (Cortex-A72, no dot product) rescales on int32
    lanes with them too (graph.sqrdmulh_rescales, graph.rounding_shifts; the 64-bit product before), in
    its int16-by-lane convolutions and its depthwise ones alike, while no convolution goes to SDOT; the
    int8 narrowing after the rescale is kept out of its 4-lane pieces.
    armv7 (rasp3b) is not AArch64 and keeps the 64-bit form. Numerics: tests/cross/test_cross_int8_dot.py."""
    assert not graph.is_aarch64(tvm_target(resolve_target("rasp3b")))
    scripts = _int8_mobilenetv2_kernels("rasp4b")
    assert not [n for n in scripts if "conv2d_NCHWc_int8" in n or "llvm.aarch64.neon.sdot" in scripts[n]]
    rescaled = [n for n, s in scripts.items() if "llvm.aarch64.neon.sqrdmulh" in s]
    assert sum("llvm.aarch64.neon.srshl" in scripts[n] for n in rescaled) >= 30
    assert [n for n in rescaled if n.startswith("fused_depthwise")]
    assert [n for n in rescaled if "llvm.aarch64.neon.smull" in scripts[n]]  # the by-lane dense kernels
    # The rescale (4-lane pieces) is a block of its own, each pixel's channels in a buffer, so that the
    # narrowing after it runs on the whole channel block (schedules._narrow_apart), dense and depthwise.
    apart = [n for n in rescaled if re.search(r"srshl_intermediate\w* = T.sblock_alloc_buffer", scripts[n])]
    assert len(apart) >= 30 and [n for n in apart if n.startswith("fused_depthwise")], apart


def test_rasp5_int8_convolutions_all_tensorize_sdot():
    """For a dot-product target every dense int8 convolution runs on raw int8 operands and gets the SDOT
    schedule, rows of 28, 14 and 7 pixels included (a tile that did not divide the row failed to tensorize, and the kernel fell back
    silently to the generic schedule), and the rescales run on SQRDMULH and SRSHL. Numerics: tests/cross/test_cross_int8_dot.py."""
    scripts = _int8_mobilenetv2_kernels("rasp5")
    dot = [n for n in scripts if n.startswith("fused_conv2d_NCHWc_int8")]
    assert len(dot) >= 15, sorted(scripts)
    assert all("llvm.aarch64.neon.sdot" in scripts[n] for n in dot), [n for n in dot if "sdot" not in scripts[n]]
    # Every dense convolution, the RGB input's (3 channels padded to 4) and 8-channel ones included.
    int16 = [n for n in scripts if n.startswith(("fused_conv2d_NCHWc", "conv2d_NCHWc")) and "int8" not in n]
    assert not int16, int16
    # arm_intrin's SDOT allocates nothing (TVM's named "local" vectors became a heap workspace per tile row).
    assert not [n for n in dot if "alloc_local" in scripts[n]]
    assert sum("llvm.aarch64.neon.sqrdmulh" in s for s in scripts.values()) >= 30
    # The rounding division after it as one SRSHL (graph.rounding_shifts) wherever the channels are whole
    # 4-lane vectors: the kernels that still shift twice run on 3x3 NCHW tails.
    shifts = [n for n, s in scripts.items() if "llvm.aarch64.neon.sqrdmulh" in s]
    assert sum("llvm.aarch64.neon.srshl" in scripts[n] for n in shifts) >= 30


def test_x86_vnni_int8_convolutions_all_tensorize_vpdpbusd_and_requantizations_are_one_loop():
    """For an x86 target with AVX-512 VNNI (the x86_64 package's x86-64-v4-vnni library) every dense int8
    convolution reads the input + 128 as uint8 and gets the vpdpbusd schedule (16 or 8 output channels per
    instruction; a schedule that fails falls back silently), none stays on int16; the generic x86-64-v4
    library has no such kernel. No requantization runs after a channel slice (a 24-channel tensor in blocks
    of 16: it runs in the convolution's kernel). Depthwise convolutions run on the raw input: on VNNI as
    uint8 with vpdpbusd on window rows (graph.depthwise_conv2d_nchwc_dot), on x86-64-v4 as int8; every
    rescale's high multiply is on int32 lanes. Numerics and the instruction in the library:
    tests/compiler/test_compile_int8_vnni.py."""

    scripts = {
        level: _int8_mobilenetv2_kernels(json.dumps({"kind": "llvm", **ISA_LEVELS[level].tvm_target}))
        for level in ("x86-64-v4-vnni", "x86-64-v4")
    }
    vnni = scripts["x86-64-v4-vnni"]
    dot = [n for n in vnni if n.startswith("fused_conv2d_NCHWc_int8")]
    assert len(dot) >= 15, sorted(vnni)
    assert all("llvm.x86.avx512.vpdpbusd" in vnni[n] for n in dot), [n for n in dot if "vpdpbusd" not in vnni[n]]
    int16 = [n for n in vnni if n.startswith(("fused_conv2d_NCHWc", "conv2d_NCHWc")) and "int8" not in n]
    assert not int16, int16
    assert not any("vpdpbusd" in s or "uint8" in s for s in scripts["x86-64-v4"].values())
    # A padded output's requantization runs in its convolution (graph.sink_channel_slices): no sliced kernel.
    assert not [n for n in vnni if n.startswith("fused_strided_slice")], sorted(vnni)
    # Both x86 libraries: depthwise convolutions read the raw int8 input (no int16 tensor between them
    # and their producers), and every raw int8 convolution's rescale is the int32 high multiply of its
    # accumulator plus one constant, the zero-point correction folded into the bias (before:
    # `int64(acc - k) * q`, a 64 x 64-bit vpmullq; then `int64(acc) * q + c`, 64-bit lanes).
    first_input = re.compile(r'def \w+\(\w+: T\.Buffer\(\(.*?\), "(\w+)"\)')
    for level, kernels in scripts.items():
        # The requantized depthwise convolutions (a rescale); the head's MEAN, also a depthwise
        # sum but of the int32 tensor its producer writes, divides instead and is not one of them.
        rescaled = {n for n in kernels if "rounding_doubling_high_mul" in n}
        depthwise = [n for n in rescaled if n.startswith("fused_depthwise_conv2d_NCHWc")]
        inputs = {n: first_input.search(kernels[n]).group(1) for n in depthwise}
        raw_input = "uint8" if level == "x86-64-v4-vnni" else "int8"
        assert len(depthwise) >= 10 and set(inputs.values()) == {raw_input}, (level, inputs)
        on_windows = [n for n in depthwise if "llvm.x86.avx512.vpdpbusd" in kernels[n]]
        assert len(on_windows) == (len(depthwise) if raw_input == "uint8" else 0), (level, on_windows)
        raw = [n for n in rescaled if n.startswith(("fused_depthwise_conv2d_NCHWc", "fused_conv2d_NCHWc_int8"))]
        assert len(raw) >= 10, (level, sorted(kernels))
        assert not [n for n in raw if not X86_HIGH_MUL.search(kernels[n]) or WIDENED_ACC.search(kernels[n])], (
            level,
            raw,
        )


@pytest.mark.parametrize("level", ["x86-64-v4", "x86-64-v3"])
def test_x86_rescale_high_multiply_is_exact_and_vpmuldq_on_even_and_odd_lanes(level):
    """graph.x86_rounding_doubling_high_mul (x86_intrin.RDHM_OP) equals (a q + 2^30) >> 31 computed in int64 for every int32 a
    and Q31 q tried (the extremes, ties at q = 2^30, random), in 16- and 8-lane vectors and in the scalar
    form an odd width takes. On AVX-512 the 16-lane product is two vpmuldq on the registers as they
    are, no widening to 64-bit lanes (vpmovsxdq / vpmovzxdq) or narrowing back (vpmovqd)."""
    from tvm import te

    rng = np.random.default_rng(5)
    edges = np.array([-(2**31), 2**31 - 1, 0, 1, -1, 2, -2, 3, -3, 2**30, -(2**30), 12345, -12345], np.int64)
    a = np.concatenate([edges, np.arange(-40, 40), rng.integers(-(2**31), 2**31, 4096)])
    q_values = np.concatenate([[2**30, 2**31 - 1, 2**30 + 1], rng.integers(2**30, 2**31, 45)])
    target = tvm_target(resolve_target(json.dumps({"kind": "llvm", **ISA_LEVELS[level].tvm_target})))
    for lanes in (16, 8, 3):
        rows = a.size * q_values.size // lanes
        x = np.resize(a, (rows, lanes)).astype(np.int32)
        q = np.resize(q_values, (1, lanes)).astype(np.int32)
        xs, qs = te.placeholder((rows, lanes), "int32", "x"), te.placeholder((1, lanes), "int32", "q")
        out = graph.x86_rounding_doubling_high_mul(xs, qs)
        sch = tvm.s_tir.Schedule(te.create_prim_func([xs, qs, out]))
        sch.vectorize(sch.get_loops(sch.get_sblock(out.op.name))[-1])
        lib = tvm.compile(sch.mod, target=target)
        result = tvm.runtime.tensor(np.zeros((rows, lanes), np.int32))
        lib["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(q), result)
        expected = ((x.astype(np.int64) * q + (1 << 30)) >> 31).astype(np.int32)
        np.testing.assert_array_equal(result.numpy(), expected, err_msg=f"{level}, {lanes} lanes")
        if lanes == 16 and level == "x86-64-v4":
            asm = lib.mod.inspect_source("asm")
            assert asm.count("vpmuldq") >= 2 and "zmm" in asm, asm
            assert not re.search(r"vpmov(sx|zx)dq|vpmovqd", asm), asm


def _silu_softmax_model() -> onnx.ModelProto:
    """A YOLOv8-style block: conv, SiLU as Sigmoid * x (as torch exports it), conv, the DFL head
    (softmax over 8 bins of the channel axis, their expectation as a 1x1 conv to one channel),
    and Exp: every output depends on the input."""
    rng = np.random.default_rng(2)
    c1, w1 = _conv(rng, "data", 3, 16, 3, 2, name="c1")
    c2, w2 = _conv(rng, "silu", 16, 32, 1, 1, name="c2")
    nodes = [
        c1,
        helper.make_node("Sigmoid", ["c1"], ["sig"]),
        helper.make_node("Mul", ["c1", "sig"], ["silu"]),
        c2,
        helper.make_node("Reshape", ["c2", "bins"], ["r"]),
        helper.make_node("Softmax", ["r"], ["soft"], axis=1),
        helper.make_node("Conv", ["soft", "dfl"], ["expectation"], kernel_shape=[1, 1]),
        helper.make_node("Exp", ["c2"], ["e"]),
        helper.make_node("Reshape", ["e", "bins"], ["er"]),
        helper.make_node("Add", ["expectation", "er"], ["out"]),
    ]
    bins = numpy_helper.from_array(np.array([1, 8, 4, 100], np.int64), "bins")
    dfl = numpy_helper.from_array(np.arange(8, dtype=np.float32).reshape(1, 8, 1, 1), "dfl")
    model = _onnx_model(
        nodes,
        "silu_softmax",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 20, 20])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 8, 4, 100])],
        [*w1, *w2, bins, dfl],
    )
    return model


def test_exp_sigmoid_and_softmax_lower_to_vector_arithmetic_and_match_onnxruntime():
    lowered, actual, expected = _compile_and_compare(_silu_softmax_model())
    assert expected.std() > 0.1  # the comparison is not one of constants
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)
    kernels = _kernels(lowered)
    assert all(kernels.values()), [n for n, s in kernels.items() if not s]
    assert any("vector_sigmoid" in n for n in kernels) and any("vector_softmax" in n for n in kernels), sorted(kernels)
    assert any("vector_exp" in n for n in kernels), sorted(kernels)
    # The one-channel 1x1 conv on the softmax's NCHW output stays in NCHW, without transforms.
    assert [n for n in kernels if "conv2d" in n and "NCHWc" not in n], sorted(kernels)
    # No kernel is left calling exp, which LLVM lowers to one libm call per lane on x86.
    scripts = [f.script() for f in lowered.functions.values() if isinstance(f, tirx.PrimFunc)]
    assert not [s for s in scripts if re.search(r"T\.(exp|sigmoid)\(", s)]


def _vectorized(fn, x: np.ndarray) -> np.ndarray:
    """`fn` (a PrimExpr -> PrimExpr builder) on every element of `x`, in 16-lane vectors."""
    from tvm import te

    shape = (x.size // 16, 16)
    a = te.placeholder(shape, name="a")
    b = te.compute(shape, lambda i, j: fn(a[i, j]), name="b")
    sch = tvm.s_tir.Schedule(te.create_prim_func([a, b]))
    sch.vectorize(sch.get_loops(sch.get_sblock("b"))[-1])
    lib = tvm.compile(sch.mod, target=tvm_target(TARGET))
    out = tvm.runtime.tensor(np.zeros(shape, np.float32))
    lib["main"](tvm.runtime.tensor(x.reshape(shape)), out)
    return out.numpy().ravel()


def test_vector_exp_and_sigmoid_stay_within_two_ulps_of_float64():
    from edgefleet.compiler import vector_math

    x = np.concatenate([np.linspace(-100, 100, 1 << 16), np.random.default_rng(3).standard_normal(1 << 16) * 5])
    x = x.astype(np.float32)
    for fn, ref in ((vector_math.exp, np.exp), (vector_math.sigmoid, lambda v: 1 / (1 + np.exp(-v)))):
        y = _vectorized(fn, x)
        with np.errstate(over="ignore"):
            expected = ref(x.astype(np.float64)).astype(np.float32)
        # exp overflows to inf where float32 does; results below the smallest normal float may be 0.
        np.testing.assert_array_equal(np.isinf(y), np.isinf(expected))
        normal = np.isfinite(expected) & (expected >= np.finfo(np.float32).tiny)
        ulps = np.abs(y[normal].astype(np.float64) - expected[normal]) / np.spacing(expected[normal])
        assert ulps.max() <= 2, (fn.__name__, ulps.max())
        assert np.all(y[~normal & np.isfinite(expected)] < 1.2e-38)


def _c2f_model() -> onnx.ModelProto:
    """YOLOv8's C2f: a conv's 32 channels split in two halves (Slice, as torch exports chunk), a bottleneck on the
    second, the concat of all three, a conv; SiLU after each conv."""
    rng = np.random.default_rng(4)
    nodes, inits = [], []
    for x, cin, cout, k, name in (("data", 16, 32, 1, "cv1"), ("b", 16, 16, 3, "m"), ("cat", 48, 32, 1, "cv2")):
        conv, weights = _conv(rng, x, cin, cout, k, 1, name=f"{name}_conv")
        nodes += [
            conv,
            helper.make_node("Sigmoid", [f"{name}_conv"], [f"{name}_sig"]),
            helper.make_node("Mul", [f"{name}_conv", f"{name}_sig"], [name]),
        ]
        inits += weights
        if name == "cv1":
            for half, bounds in (("a", [0, 16]), ("b", [16, 32])):
                nodes.append(helper.make_node("Slice", ["cv1", f"{half}_begin", f"{half}_end", "channels"], [half]))
                inits += [
                    numpy_helper.from_array(np.array([v], np.int64), f"{half}_{k}")
                    for k, v in zip(("begin", "end"), bounds)
                ]
            inits.append(numpy_helper.from_array(np.array([1], np.int64), "channels"))
        if name == "m":
            nodes.append(helper.make_node("Concat", ["a", "b", "m"], ["cat"], axis=1))
    model = _onnx_model(
        nodes,
        "c2f",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 16, 12, 12])],
        [helper.make_tensor_value_info("cv2", TensorProto.FLOAT, [1, 32, 12, 12])],
        inits,
    )
    return model


def test_a_channel_split_and_concat_on_whole_blocks_stay_blocked():
    lowered, actual, expected = _compile_and_compare(_c2f_model())
    assert expected.std() > 0.1
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)
    main = lowered["main"].script(show_meta=False)
    calls = re.findall(r"^\s+(\w+)\(", main, re.M)
    # Into the blocked layout at the input, out of it at the output: none around the split.
    assert sum("layout_transform" in c for c in calls) == 2, calls
    assert any("strided_slice" in c for c in calls) and any("concatenate" in c for c in calls), calls


def _fire_model() -> onnx.ModelProto:
    """Two of SqueezeNet's fire modules (a 1x1 squeeze, then 1x1 and 3x3 expands concatenated), a max pool
    between them; the second concat is the output."""
    rng = np.random.default_rng(5)
    nodes, inits = [], []

    def conv_relu(x, cin, cout, k, name, stride=1):
        conv, weights = _conv(rng, x, cin, cout, k, stride, name=f"{name}_conv")
        nodes.extend([conv, helper.make_node("Relu", [f"{name}_conv"], [name])])
        inits.extend(weights)

    conv_relu("data", 3, 32, 3, "stem", stride=2)
    for fire, x, cin in (("f1", "stem", 32), ("f2", "pool", 64)):
        conv_relu(x, cin, 16, 1, f"{fire}_squeeze")
        conv_relu(f"{fire}_squeeze", 16, 32, 1, f"{fire}_e1")
        conv_relu(f"{fire}_squeeze", 16, 32, 3, f"{fire}_e3")
        nodes.append(helper.make_node("Concat", [f"{fire}_e1", f"{fire}_e3"], [fire], axis=1))
        if fire == "f1":
            nodes.append(helper.make_node("MaxPool", ["f1"], ["pool"], kernel_shape=[2, 2], strides=[2, 2]))
    model = _onnx_model(
        nodes,
        "fire",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 40, 40])],
        [helper.make_tensor_value_info("f2", TensorProto.FLOAT, [1, 64, 10, 10])],
        inits,
    )
    return model


def test_fire_module_concats_are_written_in_place_by_their_convolutions():
    lowered, actual, expected = _compile_and_compare(_fire_model())
    assert expected.std() > 0.1
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)
    calls = re.findall(r"^\s+(\w+)\(", lowered["main"].script(show_meta=False), re.M)
    # Each expand conv writes its half of the concat (the output's too): no concat kernel is left.
    assert not any("concatenate" in c for c in calls), calls
    assert sum(c.startswith("fused_conv2d") and "_into" in c for c in calls) == 4, calls


def test_in_place_kernel_copies_keep_an_unscheduled_form_for_the_build_fallback():
    from edgefleet.compiler.build import _as_lowered, _build_error

    kernels = KernelFallbacks(print)
    with tvm_target(TARGET):
        mod = _optimize_pipeline(TARGET, 0, kernels)(from_onnx(_fire_model(), keep_params_in_input=False))
    copies = {gv: f for gv, f in mod.functions.items() if "_into" in gv.name_hint and isinstance(f, tirx.PrimFunc)}
    assert len(copies) == 4, list(copies)
    for gv, scheduled in copies.items():
        # What build_with_fallback puts in place of a scheduled kernel TVM cannot build.
        plain = _as_lowered(kernels.unscheduled.get(gv.name_hint), scheduled)
        assert plain is not None and _build_error(gv, plain, tvm_target(TARGET)) is None, gv.name_hint


def _padded_classifier_model() -> onnx.ModelProto:
    """SqueezeNet's head: a 1x1 conv to 20 classes (padded to 32, whole blocks), ReLU, global average, flatten."""
    rng = np.random.default_rng(6)
    nodes, inits = [], []
    for x, cin, cout, name in (("data", 3, 32, "stem"), ("stem_relu", 32, 20, "head")):
        conv, weights = _conv(rng, x, cin, cout, 1 if name == "head" else 3, 1, name=name)
        nodes += [conv, helper.make_node("Relu", [name], [f"{name}_relu"])]
        inits += weights
    nodes += [
        helper.make_node("GlobalAveragePool", ["head_relu"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["out"]),
    ]
    model = _onnx_model(
        nodes,
        "head",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 13, 13])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 20])],
        inits,
    )
    return model


def test_a_padded_classifier_keeps_its_bias_relu_and_average_blocked():
    lowered, actual, expected = _compile_and_compare(_padded_classifier_model())
    assert expected.std() > 0.05
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)
    calls = re.findall(r"^\s+(\w+)\(", lowered["main"].script(show_meta=False), re.M)
    # Into the blocked layout at the input only: the padded classes are sliced off the 32 averages.
    assert sum("layout_transform" in c for c in calls) == 1, calls
    assert any(c.startswith("fused_conv2d") and "relu" in c for c in calls), calls


def _mixed_block_residual_model() -> onnx.ModelProto:
    """ShuffleNet v1's stage entry: a concat in 8-channel blocks (stem 3 -> 8, conv 8 -> 40), then two
    residual units whose grouped 1x1 conv (2 groups of 24 channels, which split a 16-channel block:
    block_remaining_convs pads them) leaves 16-channel blocks, added to it."""
    rng = np.random.default_rng(7)
    nodes, inits = [], []
    for x, cin, cout, k, name in (
        ("data", 3, 8, 3, "stem"),
        ("stem_relu", 8, 40, 3, "side"),
        ("cat", 48, 48, 1, "u1"),
        ("r1", 48, 48, 1, "u2"),
    ):
        conv, weights = _conv(rng, x, cin, cout, k, 1, groups=2 if k == 1 else 1, name=name)
        nodes.append(conv)
        inits += weights
        if name in ("stem", "side"):
            nodes.append(helper.make_node("Relu", [name], [f"{name}_relu"]))
        if name == "side":
            nodes.append(helper.make_node("Concat", ["side_relu", "stem_relu"], ["cat"], axis=1))
        if name in ("u1", "u2"):
            residual, out = ("cat", "r1") if name == "u1" else ("r1", "out")
            nodes += [
                helper.make_node("Add", [name, residual], [f"{name}_sum"]),
                helper.make_node("Relu", [f"{name}_sum"], [out]),
            ]
    model = _onnx_model(
        nodes,
        "mixed_blocks",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 12, 12])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 48, 12, 12])],
        inits,
    )
    return model


def test_a_residual_add_of_8_and_16_channel_blocks_stays_blocked():
    model = _mixed_block_residual_model()
    lowered, actual, expected = _compile_and_compare(model)
    assert expected.std() > 0.1
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)

    def transforms(x86_rewrites: bool) -> int:
        mod = graph.nchwc_layout(x86_rewrites=x86_rewrites)(graph.cleanup()(from_onnx(model)))
        return mod["main"].script(show_meta=False).count("R.layout_transform(")

    # In, from 8- to 16-channel blocks once (through NCHW), out; without the re-blocking both adds
    # run in NCHW between transforms.
    assert transforms(True) == 4 < transforms(False), (transforms(True), transforms(False))


def test_aarch64_unrolls_the_channel_loop_and_partitions_off_a_ragged_rows_last_tile():
    """rasp4b: a 3x3 conv gets its 16 input channels per tile unrolled, 4 pixels per tile (16
    accumulators, 2 input and 4 weight vectors); on rows of 13 the last tile (1 pixel) is
    partitioned off by LoopPartition's hint, on int32 indices (TVM's NarrowDataType loses the hint
    of an int64 loop). ARMv7 and x86 keep the loop and the predicate."""
    from edgefleet.compiler.schedules import schedule_func

    def conv_func(width: int):
        from tvm import te, topi

        def shape(*dims):  # int64, as Relax legalizes a model's kernels
            return [tirx.IntImm("int64", d) for d in dims]

        data = te.placeholder(shape(1, 2, width, width, 16), "float32", name="data")
        kernel = te.placeholder(shape(2, 2, 3, 3, 16, 16), "float32", name="kernel")
        out = topi.nn.conv2d_NCHWc(data, kernel, 1, 1, 1, "NCHW16c", "NCHW16c", "float32")
        return te.create_prim_func([data, kernel, topi.nn.relu(out)])

    def scheduled(target: str, width: int) -> str:
        tgt = tvm_target(resolve_target(target))
        with tgt:
            sch = schedule_func(conv_func(width), tgt)
        assert sch is not None
        return sch.mod["main"].script()

    whole, ragged = scheduled("rasp4b", 12), scheduled("rasp4b", 13)
    for script in (whole, ragged):
        assert re.search(r"in T\.unroll\(16\)", script) and re.search(r"in T\.unroll\(4\)", script), script
    assert "pragma_loop_partition_hint" not in whole and "int64" in whole
    assert "pragma_loop_partition_hint" in ragged and "int64" not in ragged
    for target in ("rasp3b", "x86_64"):
        script = scheduled(target, 13)
        assert not re.search(r"in T\.unroll\(16\)", script) and "pragma_loop_partition_hint" not in script


def test_aarch64_int16_convolutions_multiply_by_lane():
    """rasp4b: an int16 x int16 -> int32 convolution (tflite_quant.py's dense int8 convolution without
    dot product) multiplies each input channel as a lane of its pixel's input vector (arm_intrin's
    smull-by-lane intrinsic, `smlal v.4s, w.4h, a.h[k]`), rows of 28 and of 7 pixels (half the
    channels per pass) alike; a strided one (its pixels' inputs are not one matrix), ARMv7 and x86
    keep their schedules. Numerics and the instruction: tests/cross/test_cross_int8_dot.py."""
    from tvm import te, topi

    from edgefleet.compiler.schedules import schedule_func

    def by_lane(target: str, width: int, stride: int = 1) -> bool:
        data = te.placeholder((1, 2, width, width, 16), "int16", name="data")
        kernel = te.placeholder((2, 2, 1, 1, 16, 16), "int16", name="kernel")
        tgt = tvm_target(resolve_target(target))
        with tgt:
            out = topi.nn.conv2d_NCHWc(data, kernel, stride, 0, 1, "NCHW16c", "NCHW16c", "int32")
            sch = schedule_func(te.create_prim_func([data, kernel, out]), tgt)
        assert sch is not None
        script = sch.mod["main"].script()
        assert "conv2d_NCHWc_update" in script  # scheduled by Conv2dNCHWc, not left to `Generic`
        # Lane k of a pixel's 8 input channels, splat across the 4 lanes of the widening multiply.
        return "llvm.aarch64.neon.smull" in script and "T.Shuffle([A[p, T.Ramp(0, 1, 8)]], [k, k, k, k])" in script

    assert by_lane("rasp4b", 28)
    assert by_lane("rasp4b", 7)
    assert not by_lane("rasp4b", 28, stride=2)
    assert not by_lane("rasp3b", 28)
    assert not by_lane("x86_64", 28)


def _dense_convs_model() -> onnx.ModelProto:
    """1x1 and 3x3 convolutions with 64 output channels (4 blocks) on rows of 13 (a ragged tile),
    a residual add, and a 48-channel conv (3 blocks: no pair); random weights and input."""
    rng = np.random.default_rng(4)
    nodes, inits = [], []
    for spec in [("x", 32, 64, 1, 1, "c1"), ("r1", 64, 64, 3, 1, "c2"), ("s", 64, 48, 1, 1, "c3")]:
        node, weights = _conv(rng, *spec[:5], name=spec[5])
        nodes.append(node)
        inits += weights
        if spec[-1] == "c1":
            nodes.append(helper.make_node("Relu", ["c1"], ["r1"]))
        if spec[-1] == "c2":
            nodes.append(helper.make_node("Add", ["c2", "r1"], ["s"]))
    model = _onnx_model(
        nodes,
        "dense",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, 13, 13])],
        [helper.make_tensor_value_info("c3", TensorProto.FLOAT, [1, 48, 13, 13])],
        inits,
    )
    return model


def _conv_tiles(target_name: str, model: onnx.ModelProto | None = None) -> dict[str, tuple[int, int]]:
    """(pixels, output blocks) of each dense conv kernel's register tile, from its schedule's trace
    (of `_dense_convs_model` unless `model` is given)."""
    from edgefleet.compiler.schedules import schedule_func

    target = resolve_target(target_name)
    tgt = tvm_target(target)
    tiles = {}
    for gv, func in fused_kernels(model or _dense_convs_model(), tgt).functions.items():
        if isinstance(func, tirx.PrimFunc) and "conv2d_NCHWc" in gv.name_hint:
            splits = re.findall(r"sch\.split\(loop=\w+, factors=\[None, (\d+)\]", str(schedule_func(func, tgt).trace))
            # Pixel tile, input-channel lanes, then (paired only) the output-chunk pair.
            tiles[gv.name_hint] = (int(splits[0]), int(splits[2]) if len(splits) > 2 else 1)
    return tiles


def test_x86_avx512_dense_convs_pair_two_output_blocks_and_match_onnxruntime():
    """AVX-512 (ml_c6i): a dense conv with an even number of output blocks gets a tile of 2 blocks x
    at most 7 pixels (both blocks share each input broadcast); 3 blocks, AVX2 (x86_64's portable
    library) and ARM keep one block. The AVX-512 build matches ONNX Runtime on random data."""
    from edgefleet.agent.variants import cpu_flags

    avx512 = _conv_tiles("ml_c6i")
    assert len(avx512) == 3, avx512
    assert sorted(avx512.values()) == [(7, 2), (7, 2), (13, 1)], avx512
    for other in ("x86_64", "rasp4b"):
        assert all(blocks == 1 for _, blocks in _conv_tiles(other).values()), other
    if "avx512f" not in cpu_flags():
        pytest.skip("runs AVX-512 code: this CPU has no avx512f")
    _avx512_matches_onnxruntime(_dense_convs_model(), (1, 32, 13, 13))


def _avx512_matches_onnxruntime(model: onnx.ModelProto, shape: tuple[int, ...]) -> None:
    """The ml_c6i (AVX-512) build of `model` against ONNX Runtime on a random input `x` of `shape`."""
    target = resolve_target("ml_c6i")
    with tvm_target(target):
        lowered = _optimize_pipeline(target, 0, KernelFallbacks(lambda m: pytest.fail(m)))(
            from_onnx(model, keep_params_in_input=False)
        )
    vm = relax.VirtualMachine(tvm.compile(lowered, target=tvm_target(target), relax_pipeline=None), tvm.cpu())
    x = np.random.default_rng(5).standard_normal(shape).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(vm["main"](tvm.runtime.tensor(x)).numpy(), want, rtol=1e-4, atol=1e-4)


def _large_and_small_convs_model() -> onnx.ModelProto:
    """A 3x3 convolution of 64 channels on 28 x 28 (29 M multiply-adds), then a 1x1 of stride 4 to 16
    channels on 7 x 7 (50 k)."""
    rng = np.random.default_rng(6)
    large, large_w = _conv(rng, "x", 64, 64, 3, 1, name="large")
    small, small_w = _conv(rng, "large", 64, 16, 1, 4, name="small")
    model = _onnx_model(
        [large, small],
        "large_small",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 28, 28])],
        [helper.make_tensor_value_info("small", TensorProto.FLOAT, [1, 16, 7, 7])],
        large_w + small_w,
    )
    return model


@pytest.mark.parametrize("target_name", ["x86_64", "rasp4b"])
def test_a_kernel_below_the_work_threshold_runs_serial_on_x86_and_a_large_one_in_parallel(target_name):
    """On x86 a convolution's outer loops are parallel only from `PARALLEL_MIN_WORK` multiply-adds
    up: the small one runs on the calling thread (no pool launch), the large one across the pool.
    ARM keeps both parallel (the threshold was measured on x86 only). The x86 build matches ONNX
    Runtime."""
    from tvm import s_tir

    from edgefleet.compiler.schedules import PARALLEL_MIN_WORK, block_work, schedule_func

    model = _large_and_small_convs_model()
    tgt = tvm_target(resolve_target(target_name))
    parallel = {}
    for gv, func in fused_kernels(model, tgt).functions.items():
        if isinstance(func, tirx.PrimFunc) and "conv2d_NCHWc" in gv.name_hint:
            sch = s_tir.Schedule(func)
            work = max(block_work(sch, b) for b in sch.get_child_blocks(sch.get_sblock("root")))
            parallel[work] = "T.parallel(" in schedule_func(func, tgt).mod["main"].script()
    small, large = 64 * 16 * 7 * 7, 64 * 64 * 9 * 28 * 28
    assert sorted(parallel) == [small, large], parallel
    assert small < PARALLEL_MIN_WORK <= large
    assert parallel == {small: target_name != "x86_64", large: True}
    if target_name == "x86_64":
        _, actual, expected = _compile_and_compare(model)
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("channels", "block", "dtype", "copies"),
    [(3, 3, "float32", False), (6, 3, "float32", True), (3, 3, "int8", False), (6, 3, "int8", True)],
)
def test_an_nhwc_input_moved_into_its_only_block_is_a_reshape_not_a_copy(channels, block, dtype, copies):
    """transpose(NHWC -> NCHW) then NCHW -> NCHW{C}c with all C channels in one block (a TFLite
    image into its first convolution) leaves every element where it was: one reshape, a view. Two
    blocks of 3 out of 6 channels do move elements."""
    shape = (1, 5, 7, channels)

    def index_map(n, c, h, w):
        return n, c // block, h, w, c % block

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, dtype))
    with bb.function("main", [x]):
        with bb.dataflow():
            nchw = bb.emit(relax.op.permute_dims(x, [0, 3, 1, 2]))
            out = bb.emit_output(relax.op.layout_transform(nchw, index_map))
        bb.emit_func_output(out)
    before = bb.get()
    after = graph.layout_moves_as_reshapes()(before)
    ops = Counter(re.findall(r"R\.([a-z_.0-9]+)\(", after["main"].script(show_meta=False)))
    if copies:
        assert ops["permute_dims"] == ops["layout_transform"] == 1 and not ops["reshape"], ops
    else:
        assert ops["reshape"] == 1 and not ops["permute_dims"] and not ops["layout_transform"], ops
    data = np.random.default_rng(0).integers(-100, 100, shape).astype(dtype)
    results = []
    for mod in (before, after):
        ex = tvm.compile(relax.transform.LegalizeOps()(mod), target="llvm")
        results.append(relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(data)).numpy())
    assert results[0].shape == (1, channels // block, 5, 7, block)
    np.testing.assert_array_equal(results[1], results[0])


def test_aarch64_fully_connected_layer_accumulates_40_outputs_in_registers_and_stays_exact():
    """rasp4b / rasp5: a float32 row vector times a 448 x 1000 matrix plus bias (MobileNetV2-0.35's
    classifier) keeps 5 x 8 outputs in local accumulators over a reduction unrolled by 4; x86 and
    ARMv7 keep the generic schedule (8 outputs, the reduction rolled). The AArch64 schedule, built
    for this host, gives numpy's result."""
    from tvm import te, topi

    from edgefleet.compiler.schedules import schedule_func

    def dense_func():
        x = te.placeholder([tirx.IntImm("int64", 1), tirx.IntImm("int64", 448)], "float32", name="x")
        w = te.placeholder([tirx.IntImm("int64", 448), tirx.IntImm("int64", 1000)], "float32", name="w")
        b = te.placeholder([tirx.IntImm("int64", 1000)], "float32", name="b")
        return te.create_prim_func([x, w, b, topi.add(topi.matmul(x, w), b)])

    def scheduled(target: str):
        tgt = tvm_target(resolve_target(target))
        with tgt:
            sch = schedule_func(dense_func(), tgt)
        assert sch is not None
        return sch.mod

    for target in ("rasp4b", "rasp5"):
        script = scheduled(target)["main"].script()
        assert 'scope="local"' in script and re.search(r"in T\.unroll\((T\.int64\()?4\)", script), script
        assert re.search(r"in T\.unroll\((T\.int64\()?5\)", script) and re.search(
            r"in T\.vectorized\((T\.int64\()?8\)", script
        ), script
    for target in ("rasp3b", "x86_64"):
        script = scheduled(target)["main"].script()
        assert 'scope="local"' not in script and not re.search(r"in T\.unroll\((T\.int64\()?4\)", script), script

    rng = np.random.default_rng(0)
    x, w, b = rng.random((1, 448), np.float32), rng.random((448, 1000), np.float32), rng.random(1000, np.float32)
    out = tvm.runtime.tensor(np.zeros((1, 1000), np.float32))
    lib = tvm.compile(scheduled("rasp5"), target="llvm")
    lib["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(w), tvm.runtime.tensor(b), out)
    np.testing.assert_allclose(out.numpy(), x @ w + b, rtol=1e-5)


def _depthwise_model() -> onnx.ModelProto:
    """Depthwise 3x3 convolutions of 32 channels: stride 2 on 28 x 28, stride 1 on 14 x 14 (a 16 KiB
    padded plane per block), stride 1 on 28 x 28 after a 1x1 back up (a 57.6 KiB plane)."""
    rng = np.random.default_rng(7)
    nodes, inits = [], []
    for spec in [("x", 32, 32, 3, 2, "d1"), ("d1", 32, 32, 3, 1, "d2"), ("x", 32, 32, 3, 1, "d3")]:
        node, weights = _conv(rng, *spec[:5], groups=32, name=spec[5])
        nodes.append(node)
        inits += weights
    model = _onnx_model(
        [*nodes, helper.make_node("MaxPool", ["d3"], ["p"], kernel_shape=[2, 2], strides=[2, 2])]
        + [helper.make_node("Add", ["d2", "p"], ["y"])],
        "depthwise",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, 28, 28])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32, 14, 14])],
        inits,
    )
    return model


def test_x86_float_depthwise_pads_per_row_where_strided_or_beyond_l1_and_match_onnxruntime():
    """x86 float: a depthwise convolution's input is padded under its row loop (`_pad_rows`) for the
    stride-2 layer and the stride-1 one on 28 x 28, and under its channel-block loop for the 14 x 14
    stride-1 layer (a plane that stays in L1, `_pads_per_block`); rasp4b keeps one pad pass everywhere.
    The x86 build matches ONNX Runtime."""
    from tvm import s_tir

    from edgefleet.compiler.schedules import schedule_func

    model = _depthwise_model()
    pad_at = []
    for name in ("x86_64", "rasp4b"):
        tgt = tvm_target(resolve_target(name))
        for gv, func in fused_kernels(model, tgt).functions.items():
            if isinstance(func, tirx.PrimFunc) and "depthwise_conv2d_NCHWc" in gv.name_hint:
                sch = s_tir.Schedule(func)
                pad = sch.get(sch.get_sblock("data_pad"))
                rows = (int(pad.writes[0].source.shape[2]), int(pad.reads[0].source.shape[2]))
                scheduled = schedule_func(func, tgt)
                loops = scheduled.get_loops(scheduled.get_sblock("data_pad"))
                # The conv's loops the pad sits under: (b, c), (b, c, y) or none of them (a pass of its own).
                outer = tuple(str(scheduled.get(loop).loop_var) for loop in loops[:-3])
                pad_at.append((name, rows, {("b", "c"): "block", ("b", "c", "y"): "row"}.get(outer, "input")))
    # (padded rows, input rows): stride 2 on 28, stride 1 on 14, stride 1 on 28.
    assert sorted(pad_at) == [
        ("rasp4b", (16, 14), "input"),
        ("rasp4b", (30, 28), "input"),
        ("rasp4b", (30, 28), "input"),
        ("x86_64", (16, 14), "block"),
        ("x86_64", (30, 28), "row"),
        ("x86_64", (30, 28), "row"),
    ], pad_at
    _, actual, expected = _compile_and_compare(model)
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)


def test_x86_int8_depthwise_pads_per_row_where_strided_and_equals_litert_reference_kernels(tmp_path):
    """x86 int8 (the VNNI library of a full-integer MobileNetV2): each stride-2 depthwise convolution pads its
    input under its row loop, where the whole padded input went through L2 first (96 channels at 112 x 112:
    1.2 MB); stride-1 ones keep their one pass (per row, rows copied three times, they were slower).
    Outputs bit for bit LiteRT's reference kernels where the CPU has VNNI."""
    from tvm import s_tir

    path, lowered = _lowered_int8_mobilenetv2(tmp_path, VNNI_TARGET, 64)
    pad_at = []
    for gv, func in lowered.functions.items():
        if isinstance(func, tirx.PrimFunc) and "depthwise_conv2d_NCHWc" in gv.name_hint and "data_pad" in func.script():
            sch = s_tir.Schedule(func)
            padded = int(sch.get(sch.get_sblock("data_pad")).writes[0].source.shape[2])
            # The VNNI window form's update, tensorized (graph.depthwise_conv2d_nchwc_dot).
            rows = int(sch.get(sch.get_sblock("depthwise_conv2d_NCHWc_update_o")).writes[0].source.shape[2])
            loops = sch.get_loops(sch.get_sblock("data_pad"))
            outer = tuple(str(sch.get(loop).loop_var) for loop in loops[:-3])
            pad_at.append((padded - 2 > rows, "row" if outer == ("b", "c", "y") else "input"))
    assert {at for strided, at in pad_at if strided} == {"row"}, pad_at
    assert {at for strided, at in pad_at if not strided} == {"input"}, pad_at
    _assert_vnni_equals_litert_reference_kernels(lowered, path, 64, seed=11)


def test_x86_vnni_depthwise_outputs_are_written_shifted_to_uint8_for_their_convolution(tmp_path):
    """The VNNI library of a full-integer MobileNetV2: each depthwise convolution's output, read by its
    projection only, is written as uint8 x + 128 by the depthwise kernel (graph.dot_product_convs,
    `shift_in_producer`), so the projection's kernel reads it as it is, without a pass over its whole
    input first; the stem (the model input) and the expansions whose input a residual add reads too
    keep their shifted pad. Outputs bit for bit LiteRT's reference kernels where the CPU has VNNI."""
    path, lowered = _lowered_int8_mobilenetv2(tmp_path, VNNI_TARGET, 64)
    scripts = {gv.name_hint: f.script() for gv, f in lowered.functions_items() if isinstance(f, tirx.PrimFunc)}
    # A kernel's output is its last parameter: the dtype closing its `def` line.
    written = {
        n: re.findall(r'"(\w+)"\)', next(ln for ln in s.splitlines() if ln.startswith("def ")))[-1]
        for n, s in scripts.items()
    }
    depthwise = {n: d for n, d in written.items() if "depthwise_conv2d_NCHWc" in n}
    # The one int8 "depthwise" is the global average pool (a division), read by the classifier.
    assert sum(d == "uint8" for d in depthwise.values()) >= 10, depthwise
    assert all("floor_divide" in n for n, d in depthwise.items() if d != "uint8"), depthwise
    dense = {n: "data_pad" in s for n, s in scripts.items() if "conv2d_NCHWc_int8" in n}
    assert sum(not padded for padded in dense.values()) >= 17, dense  # the projections, the expansions after them
    assert sum(dense.values()) >= 2, dense  # the stem and the expansions a residual add also reads
    _assert_vnni_equals_litert_reference_kernels(lowered, path, 64, seed=21)


def test_avx512_rows_of_55_pair_two_output_blocks_in_ragged_tiles_of_7():
    """A row of 55 (SqueezeNet's first fire modules): 7 x 2 with a ragged last tile, where its 5-pixel
    divisor tile (10 accumulators) lost to 11 x 1; AVX2 keeps one block, rows of 56 and 13 keep their tiles."""
    from edgefleet.compiler.schedules import MAX_DENSE_PAIR_TILE, output_tile

    avx512, avx2 = (tvm_target(resolve_target(name)) for name in ("ml_c6i", "x86_64"))
    assert output_tile(avx512, 55, 16, True, MAX_DENSE_PAIR_TILE) == (7, 2)
    assert output_tile(avx512, 55, 16, False, MAX_DENSE_PAIR_TILE) == (11, 1)
    assert output_tile(avx2, 55, 16, True, MAX_DENSE_PAIR_TILE) == (5, 1)
    assert output_tile(avx512, 56, 16, True, MAX_DENSE_PAIR_TILE) == (7, 2)
    assert output_tile(avx512, 13, 16, True, MAX_DENSE_PAIR_TILE) == (7, 2)


def test_avx512_grouped_1x1_pairs_keep_their_accumulators_on_the_stack_and_match_onnxruntime():
    """ShuffleNet's grouped 1x1s (4 groups of 16 -> 64 channels, rows of 32 and 16): two output blocks
    per tile in balanced tiles of at most 7 pixels (16 -> 6, 6, 4), so the tile's accumulators stay
    below TVM's 1 KB stack limit; 8 x 2 made them a heap workspace zeroed by a call per tile, and the
    kernel 1.1-1.3x slower. The stride-2 grouped 3x3 keeps 8 x 2. Outputs as ONNX Runtime's."""
    from edgefleet.compiler.schedules import _pointwise_pair_tile, output_tile

    avx512 = tvm_target(resolve_target("ml_c6i"))
    assert _pointwise_pair_tile(avx512, 16, 16) == (6, 2)
    assert _pointwise_pair_tile(avx512, 32, 16) == (7, 2)
    assert output_tile(avx512, 16, 16, True) == (8, 2)
    model = _expand_down_model(4, (64, 256, 512), 32, groups=4)
    target = resolve_target("ml_c6i")
    with tvm_target(target):
        lowered = _optimize_pipeline(target, 0, KernelFallbacks(print))(from_onnx(model, keep_params_in_input=False))
    workspaces = {}
    for gv, func in lowered.functions.items():
        if isinstance(func, tirx.PrimFunc) and "group_conv2d" in gv.name_hint:
            lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=avx512)
            workspaces[gv.name_hint] = "TVMBackendAllocWorkspace" in lib.mod.inspect_source("asm")
    assert sorted(workspaces.values()) == [False, True], workspaces  # the 1x1 on the stack, the 3x3 not
    x = np.random.default_rng(4).random((1, 64, 32, 32), dtype=np.float32)
    vm = relax.VirtualMachine(tvm.compile(lowered, target=avx512, relax_pipeline=None), tvm.cpu())
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[
        0
    ]
    np.testing.assert_allclose(vm["main"](tvm.runtime.tensor(x)).numpy(), expected, rtol=1e-4, atol=1e-4)


def test_x86_vnni_int8_classifier_runs_vpdpbusd_on_seven_blocks_per_pass_and_equals_litert_reference_kernels(tmp_path):
    """The int8 classifier (1280 x 1000 fully connected) of the VNNI library runs on vpdpbusd
    (graph.vnni_dense, schedules.VnniMatmul): its outputs padded to 1008, 7 blocks of 16 per pass, each
    block's accumulator kept over the whole reduction. Before, it multiplied widened int8 weights with
    `vpmulld` in the generic schedule. Outputs bit for bit against LiteRT's reference kernels where the
    CPU has VNNI."""
    path, lowered = _lowered_int8_mobilenetv2(tmp_path, VNNI_TARGET, 32)
    kernels = _kernels(lowered)
    dense = [n for n in kernels if "matmul" in n]
    assert len(dense) == 1 and dense[0].startswith("fused_matmul_vnni") and kernels[dense[0]], sorted(kernels)
    script = lowered[dense[0]].script()
    assert "llvm.x86.avx512.vpdpbusd.512" in script and "T.unroll(T.int64(7))" in script, script
    _assert_vnni_equals_litert_reference_kernels(lowered, path, 32, seed=40)


def test_rasp5_int8_classifier_runs_sdot_on_raw_int8_weights():
    """For a dot-product target the int8 fully connected layer multiplies the raw int8 row by int8 weights
    packed for SDOT (graph.dot_product_dense, schedules.DenseDot: `matmul_dot`, tensorized; before, int32
    multiply-adds on int32 weights); rasp4b (no dot product) has no `matmul_dot`. Numerics:
    tests/cross/test_cross_int8_dot.py (the 56x56 model's classifier included)."""
    rasp5 = _int8_mobilenetv2_kernels("rasp5")
    dense = [n for n in rasp5 if "matmul" in n]
    assert len(dense) == 1 and dense[0].startswith("fused_matmul_dot"), sorted(rasp5)
    script = rasp5[dense[0]]
    assert "llvm.aarch64.neon.sdot" in script and "T.Buffer((T.int64(250), T.int64(" in script, script
    rasp4b = _int8_mobilenetv2_kernels("rasp4b")
    assert [n for n in rasp4b if "matmul" in n] and not [n for n in rasp4b if "matmul_dot" in n]


def _expand_down_model(seed: int, channels: tuple[int, int, int], width: int, groups: int = 1) -> onnx.ModelProto:
    """A 1x1 convolution (input "x", `channels` in -> mid) on rows of `width`, ReLU, then a 3x3 of stride 2
    (mid -> out, output "down"), both with `groups`; random weights."""
    rng = np.random.default_rng(seed)
    cin, mid, cout = channels
    expand, expand_w = _conv(rng, "x", cin, mid, 1, 1, groups=groups, name="expand")
    down, down_w = _conv(rng, "r", mid, cout, 3, 2, groups=groups, name="down")
    return _onnx_model(
        [expand, helper.make_node("Relu", ["expand"], ["r"]), down],
        "expand_down",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, width, width])],
        [helper.make_tensor_value_info("down", TensorProto.FLOAT, [1, cout, width // 2, width // 2])],
        expand_w + down_w,
    )


def _odd_output_blocks_model() -> onnx.ModelProto:
    """A 1x1 convolution to 144 channels (9 blocks) on rows of 14, ReLU, then a 3x3 of stride 2 to 48
    channels (3 blocks) on rows of 7."""
    return _expand_down_model(8, (24, 144, 48), 14)


def test_avx512_odd_output_blocks_pair_all_but_the_last_and_match_onnxruntime():
    """AVX-512: 9 output blocks on rows of 14 and 3 on rows of 7 take 7 x 2 tiles, the last block's
    tile with its second half predicated off (rows of 13 with 3 blocks keep one: `_dense_convs_model`);
    AVX2 and ARM keep one block. The AVX-512 build matches ONNX Runtime, the predicated half included."""
    from edgefleet.agent.variants import cpu_flags

    model = _odd_output_blocks_model()
    assert sorted(_conv_tiles("ml_c6i", model).values()) == [(7, 2), (7, 2)]
    for other in ("x86_64", "rasp4b"):
        assert all(blocks == 1 for _, blocks in _conv_tiles(other, model).values()), other
    if "avx512f" not in cpu_flags():
        pytest.skip("runs AVX-512 code: this CPU has no avx512f")
    _avx512_matches_onnxruntime(model, (1, 24, 14, 14))


def _classifier_model() -> onnx.ModelProto:
    """Global average pool of 64 channels, then a fully connected layer to 80 classes (more columns than
    the generic schedule keeps in one vector accumulator); random weights."""
    rng = np.random.default_rng(9)
    w = numpy_helper.from_array(rng.standard_normal((80, 64)).astype(np.float32), "fc_w")
    b = numpy_helper.from_array(rng.standard_normal(80).astype(np.float32), "fc_b")
    model = _onnx_model(
        [
            helper.make_node("GlobalAveragePool", ["x"], ["p"]),
            helper.make_node("Flatten", ["p"], ["f"]),
            helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], transB=1),
        ],
        "classifier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 7, 7])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 80])],
        [w, b],
    )
    return model


def test_x86_float_classifier_reads_weight_rows_in_order_and_matches_onnxruntime():
    """x86: the fully connected layer's reduction is its outermost loop (each weight row read once, in
    order, into the row of sums); rasp4b keeps its register-tiled schedule. The x86 build matches ONNX
    Runtime."""

    from edgefleet.compiler.schedules import schedule_func

    model = _classifier_model()
    outer = {}
    for name in ("x86_64", "rasp4b"):
        tgt = tvm_target(resolve_target(name))
        for gv, func in fused_kernels(model, tgt).functions.items():
            if isinstance(func, tirx.PrimFunc) and "matmul" in gv.name_hint:
                sch = schedule_func(func, tgt)
                loops = sch.get_loops(sch.get_sblock("matmul_update"))
                outer[name] = [str(sch.get(loop).loop_var) for loop in loops]
    # x86: row, reduction, column vectors; rasp4b: the parallel column strips first.
    assert outer["x86_64"] == ["i0", "k", "i1_0", "i1_1"], outer
    assert outer["rasp4b"][0] == "i0_i1_0_fused", outer
    _, actual, expected = _compile_and_compare(model)
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)


def test_x86_vnni_8_channel_block_rescales_two_pixels_per_register_and_equal_litert_reference_kernels(tmp_path):
    """MobileNetV2-0.35's 8-channel-block convolutions (vpdpbusd on 8 lanes), the residual ones too,
    requantize with the int32 high multiply (x86_intrin.RDHM_OP) on whole AVX-512 registers: the
    epilogue's pixel and channel loops fused, two pixels per 16 lanes (schedules._vectorize_epilogue).
    Before, the accumulator of an 8-channel block was widened to 64 bits for the rescale. Outputs bit
    for bit against LiteRT's reference kernels where the CPU has VNNI."""
    # At 32x32 a slice and a layout transform stay on the generic schedule.
    path, lowered = _lowered_int8_mobilenetv2(tmp_path, VNNI_TARGET, 32, width=0.35, convs_only=True)
    scripts = {gv.name_hint: f.script() for gv, f in lowered.functions_items() if isinstance(f, tirx.PrimFunc)}
    eight = {n: s for n, s in scripts.items() if "llvm.x86.avx512.vpdpbusd.256" in s}
    residual = [n for n in eight if n.count("rounding_doubling_high_mul") >= 2]
    assert len(eight) >= 3 and residual, sorted(scripts)
    assert not [n for n, s in eight.items() if not X86_HIGH_MUL.search(s) or WIDENED_ACC.search(s)], sorted(eight)
    assert all("T.vectorized(T.int64(16))" in s for s in eight.values()), sorted(eight)
    _assert_vnni_equals_litert_reference_kernels(lowered, path, 32, seed=50)


def test_rasp5_int8_convolutions_multiply_sdot_by_lane():
    """rasp5's SDOT convolutions whose input-channel blocks are 8 or 16 bytes (every stride-one one of
    the 56x56 int8 MobileNetV2) load each pixel's block once and take its 4-byte groups as lanes of the
    SDOT (`sdot v.4s, w.16b, a.4b[k]`, arm_intrin.sdot_lane_intrin): a Shuffle of the pixel's input
    vector. Before, every 4 input channels of every pixel were loaded and broadcast on their own
    (`ld1r`). Only the RGB convolution (3 channels padded to 4, stride 2) keeps the broadcast.
    Numerics: tests/cross/test_cross_int8_dot.py."""
    scripts = _int8_mobilenetv2_kernels("rasp5")
    dot = {n: s for n, s in scripts.items() if n.startswith("fused_conv2d_NCHWc_int8")}
    lane = [n for n, s in dot.items() if re.search(r"T\.Shuffle\(\[T\.reinterpret\(\"int32x[24]\"", s)]
    broadcast = [n for n, s in dot.items() if 'T.Broadcast(T.reinterpret("int32"' in s]
    assert len(lane) >= 20 and len(lane) + len(broadcast) == len(dot), (sorted(lane), sorted(broadcast))
    first_input = re.search(r"def \w+\(\w+: T\.Buffer\(\((.*?)\), \"int8\"\)", dot[broadcast[0]] if broadcast else "")
    assert len(broadcast) == 1 and first_input and first_input.group(1).endswith("T.int64(4)"), broadcast


def test_aarch64_int8_requantizations_after_a_slice_are_one_loop_nest():
    """On AArch64 too (rasp4b, rasp5), a requantization after a channel slice (the residual adds of
    the 24-channel stage, in NCHW) is one loop nest of its element-wise blocks (schedules._inline_element_wise),
    not one parallel loop and one int32 / int64 buffer per operation (about 40 of them), also where it
    writes int16, the zero-point-corrected input of rasp4b's int16 convolutions. Numerics:
    tests/cross/test_cross_int8_dot.py."""
    for target in ("rasp4b", "rasp5"):
        scripts = _int8_mobilenetv2_kernels(target)
        sliced = [n for n in scripts if n.startswith("fused_strided_slice")]
        blocks = {
            n: sum(line.lstrip().startswith("with T.sblock(") for line in scripts[n].splitlines()) for n in sliced
        }
        assert blocks and set(blocks.values()) == {1}, (target, blocks)


@pytest.mark.parametrize(("lo", "hi"), [(-128, 127), (-128, 90), (-100, 127)])
def test_aarch64_int8_requantization_narrows_with_saturation_and_stays_exact(lo, hi):
    """graph.saturating_narrowings: the int8 requantization's last step `int8(clip(x - 128, lo, hi))`
    after a rounding shift by one or more bits, on whole 16-channel blocks, becomes the clamps of AArch64's
    saturating narrowings (`sqxtn`, `sqxtun`) and an `eor`, without the int32 `smax` / `smin` where [lo,
    hi] is all of int8; equal to the clip for every such shift's output (|x| <= 2^30, built for this host).
    A shift by 0 bits somewhere (x might be near the int32 limits, where x - 128 wraps) or another zero
    point keeps the clip."""
    from tvm import te

    shape = (1, 2, 3, 4, 16)

    def requantization(counts: np.ndarray, zero: int = -128) -> str:
        bb = relax.BlockBuilder()
        x = relax.Var("x", relax.TensorType(shape, "int32"))
        with bb.function("main", [x]):
            with bb.dataflow():
                shifted = bb.emit(bb.call_te(graph.srshl, x, relax.const(counts, "int32"), primfunc_name_hint="srshl"))
                added = bb.emit(relax.op.add(shifted, relax.const(zero, "int32")))
                low = bb.emit(relax.op.maximum(added, relax.const(lo, "int32")))
                clipped = bb.emit(relax.op.minimum(low, relax.const(hi, "int32")))
                out = bb.emit_output(relax.op.astype(clipped, "int8"))
            bb.emit_func_output(out)
        return graph.saturating_narrowings()(bb.get()).script(show_meta=False)

    counts = -np.arange(1, 17, dtype=np.int32).reshape(1, 1, 1, 1, 16)
    assert "saturating_int8" in requantization(counts)
    for kept in (requantization(np.where(counts == -16, 0, counts).astype(np.int32)), requantization(counts, -3)):
        assert "saturating_int8" not in kept and "R.minimum" in kept

    x = te.placeholder(shape, "int32", name="x")
    kernel = te.create_prim_func([x, graph.saturating_int8(x, lo, hi)])
    edges = [-(2**30), 2**30, -32769, -32768, 32767, 32768, -1, 0, 1, 127, 128, 255, 256, 383, 384, 133]
    data = np.random.default_rng(0).integers(-300, 600, shape).astype(np.int32)
    data.reshape(-1)[: len(edges)] = edges
    out = tvm.runtime.tensor(np.zeros(shape, np.int8))
    tvm.compile(kernel, target="llvm")(tvm.runtime.tensor(data), out)
    np.testing.assert_array_equal(out.numpy(), np.clip(data.astype(np.int64) - 128, lo, hi).astype(np.int8))

    sch = tvm.s_tir.Schedule(kernel)
    sch.vectorize(sch.get_loops(sch.get_sblock("saturating_int8"))[-1])
    asm = tvm.compile(sch.mod, target=tvm_target(resolve_target("rasp5"))).mod.inspect_source("asm")
    assert "sqxtun" in asm and "sqxtn" in asm, asm
    if (lo, hi) == (-128, 127):
        assert not re.search(r"\bsm(ax|in)\b", asm), asm


@pytest.mark.parametrize("level", ["x86-64-v4", "x86-64-v3"])
def test_x86_rescale_high_multiply_of_a_biased_accumulator_folds_the_bias_into_its_nudge(level):
    """x86_rounding_doubling_high_mul(x + b, q), the form of every requantized convolution's epilogue,
    equals ((x + b) q + 2^30) >> 31 computed in int64 wherever x + b fits int32, on 16 and 8 lanes
    (x86_intrin._lower_rdhm: x q + (b q + 2^30)). In an unrolled loop over pixels the bias's products
    are computed once and no int32 add of the bias is left (before: one vpaddd per vector)."""
    from tvm import te

    rng = np.random.default_rng(7)
    target = tvm_target(resolve_target(json.dumps({"kind": "llvm", **ISA_LEVELS[level].tvm_target})))
    lanes = 16 if level == "x86-64-v4" else 8
    pixels = 8
    b = rng.integers(-(2**20), 2**20, (1, lanes)).astype(np.int32)
    q = rng.integers(2**30, 2**31, (1, 1, lanes)).astype(np.int32)
    x = rng.integers(-(2**31) + 2**20, 2**31 - 2**20, (512, pixels, lanes)).astype(np.int32)
    x[0, :4] = [[2**31 - 1 - 2**20], [-(2**31) + 2**20], [0], [-1]]
    xs = te.placeholder(x.shape, "int32", "x")
    bs, qs = te.placeholder(b.shape, "int32", "b"), te.placeholder(q.shape, "int32", "q")
    biased = te.compute(x.shape, lambda i, p, c: xs[i, p, c] + bs[0, c], name="biased")
    out = graph.x86_rounding_doubling_high_mul(biased, qs)
    sch = tvm.s_tir.Schedule(te.create_prim_func([xs, bs, qs, out]))
    sch.compute_inline(sch.get_sblock("biased"))
    _, pixel, lane = sch.get_loops(sch.get_sblock(out.op.name))
    sch.unroll(pixel)
    sch.vectorize(lane)
    lib = tvm.compile(sch.mod, target=target)
    result = tvm.runtime.tensor(np.zeros(x.shape, np.int32))
    lib["main"](*(tvm.runtime.tensor(v) for v in (x, b, q)), result)
    expected = (((x.astype(np.int64) + b) * q + (1 << 30)) >> 31).astype(np.int32)
    np.testing.assert_array_equal(result.numpy(), expected, err_msg=level)
    asm = lib.mod.inspect_source("asm")
    assert asm.count("vpmuldq") <= 2 * pixels + 2, asm
    assert "vpaddd" not in asm, asm


def test_aarch64_int8_depthwise_tiles_divide_the_row():
    """AArch64 integer depthwise convolutions (rasp4b, rasp5) take register tiles of 4 or 2 pixels,
    whichever divides the row, else the whole row (schedules._depthwise_tile): on the 56x56 int8
    MobileNetV2 rows of 28 -> 4, 14 -> 2, 7 -> 7. `register_tile`'s 6 pixels left a ragged last tile
    (a predicate in the unrolled body) on rows of 14 and 7, and 6 x 16 channels' accumulators do not fit
    beside the taps' weights. Numerics: tests/cross/test_cross_int8_dot.py."""
    tile = re.compile(r"v_x = T\.axis\.spatial\(T\.int64\((\d+)\), x_0 \* T\.int64\((\d+)\) \+ x_1\)")
    for target in ("rasp4b", "rasp5"):
        scripts = _int8_mobilenetv2_kernels(target)
        depthwise = {n: s for n, s in scripts.items() if n.startswith("fused_depthwise")}
        tiles = {tuple(map(int, m)) for s in depthwise.values() for m in tile.findall(s)}
        assert {(28, 4), (14, 2), (7, 7)} <= tiles, (target, tiles)
        assert all(t == next((d for d in (4, 2) if row % d == 0), row) for row, t in tiles), (target, tiles)
        assert not [n for n, s in depthwise.items() if "T.where" in s], target


def test_rasp5_sdot_convolutions_start_their_sums_at_the_bias_minus_the_zero_point_correction():
    """rasp5's SDOT convolutions start each sum at one constant per output channel, the bias minus
    zx sum(w) (graph.dot_product_convs, graph.sqrdmulh_rescales), where they started at 0 and the
    epilogue subtracted the correction and added the bias before the rescale (an `add` per 4 outputs
    after LLVM had folded the two). Numerics: tests/cross/test_cross_int8_dot.py."""
    scripts = _int8_mobilenetv2_kernels("rasp5")
    dot = {n: s for n, s in scripts.items() if n.startswith("fused_conv2d_NCHWc_int8")}
    assert len(dot) >= 15, sorted(scripts)
    assert all(re.match(r"fused_conv2d_NCHWc_int8\d*_sqrdmulh", n) for n in dot), sorted(dot)
    started = [n for n, s in dot.items() if re.search(r"conv2d_NCHWc_int8\w*\[[^]]*\] = param_\d+\[", s)]
    assert len(started) == len(dot), sorted(set(dot) - set(started))


def test_aarch64_int16_and_depthwise_convolutions_start_their_sums_at_the_bias():
    """On AArch64 the rescaled int16 convolutions (rasp4b's by-lane dense ones) and the depthwise ones
    (rasp4b and rasp5) start each sum at their channel's bias (graph.sqrdmulh_rescales), where they
    started at 0 and the epilogue added the bias before SQRDMULH. Numerics: tests/cross/test_cross_int8_dot.py."""
    started = re.compile(
        r"_intermediate\[[^]]*\] = param_\d+\[T\.int64\(0\), v_\w+, T\.int64\(0\), T\.int64\(0\), v_\w+\]"
    )
    dense, depthwise = "fused_conv2d_NCHWc", "fused_depthwise_conv2d_NCHWc"
    for target, prefixes in (("rasp4b", (dense, depthwise)), ("rasp5", (depthwise,))):
        scripts = _int8_mobilenetv2_kernels(target)
        for prefix in prefixes:
            rescaled = [n for n in scripts if n.startswith(prefix) and "llvm.aarch64.neon.sqrdmulh" in scripts[n]]
            assert len(rescaled) >= 8, (target, prefix, sorted(scripts))
            # No add of the bias left before the rescale: the kernel's name goes from the convolution to it.
            assert all(re.match(rf"{prefix}\d*_sqrdmulh", n) for n in rescaled), (target, sorted(rescaled))
            assert all(started.search(scripts[n]) for n in rescaled), (target, prefix)


def test_rasp4b_int8_classifier_multiplies_int16_operands_in_registers():
    """Without the dot product (rasp4b) the int8 fully connected layer multiplies the row `int16(x) - zx`
    by int16 weights into int32 (graph.int16_dense; before, int32 multiply-adds on int32 weights), 5 x 8
    outputs per pass in local accumulators (schedules._row_times_matrix): `smlal` on 8 lanes. Numerics:
    tests/cross/test_cross_int8_dot.py (the 56x56 model's classifier included)."""
    rasp4b = _int8_mobilenetv2_kernels("rasp4b")
    dense = [n for n in rasp4b if "matmul" in n]
    assert len(dense) == 1, sorted(rasp4b)
    script = rasp4b[dense[0]]
    assert re.search(r'T\.Buffer\(\(T\.int64\(1\), T\.int64\(1280\)\), "int16"\)', script), script[:600]
    assert 'T.Buffer((T.int64(1280), T.int64(1000)), "int16")' in script, script[:600]
    assert 'scope="local"' in script and "for j_1 in T.unroll(T.int64(5))" in script, script


def test_aarch64_int8_requantization_to_a_relu_output_drops_the_rounding_divisions_sign_fixup():
    """graph.saturating_narrowings: before a narrowing `int8(clip(x - 128, lo, hi))` the rounding division
    x = SRSHL(v - [v < 0], -e), e >= 1 (tflite_quant.py's RoundingDivideByPOT, ties away from zero), becomes
    SRSHL(v, -e): the fix-up moves only negative v, whose shifts are <= 0 either way, and every x <= 0
    narrows to lo. Kept for another zero point. The integers checked over v at and around every tie."""
    shape = (1, 2, 3, 4, 16)
    counts = -np.arange(1, 17, dtype=np.int32).reshape(1, 1, 1, 1, 16)

    def requantization(zero: int, lo: int) -> str:
        bb = relax.BlockBuilder()
        v = relax.Var("v", relax.TensorType(shape, "int32"))
        with bb.function("main", [v]):
            with bb.dataflow():
                negative = bb.emit(relax.op.right_shift(v, relax.const(31, "int32")))
                w = bb.emit(relax.op.add(v, negative))
                shifted = bb.emit(bb.call_te(graph.srshl, w, relax.const(counts, "int32"), primfunc_name_hint="srshl"))
                added = bb.emit(relax.op.add(shifted, relax.const(zero, "int32")))
                low = bb.emit(relax.op.maximum(added, relax.const(lo, "int32")))
                clipped = bb.emit(relax.op.minimum(low, relax.const(127, "int32")))
                out = bb.emit_output(relax.op.astype(clipped, "int8"))
            bb.emit_func_output(out)
        return graph.saturating_narrowings()(bb.get()).script(show_meta=False)

    assert "R.right_shift" not in requantization(-128, -128) and "saturating_int8" in requantization(-128, -128)
    assert "R.right_shift" in requantization(-3, -128)

    e = np.arange(1, 32, dtype=np.int64)[:, None]
    ties = -(np.arange(0, 4, dtype=np.int64)[None, :] * 2**e + 2 ** (e - 1))
    v = np.concatenate([(ties + d).reshape(-1) for d in (-2, -1, 0, 1, 2)] + [np.arange(-600, 600)])
    v = np.clip(v, -(2**31) + 1, 2**31 - 1)
    for bits in range(1, 32):
        fixed = (v - (v < 0) + 2 ** (bits - 1)) >> bits
        plain = (v + 2 ** (bits - 1)) >> bits
        for lo in (-128, -100, 0):
            np.testing.assert_array_equal(np.clip(fixed - 128, lo, 127), np.clip(plain - 128, lo, 127))


@pytest.mark.parametrize("level", ["x86-64-v4-vnni", "x86-64-v4", "rasp5", "rasp4b"])
def test_an_int8_nhwc_input_reaches_its_first_convolution_in_one_kernel(tmp_path, level):
    """A full-integer TFLite image (NHWC int8) goes to the first convolution through one kernel: the
    transpose and the NCHW3c transform are a view (graph.layout_moves_as_reshapes), so only the pass
    that pads 3 channels to 4 (VNNI, SDOT) or shifts by the zero point into int16 is left (before:
    transpose, layout transform, then that pass). The VNNI library equals LiteRT's reference kernels."""
    target = json.dumps({"kind": "llvm", **ISA_LEVELS[level].tvm_target}) if level in ISA_LEVELS else level
    path, lowered = _lowered_int8_mobilenetv2(tmp_path, target, 64, width=0.35)
    # The lowered main calls each kernel by name on its own line, in order.
    calls = re.findall(r"^\s+(\w+)\(", lowered["main"].script(show_meta=False), re.MULTILINE)
    first_conv = next(i for i, name in enumerate(calls) if "conv2d" in name)
    assert first_conv == 1 and "transpose" not in calls[0] and "layout_transform" not in calls[0], calls[:3]
    if level == "x86-64-v4-vnni":
        _assert_vnni_equals_litert_reference_kernels(lowered, path, 64, seed=7)


def test_rasp4b_int16_shift_of_an_nhwc_input_is_vectorized_along_the_row(tmp_path):
    """rasp4b's one kernel in front of the first convolution (the int8 image minus its zero point, in int16)
    runs whole 16-lane vectors along a row of pixels x channels (schedules._short_last_axis_into_row),
    not 3 lanes per pixel."""
    _, lowered = _lowered_int8_mobilenetv2(tmp_path, "rasp4b", 64, width=0.35)
    calls = re.findall(r"^\s+(\w+)\(", lowered["main"].script(show_meta=False), re.MULTILINE)
    shift = lowered[calls[0]].script()
    assert "T.vectorized(T.int64(16))" in shift and "T.vectorized(T.int64(3))" not in shift, shift


@pytest.mark.parametrize(("lo", "hi"), [(-128, 127), (-128, 90), (-100, 127)])
def test_aarch64_relu_output_read_as_int16_input_is_one_unsigned_clamp(lo, hi):
    """graph.saturating_narrowings: a ReLU output `int8(clip(x - 128, lo, hi))` read back as an int16
    convolution's input minus its zero point, `int16(...) - (-128)`, becomes `saturating_int16`: clip(x,
    lo + 128, hi + 128), `sqxtun` and `umin` on AArch64 where the sign flip and the widening that added
    128 back took an `eor` and a `saddw` per 8 outputs. Equal to the int8 round trip for every int32 x
    (built for this host); another zero point keeps the round trip. In the int8 MobileNetV2 for rasp4b
    every expansion and depthwise convolution with a ReLU6 output writes it."""
    from tvm import te

    shape = (1, 2, 3, 4, 16)

    def widened_input(zero: int) -> str:
        bb = relax.BlockBuilder()
        x = relax.Var("x", relax.TensorType(shape, "int32"))
        counts = relax.const(np.full((1, 1, 1, 1, 16), -3, np.int32), "int32")
        with bb.function("main", [x]):
            with bb.dataflow():
                shifted = bb.emit(bb.call_te(graph.srshl, x, counts, primfunc_name_hint="srshl"))
                added = bb.emit(relax.op.add(shifted, relax.const(-128, "int32")))
                low = bb.emit(relax.op.maximum(added, relax.const(lo, "int32")))
                clipped = bb.emit(relax.op.minimum(low, relax.const(hi, "int32")))
                narrowed = bb.emit(relax.op.astype(clipped, "int8"))
                widened = bb.emit(relax.op.astype(narrowed, "int16"))
                out = bb.emit_output(relax.op.subtract(widened, relax.const(zero, "int16")))
            bb.emit_func_output(out)
        return graph.saturating_narrowings()(bb.get()).script(show_meta=False)

    folded = widened_input(-128)
    assert "saturating_int16" in folded and "saturating_int8" not in folded and "R.subtract" not in folded, folded
    kept = widened_input(-3)
    assert "saturating_int16" not in kept and "saturating_int8" in kept and "R.subtract" in kept, kept

    x = te.placeholder(shape, "int32", name="x")
    kernel = te.create_prim_func([x, graph.saturating_int16(x, lo, hi)])
    edges = [-(2**31), 2**31 - 1, -65536, 65535, 65536, -32769, 32768, -1, 0, 1, 127, 128, 255, 256, 28, 218]
    data = np.random.default_rng(0).integers(-300, 600, shape).astype(np.int32)
    data.reshape(-1)[: len(edges)] = edges
    out = tvm.runtime.tensor(np.zeros(shape, np.int16))
    tvm.compile(kernel, target="llvm")(tvm.runtime.tensor(data), out)
    round_trip = np.clip(data.astype(np.int64) - 128, lo, hi).astype(np.int8).astype(np.int16) + 128
    np.testing.assert_array_equal(out.numpy(), round_trip)

    sch = tvm.s_tir.Schedule(kernel)
    sch.vectorize(sch.get_loops(sch.get_sblock("saturating_int16"))[-1])
    asm = tvm.compile(sch.mod, target=tvm_target(resolve_target("rasp4b"))).mod.inspect_source("asm")
    assert "sqxtun" in asm and "umin" in asm and not re.search(r"\b(eor|saddw)\s+v", asm), asm

    if (lo, hi) == (-128, 127):
        scripts = _int8_mobilenetv2_kernels("rasp4b")
        widening = [n for n in scripts if n.endswith(tuple(f"saturating_int16{i}" for i in ("", *range(20))))]
        assert [n for n in widening if n.startswith("fused_depthwise")], sorted(scripts)
        assert [n for n in widening if n.startswith("fused_conv2d")], sorted(scripts)


def test_x86_int8_requantization_to_a_relu_output_drops_the_rounding_divisions_sign_fixup(tmp_path):
    """graph.relu_rounding_divisions: on x86 a requantization that narrows to a ReLU output (zero point
    -128, clip floor at or above it: MobileNetV2's depthwise convolutions and expansions) rounds as
    `((v >> p) + 1) >> 1`, without tflite_quant.py's sign fix-up `v + (v >> 31)`; the projections keep it.
    The VNNI library equals LiteRT's reference kernels on two inputs, and both forms' integers narrow
    alike at and around every negative tie for shifts of 1-31 bits."""
    path, lowered = _lowered_int8_mobilenetv2(tmp_path, VNNI_TARGET, 64, width=0.35)
    scripts = [(gv.name_hint, f.script()) for gv, f in lowered.functions_items() if isinstance(f, tirx.PrimFunc)]
    rescaled = [(n, s) for n, s in scripts if "edgefleet_x86_rounding_doubling_high_mul" in s]
    depthwise = [n for n, s in rescaled if n.startswith("fused_depthwise")]
    assert len(depthwise) >= 10 and not [n for n, s in rescaled if n in depthwise and ">> 31" in s], depthwise
    assert [n for n, s in rescaled if n.startswith("fused_conv2d") and ">> 31" in s]  # the projections
    _assert_vnni_equals_litert_reference_kernels(lowered, path, 64, seed=11)

    e = np.arange(1, 32, dtype=np.int64)[:, None]
    ties = -(np.arange(0, 4, dtype=np.int64)[None, :] * 2**e + 2 ** (e - 1))
    v = np.concatenate([(ties + d).reshape(-1) for d in (-2, -1, 0, 1, 2)] + [np.arange(-600, 600)])
    v = np.clip(v, -(2**31) + 1, 2**31 - 1)
    for bits in range(1, 32):
        fixed = (((v + (v >> 31)) >> (bits - 1)) + 1) >> 1
        plain = ((v >> (bits - 1)) + 1) >> 1
        for lo in (-128, -100, 0):
            np.testing.assert_array_equal(np.clip(fixed - 128, lo, 127), np.clip(plain - 128, lo, 127))


def test_x86_residual_add_input_rescales_run_on_int32_lanes(tmp_path):
    """graph.sqrdmulh_rescales on x86: a residual add's input rescale, `(int64(t) - z) << 20` times q in
    64-bit lanes (tflite_quant.py, TFLite's reference Add), takes the difference shifted in int32 (|t - z|
    <= 255: it fits) into `x86_rounding_doubling_high_mul`, the same integers; the VNNI library equals
    LiteRT's reference kernels on two inputs. (The adds after a channel slice run in NCHW, whose last
    axis is not whole registers: they keep the 64-bit product, as their other rescales.)"""
    path, lowered = _lowered_int8_mobilenetv2(tmp_path, VNNI_TARGET, 64, width=0.35)
    scripts = {gv.name_hint: f.script() for gv, f in lowered.functions_items() if isinstance(f, tirx.PrimFunc)}
    residual = [n for n, s in scripts.items() if n.startswith("fused_conv2d") and ") * 1048576, " in s]
    assert len(residual) >= 5 and all("edgefleet_x86_rounding_doubling_high_mul" in scripts[n] for n in residual)
    assert not [n for n, s in scripts.items() if n.startswith("fused_conv2d") and "T.int64(1048576)" in s]
    _assert_vnni_equals_litert_reference_kernels(lowered, path, 64, seed=13)


def test_the_x86_rescale_operator_prints_by_its_name_without_a_warning(capfd):
    """compiler/x86_intrin.py's rounding doubling high multiply prints as `T.<name>(...)`: without a
    printer name TVM logged a warning at every print of a call (1526 lines in one `edgefleet compile` of
    an int8 MobileNetV2-0.35 for x86_64)."""
    from edgefleet.compiler import x86_intrin

    a = tirx.Var("a", "int32")
    script = tirx.PrimFunc([a], tirx.Evaluate(tirx.call_intrin("int32", x86_intrin.RDHM_OP, a, a))).script()
    assert "T.edgefleet_x86_rounding_doubling_high_mul(a, a)" in script, script
    assert "TScriptPrinterName" not in capfd.readouterr().err


def _padded_projections_model() -> onnx.ModelProto:
    """MobileNetV2's 24-channel stage: a 1x1 projection 32 -> 24, a residual unit (expansion 24 -> 48,
    ReLU, projection 48 -> 24, add) and the next expansion 24 -> 48."""
    rng = np.random.default_rng(11)
    nodes, inits = [], []
    for x, cin, cout, name in (
        ("data", 32, 24, "p1"),
        ("p1", 24, 48, "e1"),
        ("e1_relu", 48, 24, "p2"),
        ("sum", 24, 48, "e2"),
    ):
        conv, weights = _conv(rng, x, cin, cout, 1, 1, name=name)
        nodes.append(conv)
        inits += weights
        if name == "e1":
            nodes.append(helper.make_node("Relu", ["e1"], ["e1_relu"]))
        if name == "p2":
            nodes.append(helper.make_node("Add", ["p2", "p1"], ["sum"]))
    return _onnx_model(
        nodes,
        "padded_projections",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 32, 10, 10])],
        [helper.make_tensor_value_info("e2", TensorProto.FLOAT, [1, 48, 10, 10])],
        inits,
    )


def test_x86_float_padded_projections_compact_into_8_channel_blocks_in_one_pass_and_match_onnxruntime():
    """x86: each 24-channel projection keeps its 32 padded filters (two 16-lane blocks) and leaves through
    one channel permutation into NCHW8c, with its bias and the residual add fused there: no transform to
    NCHW, slice and transform back between the stage's convolutions (six kernel calls in MobileNetV2)."""
    model = _padded_projections_model()
    lowered, actual, expected = _compile_and_compare(model)
    calls = re.findall(r"^\s+(\w+)\(", lowered["main"].script(show_meta=False), re.M)
    permutes = [c for c in calls if "channel_permute" in c]
    assert len(permutes) == 2 and any(c.count("_add") == 2 for c in permutes), Counter(calls)
    assert not any("strided_slice" in c for c in calls), Counter(calls)
    # Into the first convolution's blocks and out of the last one's only.
    assert sum("layout_transform" in c for c in calls) == 2, Counter(calls)
    assert expected.std() > 0.1
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


def _operand_counts(script: str, op: str) -> list[int]:
    """The number of operands of every call of `op` in a TVMScript `script`."""
    counts = []
    for call in re.finditer(re.escape(op) + r"\(", script):
        depth, commas = 1, 0
        for ch in script[call.end() :]:
            depth += (ch in "([") - (ch in ")]")
            if depth == 0:
                break
            commas += ch == "," and depth == 1
        counts.append(commas + 1)
    return counts


def test_x86_int8_relu_output_requantization_is_one_high_multiply_shifted_on_its_64_bit_sum(tmp_path):
    """graph.relu_rounding_divisions on x86: before a ReLU output's narrowing the rounding division
    `((v >> p) + 1) >> 1` of v = x86_rounding_doubling_high_mul(a, q) is `(v + 2^p) >> (p + 1)`, the 2^p
    added as 2^(p+31) in the high multiply's 64-bit nudge (a third operand). On AVX-512 the shift by p + 1
    is done on the 64-bit sum (a fourth operand, vpsravq) and the output's - 128 is in the nudge too, so
    the requantization of 16 outputs is vpmuldq and vpsravq on even and odd lanes, one masked move and a
    vpmovsdb (before: a vpsravd, a vpmaxsd, a vpmovusdb and a vpxor more). The identities hold at and
    around ties, negatives and the int32 ends; the operator equals the int64 sum on 16, 8 and 3 lanes with
    and without the shift; the VNNI library of MobileNetV2-0.35 has the 4-operand form in every ReLU
    output's kernel (the projections keep `+ 1 >> 1`) and equals LiteRT's reference kernels on two inputs."""
    from tvm import te

    for p in range(31):
        ties = np.arange(-4, 4, dtype=np.int64) * 2**p + (2**p // 2 if p else 0)
        v = np.concatenate([ties + d for d in (-2, -1, 0, 1, 2)] + [np.arange(-600, 600), [-(2**31), 2**31 - 1 - 2**p]])
        v = np.clip(v, -(2**31), 2**31 - 1 - 2**p)
        np.testing.assert_array_equal(((v >> p) + 1) >> 1, (v + 2**p) >> (p + 1), err_msg=str(p))
        # v = S >> 31 for every S = a q + 2^30 in [v 2^31, (v + 1) 2^31): the division, - 128, from S at once
        for low_bits in (0, 1, 2**30, 2**31 - 1):
            sums = v * 2**31 + low_bits
            offset = 2**p - 2 ** (p + 8)
            expected = (((v >> p) + 1) >> 1) - 128
            if p <= 22:
                np.testing.assert_array_equal((sums + offset * 2**31) >> (p + 32), expected, err_msg=str(p))

    rng = np.random.default_rng(5)
    for level, lanes in (("x86-64-v4", 16), ("x86-64-v3", 8), ("x86-64-v4", 3)):
        target = tvm_target(resolve_target(json.dumps({"kind": "llvm", **ISA_LEVELS[level].tvm_target})))
        q = rng.integers(2**30, 2**31, (1, lanes)).astype(np.int32)
        c = (1 << rng.integers(0, 21, (1, lanes))).astype(np.int32)
        shift = rng.integers(1, 24, (1, lanes)).astype(np.int32)
        x = rng.integers(-(2**31) + 2**21, 2**31 - 2**21, (256, lanes)).astype(np.int32)
        x[0, :2], x[1, :2] = 2**31 - 1 - 2**21, -(2**31) + 2**21
        wide = x.astype(np.int64) * q + (1 << 30) + (c.astype(np.int64) << 31)
        for operands, expected in (((c,), wide >> 31), ((c, shift), wide >> (31 + shift.astype(np.int64)))):
            xs, qs, *others = (te.placeholder(v.shape, "int32", f"v{i}") for i, v in enumerate((x, q, *operands)))
            out = graph.x86_rounding_doubling_high_mul(xs, qs, *others)
            sch = tvm.s_tir.Schedule(te.create_prim_func([xs, qs, *others, out]))
            sch.vectorize(sch.get_loops(sch.get_sblock(out.op.name))[-1])
            lib = tvm.compile(sch.mod, target=target)
            result = tvm.runtime.tensor(np.zeros(x.shape, np.int32))
            lib["main"](*(tvm.runtime.tensor(v) for v in (x, q, *operands)), result)
            message = f"{level} {lanes} lanes, {len(operands) + 2} operands"
            np.testing.assert_array_equal(result.numpy(), expected.astype(np.int32), err_msg=message)

    path, lowered = _lowered_int8_mobilenetv2(tmp_path, VNNI_TARGET, 64, width=0.35)
    scripts = {gv.name_hint: f.script() for gv, f in lowered.functions_items() if isinstance(f, tirx.PrimFunc)}
    op = "edgefleet_x86_rounding_doubling_high_mul"
    relu = [n for n, s in scripts.items() if re.search(r'T.Cast\("int8", T.min\(T.max\(T.' + op, s)]
    assert len(relu) >= 20 and not [n for n in relu if "+ 1 >> 1" in scripts[n]], relu
    assert all(set(_operand_counts(scripts[n], op)) == {4} for n in relu), relu
    assert [n for n, s in scripts.items() if n.startswith("fused_conv2d") and "+ 1 >> 1" in s]  # the projections
    target = tvm_target(resolve_target(VNNI_TARGET))
    # A kernel's output is its last parameter: the dtype closing its `def` line (an expansion's: int8).
    written = {
        n: re.findall(r'"(\w+)"\)', next(ln for ln in scripts[n].splitlines() if ln.startswith("def ")))[-1]
        for n in relu
    }
    expansion = next(n for n in relu if n.startswith("fused_conv2d_NCHWc_int8") and written[n] == "int8")
    module = tvm.IRModule({"main": lowered[expansion].with_attr("global_symbol", "main")})
    asm = tvm.compile(module, target=target).mod.inspect_source("asm")
    assert "vpsravq" in asm and "vpmovsdb" in asm, asm
    assert not re.search(r"vpsravd|vpmaxsd|vpmovusdb", asm), asm
    _assert_vnni_equals_litert_reference_kernels(lowered, path, 64, seed=17)


def _large_and_small_depthwise_model() -> onnx.ModelProto:
    """Depthwise 3x3 convolutions of 32 channels: stride 1 on 112 x 112 (3.6 M multiply-adds, between
    PARALLEL_MIN_WORK / DEPTHWISE_WORK_WEIGHT and PARALLEL_MIN_WORK), then stride 8 to 14 x 14 (56 k)."""
    rng = np.random.default_rng(8)
    large, large_w = _conv(rng, "x", 32, 32, 3, 1, groups=32, name="large")
    small, small_w = _conv(rng, "large", 32, 32, 3, 8, groups=32, name="small")
    return _onnx_model(
        [large, small],
        "depthwise_large_small",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, 112, 112])],
        [helper.make_tensor_value_info("small", TensorProto.FLOAT, [1, 32, 14, 14])],
        large_w + small_w,
    )


@pytest.mark.parametrize("target_name", ["x86_64", "rasp4b"])
def test_an_x86_float_depthwise_runs_parallel_from_its_weighted_threshold_in_halves_of_its_rows(target_name):
    """x86 float depthwise convolutions weigh their multiply-adds DEPTHWISE_WORK_WEIGHT times against
    PARALLEL_MIN_WORK (their time is memory): the 3.6 M one runs in parallel over its channel blocks and
    two halves of its rows (the rows stay an inner loop: fused into the parallel loop they cost a tenth
    at one thread), the 56 k one serial. rasp4b keeps both parallel. The x86 build matches ONNX Runtime."""
    from tvm import s_tir

    from edgefleet.compiler.schedules import DEPTHWISE_WORK_WEIGHT, PARALLEL_MIN_WORK, block_work, schedule_func

    model = _large_and_small_depthwise_model()
    tgt = tvm_target(resolve_target(target_name))
    parallel = {}
    for gv, func in fused_kernels(model, tgt).functions.items():
        if isinstance(func, tirx.PrimFunc) and "depthwise_conv2d_NCHWc" in gv.name_hint:
            sch = s_tir.Schedule(func)
            conv = next(b for b in sch.get_child_blocks(sch.get_sblock("root")) if "depthwise" in sch.get(b).name_hint)
            chunks, rows = (int(d) for d in sch.get(conv).writes[0].source.shape[1:3])
            extent = re.search(r"T\.parallel\((?:T\.int64\()?(\d+)", schedule_func(func, tgt).mod["main"].script())
            parallel[block_work(sch, conv)] = (int(extent.group(1)) if extent else None, chunks, rows)
    small, large = 32 * 9 * 14 * 14, 32 * 9 * 112 * 112
    assert sorted(parallel) == [small, large], parallel
    assert small * DEPTHWISE_WORK_WEIGHT < PARALLEL_MIN_WORK <= large * DEPTHWISE_WORK_WEIGHT
    assert large < PARALLEL_MIN_WORK
    (large_extent, chunks, _), (small_extent, _, _) = parallel[large], parallel[small]
    if target_name == "x86_64":
        assert (large_extent, small_extent) == (2 * chunks, None), parallel
        _, actual, expected = _compile_and_compare(model)
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)
    else:  # the first parallel loop there is the pad's, over every padded row
        assert large_extent and small_extent, parallel


def test_x86_int8_padded_projections_requantize_in_their_kernel_and_compact_in_one_permutation(tmp_path):
    """graph.sink_channel_slices and graph.compact_channel_slices on x86: an int8 projection whose output
    is padded to whole blocks (MobileNetV2-0.35's 24 and 56 channels, computed as 32 and 64) requantizes
    in its convolution's kernel (int32 lanes, the residual add with it) and writes int8; one channel
    permutation takes its leading channels into the expansions' blocks. No kernel of its own slices, every convolution
    rescales on int32 lanes (none writes a 64-bit product); the VNNI library equals LiteRT's reference kernels on two inputs."""
    path, lowered = _lowered_int8_mobilenetv2(tmp_path, VNNI_TARGET, 64, width=0.35)
    funcs = {gv.name_hint: f for gv, f in lowered.functions_items() if isinstance(f, tirx.PrimFunc)}
    assert not [n for n in funcs if n.startswith(("strided_slice", "fused_strided_slice"))], sorted(funcs)
    convs = [n for n in funcs if n.startswith("fused_conv2d")]
    assert all("x86_rounding_doubling_high_mul" in n for n in convs), sorted(funcs)
    permutes = [n for n in funcs if n.startswith("channel_permute_NCHWc")]
    assert permutes and all("int8" in funcs[n].script() for n in permutes), sorted(funcs)
    _assert_vnni_equals_litert_reference_kernels(lowered, path, 64, seed=29)


@pytest.mark.parametrize(
    "window, strides, padding, size",
    [
        ((3, 3), (1, 1), (1, 1, 1, 1), (20, 29)),  # MobileNetV2's on a prime row: tiles of 1 pixel
        ((3, 3), (2, 2), (0, 0, 1, 1), (20, 28)),  # TFLite's SAME at stride 2
        ((3, 3), (1, 1), (0, 0, 0, 0), (9, 9)),  # VALID: the pad is the extra column alone
        ((1, 4), (1, 2), (0, 1, 0, 2), (5, 17)),  # the widest window, asymmetric padding
        ((5, 2), (2, 1), (2, 0, 2, 1), (11, 6)),
    ],
)
def test_x86_vnni_depthwise_windows_equal_the_direct_sum(window, strides, padding, size):
    """graph.depthwise_conv2d_nchwc_dot with its VNNI schedule (a window row of 4 taps per vpdpbusd on
    the 4 input pixels transposed by a shuffle, x86_intrin.VNNI_WINDOW_U8I8): windows 1-4 wide, strides 1
    and 2, padding on every side, a prime row; on uint8 input (padded with `zero`) and
    on int8 input shifted in its pad, both equal to the direct sum in int64 where the CPU has VNNI."""
    from tvm import te

    from edgefleet.agent.variants import cpu_flags
    from edgefleet.compiler.schedules import schedule_func

    rng = np.random.default_rng(sum(size))
    (kh, kw), (sh, sw), (top, left, bottom, right) = window, strides, padding
    taps = rng.integers(-128, 128, (2, kh, 16, 4)).astype(np.int8)
    taps[..., kw:] = 0  # past the window (int8_depthwise_convs packs them so)
    target = tvm_target(resolve_target(VNNI_TARGET))
    for dtype, zero, shift in (("uint8", 7, 0), ("int8", -128, 128)):
        x = rng.integers(np.iinfo(dtype).min, np.iinfo(dtype).max + 1, (1, 2, *size, 16)).astype(dtype)
        data, weights = te.placeholder(x.shape, dtype, "data"), te.placeholder(taps.shape, "int8", "taps")
        out = graph.depthwise_conv2d_nchwc_dot(data, weights, zero, strides, padding, kw, shift)
        sch = schedule_func(te.create_prim_func([data, weights, out]), target)
        assert sch is not None
        lib = tvm.compile(sch.mod, target=target)
        assert "vpdpbusd" in lib.mod.inspect_source("asm") and "vpmulld" not in lib.mod.inspect_source("asm")
        # The direct sum: the input + shift padded with zero + shift, each window's KH x KW taps.
        padded = np.pad(x.astype(np.int64) + shift, [(0, 0), (0, 0), (top, bottom), (left, right), (0, 0)])
        padded[:, :, :top], padded[:, :, padded.shape[2] - bottom :] = zero + shift, zero + shift
        padded[:, :, :, :left], padded[:, :, :, padded.shape[3] - right :] = zero + shift, zero + shift
        oh, ow = (padded.shape[2] - kh) // sh + 1, (padded.shape[3] - kw) // sw + 1
        expected = np.zeros((1, 2, oh, ow, 16), np.int64)
        for i in range(kh):
            for j in range(kw):
                rows = padded[:, :, i : i + (oh - 1) * sh + 1 : sh, j : j + (ow - 1) * sw + 1 : sw]
                expected += rows * taps[:, i, :, j].astype(np.int64)[None, :, None, None, :]
        assert tuple(int(d) for d in out.shape) == expected.shape
        if "avx512_vnni" in cpu_flags():
            result = tvm.runtime.tensor(np.zeros(expected.shape, np.int32))
            lib["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(taps), result)
            np.testing.assert_array_equal(result.numpy(), expected, err_msg=f"{dtype} {window} {strides} {padding}")
