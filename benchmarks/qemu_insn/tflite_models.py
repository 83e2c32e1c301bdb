"""models/mobilenetv2.py's network written as a float32 TFLite flatbuffer, so LiteRT runs the same architecture.

Same weights and layers as the ONNX graph, in TFLite's layout (NHWC, OHWI / 1HWO weights),
Clip(0, 6) fused into the convolution as RELU6, GlobalAveragePool + Flatten as MEAN. Padding is
TFLite's SAME, which pads stride-2 layers at the bottom/right where the ONNX graph pads both
sides: the work is the same, the numbers differ from the ONNX model's, so compare the package
compiled from this file with LiteRT on this file. Uses the tests' flatbuffer writer
(tests/compiler/compiler_testlib.py, on the path in benchmarks/arm_instructions.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def mobilenetv2_tflite(path: Path, *, size: int = 224, width: float = 1.0, seed: int = 0) -> Path:
    import onnx
    from compiler_testlib import _options, write_tflite
    from onnx import numpy_helper
    from tflite.ActivationFunctionType import ActivationFunctionType as Act
    from tflite.BuiltinOperator import BuiltinOperator as Op
    from tflite.Padding import Padding
    from tflite.TensorType import TensorType as T

    from edgefleet.models.mobilenetv2 import build

    model = onnx.shape_inference.infer_shapes(build(size=size, width=width, seed=seed))
    graph = model.graph
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    nchw = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in [*graph.value_info, *graph.output]}
    clip_after = {n.input[0]: n.output[0] for n in graph.node if n.op_type == "Clip"}
    alias: dict[str, str] = {}  # ONNX names folded away (Clip into its conv, Flatten into MEAN)
    tensors = [("input", [1, size, size, 3], T.FLOAT32, None, None)]
    ops = []

    def activation(name: str) -> tuple[str, list[int]]:
        shape = nchw[name]
        tensors.append((name, [shape[0], *shape[2:], shape[1]] if len(shape) == 4 else shape, T.FLOAT32, None, None))
        return name, shape

    def const(name: str, array: np.ndarray) -> str:
        tensors.append((name, list(array.shape), T.FLOAT32, np.ascontiguousarray(array, np.float32), None))
        return name

    for node in graph.node:
        ins = [alias.get(i, i) for i in node.input]
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Conv":
            out = clip_after.get(node.output[0], node.output[0])
            alias[node.output[0]] = out
            activation(out)
            w, stride = consts[node.input[1]], attrs["strides"][0]
            fused = Act.RELU6 if node.output[0] in clip_after else Act.NONE
            common = dict(Padding=Padding.SAME, StrideW=stride, StrideH=stride, DilationWFactor=1, DilationHFactor=1, FusedActivationFunction=fused)
            if attrs.get("group", 1) == 1:
                weights = const(f"{out}_w", w.transpose(0, 2, 3, 1))  # OIHW -> OHWI
                ops.append((Op.CONV_2D, [ins[0], weights, const(f"{out}_b", consts[node.input[2]])], [out], _options("Conv2DOptions", **common)))
            else:
                weights = const(f"{out}_w", w.transpose(1, 2, 3, 0))  # C1HW -> 1HWC
                ops.append((Op.DEPTHWISE_CONV_2D, [ins[0], weights, const(f"{out}_b", consts[node.input[2]])], [out],
                            _options("DepthwiseConv2DOptions", DepthMultiplier=1, **common)))
        elif node.op_type == "Clip":
            continue
        elif node.op_type == "Add":
            out, _ = activation(node.output[0])
            ops.append((Op.ADD, ins, [out], _options("AddOptions", FusedActivationFunction=Act.NONE)))
        elif node.op_type == "GlobalAveragePool":
            channels = nchw[node.output[0]][1]
            out = node.output[0]
            tensors.append((out, [1, channels], T.FLOAT32, None, None))
            axes = f"{out}_axes"
            tensors.append((axes, [2], T.INT32, np.array([1, 2], np.int32), None))
            ops.append((Op.MEAN, [ins[0], axes], [out], _options("ReducerOptions", KeepDims=False)))
        elif node.op_type == "Flatten":
            alias[node.output[0]] = ins[0]
        elif node.op_type == "Gemm":
            out, _ = activation(node.output[0])
            ops.append((Op.FULLY_CONNECTED, [ins[0], const(f"{out}_w", consts[node.input[1]]), const(f"{out}_b", consts[node.input[2]])], [out],
                        _options("FullyConnectedOptions", FusedActivationFunction=Act.NONE)))
        else:
            raise ValueError(f"no TFLite form for {node.op_type}")
    return write_tflite(path, tensors, ops, ["input"], [graph.output[0].name])
