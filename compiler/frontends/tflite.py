"""TFLite models: parse with the `tflite` schema package, import into Relax, and run LiteRT as reference."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from edgefleet.errors import CorruptModelError, DynamicShapeError, UnsupportedOperatorsError
from edgefleet.package import TensorSpec

FORMAT = "tflite"
MAX_MODEL_BYTES = 2 * 1024**3
_TFLITE_DTYPES = {
    0: "float32",
    1: "float16",
    2: "int32",
    3: "uint8",
    4: "int64",
    6: "bool",
    7: "int16",
    9: "int8",
    10: "float64",
}


def load(path: Path):
    import tflite

    data = Path(path).read_bytes()
    if len(data) > MAX_MODEL_BYTES:
        raise CorruptModelError(
            f"{path} is {len(data)} bytes, over the 2 GiB flatbuffer limit", "shrink or quantize the model"
        )
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise CorruptModelError(
            f"{path} is not a TFLite flatbuffer (no TFL3 identifier)",
            "the file is truncated or not TFLite; re-export it",
        )
    try:
        model = tflite.Model.GetRootAsModel(data, 0)
        if model.SubgraphsLength() < 1:
            raise ValueError("no subgraphs")
        _ = [model.Subgraphs(0).Tensors(i).ShapeAsNumpy() for i in range(model.Subgraphs(0).TensorsLength())]
        _ = [model.Buffers(i).DataLength() for i in range(model.BuffersLength())]
    except Exception as exc:  # flatbuffers raises struct/index errors on truncated data
        raise CorruptModelError(
            f"{path} is a damaged TFLite flatbuffer ({type(exc).__name__}: {exc})", "re-export or re-download the model"
        ) from None
    return model


def _builtin_names() -> dict[int, str]:
    from tflite.BuiltinOperator import BuiltinOperator

    return {v: k for k, v in vars(BuiltinOperator).items() if not k.startswith("_")}


# Custom operators TVM's converter knows, under the name its operator table uses.
_CUSTOM_OPS = {"TFLite_Detection_PostProcess": "DETECTION_POSTPROCESS"}


def _code_names(model) -> list[str]:
    names = _builtin_names()
    codes = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        name = names.get(builtin, f"BUILTIN_{builtin}")
        if name == "CUSTOM":
            name = f"CUSTOM::{code.CustomCode().decode()}"
        codes.append(name)
    return codes


def operators(model) -> Counter:
    codes = _code_names(model)
    counts: Counter = Counter()
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        for o in range(graph.OperatorsLength()):
            counts[codes[graph.Operators(o).OpcodeIndex()]] += 1
    return counts


def supported_operators(model) -> set[str]:
    from edgefleet.compiler.tflite_quant import ExactQuantConverter

    # The converter builds its operator table in __init__; no graph is converted here.
    converter = ExactQuantConverter(model, model.Subgraphs(0), None, None)
    known = set(converter.convert_map)
    return known | {f"CUSTOM::{custom}" for custom, table_name in _CUSTOM_OPS.items() if table_name in known}


def unsupported(model) -> Counter:
    """Builtin (and custom) operators TVM's TFLite importer has no converter for."""
    known = supported_operators(model)
    return Counter({op: n for op, n in operators(model).items() if op not in known})


def approximated(model) -> Counter:
    """Quantized operators left to TVM's float lowering instead of TFLite's integer kernels,
    e.g. {"LOGISTIC (int8 quantized)": 1}: compiled, not refused; verification against LiteRT decides."""
    from edgefleet.compiler.tflite_quant import unexact_quantized_ops

    codes = _code_names(model)
    return unexact_quantized_ops(model, lambda op: codes[op.OpcodeIndex()])


def import_notes(model) -> list[str]:
    """What the compile prints about the import: quantized operators left to TVM's float lowering.

    They are compiled, not refused (TVM may well be close enough); verification against LiteRT
    decides, and its failure names the tolerance to loosen.
    """
    found = approximated(model)
    if not found:
        return []
    listed = ", ".join(f"{op} x{n}" for op, n in sorted(found.items()))
    return [
        f"TVM's float lowering of quantized operators, not TFLite's integer kernels: {listed}; "
        "LiteRT verification decides"
    ]


def refusal_fix() -> str:
    return (
        "replace those operators in the TensorFlow model before converting, or export the model to ONNX; "
        "`edgefleet compile --check` lists every operator"
    )


def _tensor(model, index: int):
    return model.Subgraphs(0).Tensors(index)


def input_specs(model, overrides: dict[str, list[int]], notices: list[str] | None = None) -> list[TensorSpec]:
    from edgefleet.compiler.frontends import batch_one

    graph = model.Subgraphs(0)
    specs, dynamic = [], []
    names = [_tensor(model, graph.Inputs(i)).Name().decode() for i in range(graph.InputsLength())]
    unknown = set(overrides) - set(names)
    if unknown:
        raise DynamicShapeError(
            f"--input-shape names {', '.join(sorted(unknown))}, which the model does not have",
            f"the model's inputs are: {', '.join(names)}",
        )
    for i in range(graph.InputsLength()):
        tensor = _tensor(model, graph.Inputs(i))
        name = tensor.Name().decode()
        dtype = _TFLITE_DTYPES.get(tensor.Type())
        if dtype is None:
            raise UnsupportedOperatorsError(
                f"input {name} has TFLite tensor type {tensor.Type()}, which edgefleet cannot feed",
                f"export the model with {', '.join(sorted(set(_TFLITE_DTYPES.values())))} inputs",
            )
        if name in overrides:
            specs.append(TensorSpec(name=name, shape=list(overrides[name]), dtype=dtype))
            continue
        signature = tensor.ShapeSignatureAsNumpy() if tensor.ShapeSignatureLength() else tensor.ShapeAsNumpy()
        shape = [int(d) for d in tensor.ShapeAsNumpy()]
        dims = [int(d) if int(d) >= 0 else None for d in signature]
        if (batch1 := batch_one(name, dims, str(list(map(int, signature))), notices)) is not None:
            specs.append(TensorSpec(name=name, shape=batch1, dtype=dtype))
            continue
        if any(int(d) < 0 for d in signature):
            dynamic.append(
                f"{name} {list(map(int, signature))} (e.g. --input-shape {name}:{','.join(str(max(d, 1)) for d in shape)})"
            )
            continue
        specs.append(TensorSpec(name=name, shape=shape, dtype=dtype))
    if dynamic:
        raise DynamicShapeError(
            f"dynamic input shape: {'; '.join(dynamic)}", "fix every input's shape with --input-shape NAME:D1,D2,..."
        )
    return specs


def to_relax(model, inputs: list[TensorSpec], notices: list[str] | None = None):
    """Import with edgefleet's exact integer converter; where it fails, with TVM's own converter
    (LiteRT verification then judges TVM's float lowering of the quantized operators)."""
    from tvm.relax.frontend.tflite import from_tflite
    from tvm.relax.frontend.tflite.tflite_frontend import OperatorConverter

    from edgefleet.compiler.tflite_quant import ExactQuantConverter

    shapes, dtypes = {s.name: tuple(s.shape) for s in inputs}, {s.name: s.dtype for s in inputs}
    try:
        return from_tflite(model, shape_dict=shapes, dtype_dict=dtypes, op_converter=ExactQuantConverter)
    except Exception as exc:  # TVM's converters raise many types; the stock path gets its chance
        reason = str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else type(exc).__name__
    if notices is not None:
        notices.append(f"edgefleet's exact integer import failed ({reason}); imported with TVM's own TFLite converter")
    return from_tflite(model, shape_dict=shapes, dtype_dict=dtypes, op_converter=OperatorConverter)


def _index_bound(model, graph, op, name: str, tensor_index: int) -> tuple[int, int] | None:
    """Inclusive bound an operator puts on the integer input `tensor_index` it reads, or None."""
    from tflite.GatherOptions import GatherOptions

    inputs = list(op.InputsAsNumpy())
    if name == "GATHER" and len(inputs) > 1 and inputs[1] == tensor_index:
        shape = graph.Tensors(int(inputs[0])).ShapeAsNumpy()
        options = GatherOptions()
        raw = op.BuiltinOptions()
        axis = 0
        if raw is not None:
            options.Init(raw.Bytes, raw.Pos)
            axis = options.Axis()
        return 0, max(int(shape[axis % len(shape)]) - 1, 0)
    if name == "EMBEDDING_LOOKUP" and inputs[0] == tensor_index:
        return 0, max(int(graph.Tensors(int(inputs[1])).ShapeAsNumpy()[0]) - 1, 0)
    if name in ("GATHER_ND", "ONE_HOT", "TOPK_V2", "RANGE", "FILL") and tensor_index in inputs:
        return 0, 0
    return None


def integer_input_ranges(path: Path, inputs: list[TensorSpec]) -> dict[str, tuple[int, int]]:
    """Valid values for integer graph inputs used as indices (GATHER, EMBEDDING_LOOKUP), so LiteRT accepts them."""
    if not any(np.dtype(s.dtype).kind in "iu" for s in inputs):
        return {}
    model = load(path)
    graph, codes = model.Subgraphs(0), _code_names(model)
    ranges: dict[str, tuple[int, int]] = {}
    for i in range(graph.InputsLength()):
        index = graph.Inputs(i)
        name = _tensor(model, index).Name().decode()
        ops = [graph.Operators(o) for o in range(graph.OperatorsLength())]
        bounds = [b for op in ops if (b := _index_bound(model, graph, op, codes[op.OpcodeIndex()], index)) is not None]
        if bounds:
            ranges[name] = (max(lo for lo, _ in bounds), max(min(hi for _, hi in bounds), 0))
    return ranges


def _quantized(path: Path) -> bool:
    """Whether any tensor of the model carries integer quantization parameters."""
    from edgefleet.compiler.tflite_quant import quant_params

    graph = load(path).Subgraphs(0)
    return any(quant_params(graph.Tensors(i)) is not None for i in range(graph.TensorsLength()))


def _interpreter(path: Path):
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError:  # the older package name
        from tflite_runtime.interpreter import Interpreter, OpResolverType
    # Quantized models run on LiteRT's reference kernels, whose integer arithmetic the package
    # reproduces: its optimized kernels (XNNPACK, ruy) round some requantizations differently, one
    # step per layer that deep networks carry to 9-12 steps at the output (int8 MobileNetV2).
    resolver = OpResolverType.BUILTIN_REF if _quantized(path) else OpResolverType.AUTO
    return Interpreter(model_path=str(path), experimental_op_resolver_type=resolver)


def reference_name() -> str:
    try:
        from importlib.metadata import version

        return f"ai-edge-litert {version('ai-edge-litert')} (reference kernels for quantized models)"
    except Exception:
        return "tflite-runtime"


def reference_run(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    interpreter = _interpreter(path)
    details = interpreter.get_input_details()
    for d in details:
        if list(d["shape"]) != list(feeds[d["name"]].shape):
            interpreter.resize_tensor_input(d["index"], feeds[d["name"]].shape)
    interpreter.allocate_tensors()
    for d in interpreter.get_input_details():
        interpreter.set_tensor(d["index"], feeds[d["name"]])
    interpreter.invoke()
    return [np.array(interpreter.get_tensor(d["index"])) for d in interpreter.get_output_details()]
