"""Grouped and depthwise-multiplier convolutions (AlexNet, ShuffleNet, ResNeXt style) compile with
edgefleet's CPU pipeline and match onnxruntime (issue 15). Fallbacks for single kernels: test_compile_kernel_fallbacks.py."""

from __future__ import annotations

import re

import pytest

pytest.importorskip("torch")

from support import torch_models  # noqa: E402
from support.pipeline import fused_kernels  # noqa: E402

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

    monkeypatch.setattr(graph, "nchwc_layout", lambda **_: broken)
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
    named = text.partition("kernel(s) without a default schedule, left as written (correct, slower): ")[2]
    assert named.startswith("channel_permute_NCHWc, ") and "fused_" in named, text


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


@pytest.mark.parametrize(("groups", "target_name"), [(4, "x86_64"), (2, "x86_64"), (4, "ml_c6i"), (2, "ml_c6i")])
def test_grouped_kernels_get_the_register_blocked_schedule_and_match_onnxruntime(groups, target_name):
    """The grouped NCHWc kernel gets the blocked conv's tiling (pixel tile unrolled, epilogue at the
    tile), not the generic fallback, and the built model matches ONNX Runtime. On AVX-512 (ml_c6i)
    a group of two output blocks (groups=2: 32 channels each) puts both in one tile, sharing each
    input broadcast; on AVX2 (x86_64's portable library) and with one block per group, one."""
    import numpy as np
    import onnxruntime as ort
    import tvm
    from tvm import relax, tirx
    from tvm.relax.frontend.onnx import from_onnx

    from edgefleet.agent.variants import cpu_flags
    from edgefleet.compiler.build import KernelFallbacks, _optimize_pipeline, tvm_target
    from edgefleet.compiler.schedules import schedule_func
    from edgefleet.compiler.targets import resolve_target

    model, target = _grouped_onnx(groups), resolve_target(target_name)
    if target_name == "ml_c6i" and "avx512f" not in cpu_flags():
        pytest.skip("runs AVX-512 code: this CPU has no avx512f")
    tgt = tvm_target(target)
    fused = fused_kernels(model, tgt)
    kernels = [
        f for gv, f in fused.functions.items() if isinstance(f, tirx.PrimFunc) and "group_conv2d_NCHWc" in gv.name_hint
    ]
    assert len(kernels) == 2
    paired = groups == 2 and target_name == "ml_c6i"
    for func in kernels:
        trace = str(schedule_func(func, tgt).trace)
        assert "sch.unroll" in trace and "sch.reverse_compute_at" in trace, trace
        # Split output width into pixel tiles, then output chunks into tiles of 2 blocks or of 1.
        pixels, chunks = re.findall(r"sch\.split\(loop=\w+, factors=\[None, (\d+)\]", trace)
        assert int(chunks) == (2 if paired else 1) and int(pixels) > 1, trace

    with tgt:
        mod = _optimize_pipeline(target, 0, KernelFallbacks(lambda m: pytest.fail(m)))(
            from_onnx(model, keep_params_in_input=False)
        )
    vm = relax.VirtualMachine(tvm.compile(mod, target=tgt, relax_pipeline=None), tvm.cpu())
    x = np.random.default_rng(1).standard_normal((1, 64, 20, 20)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(vm["main"](tvm.runtime.tensor(x)).numpy(), want, rtol=1e-4, atol=1e-4)


def _onnx(nodes, weights, x_shape, y_shape):
    from onnx import TensorProto, helper, numpy_helper

    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        [numpy_helper.from_array(w, name) for name, w in weights.items()],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def _shuffle_onnx(channels: int, groups: int):
    """Grouped 1x1 conv, ReLU, ShuffleNet's channel shuffle (reshape, transpose, reshape), grouped 3x3."""
    import numpy as np
    from onnx import helper

    rng = np.random.default_rng(channels)
    per = channels // groups
    weights = {
        "w1": rng.standard_normal((channels, per, 1, 1)).astype(np.float32) * 0.3,
        "w2": rng.standard_normal((channels, per, 3, 3)).astype(np.float32) * 0.1,
        "split": np.array([1, groups, per, 12, 12], np.int64),
        "merge": np.array([1, channels, 12, 12], np.int64),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c"], kernel_shape=[1, 1], group=groups),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Reshape", ["r", "split"], ["s"]),
        helper.make_node("Transpose", ["s"], ["t"], perm=[0, 2, 1, 3, 4]),
        helper.make_node("Reshape", ["t", "merge"], ["m"]),
        helper.make_node("Conv", ["m", "w2"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=groups),
    ]
    return _onnx(nodes, weights, [1, channels, 12, 12], [1, channels, 12, 12])


def _multiplier_onnx(channels: int, multiplier: int):
    """1x1 conv, then a depthwise 3x3 with `multiplier` outputs per channel (stride 2), bias, ReLU."""
    import numpy as np
    from onnx import helper

    rng = np.random.default_rng(multiplier)
    out = channels * multiplier
    weights = {
        "w1": rng.standard_normal((channels, channels, 1, 1)).astype(np.float32) * 0.2,
        "w2": rng.standard_normal((out, 1, 3, 3)).astype(np.float32) * 0.3,
        "b2": rng.standard_normal(out).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c"], kernel_shape=[1, 1]),
        helper.make_node(
            "Conv", ["c", "w2", "b2"], ["d"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2], group=channels
        ),
        helper.make_node("Relu", ["d"], ["y"]),
    ]
    return _onnx(nodes, weights, [1, channels, 14, 14], [1, out, 7, 7])


def _lowered_and_matches_onnxruntime(model, x_shape):
    """The model after layout and legalization (the kernels as relax sees them), once its build
    (every kernel scheduled: a kernel without a schedule fails the test) matches ONNX Runtime."""
    import numpy as np
    import onnxruntime as ort
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    from edgefleet.compiler import graph
    from edgefleet.compiler.build import KernelFallbacks, _optimize_pipeline, tvm_target
    from edgefleet.compiler.targets import resolve_target

    target = resolve_target("x86_64")
    tgt = tvm_target(target)
    with tgt:
        lowered = tvm.transform.Sequential(
            [graph.cleanup(), graph.nchwc_layout(), graph.legalize(KernelFallbacks(print).layout_failed)]
        )(from_onnx(model, keep_params_in_input=False))
        mod = _optimize_pipeline(target, 0, KernelFallbacks(lambda m: pytest.fail(m)))(
            from_onnx(model, keep_params_in_input=False)
        )
    vm = relax.VirtualMachine(tvm.compile(mod, target=tgt, relax_pipeline=None), tvm.cpu())
    x = np.random.default_rng(2).standard_normal(x_shape).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(vm["main"](tvm.runtime.tensor(x)).numpy(), want, rtol=1e-4, atol=1e-4)
    return lowered


def _calls(mod) -> list[str]:
    """The kernels `main` calls, in order (numbered duplicates under one name)."""
    import re

    from tvm import relax

    names: list[str] = []

    def visit(expr) -> None:
        if isinstance(expr, relax.Call) and getattr(expr.op, "name", "") == "relax.call_tir":
            names.append(re.sub(r"\d+$", "", expr.args[0].name_hint))

    relax.analysis.post_order_visit(mod["main"], visit)
    return names


@pytest.mark.parametrize(("channels", "groups"), [(64, 4), (48, 3)])
def test_channel_shuffle_stays_blocked_and_matches_onnxruntime(channels, groups):
    """ShuffleNet's reshape/transpose/reshape between two blocked grouped convs becomes a channel
    permutation of the NCHW16c tensor: no layout transform, reshape or transpose is left between
    the convolutions (only the model's input and output are transformed)."""
    lowered = _lowered_and_matches_onnxruntime(_shuffle_onnx(channels, groups), [1, channels, 12, 12])
    assert _calls(lowered) == [
        "te_layout_transform",
        "group_conv2d_NCHWc",
        "relu",
        "channel_permute_NCHWc",
        "group_conv2d_NCHWc",
        "te_layout_transform",
    ]


@pytest.mark.parametrize("multiplier", [2, 3])
def test_depthwise_multiplier_conv_runs_blocked_and_matches_onnxruntime(multiplier):
    """A depthwise conv with a channel multiplier is a blocked depthwise kernel (its register-tiled
    schedule) plus a channel permutation, not an NCHW convolution between layout transforms."""
    from edgefleet.compiler.build import tvm_target
    from edgefleet.compiler.schedules import schedule_func
    from edgefleet.compiler.targets import resolve_target

    lowered = _lowered_and_matches_onnxruntime(_multiplier_onnx(32, multiplier), [1, 32, 14, 14])
    assert _calls(lowered) == [
        "te_layout_transform",
        "conv2d_NCHWc",
        "depthwise_conv2d_NCHWc",
        "channel_permute_NCHWc",
        "add",
        "relu",
        "te_layout_transform",
    ]
    trace = str(schedule_func(lowered["depthwise_conv2d_NCHWc"], tvm_target(resolve_target("x86_64"))).trace)
    assert "sch.unroll" in trace and "sch.vectorize" in trace, trace


def test_only_a_channel_shuffle_is_recognised():
    from edgefleet.compiler.graph import channel_shuffle_groups

    src, split = [1, 64, 8, 8], [1, 4, 16, 8, 8]
    assert channel_shuffle_groups([src, split, [1, 16, 4, 8, 8], src], [0, 2, 1, 3, 4]) == 4
    # A transpose of the spatial axes, a split of the height, a merge to another shape: not shuffles.
    assert channel_shuffle_groups([src, split, [1, 4, 16, 8, 8], src], [0, 1, 2, 4, 3]) is None
    assert channel_shuffle_groups([src, [1, 64, 2, 4, 8], [1, 2, 64, 4, 8], src], [0, 2, 1, 3, 4]) is None
    assert channel_shuffle_groups([src, split, [1, 16, 4, 8, 8], [1, 16, 32, 8]], [0, 2, 1, 3, 4]) is None
    assert channel_shuffle_groups([None, split, [1, 16, 4, 8, 8], src], [0, 2, 1, 3, 4]) is None


def _shufflenet_v1_onnx(groups: int = 3):
    """Two ShuffleNet v1 units with `groups` groups and random (trained-like) weights and batch
    norms: a stride-2 unit (grouped 1x1 24 -> 60, shuffle, depthwise 3x3, grouped 1x1 60 -> 216,
    concat with the average-pooled input) and a residual unit (grouped 1x1 240 -> 60, shuffle,
    depthwise 3x3, grouped 1x1 60 -> 240). Per group 8, 20, 72 channels: not whole 16-channel blocks."""
    import numpy as np
    from onnx import helper

    rng = np.random.default_rng(groups)
    nodes, weights = [], {}

    def conv(x, cin, cout, k, g, name, stride=1):
        weights[f"{name}_w"] = (rng.standard_normal((cout, cin // g, k, k)) / np.sqrt(cin // g * k * k)).astype(
            np.float32
        )
        nodes.append(
            helper.make_node(
                "Conv",
                [x, f"{name}_w"],
                [f"{name}_c"],
                kernel_shape=[k, k],
                pads=[k // 2] * 4,
                strides=[stride] * 2,
                group=g,
            )
        )
        bn = {
            "s": rng.uniform(0.5, 1.5, cout),
            "b": rng.standard_normal(cout) * 0.1,
            "m": rng.standard_normal(cout) * 0.1,
        }
        bn["v"] = rng.uniform(0.5, 1.5, cout)
        weights.update({f"{name}_{k}": v.astype(np.float32) for k, v in bn.items()})
        inputs = [f"{name}_c", *(f"{name}_{k}" for k in "sbmv")]
        nodes.append(helper.make_node("BatchNormalization", inputs, [name]))
        return name

    def shuffle(x, channels, size, name):
        weights[f"{name}_split"] = np.array([1, groups, channels // groups, size, size], np.int64)
        weights[f"{name}_merge"] = np.array([1, channels, size, size], np.int64)
        nodes.append(helper.make_node("Reshape", [x, f"{name}_split"], [f"{name}_s"]))
        nodes.append(helper.make_node("Transpose", [f"{name}_s"], [f"{name}_t"], perm=[0, 2, 1, 3, 4]))
        nodes.append(helper.make_node("Reshape", [f"{name}_t", f"{name}_merge"], [name]))
        return name

    def relu(x):
        nodes.append(helper.make_node("Relu", [x], [f"{x}_r"]))
        return f"{x}_r"

    a = shuffle(relu(conv("x", 24, 60, 1, groups, "a1")), 60, 16, "a_sh")
    a = conv(conv(a, 60, 60, 3, 60, "a2", stride=2), 60, 216, 1, groups, "a3")
    nodes.append(helper.make_node("AveragePool", ["x"], ["pool"], kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4))
    nodes.append(helper.make_node("Concat", [a, "pool"], ["cat"], axis=1))
    b = shuffle(relu(conv(relu("cat"), 240, 60, 1, groups, "b1")), 60, 8, "b_sh")
    b = conv(conv(b, 60, 60, 3, 60, "b2"), 60, 240, 1, groups, "b3")
    nodes.append(helper.make_node("Add", [b, "cat_r"], ["sum"]))
    nodes.append(helper.make_node("Relu", ["sum"], ["y"]))
    return _onnx(nodes, weights, [1, 24, 16, 16], [1, 240, 8, 8])


def test_shufflenet_v1_groups_that_split_blocks_run_blocked_and_match_onnxruntime():
    """ShuffleNet v1's grouped 1x1 convs whose groups split 16-channel blocks (ConvertLayout keeps
    them in NCHW) run as blocked grouped kernels, each group's outputs padded to whole blocks and
    the padding dropped by a channel permutation: no NCHW convolution is left."""
    import tvm
    from tvm import relax, tirx
    from tvm.relax.frontend.onnx import from_onnx

    from edgefleet.compiler import graph
    from edgefleet.compiler.build import KernelFallbacks, tvm_target
    from edgefleet.compiler.schedules import PARALLEL_MIN_WORK, block_work, schedule_func
    from edgefleet.compiler.targets import resolve_target

    model = _shufflenet_v1_onnx()
    lowered = _lowered_and_matches_onnxruntime(model, [1, 24, 16, 16])
    calls = _calls(lowered)
    convs = [c for c in calls if "conv2d" in c]
    assert convs.count("group_conv2d_NCHWc") == 4 and all(c.endswith("_NCHWc") for c in convs), calls
    # The concat and the residual add stay blocked too: only the model's input and output are transformed.
    assert "channel_concat_NCHWc" in calls and calls.count("te_layout_transform") == 2, calls
    tgt = tvm_target(resolve_target("x86_64"))
    trace = str(schedule_func(lowered["group_conv2d_NCHWc"], tgt).trace)
    assert "sch.unroll" in trace and "sch.vectorize" in trace, trace
    # Each padding drop, with the bias, ReLU, shuffle or concat fused to it, is one pass (the other
    # blocks inlined), with the lanes in a vector, its outer loops parallel where its work reaches the
    # x86 threshold for parallel loops (below it they run on the calling thread).
    passes = [graph.cleanup(), graph.nchwc_layout(), graph.legalize(KernelFallbacks(print).layout_failed)]
    passes += [relax.transform.AnnotateTIROpPattern(), relax.transform.FuseOps(), relax.transform.FuseTIR()]
    with tgt:
        fused = tvm.transform.Sequential(passes)(from_onnx(model, keep_params_in_input=False))
    permutes = [f for gv, f in fused.functions.items() if isinstance(f, tirx.PrimFunc) and "channel_" in gv.name_hint]
    assert len(permutes) >= 4
    for func in permutes:
        sch = schedule_func(func, tgt)
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
        assert len(blocks) == 1, sch.mod
        assert "sch.vectorize" in str(sch.trace), sch.trace
        assert ("sch.parallel" in str(sch.trace)) == (block_work(sch, blocks[0]) >= PARALLEL_MIN_WORK), sch.trace


def test_groups_of_few_outputs_are_not_padded_to_whole_blocks():
    """Padding 4 outputs per group to a 16-channel block would be 4x the work (the dense
    block-diagonal form at 4x measured slower than NCHW): such a conv stays in NCHW."""
    import numpy as np
    from onnx import helper

    w = np.random.default_rng(4).standard_normal((32, 4, 1, 1)).astype(np.float32)
    model = _onnx(
        [helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[1, 1], group=8)],
        {"w": w},
        [1, 32, 6, 6],
        [1, 32, 6, 6],
    )
    calls = _calls(_lowered_and_matches_onnxruntime(model, [1, 32, 6, 6]))
    assert "group_conv2d_NCHWc" not in calls and "channel_permute_NCHWc" not in calls, calls
