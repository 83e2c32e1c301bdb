"""The CPU graph passes and default schedules: numerics against ONNX Runtime on small models,
and that the fast paths are really taken (blocked layout, scheduled kernels, few transforms)."""

from __future__ import annotations

import json
import re
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgefleet.compiler.targets import resolve_target

tvm = pytest.importorskip("tvm")
from tvm import relax, tirx  # noqa: E402
from tvm.relax.frontend.onnx import from_onnx  # noqa: E402

from edgefleet.compiler import graph  # noqa: E402
from edgefleet.compiler.build import KernelFallbacks, _optimize_pipeline, tvm_target  # noqa: E402
from edgefleet.models.mobilenetv2 import build as mobilenetv2  # noqa: E402

TARGET = resolve_target("x86_64")


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
    g = helper.make_graph(
        nodes,
        "odd",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 26, 26])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 10])],
        inits,
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
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
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        inits,
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
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
    g = helper.make_graph(
        nodes,
        "pool",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("c2", TensorProto.FLOAT, [1, 16, 7, 7])],
        inits,
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    lowered, actual, expected = _compile_and_compare(model)
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)
    # Into NCHW3c and out to NCHW only; a pool left in NCHW would add a transform on each side.
    calls = re.findall(r"^\s+(\w+)\(", lowered["main"].script(show_meta=False), re.M)
    assert any("max_pool2d" in c for c in calls) and sum("layout_transform" in c for c in calls) == 2, Counter(calls)


def test_a_long_row_no_vector_width_divides_stays_a_row_loop():
    """The real ShuffleNet's max pool pads 24 x 112 x 112 to 114-pixel rows, which 16, 8 and 4 do
    not divide: the pad runs row by row (parallel rows, a serial row loop), not as one flattened
    loop whose index math (a div/mod per element) cost 2 ms. Its output matches a numpy max pool."""
    from tvm import te, topi

    from edgefleet.compiler.schedules import schedule_func

    x = te.placeholder((1, 24, 112, 112), name="x")
    y = topi.nn.pool2d(x, [3, 3], [2, 2], [1, 1], [1, 1, 1, 1], "max", layout="NCHW")
    tgt = tvm_target(resolve_target("x86_64"))
    sch = schedule_func(te.create_prim_func([x, y]), tgt)
    pad = sch.get_loops(sch.get_sblock("pad_temp"))
    assert [int(sch.get(loop).extent) for loop in pad] == [24 * 114, 114]
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
    # One transpose is left: the blocked head back to NHWC for TFLite's MEAN over axes 1, 2.
    assert sum("transpose" in n for n in kernels) <= 1, sorted(kernels)
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
    g = helper.make_graph(
        nodes,
        "narrow",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 20, 20])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4])],
        inits,
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
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


def test_int8_tflite_mobilenetv2_runs_blocked_and_equals_litert_reference_kernels(tmp_path):
    """Full-integer int8 MobileNetV2: every convolution blocked (NCHWc kernels, scheduled, no layout
    fallback), the integer requantization carried into the blocked layout (as few transforms as the
    float graph), and the outputs equal to LiteRT's reference kernels. Before, the NCHWc step failed on
    these graphs (a boolean layout transform from the requantization's `where`) and every convolution
    ran unblocked."""
    import sys
    from pathlib import Path

    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from edgefleet.compiler.frontends import frontend_for

    root = Path(__file__).resolve().parents[2]
    sys.path[:0] = [str(root / "tests" / "compiler"), str(root / "benchmarks" / "qemu_insn")]
    from tflite_models import mobilenetv2_tflite

    path = mobilenetv2_tflite(tmp_path / "mnv2_int8.tflite", size=32, int8=True)
    tflite = frontend_for("tflite")
    parsed = tflite.load(path)
    mod = tflite.to_relax(parsed, tflite.input_specs(parsed, {}, []), [])
    notes: list[str] = []
    fallbacks = KernelFallbacks(notes.append)
    with tvm_target(TARGET):
        lowered = _optimize_pipeline(TARGET, 0, fallbacks)(mod)
    assert not notes and not fallbacks.fallbacks, notes
    kernels = _kernels(lowered)
    convs = [n for n in kernels if "conv2d" in n]
    assert len(convs) >= 30 and all("NCHWc" in n for n in convs), sorted(kernels)
    assert all(kernels.values()), [n for n, s in kernels.items() if not s]
    assert sum(n.startswith("fused_depthwise_conv2d_NCHWc") for n in kernels) >= 10, sorted(kernels)
    calls = re.findall(r"^\s+(\w+)\(", lowered["main"].script(show_meta=False), re.M)
    assert sum("layout_transform" in c for c in calls) <= 8, Counter(calls)
    # The requantization's product is of two widened int32 values, the accumulator itself and an int32
    # multiplier (AArch64's smlal into the rounding constant): no 64 x 64-bit product, which NEON lacks
    # (it was one: an int64 multiplier constant, or the cast moved below the bias add).
    requantizing = [n for n in kernels if "conv2d" in n and "multiply" in n]
    widening = re.compile(r'T\.Cast\("int64", \w*conv2d_NCHWc\w*\[[^\]]*\]\) \* T\.Cast\("int64", \w+\[')
    assert len(requantizing) >= 30, sorted(kernels)
    assert all(widening.search(lowered[n].script()) for n in requantizing), lowered[requantizing[0]].script()

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
    g = helper.make_graph(
        nodes,
        "where",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 16, 12, 12])],
        [helper.make_tensor_value_info("c2", TensorProto.FLOAT, [1, 16, 12, 12])],
        i1 + i2 + consts,
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    lowered, actual, expected = _compile_and_compare(model)
    assert "layout step failed" not in capsys.readouterr().out
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)
    kernels = _kernels(lowered)
    convs = [n for n in kernels if "conv2d" in n]
    assert len(convs) == 2 and all("NCHWc" in n for n in convs), sorted(kernels)


def test_rasp5_int8_convolutions_all_tensorize_sdot(tmp_path):
    """For a dot-product target every dense int8 convolution runs on raw int8 operands and gets the SDOT
    schedule, rows of 28, 14 and 7 pixels included (a tile that did not divide the row failed to tensorize, and the kernel fell back
    silently to the generic schedule), and the rescales run on SQRDMULH. Numerics: tests/cross/test_cross_int8_dot.py."""
    import sys
    from pathlib import Path

    from edgefleet.compiler.frontends import frontend_for

    root = Path(__file__).resolve().parents[2]
    sys.path[:0] = [str(root / "tests" / "compiler"), str(root / "benchmarks" / "qemu_insn")]
    from tflite_models import mobilenetv2_tflite

    tflite = frontend_for("tflite")
    parsed = tflite.load(mobilenetv2_tflite(tmp_path / "mnv2_int8.tflite", size=56, int8=True))
    mod = tflite.to_relax(parsed, tflite.input_specs(parsed, {}, []), [])
    rasp5 = resolve_target("rasp5")
    notes: list[str] = []
    with tvm_target(rasp5):
        lowered = _optimize_pipeline(rasp5, 0, KernelFallbacks(notes.append))(mod)
    assert not notes, notes
    scripts = {gv.name_hint: f.script() for gv, f in lowered.functions_items() if isinstance(f, tirx.PrimFunc)}
    dot = [n for n in scripts if n.startswith("fused_conv2d_NCHWc_int8")]
    assert len(dot) >= 15, sorted(scripts)
    assert all("llvm.aarch64.neon.sdot" in scripts[n] for n in dot), [n for n in dot if "sdot" not in scripts[n]]
    # Every dense convolution, the RGB input's (3 channels padded to 4) and 8-channel ones included.
    int16 = [n for n in scripts if n.startswith(("fused_conv2d_NCHWc", "conv2d_NCHWc")) and "int8" not in n]
    assert not int16, int16
    # arm_intrin's SDOT allocates nothing (TVM's named "local" vectors became a heap workspace per tile row).
    assert not [n for n in dot if "alloc_local" in scripts[n]]
    assert sum("llvm.aarch64.neon.sqrdmulh" in s for s in scripts.values()) >= 30


def test_x86_vnni_int8_convolutions_all_tensorize_vpdpbusd_and_requantizations_are_one_loop(tmp_path):
    """For an x86 target with AVX-512 VNNI (the x86_64 package's x86-64-v4-vnni library) every dense int8
    convolution reads the input + 128 as uint8 and gets the vpdpbusd schedule (16 or 8 output channels per
    instruction; a schedule that fails falls back silently), none stays on int16; the generic x86-64-v4
    library has no such kernel. A requantization after a channel slice (a 24-channel tensor in blocks of
    16) is one loop nest, not one parallel loop and buffer per operation. Numerics and the instruction
    in the library: tests/compiler/test_compile_int8_vnni.py."""
    import sys
    from pathlib import Path

    from edgefleet.compiler.frontends import frontend_for
    from edgefleet.compiler.targets import ISA_LEVELS

    root = Path(__file__).resolve().parents[2]
    sys.path[:0] = [str(root / "tests" / "compiler"), str(root / "benchmarks" / "qemu_insn")]
    from tflite_models import mobilenetv2_tflite

    tflite = frontend_for("tflite")
    parsed = tflite.load(mobilenetv2_tflite(tmp_path / "mnv2_int8.tflite", size=56, int8=True))
    mod = tflite.to_relax(parsed, tflite.input_specs(parsed, {}, []), [])
    scripts = {}
    for level in ("x86-64-v4-vnni", "x86-64-v4"):
        target = resolve_target(json.dumps({"kind": "llvm", **ISA_LEVELS[level].tvm_target}))
        notes: list[str] = []
        with tvm_target(target):
            lowered = _optimize_pipeline(target, 0, KernelFallbacks(notes.append))(mod)
        assert not notes, notes
        scripts[level] = {
            gv.name_hint: f.script() for gv, f in lowered.functions_items() if isinstance(f, tirx.PrimFunc)
        }
    vnni = scripts["x86-64-v4-vnni"]
    dot = [n for n in vnni if n.startswith("fused_conv2d_NCHWc_int8")]
    assert len(dot) >= 15, sorted(vnni)
    assert all("llvm.x86.avx512.vpdpbusd" in vnni[n] for n in dot), [n for n in dot if "vpdpbusd" not in vnni[n]]
    int16 = [n for n in vnni if n.startswith(("fused_conv2d_NCHWc", "conv2d_NCHWc")) and "int8" not in n]
    assert not int16, int16
    assert not any("vpdpbusd" in s or "uint8" in s for s in scripts["x86-64-v4"].values())
    sliced = [n for n in vnni if n.startswith("fused_strided_slice")]
    blocks = {n: sum(line.lstrip().startswith("with T.sblock(") for line in vnni[n].splitlines()) for n in sliced}
    assert blocks and set(blocks.values()) == {1}, blocks


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
    g = helper.make_graph(
        nodes,
        "silu_softmax",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 20, 20])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 8, 4, 100])],
        [*w1, *w2, bins, dfl],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
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
    g = helper.make_graph(
        nodes,
        "c2f",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 16, 12, 12])],
        [helper.make_tensor_value_info("cv2", TensorProto.FLOAT, [1, 32, 12, 12])],
        inits,
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
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


def test_aarch64_unrolls_the_channel_loop_of_tiles_that_divide_the_row():
    """rasp4b: a 3x3 conv with rows of 12 (tiles of 6) gets its 16 input channels per tile unrolled;
    rows of 13 (a ragged tile, whose predicate made the unrolled body slower), ARMv7 and x86 do not."""
    from edgefleet.compiler.schedules import schedule_func

    def conv_func(width: int):
        from tvm import te, topi

        data = te.placeholder((1, 2, width, width, 16), "float32", name="data")
        kernel = te.placeholder((2, 2, 3, 3, 16, 16), "float32", name="kernel")
        out = topi.nn.conv2d_NCHWc(data, kernel, 1, 1, 1, "NCHW16c", "NCHW16c", "float32")
        return te.create_prim_func([data, kernel, topi.nn.relu(out)])

    def unrolled_16(target: str, width: int) -> bool:
        tgt = tvm_target(resolve_target(target))
        with tgt:
            sch = schedule_func(conv_func(width), tgt)
        assert sch is not None
        return bool(re.search(r"in T\.unroll\(16\)", sch.mod["main"].script()))

    assert unrolled_16("rasp4b", 12)
    assert not unrolled_16("rasp4b", 13)
    assert not unrolled_16("rasp3b", 12)
    assert not unrolled_16("x86_64", 12)
