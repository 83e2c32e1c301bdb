"""Helpers for the compiler tests: the CLI error contract, and small models the tests build
themselves: an ONNX CNN (onnx.helper) and a TFLite CNN (a float32 flatbuffer written with the
`tflite` schema package; TensorFlow is not needed).

Weights are random (fixed seeds) so numeric verification compares non-trivial outputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from support.cli import CliResult

CLASSES = 4


def assert_cli_error(result: CliResult, error_type: type, *fragments: str) -> None:
    """The CLI contract for bad input: its distinct exit code, `error:` and `fix:` lines, no traceback."""
    assert result.code == error_type.exit_code, result.text
    assert "error: " in result.err and "fix: " in result.err, result.text
    assert "Traceback" not in result.text
    for fragment in fragments:
        assert fragment in result.err, f"{fragment!r} not in:\n{result.err}"


def small_onnx_cnn(path: Path, *, dynamic_batch: bool = False, classes: int = CLASSES, seed: int = 0) -> Path:
    """conv 3x3 (8 ch) + relu + global average pool + gemm + softmax on a 1x3x32x32 input."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weights = {
        "conv_w": rng.normal(0, 0.5, (8, 3, 3, 3)).astype(np.float32),
        "conv_b": rng.normal(0, 0.1, (8,)).astype(np.float32),
        "fc_w": rng.normal(0, 0.5, (classes, 8)).astype(np.float32),
        "fc_b": rng.normal(0, 0.1, (classes,)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["input", "conv_w", "conv_b"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    batch = "N" if dynamic_batch else 1
    graph = helper.make_graph(
        nodes,
        "small_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, 32, 32])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [batch, classes])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return Path(path)


def onnx_with_unsupported_ops(path: Path) -> Path:
    """A model using two operator types no converter knows (3 uses of one, 1 of the other)."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("Mystery", ["a"], ["b"], domain="ai.edgefleet.test"),
        helper.make_node("Mystery", ["b"], ["c"], domain="ai.edgefleet.test"),
        helper.make_node("Mystery", ["c"], ["d"], domain="ai.edgefleet.test"),
        helper.make_node("Enigma", ["d"], ["y"], domain="ai.edgefleet.test"),
    ]
    graph = helper.make_graph(
        nodes,
        "unsupported",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("ai.edgefleet.test", 1)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return Path(path)


# --- TFLite -----------------------------------------------------------------------------------

def _vector(builder, start, items, prepend) -> int:
    start(builder, len(items))
    for item in reversed(items):
        prepend(item)
    return builder.EndVector()


def small_tflite_cnn(path: Path, *, classes: int = CLASSES, seed: int = 1, size: int = 16, dynamic_batch: bool = False) -> Path:
    """CONV_2D (8 ch, SAME, fused RELU) + MEAN over H,W + FULLY_CONNECTED + SOFTMAX, float32 NHWC 1xSxSx3."""
    import importlib

    import flatbuffers

    # `tflite` re-exports each table's class under the module's name; the builder functions live in the modules.
    Buffer, Conv2DOptions, FullyConnectedOptions, Model, Operator, OperatorCode, ReducerOptions, SoftmaxOptions, SubGraph, Tensor = (
        importlib.import_module(f"tflite.{name}")
        for name in ("Buffer", "Conv2DOptions", "FullyConnectedOptions", "Model", "Operator", "OperatorCode", "ReducerOptions", "SoftmaxOptions", "SubGraph", "Tensor")
    )
    from tflite.ActivationFunctionType import ActivationFunctionType
    from tflite.BuiltinOperator import BuiltinOperator
    from tflite.BuiltinOptions import BuiltinOptions
    from tflite.Padding import Padding
    from tflite.TensorType import TensorType

    rng = np.random.default_rng(seed)
    constants = {
        "conv_w": rng.normal(0, 0.5, (8, 3, 3, 3)).astype(np.float32),  # OHWI
        "conv_b": rng.normal(0, 0.1, (8,)).astype(np.float32),
        "axes": np.array([1, 2], dtype=np.int32),
        "fc_w": rng.normal(0, 0.5, (classes, 8)).astype(np.float32),
        "fc_b": rng.normal(0, 0.1, (classes,)).astype(np.float32),
    }
    # (name, shape, type, constant or None)
    tensors = [
        ("input", [1, size, size, 3], TensorType.FLOAT32, None),
        ("conv_w", [8, 3, 3, 3], TensorType.FLOAT32, "conv_w"),
        ("conv_b", [8], TensorType.FLOAT32, "conv_b"),
        ("conv", [1, size, size, 8], TensorType.FLOAT32, None),
        ("axes", [2], TensorType.INT32, "axes"),
        ("mean", [1, 8], TensorType.FLOAT32, None),
        ("fc_w", [classes, 8], TensorType.FLOAT32, "fc_w"),
        ("fc_b", [classes], TensorType.FLOAT32, "fc_b"),
        ("logits", [1, classes], TensorType.FLOAT32, None),
        ("probs", [1, classes], TensorType.FLOAT32, None),
    ]
    index = {name: i for i, (name, *_rest) in enumerate(tensors)}
    opcodes = [BuiltinOperator.CONV_2D, BuiltinOperator.MEAN, BuiltinOperator.FULLY_CONNECTED, BuiltinOperator.SOFTMAX]

    b = flatbuffers.Builder(4096)

    # Buffers: 0 is the conventional empty buffer; one per constant after it.
    buffer_of: dict[str, int] = {}
    buffer_offsets = []
    Buffer.BufferStart(b)
    buffer_offsets.append(Buffer.BufferEnd(b))
    for name, array in constants.items():
        data = b.CreateByteVector(array.tobytes())
        Buffer.BufferStart(b)
        Buffer.BufferAddData(b, data)
        buffer_of[name] = len(buffer_offsets)
        buffer_offsets.append(Buffer.BufferEnd(b))

    tensor_offsets = []
    for name, shape, dtype, const in tensors:
        name_off = b.CreateString(name)
        shape_off = _vector(b, Tensor.TensorStartShapeVector, shape, b.PrependInt32)
        signature_off = None
        if dynamic_batch and name == "input":
            signature_off = _vector(b, Tensor.TensorStartShapeSignatureVector, [-1, *shape[1:]], b.PrependInt32)
        Tensor.TensorStart(b)
        Tensor.TensorAddShape(b, shape_off)
        if signature_off is not None:
            Tensor.TensorAddShapeSignature(b, signature_off)
        Tensor.TensorAddType(b, dtype)
        Tensor.TensorAddBuffer(b, buffer_of.get(const, 0))
        Tensor.TensorAddName(b, name_off)
        tensor_offsets.append(Tensor.TensorEnd(b))

    def options_conv() -> int:
        Conv2DOptions.Conv2DOptionsStart(b)
        Conv2DOptions.Conv2DOptionsAddPadding(b, Padding.SAME)
        Conv2DOptions.Conv2DOptionsAddStrideW(b, 1)
        Conv2DOptions.Conv2DOptionsAddStrideH(b, 1)
        Conv2DOptions.Conv2DOptionsAddDilationWFactor(b, 1)
        Conv2DOptions.Conv2DOptionsAddDilationHFactor(b, 1)
        Conv2DOptions.Conv2DOptionsAddFusedActivationFunction(b, ActivationFunctionType.RELU)
        return Conv2DOptions.Conv2DOptionsEnd(b)

    def options_mean() -> int:
        ReducerOptions.ReducerOptionsStart(b)
        ReducerOptions.ReducerOptionsAddKeepDims(b, False)
        return ReducerOptions.ReducerOptionsEnd(b)

    def options_fc() -> int:
        FullyConnectedOptions.FullyConnectedOptionsStart(b)
        FullyConnectedOptions.FullyConnectedOptionsAddFusedActivationFunction(b, ActivationFunctionType.NONE)
        return FullyConnectedOptions.FullyConnectedOptionsEnd(b)

    def options_softmax() -> int:
        SoftmaxOptions.SoftmaxOptionsStart(b)
        SoftmaxOptions.SoftmaxOptionsAddBeta(b, 1.0)
        return SoftmaxOptions.SoftmaxOptionsEnd(b)

    ops = [
        (0, ["input", "conv_w", "conv_b"], ["conv"], BuiltinOptions.Conv2DOptions, options_conv),
        (1, ["conv", "axes"], ["mean"], BuiltinOptions.ReducerOptions, options_mean),
        (2, ["mean", "fc_w", "fc_b"], ["logits"], BuiltinOptions.FullyConnectedOptions, options_fc),
        (3, ["logits"], ["probs"], BuiltinOptions.SoftmaxOptions, options_softmax),
    ]
    op_offsets = []
    for opcode, ins, outs, options_type, options in ops:
        options_off = options()
        ins_off = _vector(b, Operator.OperatorStartInputsVector, [index[n] for n in ins], b.PrependInt32)
        outs_off = _vector(b, Operator.OperatorStartOutputsVector, [index[n] for n in outs], b.PrependInt32)
        Operator.OperatorStart(b)
        Operator.OperatorAddOpcodeIndex(b, opcode)
        Operator.OperatorAddInputs(b, ins_off)
        Operator.OperatorAddOutputs(b, outs_off)
        Operator.OperatorAddBuiltinOptionsType(b, options_type)
        Operator.OperatorAddBuiltinOptions(b, options_off)
        op_offsets.append(Operator.OperatorEnd(b))

    tensors_vec = _vector(b, SubGraph.SubGraphStartTensorsVector, tensor_offsets, b.PrependUOffsetTRelative)
    inputs_vec = _vector(b, SubGraph.SubGraphStartInputsVector, [index["input"]], b.PrependInt32)
    outputs_vec = _vector(b, SubGraph.SubGraphStartOutputsVector, [index["probs"]], b.PrependInt32)
    ops_vec = _vector(b, SubGraph.SubGraphStartOperatorsVector, op_offsets, b.PrependUOffsetTRelative)
    graph_name = b.CreateString("main")
    SubGraph.SubGraphStart(b)
    SubGraph.SubGraphAddTensors(b, tensors_vec)
    SubGraph.SubGraphAddInputs(b, inputs_vec)
    SubGraph.SubGraphAddOutputs(b, outputs_vec)
    SubGraph.SubGraphAddOperators(b, ops_vec)
    SubGraph.SubGraphAddName(b, graph_name)
    subgraph = SubGraph.SubGraphEnd(b)

    code_offsets = []
    for code in opcodes:
        OperatorCode.OperatorCodeStart(b)
        OperatorCode.OperatorCodeAddDeprecatedBuiltinCode(b, code)
        OperatorCode.OperatorCodeAddBuiltinCode(b, code)
        OperatorCode.OperatorCodeAddVersion(b, 1)
        code_offsets.append(OperatorCode.OperatorCodeEnd(b))

    codes_vec = _vector(b, Model.ModelStartOperatorCodesVector, code_offsets, b.PrependUOffsetTRelative)
    subgraphs_vec = _vector(b, Model.ModelStartSubgraphsVector, [subgraph], b.PrependUOffsetTRelative)
    buffers_vec = _vector(b, Model.ModelStartBuffersVector, buffer_offsets, b.PrependUOffsetTRelative)
    description = b.CreateString("edgefleet test cnn")
    Model.ModelStart(b)
    Model.ModelAddVersion(b, 3)
    Model.ModelAddOperatorCodes(b, codes_vec)
    Model.ModelAddSubgraphs(b, subgraphs_vec)
    Model.ModelAddDescription(b, description)
    Model.ModelAddBuffers(b, buffers_vec)
    b.Finish(Model.ModelEnd(b), file_identifier=b"TFL3")
    Path(path).write_bytes(bytes(b.Output()))
    return Path(path)
