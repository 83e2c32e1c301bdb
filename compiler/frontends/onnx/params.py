"""ONNX graph inputs that are really parameters: values TVM must know at compile time.

An exported model sometimes takes a Resize scale, a reduction's axes, TopK's k or a Pad's pads
as a graph input instead of an initializer. ONNX Runtime reads them at run time; TVM's
importer needs them as constants to know the output shapes. `parameter_inputs` finds the
graph inputs that feed such a position (directly or through nodes fed only by constants and
other such inputs), and `bind_inputs` turns given inputs into initializers, which is what
`edgefleet compile --constant-input NAME=VALUES` does.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from onnx import numpy_helper

from edgefleet.errors import UsageError

# operator -> input positions TVM 0.27's importer needs as constants (found with
# benchmarks/onnx_conformance.py: each is an "only constant ..." or "dynamic ... not supported"
# import error, or a known-wrong conversion, when the value arrives at run time).
CONSTANT_POSITIONS: dict[str, tuple[int, ...]] = {
    "AffineGrid": (1,),
    "CenterCropPad": (1,),
    "CumProd": (1,),
    "CumSum": (1,),
    "Expand": (1,),
    "MaxUnpool": (2,),
    "NonMaxSuppression": (2, 3, 4),
    "OneHot": (1, 2),
    "Pad": (1, 2, 3),
    "Reshape": (1,),
    "Resize": (1, 2, 3),
    "Split": (1,),
    "SplitToSequence": (1,),
    "TopK": (1,),
    "Upsample": (1,),
    **{
        op: (1,)
        for op in (
            "ReduceL1",
            "ReduceL2",
            "ReduceLogSum",
            "ReduceLogSumExp",
            "ReduceMax",
            "ReduceMean",
            "ReduceMin",
            "ReduceProd",
            "ReduceSum",
            "ReduceSumSquare",
        )
    },
}


def _graph_inputs(model) -> list[str]:
    initializers = {i.name for i in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in initializers]


def parameter_inputs(model) -> dict[str, list[str]]:
    """Graph input -> the `Operator input #i` positions it determines that need a constant.

    Only inputs whose value alone decides the position are listed (a position that also
    depends on a tensor computed from the image cannot be fixed by binding an input).
    """
    inputs = set(_graph_inputs(model))
    constants = {i.name for i in model.graph.initializer}
    producer = {out: node for node in model.graph.node for out in node.output if out}

    def sources(name: str, seen: set[str]) -> set[str] | None:
        """Graph inputs `name` is computed from, or None if it also depends on something else."""
        if name in inputs:
            return {name}
        if name in constants or not name:
            return set()
        node = producer.get(name)
        if node is None or name in seen:
            return None
        if node.op_type == "Constant":
            return set()
        if node.op_type == "Shape":  # a shape is known at compile time
            return set()
        found: set[str] = set()
        for value in node.input:
            upstream = sources(value, seen | {name})
            if upstream is None:
                return None
            found |= upstream
        return found

    needed: dict[str, list[str]] = {}
    for node in model.graph.node:
        for position in CONSTANT_POSITIONS.get(node.op_type, ()):
            if position < len(node.input) and node.input[position]:
                for name in sorted(sources(node.input[position], set()) or ()):
                    needed.setdefault(name, []).append(f"{node.op_type} input #{position}")
    return needed


def bind_inputs(model, values: Mapping[str, np.ndarray]):
    """A copy of `model` with the given graph inputs turned into initializers of these values."""
    by_name = {i.name: i for i in model.graph.input}
    real = set(_graph_inputs(model))
    unknown = sorted(set(values) - real)
    if unknown:
        raise UsageError(
            f"--constant-input names {', '.join(unknown)}, which the model does not take as an input",
            f"the model's inputs are: {', '.join(sorted(real))}",
        )
    bound = onnx.ModelProto()
    bound.CopyFrom(model)
    for name, value in values.items():
        tensor_type = by_name[name].type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        array = np.asarray(value)
        converted = array.astype(dtype)
        if not np.array_equal(converted, array):
            raise UsageError(
                f"--constant-input {name}: the values {array.tolist()} do not fit the input's type {np.dtype(dtype).name}",
                "give values of the input's type",
            )
        dims = [d.dim_value for d in tensor_type.shape.dim]
        if (
            tensor_type.HasField("shape")
            and len(dims) != converted.ndim
            and not (converted.ndim == 1 and len(dims) == 0 and converted.size == 1)
        ):
            raise UsageError(
                f"--constant-input {name}: {converted.ndim}-D values for a {len(dims)}-D input",
                "give as many values as the input holds",
            )
        if len(dims) == 0 and converted.size == 1:
            converted = converted.reshape(())
        bound.graph.initializer.append(numpy_helper.from_array(converted, name))
        kept = [i for i in bound.graph.input if i.name != name]
        del bound.graph.input[:]
        bound.graph.input.extend(kept)
    return bound


def parse_constant_input(option: str) -> tuple[str, np.ndarray]:
    """`NAME=V1,V2,...` (a 1-D list of numbers) or `NAME=@values.npy`, as given on the command line."""
    name, sep, text = option.partition("=")
    if not sep or not name or not text:
        raise UsageError(
            f"--constant-input {option!r} is not NAME=VALUES",
            "for example --constant-input axes=1,2 or --constant-input scales=@scales.npy",
        )
    if text.startswith("@"):
        try:
            return name, np.load(text[1:], allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise UsageError(
                f"--constant-input {name}: cannot read {text[1:]} ({exc})", "give a .npy file written by numpy.save"
            ) from None
    try:
        numbers = [
            float(v) if any(c in v for c in ".eE") or v.lower() in ("inf", "-inf", "nan") else int(v)
            for v in text.split(",")
        ]
    except ValueError:
        raise UsageError(
            f"--constant-input {name}: {text!r} is not comma-separated numbers", "for example --constant-input axes=1,2"
        ) from None
    return name, np.asarray(numbers)
