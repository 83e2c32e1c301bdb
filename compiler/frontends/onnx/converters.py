"""edgefleet's additions to TVM's Relax ONNX importer, without patching TVM.

`EdgefleetImporter` subclasses TVM's `ONNXGraphImporter`: operators listed in `CONVERTERS` are
converted here (they replace TVM's converter where TVM's result differs from ONNX's), all others
go to TVM's. Graph outputs that TVM represents as a shape value (e.g. a Shape node's output)
are returned as int64 tensors, as ONNX specifies.
"""

from __future__ import annotations

from collections.abc import Callable

from tvm import relax
from tvm.relax.frontend.onnx import onnx_frontend as tvm_onnx

from edgefleet.compiler.frontends.onnx import extra_converters, lowbit
from edgefleet.errors import EdgefleetError, UnsupportedOperatorsError


def _is_inf(bb, inputs, attr, opset):
    # TVM's converter ignores detect_positive / detect_negative. One-sided checks compare with
    # the infinity itself (no boolean `and`, which the CPU pipeline's vectorizer mistypes).
    x = inputs[0]
    positive, negative = attr.get("detect_positive", 1), attr.get("detect_negative", 1)
    if positive and negative:
        return relax.op.isinf(x)
    dtype = str(x.ty.dtype)
    if positive:
        return relax.op.equal(x, relax.const(float("inf"), dtype))
    if negative:
        return relax.op.equal(x, relax.const(float("-inf"), dtype))
    return relax.op.zeros_like(x, "bool")


def _bit_shift(bb, inputs, attr, opset):
    # ONNX defines shifts by >= the bit width (and negative ones) as 0; LLVM leaves them undefined.
    x, y = inputs
    dtype = str(x.ty.dtype)
    bits = int("".join(ch for ch in dtype if ch.isdigit()))
    op = relax.op.left_shift if attr.get("direction", b"LEFT") == b"LEFT" else relax.op.right_shift
    in_range = relax.op.logical_and(
        relax.op.less(y, relax.const(bits, dtype)), relax.op.greater_equal(y, relax.const(0, dtype))
    )
    safe_y = relax.op.where(in_range, y, relax.const(0, dtype))
    overflow = relax.op.zeros_like(x)
    if attr.get("direction", b"LEFT") != b"LEFT" and not dtype.startswith("u"):
        # An arithmetic right shift past the width leaves only the sign: -1 for negative x.
        overflow = relax.op.where(
            relax.op.less(x, relax.const(0, dtype)), relax.op.full_like(x, relax.const(-1, dtype)), overflow
        )
    return relax.op.where(in_range, op(x, safe_y), overflow)


def _softplus_expr(x):
    # TVM's log(1 + exp(x)) loses small values (rel. error 1e-3 near x = -8): far left use the
    # series e - e^2/2 (e = exp(x)), far right x itself.
    dtype = str(x.ty.dtype)
    e = relax.op.exp(x)
    series = relax.op.subtract(e, relax.op.multiply(relax.op.multiply(e, e), relax.const(0.5, dtype)))
    value = relax.op.where(
        relax.op.less(x, relax.const(-4.0, dtype)), series, relax.op.log(relax.op.add(e, relax.const(1.0, dtype)))
    )
    return relax.op.where(relax.op.greater(x, relax.const(20.0, dtype)), x, value)


def _softplus(bb, inputs, attr, opset):
    return _softplus_expr(inputs[0])


def _mish(bb, inputs, attr, opset):
    return relax.op.multiply(inputs[0], relax.op.tanh(_softplus_expr(inputs[0])))


def _pow(bb, inputs, attr, opset):
    # ONNX allows an exponent of another type (the result has the base's type); TVM wants one
    # type and floats only, so integer powers are computed in float64 and cast back.
    x, y = inputs
    dtype = str(x.ty.dtype)
    if dtype.startswith(("float", "bfloat")):
        return relax.op.power(x, relax.op.astype(y, dtype) if str(y.ty.dtype) != dtype else y)
    wide = relax.op.power(relax.op.astype(x, "float64"), relax.op.astype(y, "float64"))
    return relax.op.astype(relax.op.round(wide), dtype)


def _prelu(bb, inputs, attr, opset):
    # Slope broadcasts to x numpy-style (unidirectional); TVM's converter assumes a channel slope.
    x, slope = inputs
    x_shape = [int(d) for d in x.ty.shape.values] if x.ty.shape is not None else []
    s_shape = [int(d) for d in slope.ty.shape.values] if slope.ty.shape is not None else []
    if (
        len(s_shape) == 1
        and len(x_shape) > 2
        and s_shape[0] != 1
        and s_shape[0] == x_shape[1]
        and (opset < 7 or s_shape[0] != x_shape[-1])
    ):
        # Opset < 7 PRelu (old PyTorch exports) has one slope per channel (axis 1).
        slope = relax.op.reshape(slope, [s_shape[0]] + [1] * (len(x_shape) - 2))
    return relax.op.where(relax.op.less(x, relax.const(0, str(x.ty.dtype))), relax.op.multiply(x, slope), x)


Converter = Callable[..., relax.Expr]
CONVERTERS: dict[str, Converter] = {
    "IsInf": _is_inf,
    "BitShift": _bit_shift,
    "Mish": _mish,
    "Softplus": _softplus,
    "Pow": _pow,
    "PRelu": _prelu,
    **extra_converters.CONVERTERS,
}


class EdgefleetImporter(tvm_onnx.ONNXGraphImporter):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._lowbit = lowbit.LowbitImport(self.bb)

    def _convert_operator(self, op_name, inputs, attrs, opset):
        try:
            return self._convert(op_name, inputs, attrs, opset)
        except EdgefleetError:
            raise
        except Exception as exc:  # TVM's converters raise KeyError, AttributeError, ... on what they cannot map
            fix = "see docs/operators.md; simplify the model (onnxslim) or export it with another opset"
            raise UnsupportedOperatorsError(converter_failure(op_name, attrs, exc), fix) from None

    def _convert(self, op_name, inputs, attrs, opset):
        # 8/4/2-bit types: edgefleet's own conversions (compiler/frontends/onnx/lowbit.py).
        if op_name in lowbit.OPERATORS and self._lowbit.involved(op_name, inputs, attrs):
            return self._lowbit.convert(op_name, inputs, attrs)
        if op_name == "Constant" and "value" in attrs and lowbit.type_name(attrs["value"].data_type) in lowbit.TYPES:
            return self._lowbit.constant(attrs["value"])
        converter = CONVERTERS.get(op_name)
        if converter is not None:
            return self.bb.normalize(converter(self.bb, inputs, attrs, opset))
        if op_name in ("ReduceMax", "ReduceMin") and str(getattr(inputs[0].ty, "dtype", "")).startswith(
            ("float", "bfloat")
        ):
            return self._reduce_extreme(op_name, inputs, attrs, opset)
        return super()._convert_operator(op_name, inputs, attrs, opset)

    def _check_for_unsupported_ops(self, graph) -> None:
        # TVM's check knows only its own converter map; edgefleet's converters add operators.
        import onnx

        theirs = onnx.GraphProto()
        theirs.node.extend(n for n in graph.node if n.op_type not in CONVERTERS)
        super()._check_for_unsupported_ops(theirs)

    def _reduce_extreme(self, op_name, inputs, attrs, opset):
        # TVM starts max (min) reductions at the lowest (highest) finite value, so a row of
        # -inf (+inf), or an empty one, gives that value where ONNX gives the infinity.
        # Where no element is finite-or-beyond, put the infinity back.
        x = inputs[0]
        dtype = str(x.ty.dtype)
        result = self.bb.normalize(super()._convert_operator(op_name, inputs, attrs, opset))
        inf = float("-inf") if op_name == "ReduceMax" else float("inf")
        beyond = relax.op.greater if op_name == "ReduceMax" else relax.op.less
        indicator = self.bb.normalize(
            relax.op.where(beyond(x, relax.const(inf, dtype)), relax.const(1.0, dtype), relax.const(0.0, dtype))
        )
        found = self.bb.normalize(super()._convert_operator("ReduceMax", [indicator, *inputs[1:]], attrs, opset))
        return self.bb.normalize(
            relax.op.where(relax.op.less(found, relax.const(0.5, dtype)), relax.const(inf, dtype), result)
        )

    def _parse_array(self, tensor_proto):
        # A low-bit initializer becomes a constant in its carried form (one element per byte).
        if lowbit.type_name(tensor_proto.data_type) in lowbit.TYPES:
            import tvm

            return tvm.runtime.tensor(lowbit.carry(tensor_proto))
        return super()._parse_array(tensor_proto)

    def _parse_graph_initializers(self, graph) -> None:
        super()._parse_graph_initializers(graph)
        for init in graph.initializer:
            onnx_type = lowbit.type_name(init.data_type)
            if onnx_type in lowbit.TYPES:
                self._lowbit.carried[self._nodes[init.name]] = onnx_type

    def _construct_nodes(self, graph) -> None:
        # Low-bit values are carried one element per byte inside the model (lowbit.py).
        for name, value in self._inputs.items():
            self._nodes[name] = self._lowbit.carried_form(value)
        super()._construct_nodes(graph)
        for output in graph.output:
            value = self._nodes.get(output.name)
            if value in self._lowbit.carried:
                self._nodes[output.name] = self._lowbit.to_boundary(value)
            elif isinstance(value, relax.Expr) and isinstance(value.ty, relax.ShapeType):
                self._nodes[output.name] = self.bb.normalize(relax.op.shape_to_tensor(value))


def _shown(value) -> str | None:
    """An attribute value short enough to name in a message, else None."""
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    if isinstance(value, (int, float, str)):
        return str(value)
    if isinstance(value, (list, tuple)) and len(value) <= 8 and all(isinstance(v, (int, float)) for v in value):
        return ",".join(map(str, value))
    return None


def converter_failure(op_name: str, attrs: dict, exc: Exception) -> str:
    """What failed, in the model's terms: the operator, its attributes, and TVM's reason in plain words.

    TVM's converters index attributes and constants directly, so their errors read like
    "'to'" (a KeyError) or "'GenericConst' object has no attribute 'tolist'"; say what they mean.
    """
    shown = [f"{k}={text}" for k in sorted(attrs) if (text := _shown(attrs[k])) is not None]
    where = f"{op_name} ({', '.join(shown)})" if shown else op_name
    text = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, KeyError):
        name = text.strip(chr(39))
        return f"{where}: TVM's converter needs the attribute {name}, which the node leaves to its default"
    if "GenericConst" in text or "no value in Constant" in text or "tolist" in text:
        return (
            f"{where}: TVM's converter could not read an input it needs at compile time "
            "(a shape, sizes or axes) as a constant"
        )
    if "NoneType" in text or "has no len()" in text:
        return f"{where}: TVM's converter could not work out the shape or length of an input at compile time"
    return f"{where}: TVM's converter failed: {text[:300]}"


def supported() -> set[str]:
    # If and Constant are handled by the importer itself, not through its converter map.
    return set(tvm_onnx._get_convert_map()) | set(CONVERTERS) | {"If", "Constant"}


def from_onnx(model, shape_dict: dict, dtype_dict: dict):
    """TVM's `from_onnx` with EdgefleetImporter (same checks and opset detection)."""
    if model.ir_version < 3:
        raise ValueError(f"Model IR version {model.ir_version} not supported. Must be at least after 1.1.0.")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    importer = EdgefleetImporter(shape_dict, dtype_dict, keep_params_in_input=False, sanitize=True)
    return importer.from_onnx(model.graph, opset)
