"""ONNX models: parse, list operators, import into Relax, and run onnxruntime as the reference.

This module is the frontend interface (compiler/frontends/__init__.py); the import path's parts
are its submodules, imported when used so that loading the frontend stays light:

- `params`            graph inputs that are really compile-time parameters (`--constant-input`)
- `rewrites`          graph rewrites before TVM's importer, and the refusals
- `resize`            Resize/Upsample as the per-axis matrices ONNX defines
- `converters`        edgefleet's importer (TVM's, with the converters below)
- `extra_converters`  operators TVM's importer lacks or converts with the wrong types
- `lowbit`            8-, 4- and 2-bit element types
- `index_inputs`      valid sample values for integer inputs used as indices (verification)
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from edgefleet.errors import CorruptModelError, DynamicShapeError, UnsupportedOperatorsError
from edgefleet.package import TensorSpec

FORMAT = "onnx"
# Protobuf cannot hold more than 2 GiB in one message; bigger models need external data.
MAX_MODEL_BYTES = 2 * 1024**3

_ONNX_DTYPES = {
    1: "float32",
    2: "uint8",
    3: "int8",
    4: "uint16",
    5: "int16",
    6: "int32",
    7: "int64",
    9: "bool",
    10: "float16",
    11: "float64",
    12: "uint32",
    13: "uint64",
    16: "bfloat16",
    # 8/4/2-bit types (compiled by compiler/frontends/onnx/lowbit.py)
    17: "float8_e4m3fn",
    18: "float8_e4m3fnuz",
    19: "float8_e5m2",
    20: "float8_e5m2fnuz",
    21: "uint4",
    22: "int4",
    23: "float4_e2m1fn",
    24: "float8_e8m0fnu",
    25: "uint2",
    26: "int2",
}


def load(path: Path):
    import onnx
    from google.protobuf.message import DecodeError

    size = Path(path).stat().st_size
    if size > MAX_MODEL_BYTES:
        raise CorruptModelError(
            f"{path} is {size} bytes, over ONNX's 2 GiB single-file limit",
            "save it with external data (onnx.save(..., save_as_external_data=True))",
        )
    if size == 0:
        raise CorruptModelError(f"{path} is empty", "re-export the model")
    try:
        model = onnx.load(str(path))
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:
        raise CorruptModelError(
            f"{path} is not a readable ONNX model ({type(exc).__name__}: {str(exc)[:200]})",
            "the file is truncated or not ONNX; re-export or re-download it",
        ) from None
    if not model.graph.node:
        raise CorruptModelError(
            f"{path} parses but holds no graph nodes (truncated or not ONNX)", "re-export or re-download the model"
        )
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx raises ValidationError and friends
        raise CorruptModelError(
            f"{path} fails ONNX's model checker: {str(exc).splitlines()[0][:300]}",
            "re-export the model with a current exporter",
        ) from None
    return model


def _op_name(node) -> str:
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"


def operators(model) -> Counter:
    counts: Counter = Counter()

    def walk(graph) -> None:
        for node in graph.node:
            counts[_op_name(node)] += 1
            for attr in node.attribute:
                if attr.g is not None and attr.g.node:
                    walk(attr.g)
                for sub in attr.graphs:
                    walk(sub)

    walk(model.graph)
    return counts


def supported_operators() -> set[str]:
    """Operators TVM's importer or edgefleet's converters (compiler/frontends/onnx/converters.py) convert."""
    from edgefleet.compiler.frontends.onnx.converters import supported

    return supported()


def _opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def unsupported(model) -> Counter:
    """Operators that cannot be compiled, and `Op (attribute)` entries for known-wrong conversions.

    An operator TVM lacks still counts as supported when ONNX defines it as a function of
    operators TVM has: `to_relax` expands it (compiler/frontends/onnx/rewrites.py).
    """
    from edgefleet.compiler.frontends.onnx.rewrites import expandable, rejections

    known = supported_operators()
    opset = _opset(model)
    missing = Counter({op: n for op, n in operators(model).items() if op not in known and not expandable(op, opset)})
    return missing + rejections(model) + _sequence_io(model)


def _sequence_io(model) -> Counter:
    """A package's inputs and outputs are tensors: sequences at the graph's edge cannot be carried."""

    def holds_sequence(tp) -> bool:
        kind = tp.WhichOneof("value")
        return kind == "sequence_type" or (kind == "optional_type" and holds_sequence(tp.optional_type.elem_type))

    edges = [vi for vi in list(model.graph.input) + list(model.graph.output) if holds_sequence(vi.type)]
    return Counter({"(graph input or output of sequence type)": len(edges)}) if edges else Counter()


def _real_inputs(model):
    initializers = {init.name for init in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initializers]


def input_specs(model, overrides: dict[str, list[int]], notices: list[str] | None = None) -> list[TensorSpec]:
    from edgefleet.compiler.frontends import batch_one

    specs: list[TensorSpec] = []
    dynamic: list[str] = []
    inputs = _real_inputs(model)
    unknown = set(overrides) - {i.name for i in inputs}
    if unknown:
        names = ", ".join(i.name for i in inputs)
        raise DynamicShapeError(
            f"--input-shape names {', '.join(sorted(unknown))}, which the model does not have",
            f"the model's inputs are: {names}",
        )
    for inp in inputs:
        tensor = inp.type.tensor_type
        dtype = _ONNX_DTYPES.get(tensor.elem_type, "float32")
        if inp.name in overrides:
            specs.append(TensorSpec(name=inp.name, shape=list(overrides[inp.name]), dtype=dtype))
            continue
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor.shape.dim]
        shown = ",".join(str(d) if d else "?" for d in dims) or "?"
        if tensor.HasField("shape") and (batch1 := batch_one(inp.name, dims, f"[{shown}]", notices)):
            dims = batch1
        if not tensor.HasField("shape") or any(d is None for d in dims):
            suggestion = ",".join(str(d) if d else "1" for d in dims) or "1,3,224,224"
            dynamic.append(f"{inp.name} [{shown}] (e.g. --input-shape {inp.name}:{suggestion})")
            continue
        specs.append(TensorSpec(name=inp.name, shape=dims, dtype=dtype))
    if dynamic:
        raise DynamicShapeError(
            f"dynamic input shape: {'; '.join(dynamic)}", "fix every input's shape with --input-shape NAME:D1,D2,..."
        )
    return specs


def plain_import(model, inputs: list[TensorSpec]):
    """TVM's ONNX importer as it ships, without edgefleet's rewrites (the conformance baseline)."""
    from tvm.relax.frontend.onnx import from_onnx

    shapes = {s.name: s.shape for s in inputs}
    dtypes = {s.name: s.dtype for s in inputs}
    return from_onnx(model, shape_dict=shapes, dtype_dict=dtypes, keep_params_in_input=False)


def prepare(model, input_shapes: dict[str, list[int]]):
    """The rewrites edgefleet applies before TVM's importer (a copy; `model` is not changed)."""
    import onnx

    from edgefleet.compiler.frontends.onnx.rewrites import (
        cast_shape_values,
        conv_transpose_output_shape,
        exact_resize,
        expand_functions,
        fold_constants,
        nms_strict_iou,
        normalize_constants,
        normalize_resize,
    )

    prepared = onnx.ModelProto()
    prepared.CopyFrom(model)
    normalize_constants(prepared)
    for _ in range(4):  # a function body may use another function-defined operator
        expanded = expand_functions(prepared, supported_operators())
        if expanded is prepared:
            break
        prepared = expanded
    normalize_constants(prepared)  # expanded function bodies use the value_* forms too
    prepared = fold_constants(prepared, input_shapes)
    prepared = conv_transpose_output_shape(prepared, input_shapes)
    prepared = exact_resize(prepared, input_shapes)
    prepared = normalize_resize(prepared, input_shapes)
    cast_shape_values(prepared)
    nms_strict_iou(prepared)
    return prepared


def to_relax(model, inputs: list[TensorSpec], notices: list[str] | None = None):
    """Rewrite (see `prepare`) and import with edgefleet's importer (compiler/frontends/onnx/converters.py)."""
    from edgefleet.compiler.frontends.onnx.converters import from_onnx
    from edgefleet.compiler.frontends.onnx.params import parameter_inputs
    from edgefleet.compiler.frontends.onnx.rewrites import RUNTIME_RULES, rejections, shape_rejections

    needed = parameter_inputs(model)
    if needed:
        listed = "; ".join(f"{name} ({', '.join(sorted(set(where)))})" for name, where in sorted(needed.items()))
        flags = " ".join(f"--constant-input {name}=VALUES" for name in sorted(needed))
        raise UnsupportedOperatorsError(
            f"these inputs set values TVM needs at compile time: {listed}",
            f"give their values: {flags} (comma-separated, or =@file.npy)",
        )
    shapes = {s.name: s.shape for s in inputs}
    dtypes = {s.name: s.dtype for s in inputs}
    prepared = prepare(model, shapes)
    refused = rejections(prepared, RUNTIME_RULES) + shape_rejections(prepared, shapes)
    if refused:
        listed = ", ".join(f"{op} x{n}" for op, n in sorted(refused.items()))
        raise UnsupportedOperatorsError(
            f"TVM would compute these operators wrongly: {listed}",
            "make those inputs constants in the exported model (e.g. fixed shapes, export with constant folding)",
        )
    return from_onnx(prepared, shapes, dtypes)


def integer_input_ranges(path: Path, inputs: list[TensorSpec]) -> dict[str, tuple[int, int]]:
    """Valid values for integer inputs used as indices (compiler/frontends/onnx/index_inputs.py)."""
    from edgefleet.compiler.frontends.onnx.index_inputs import integer_input_ranges as ranges

    if not any(np.dtype(s.dtype).kind in "iu" for s in inputs):
        return {}
    return ranges(load(path), inputs)


def reference_name() -> str:
    import onnxruntime

    return f"onnxruntime {onnxruntime.__version__}"


def reference_run(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return [np.asarray(o) for o in session.run(None, feeds)]
