"""Helpers for the compiler tests: the CLI error contract, and small models the tests build
themselves: an ONNX CNN (onnx.helper) and a TFLite CNN (a float32 flatbuffer written with the
`tflite` schema package; TensorFlow is not needed).

Weights are random (fixed seeds) so numeric verification compares non-trivial outputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from support.cli import assert_cli_error  # noqa: F401  (the compiler tests import it from here)

CLASSES = 4


def small_onnx_cnn(
    path: Path, *, dynamic_batch: bool = False, dynamic_size: bool = False, classes: int = CLASSES, seed: int = 0
) -> Path:
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
    size = ["H", "W"] if dynamic_size else [32, 32]
    graph = helper.make_graph(
        nodes,
        "small_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, *size])],
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
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("ai.edgefleet.test", 1)]
    )
    model.ir_version = 8
    onnx.save(model, str(path))
    return Path(path)


# --- TFLite -----------------------------------------------------------------------------------
# A generic writer: tensors are (name, shape, TensorType, constant array or None, quantization or None),
# quantization a dict with "scale", "zero_point" (lists) and optional "axis"; operators are
# (opcode, inputs, outputs, options) with opcode a BuiltinOperator value or a custom op's name,
# options None, (BuiltinOptions type, builder callback) or the custom op's option bytes;
# signatures maps tensor names to shape signatures (-1 for a dynamic dimension).


def _vector(builder, start, items, prepend) -> int:
    start(builder, len(items))
    for item in reversed(items):
        prepend(item)
    return builder.EndVector()


def write_tflite(
    path: Path, tensors: list, operators: list, inputs: list[str], outputs: list[str], signatures: dict | None = None
) -> Path:
    import importlib

    import flatbuffers

    Buffer, Model, Operator, OperatorCode, QuantizationParameters, SubGraph, Tensor = (
        importlib.import_module(f"tflite.{name}")
        for name in ("Buffer", "Model", "Operator", "OperatorCode", "QuantizationParameters", "SubGraph", "Tensor")
    )
    from tflite.BuiltinOperator import BuiltinOperator

    b = flatbuffers.Builder(4096)
    index = {t[0]: i for i, t in enumerate(tensors)}
    Buffer.BufferStart(b)
    buffer_offsets = [Buffer.BufferEnd(b)]
    buffer_of = {}
    for name, _shape, _type, const, _quant in tensors:
        if const is None:
            continue
        data = b.CreateByteVector(np.ascontiguousarray(const).tobytes())
        Buffer.BufferStart(b)
        Buffer.BufferAddData(b, data)
        buffer_of[name] = len(buffer_offsets)
        buffer_offsets.append(Buffer.BufferEnd(b))

    tensor_offsets = []
    for name, shape, dtype, _const, quant in tensors:
        quant_off = None
        if quant is not None:
            scale_off = _vector(
                b,
                QuantizationParameters.QuantizationParametersStartScaleVector,
                [float(s) for s in quant["scale"]],
                b.PrependFloat32,
            )
            zp_off = _vector(
                b,
                QuantizationParameters.QuantizationParametersStartZeroPointVector,
                [int(z) for z in quant["zero_point"]],
                b.PrependInt64,
            )
            QuantizationParameters.QuantizationParametersStart(b)
            QuantizationParameters.QuantizationParametersAddScale(b, scale_off)
            QuantizationParameters.QuantizationParametersAddZeroPoint(b, zp_off)
            QuantizationParameters.QuantizationParametersAddQuantizedDimension(b, quant.get("axis", 0))
            quant_off = QuantizationParameters.QuantizationParametersEnd(b)
        name_off = b.CreateString(name)
        shape_off = _vector(b, Tensor.TensorStartShapeVector, list(shape), b.PrependInt32)
        signature = (signatures or {}).get(name)
        signature_off = (
            _vector(b, Tensor.TensorStartShapeSignatureVector, list(signature), b.PrependInt32)
            if signature is not None
            else None
        )
        Tensor.TensorStart(b)
        Tensor.TensorAddShape(b, shape_off)
        if signature_off is not None:
            Tensor.TensorAddShapeSignature(b, signature_off)
        Tensor.TensorAddType(b, dtype)
        Tensor.TensorAddBuffer(b, buffer_of.get(name, 0))
        Tensor.TensorAddName(b, name_off)
        if quant_off is not None:
            Tensor.TensorAddQuantization(b, quant_off)
        tensor_offsets.append(Tensor.TensorEnd(b))

    codes: list = []
    op_offsets = []
    for opcode, ins, outs, options in operators:
        if opcode not in codes:
            codes.append(opcode)
        custom = isinstance(options, (bytes, bytearray))
        options_off = options[1](b) if isinstance(options, tuple) else None
        custom_off = b.CreateByteVector(bytes(options)) if custom else None
        ins_off = _vector(b, Operator.OperatorStartInputsVector, [index[n] for n in ins], b.PrependInt32)
        outs_off = _vector(b, Operator.OperatorStartOutputsVector, [index[n] for n in outs], b.PrependInt32)
        Operator.OperatorStart(b)
        Operator.OperatorAddOpcodeIndex(b, codes.index(opcode))
        Operator.OperatorAddInputs(b, ins_off)
        Operator.OperatorAddOutputs(b, outs_off)
        if options_off is not None:
            Operator.OperatorAddBuiltinOptionsType(b, options[0])
            Operator.OperatorAddBuiltinOptions(b, options_off)
        if custom_off is not None:
            Operator.OperatorAddCustomOptions(b, custom_off)  # CustomOptionsFormat 0: FLEXBUFFERS
        op_offsets.append(Operator.OperatorEnd(b))

    tensors_vec = _vector(b, SubGraph.SubGraphStartTensorsVector, tensor_offsets, b.PrependUOffsetTRelative)
    inputs_vec = _vector(b, SubGraph.SubGraphStartInputsVector, [index[n] for n in inputs], b.PrependInt32)
    outputs_vec = _vector(b, SubGraph.SubGraphStartOutputsVector, [index[n] for n in outputs], b.PrependInt32)
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
    for code in codes:
        custom_name = b.CreateString(code) if isinstance(code, str) else None
        builtin = BuiltinOperator.CUSTOM if custom_name is not None else code
        OperatorCode.OperatorCodeStart(b)
        OperatorCode.OperatorCodeAddDeprecatedBuiltinCode(b, min(builtin, 127))
        OperatorCode.OperatorCodeAddBuiltinCode(b, builtin)
        OperatorCode.OperatorCodeAddVersion(b, 1)
        if custom_name is not None:
            OperatorCode.OperatorCodeAddCustomCode(b, custom_name)
        code_offsets.append(OperatorCode.OperatorCodeEnd(b))

    codes_vec = _vector(b, Model.ModelStartOperatorCodesVector, code_offsets, b.PrependUOffsetTRelative)
    subgraphs_vec = _vector(b, Model.ModelStartSubgraphsVector, [subgraph], b.PrependUOffsetTRelative)
    buffers_vec = _vector(b, Model.ModelStartBuffersVector, buffer_offsets, b.PrependUOffsetTRelative)
    description = b.CreateString("edgefleet test model")
    Model.ModelStart(b)
    Model.ModelAddVersion(b, 3)
    Model.ModelAddOperatorCodes(b, codes_vec)
    Model.ModelAddSubgraphs(b, subgraphs_vec)
    Model.ModelAddDescription(b, description)
    Model.ModelAddBuffers(b, buffers_vec)
    b.Finish(Model.ModelEnd(b), file_identifier=b"TFL3")
    Path(path).write_bytes(bytes(b.Output()))
    return Path(path)


def _options(module: str, **fields):
    """(BuiltinOptions type, callback) writing tflite.<module> with fields set through its Add<Field> functions."""
    import importlib

    from tflite.BuiltinOptions import BuiltinOptions

    mod = importlib.import_module(f"tflite.{module}")

    def build(b) -> int:
        getattr(mod, f"{module}Start")(b)
        for field, value in fields.items():
            getattr(mod, f"{module}Add{field}")(b, value)
        return getattr(mod, f"{module}End")(b)

    return getattr(BuiltinOptions, module), build


def small_tflite_cnn(
    path: Path,
    *,
    classes: int = CLASSES,
    seed: int = 1,
    size: int = 16,
    dynamic_batch: bool = False,
    dynamic_size: bool = False,
) -> Path:
    """CONV_2D (8 ch, SAME, fused RELU) + MEAN over H,W + FULLY_CONNECTED + SOFTMAX, float32 NHWC 1xSxSx3."""
    from tflite.ActivationFunctionType import ActivationFunctionType as Act
    from tflite.BuiltinOperator import BuiltinOperator as Op
    from tflite.Padding import Padding
    from tflite.TensorType import TensorType as T

    rng = np.random.default_rng(seed)
    conv_w = rng.normal(0, 0.5, (8, 3, 3, 3)).astype(np.float32)  # OHWI
    conv_b = rng.normal(0, 0.1, (8,)).astype(np.float32)
    fc_w = rng.normal(0, 0.5, (classes, 8)).astype(np.float32)
    fc_b = rng.normal(0, 0.1, (classes,)).astype(np.float32)
    tensors = [
        ("input", [1, size, size, 3], T.FLOAT32, None, None),
        ("conv_w", [8, 3, 3, 3], T.FLOAT32, conv_w, None),
        ("conv_b", [8], T.FLOAT32, conv_b, None),
        ("conv", [1, size, size, 8], T.FLOAT32, None, None),
        ("axes", [2], T.INT32, np.array([1, 2], dtype=np.int32), None),
        ("mean", [1, 8], T.FLOAT32, None, None),
        ("fc_w", [classes, 8], T.FLOAT32, fc_w, None),
        ("fc_b", [classes], T.FLOAT32, fc_b, None),
        ("logits", [1, classes], T.FLOAT32, None, None),
        ("probs", [1, classes], T.FLOAT32, None, None),
    ]
    conv_opts = dict(
        Padding=Padding.SAME,
        StrideW=1,
        StrideH=1,
        DilationWFactor=1,
        DilationHFactor=1,
        FusedActivationFunction=Act.RELU,
    )
    ops = [
        (Op.CONV_2D, ["input", "conv_w", "conv_b"], ["conv"], _options("Conv2DOptions", **conv_opts)),
        (Op.MEAN, ["conv", "axes"], ["mean"], _options("ReducerOptions", KeepDims=False)),
        (
            Op.FULLY_CONNECTED,
            ["mean", "fc_w", "fc_b"],
            ["logits"],
            _options("FullyConnectedOptions", FusedActivationFunction=Act.NONE),
        ),
        (Op.SOFTMAX, ["logits"], ["probs"], _options("SoftmaxOptions", Beta=1.0)),
    ]
    spatial = -1 if dynamic_size else size
    signatures = {"input": [-1 if dynamic_batch else 1, spatial, spatial, 3]} if dynamic_batch or dynamic_size else None
    return write_tflite(path, tensors, ops, ["input"], ["probs"], signatures)


def int8_tflite_cnn(
    path: Path,
    *,
    classes: int = CLASSES,
    seed: int = 2,
    size: int = 16,
    float_io: bool = False,
    intermediates: bool = False,
    uint8_io: bool = False,
    mean_head: bool = False,
) -> Path:
    """A full-integer int8 CNN as TFLite's converter writes one: per-channel int8 CONV_2D (RELU) and
    DEPTHWISE_CONV_2D (RELU6), int8 ADD of the two, AVERAGE_POOL_2D, RESHAPE, per-tensor int8
    FULLY_CONNECTED, SOFTMAX (scale 1/256, zero point -128). int32 biases at input x weight scale.
    Int8 input and output, or with `float_io` float32 ones behind QUANTIZE / DEQUANTIZE.
    `intermediates` makes conv, dw, add, pool and logits graph outputs too, after probs.
    `uint8_io`: uint8 input and output behind QUANTIZE (uint8 <-> int8), as TensorFlow's converter
    writes with inference_input_type=tf.uint8. `mean_head`: int8 MEAN over H, W replaces the pool
    and reshape (MobileNet's head), an operator without an exact integer lowering here."""
    from tflite.ActivationFunctionType import ActivationFunctionType as Act
    from tflite.BuiltinOperator import BuiltinOperator as Op
    from tflite.Padding import Padding
    from tflite.TensorType import TensorType as T

    rng = np.random.default_rng(seed)
    ch = 8

    def q(scale, zp, axis=0):
        return {"scale": np.atleast_1d(scale).tolist(), "zero_point": np.atleast_1d(zp).tolist(), "axis": axis}

    def weights(shape, axis):
        w = rng.integers(-127, 128, shape).astype(np.int8)  # symmetric int8, as the converter writes
        scales = rng.uniform(0.002, 0.02, shape[axis]).astype(np.float32)
        return w, scales

    in_q = q(1 / 255, -128) if not float_io else q(0.0123, 3)
    conv_w, conv_s = weights((ch, 3, 3, 3), 0)
    dw_w, dw_s = weights((1, 3, 3, ch), 3)
    flat = ch if mean_head else ch * 16
    fc_w = rng.integers(-127, 128, (classes, flat)).astype(np.int8)
    fc_s = np.float32(0.0004)
    conv_q, dw_q, add_q, pool_q, fc_q = q(0.041, -128), q(0.0335, -128), q(0.057, -100), q(0.057, -100), q(0.047, 7)
    tensors = [
        ("input", [1, size, size, 3], T.FLOAT32 if float_io else T.INT8, None, None if float_io else in_q),
        ("conv_w", [ch, 3, 3, 3], T.INT8, conv_w, q(conv_s, [0] * ch, 0)),
        (
            "conv_b",
            [ch],
            T.INT32,
            rng.integers(-3000, 3000, ch).astype(np.int32),
            q(np.float32(in_q["scale"][0]) * conv_s, [0] * ch, 0),
        ),
        ("conv", [1, size, size, ch], T.INT8, None, conv_q),
        ("dw_w", [1, 3, 3, ch], T.INT8, dw_w, q(dw_s, [0] * ch, 3)),
        (
            "dw_b",
            [ch],
            T.INT32,
            rng.integers(-2000, 2000, ch).astype(np.int32),
            q(np.float32(conv_q["scale"][0]) * dw_s, [0] * ch, 0),
        ),
        ("dw", [1, size, size, ch], T.INT8, None, dw_q),
        ("add", [1, size, size, ch], T.INT8, None, add_q),
        ("pool", [1, 4, 4, ch], T.INT8, None, pool_q),
        ("shape", [2], T.INT32, np.array([1, ch * 16], np.int32), None),
        ("flat", [1, flat], T.INT8, None, pool_q),
        ("fc_w", [classes, flat], T.INT8, fc_w, q(fc_s, 0)),
        (
            "fc_b",
            [classes],
            T.INT32,
            rng.integers(-500, 500, classes).astype(np.int32),
            q(np.float32(pool_q["scale"][0]) * fc_s, 0),
        ),
        ("logits", [1, classes], T.INT8, None, fc_q),
        ("probs", [1, classes], T.FLOAT32 if float_io else T.INT8, None, None if float_io else q(1 / 256, -128)),
    ]
    conv_opts = dict(Padding=Padding.SAME, StrideW=1, StrideH=1, DilationWFactor=1, DilationHFactor=1)
    ops = [
        (
            Op.CONV_2D,
            ["input", "conv_w", "conv_b"],
            ["conv"],
            _options("Conv2DOptions", **conv_opts, FusedActivationFunction=Act.RELU),
        ),
        (
            Op.DEPTHWISE_CONV_2D,
            ["conv", "dw_w", "dw_b"],
            ["dw"],
            _options("DepthwiseConv2DOptions", **conv_opts, DepthMultiplier=1, FusedActivationFunction=Act.RELU6),
        ),
        (Op.ADD, ["conv", "dw"], ["add"], _options("AddOptions", FusedActivationFunction=Act.NONE)),
        (
            Op.AVERAGE_POOL_2D,
            ["add"],
            ["pool"],
            _options("Pool2DOptions", Padding=Padding.VALID, StrideW=4, StrideH=4, FilterWidth=4, FilterHeight=4),
        ),
        (Op.RESHAPE, ["pool", "shape"], ["flat"], None),
        (
            Op.FULLY_CONNECTED,
            ["flat", "fc_w", "fc_b"],
            ["logits"],
            _options("FullyConnectedOptions", FusedActivationFunction=Act.NONE),
        ),
        (
            Op.SOFTMAX,
            ["logits"],
            ["probs_q" if float_io or uint8_io else "probs"],
            _options("SoftmaxOptions", Beta=1.0),
        ),
    ]
    if mean_head:
        tensors.append(("axes", [2], T.INT32, np.array([1, 2], np.int32), None))
        ops[3:5] = [(Op.MEAN, ["add", "axes"], ["flat"], _options("ReducerOptions", KeepDims=False))]
    if uint8_io:
        io = {
            "input": ("input", [1, size, size, 3], T.UINT8, None, q(in_q["scale"][0], 0)),
            "probs": ("probs", [1, classes], T.UINT8, None, q(1 / 256, 0)),
        }
        tensors = [io.get(t[0], t) for t in tensors]
    if float_io or uint8_io:
        tensors += [
            ("input_q", [1, size, size, 3], T.INT8, None, in_q),
            ("probs_q", [1, classes], T.INT8, None, q(1 / 256, -128)),
        ]
        ops[0] = (ops[0][0], ["input_q", "conv_w", "conv_b"], ["conv"], ops[0][3])
        ops = [
            (Op.QUANTIZE, ["input"], ["input_q"], None),
            *ops,
            (Op.QUANTIZE if uint8_io else Op.DEQUANTIZE, ["probs_q"], ["probs"], None),
        ]
    extra = ["conv", "dw", "add", "flat" if mean_head else "pool", "logits"] if intermediates else []
    return write_tflite(path, tensors, ops, ["input"], ["probs", *extra])


def detection_tflite(
    path: Path,
    *,
    anchors: int = 64,
    classes: int = 3,
    max_detections: int = 10,
    regular_nms: bool = False,
    seed: int = 3,
) -> Path:
    """Box encodings [1, A, 4] and class scores [1, A, classes + 1 (background)] in, constant SSD anchors,
    the TFLite_Detection_PostProcess custom op out: boxes, classes, scores, num_detections (float32)."""
    from flatbuffers import flexbuffers
    from tflite.TensorType import TensorType as T

    rng = np.random.default_rng(seed)
    centers = rng.uniform(0.1, 0.9, (anchors, 2))
    sizes = rng.uniform(0.1, 0.4, (anchors, 2))
    anchor_values = np.concatenate([centers, sizes], axis=1).astype(np.float32)  # y, x, h, w
    options = flexbuffers.Dumps(
        {
            "max_detections": max_detections,
            "max_classes_per_detection": 1,
            "detections_per_class": max_detections,
            "use_regular_nms": regular_nms,
            "nms_score_threshold": 0.3,
            "nms_iou_threshold": 0.5,
            "num_classes": classes,
            "y_scale": 10.0,
            "x_scale": 10.0,
            "h_scale": 5.0,
            "w_scale": 5.0,
        }
    )
    tensors = [
        ("boxes", [1, anchors, 4], T.FLOAT32, None, None),
        ("scores", [1, anchors, classes + 1], T.FLOAT32, None, None),
        ("anchors", [anchors, 4], T.FLOAT32, anchor_values, None),
        ("detection_boxes", [1, max_detections, 4], T.FLOAT32, None, None),
        ("detection_classes", [1, max_detections], T.FLOAT32, None, None),
        ("detection_scores", [1, max_detections], T.FLOAT32, None, None),
        ("num_detections", [1], T.FLOAT32, None, None),
    ]
    outputs = ["detection_boxes", "detection_classes", "detection_scores", "num_detections"]
    ops = [("TFLite_Detection_PostProcess", ["boxes", "scores", "anchors"], outputs, bytes(options))]
    return write_tflite(path, tensors, ops, ["boxes", "scores"], outputs)


def litert_reference(model: Path, x: np.ndarray) -> np.ndarray:
    """The first output of a TFLite model on `x` by LiteRT's reference kernels (the ones a quantized
    package must equal; its default XNNPACK kernels round some requantizations differently)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interp = Interpreter(str(model), num_threads=1, experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    interp.allocate_tensors()
    interp.set_tensor(interp.get_input_details()[0]["index"], x)
    interp.invoke()
    return interp.get_tensor(interp.get_output_details()[0]["index"])
