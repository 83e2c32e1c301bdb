"""models/mobilenetv2.py's network written as TFLite flatbuffers (float32 and full-integer int8), so LiteRT runs the same architecture.

Same weights and layers as the ONNX graph, in TFLite's layout (NHWC, OHWI / 1HWO weights),
Clip(0, 6) fused into the convolution as RELU6. Padding is TFLite's SAME, which pads stride-2
layers at the bottom/right where the ONNX graph pads both sides: the work is the same, the
numbers differ from the ONNX model's, so compare the package compiled from this file with LiteRT
on this file. The int8 model is what TFLite's converter writes for full-integer quantization:
per-channel symmetric int8 weights, int32 biases at input x weight scale, per-tensor activation
ranges calibrated on the float model (LiteRT, random images), int8 input (scale 1/255, zero point
-128) and output; the head is AVERAGE_POOL_2D + RESHAPE. Uses the tests' flatbuffer writer
(tests/compiler/compiler_testlib.py, on the path in benchmarks/arm_instructions.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class Layer:
    kind: str  # conv | depthwise | add | pool | fc
    inputs: list[str]
    output: str
    shape: list[int]  # NHWC, or [1, classes]
    weight: np.ndarray | None = None  # OHWI, 1HWC or [out, in]
    bias: np.ndarray | None = None
    attrs: dict = field(default_factory=dict)


def _layers(size: int, width: float, seed: int) -> list[Layer]:
    import onnx
    from onnx import numpy_helper

    from edgefleet.models.mobilenetv2 import build

    graph = onnx.shape_inference.infer_shapes(build(size=size, width=width, seed=seed)).graph
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    nchw = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in [*graph.value_info, *graph.output]}
    clip_after = {n.input[0]: n.output[0] for n in graph.node if n.op_type == "Clip"}
    alias: dict[str, str] = {}  # ONNX names folded away (Clip into its conv, Flatten into the pool)
    layers = []
    for node in graph.node:
        ins = [alias.get(i, i) for i in node.input]
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Conv":
            out = alias[node.output[0]] = clip_after.get(node.output[0], node.output[0])
            n, c, h, w = nchw[out]
            weight = consts[node.input[1]]
            depthwise = attrs.get("group", 1) != 1
            layers.append(
                Layer(
                    "depthwise" if depthwise else "conv",
                    ins[:1],
                    out,
                    [n, h, w, c],
                    weight.transpose(1, 2, 3, 0) if depthwise else weight.transpose(0, 2, 3, 1),
                    consts[node.input[2]],
                    {"stride": attrs["strides"][0], "relu6": node.output[0] in clip_after},
                )
            )
        elif node.op_type == "Add":
            n, c, h, w = nchw[node.output[0]]
            layers.append(Layer("add", ins, node.output[0], [n, h, w, c]))
        elif node.op_type == "GlobalAveragePool":
            n, c, h, w = nchw[ins[0]]
            layers.append(Layer("pool", ins, node.output[0], [1, c], attrs={"window": h}))
        elif node.op_type == "Flatten":
            alias[node.output[0]] = ins[0]
        elif node.op_type == "Gemm":
            layers.append(
                Layer("fc", ins, node.output[0], nchw[node.output[0]], consts[node.input[1]], consts[node.input[2]])
            )
        elif node.op_type != "Clip":
            raise ValueError(f"no TFLite form for {node.op_type}")
    return layers


def _write(path: Path, layers: list[Layer], size: int, ranges: dict[str, tuple[float, float]] | None) -> Path:
    """The flatbuffer: float32 when `ranges` is None, else int8 with those activation ranges."""
    from compiler_testlib import _options, write_tflite
    from tflite.ActivationFunctionType import ActivationFunctionType as Act
    from tflite.BuiltinOperator import BuiltinOperator as Op
    from tflite.Padding import Padding
    from tflite.TensorType import TensorType as T

    act_type = T.FLOAT32 if ranges is None else T.INT8
    qparams: dict[str, tuple[float, int]] = {"input": (1 / 255, -128)}

    def q(scale, zero, axis=0):
        return {"scale": np.atleast_1d(scale).tolist(), "zero_point": np.atleast_1d(zero).tolist(), "axis": axis}

    def activation(name: str, shape: list[int], relu6: bool = False) -> None:
        quant = None
        if ranges is not None:
            lo, hi = (0.0, 6.0) if relu6 else ranges[name]
            lo, hi = min(lo, 0.0), max(hi, 0.0)
            scale = max(hi - lo, 1e-6) / 255
            qparams[name] = (scale, int(np.clip(round(-128 - lo / scale), -128, 127)))
            quant = q(*qparams[name])
        tensors.append((name, shape, act_type, None, quant))

    def weights(layer: Layer, axis: int) -> list[str]:
        name = layer.output
        if ranges is None:
            tensors.append((f"{name}_w", list(layer.weight.shape), T.FLOAT32, layer.weight.astype(np.float32), None))
            tensors.append((f"{name}_b", list(layer.bias.shape), T.FLOAT32, layer.bias.astype(np.float32), None))
        else:
            moved = np.moveaxis(layer.weight, axis, 0).reshape(layer.weight.shape[axis], -1)
            scales = np.maximum(np.abs(moved).max(axis=1), 1e-8) / 127
            shape = [1] * layer.weight.ndim
            shape[axis] = -1
            w = np.clip(np.round(layer.weight / scales.reshape(shape)), -127, 127).astype(np.int8)
            bias_scales = qparams[layer.inputs[0]][0] * scales
            tensors.append((f"{name}_w", list(w.shape), T.INT8, w, q(scales, [0] * len(scales), axis)))
            tensors.append(
                (
                    f"{name}_b",
                    [len(scales)],
                    T.INT32,
                    np.round(layer.bias / bias_scales).astype(np.int32),
                    q(bias_scales, [0] * len(scales)),
                )
            )
        return [layer.inputs[0], f"{name}_w", f"{name}_b"]

    tensors = [("input", [1, size, size, 3], act_type, None, q(1 / 255, -128) if ranges is not None else None)]
    ops = []
    for layer in layers:
        if layer.kind in ("conv", "depthwise"):
            activation(layer.output, layer.shape, layer.attrs["relu6"])
            stride = layer.attrs["stride"]
            common = dict(
                Padding=Padding.SAME,
                StrideW=stride,
                StrideH=stride,
                DilationWFactor=1,
                DilationHFactor=1,
                FusedActivationFunction=Act.RELU6 if layer.attrs["relu6"] else Act.NONE,
            )
            if layer.kind == "conv":
                ops.append((Op.CONV_2D, weights(layer, 0), [layer.output], _options("Conv2DOptions", **common)))
            else:
                ops.append(
                    (
                        Op.DEPTHWISE_CONV_2D,
                        weights(layer, 3),
                        [layer.output],
                        _options("DepthwiseConv2DOptions", DepthMultiplier=1, **common),
                    )
                )
        elif layer.kind == "add":
            activation(layer.output, layer.shape)
            ops.append((Op.ADD, layer.inputs, [layer.output], _options("AddOptions", FusedActivationFunction=Act.NONE)))
        elif layer.kind == "pool" and ranges is None:
            tensors.append((f"{layer.output}_axes", [2], T.INT32, np.array([1, 2], np.int32), None))
            activation(layer.output, layer.shape)
            ops.append(
                (
                    Op.MEAN,
                    [layer.inputs[0], f"{layer.output}_axes"],
                    [layer.output],
                    _options("ReducerOptions", KeepDims=False),
                )
            )
        elif layer.kind == "pool":
            # Averaging keeps the input's scale: the converter gives the pool and reshape the input's parameters.
            window, channels = layer.attrs["window"], layer.shape[1]
            qparams[layer.output] = qparams[f"{layer.output}_4d"] = qparams[layer.inputs[0]]
            tensors.append((f"{layer.output}_4d", [1, 1, 1, channels], T.INT8, None, q(*qparams[layer.inputs[0]])))
            tensors.append((f"{layer.output}_shape", [2], T.INT32, np.array([1, channels], np.int32), None))
            tensors.append((layer.output, [1, channels], T.INT8, None, q(*qparams[layer.inputs[0]])))
            ops.append(
                (
                    Op.AVERAGE_POOL_2D,
                    layer.inputs,
                    [f"{layer.output}_4d"],
                    _options(
                        "Pool2DOptions",
                        Padding=Padding.VALID,
                        StrideW=window,
                        StrideH=window,
                        FilterWidth=window,
                        FilterHeight=window,
                    ),
                )
            )
            ops.append((Op.RESHAPE, [f"{layer.output}_4d", f"{layer.output}_shape"], [layer.output], None))
        else:
            activation(layer.output, layer.shape)
            ops.append(
                (
                    Op.FULLY_CONNECTED,
                    weights(layer, 0),
                    [layer.output],
                    _options("FullyConnectedOptions", FusedActivationFunction=Act.NONE),
                )
            )
    return write_tflite(path, tensors, ops, ["input"], [layers[-1].output])


def _calibrate(float_model: Path, layers: list[Layer], size: int, images: int = 4) -> dict[str, tuple[float, float]]:
    """Each activation's (min, max) over a few random images, from LiteRT on the float model."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(str(float_model), num_threads=1, experimental_preserve_all_tensors=True)
    interp.allocate_tensors()
    index = {d["name"]: d["index"] for d in interp.get_tensor_details()}
    rng = np.random.default_rng(0)
    ranges: dict[str, tuple[float, float]] = {}
    for _ in range(images):
        interp.set_tensor(index["input"], rng.random((1, size, size, 3), dtype=np.float32))
        interp.invoke()
        for layer in layers:
            values = interp.get_tensor(index[layer.output])
            lo, hi = ranges.get(layer.output, (np.inf, -np.inf))
            ranges[layer.output] = (min(lo, float(values.min())), max(hi, float(values.max())))
    return ranges


def mobilenetv2_tflite(path: Path, *, size: int = 224, width: float = 1.0, seed: int = 0, int8: bool = False) -> Path:
    layers = _layers(size, width, seed)
    if not int8:
        return _write(path, layers, size, None)
    float_model = _write(path.with_suffix(".float.tflite"), layers, size, None)
    return _write(path, layers, size, _calibrate(float_model, layers, size))
