"""Converters for ONNX operators TVM 0.27's importer lacks or converts with the wrong types.

Each takes (block builder, Relax inputs, attributes, opset) like TVM's converters and is
registered in `converters.CONVERTERS`. Values these need at compile time (CumProd's axis,
OneHot's depth and values) are constants after import: parameter inputs are bound with
`--constant-input` (compiler/frontends/onnx/params.py).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, te, tirx

from edgefleet.errors import UnsupportedOperatorsError


def _constant(expr: relax.Expr, what: str) -> np.ndarray:
    if not isinstance(expr, tvm.ir.expr.GenericConst):
        raise UnsupportedOperatorsError(
            f"{what} is computed at run time; TVM needs it at compile time",
            "give it with --constant-input NAME=VALUES, or make it an initializer",
        )
    return expr.value.numpy()


def _half(x: relax.Expr) -> relax.Expr:
    return relax.const(0.5, str(x.ty.dtype))


def _cosh(bb, inputs, attr, opset):
    x = inputs[0]
    return relax.op.multiply(relax.op.add(relax.op.exp(x), relax.op.exp(relax.op.negative(x))), _half(x))


def _sinh(bb, inputs, attr, opset):
    x = inputs[0]
    return relax.op.multiply(relax.op.subtract(relax.op.exp(x), relax.op.exp(relax.op.negative(x))), _half(x))


def _elu(bb, inputs, attr, opset):
    # TVM's Elu/Selu converters build float32 constants, which float16/bfloat16 inputs reject.
    x = inputs[0]
    dtype = str(x.ty.dtype)
    negative = relax.op.multiply(
        relax.const(float(attr.get("alpha", 1.0)), dtype), relax.op.subtract(relax.op.exp(x), relax.const(1.0, dtype))
    )
    return relax.op.where(relax.op.greater(x, relax.const(0.0, dtype)), x, negative)


def _selu(bb, inputs, attr, opset):
    x = inputs[0]
    dtype = str(x.ty.dtype)
    alpha, gamma = (
        float(attr.get("alpha", 1.67326319217681884765625)),
        float(attr.get("gamma", 1.05070102214813232421875)),
    )
    negative = relax.op.multiply(relax.const(alpha, dtype), relax.op.subtract(relax.op.exp(x), relax.const(1.0, dtype)))
    return relax.op.multiply(
        relax.const(gamma, dtype), relax.op.where(relax.op.greater(x, relax.const(0.0, dtype)), x, negative)
    )


def _lp_normalization(bb, inputs, attr, opset):
    x = inputs[0]
    axis, p = int(attr.get("axis", -1)), int(attr.get("p", 2))
    if p == 1:
        norm = relax.op.sum(relax.op.abs(x), axis=[axis], keepdims=True)
    elif p == 2:
        norm = relax.op.sqrt(relax.op.sum(relax.op.multiply(x, x), axis=[axis], keepdims=True))
    else:
        raise UnsupportedOperatorsError(
            f"LpNormalization with p={p}: ONNX defines only p=1 and p=2", "re-export the model with p=1 or p=2"
        )
    # ONNX's reference gives 0, not NaN, where the norm is 0.
    zero = relax.const(0, str(x.ty.dtype))
    return relax.op.where(relax.op.equal(norm, zero), zero, relax.op.divide(x, norm))


def _cumprod(bb, inputs, attr, opset):
    x, axis_expr = inputs
    axis = int(_constant(axis_expr, "CumProd's axis").reshape(-1)[0])
    exclusive, reverse = bool(attr.get("exclusive", 0)), bool(attr.get("reverse", 0))
    if reverse:
        x = relax.op.flip(x, axis)
    out = relax.op.cumprod(x, axis=axis, exclusive=exclusive)
    return relax.op.flip(out, axis) if reverse else out


def _one_hot(bb, inputs, attr, opset):
    # TVM's converter passes depth as a tensor where relax.op.one_hot takes an int, and does
    # not wrap negative indices, which ONNX counts from the end.
    indices, depth_expr, values_expr = inputs
    depth = int(_constant(depth_expr, "OneHot's depth").reshape(-1)[0])
    values = _constant(values_expr, "OneHot's values")
    dtype = str(values.dtype)
    idx_dtype = str(indices.ty.dtype)
    wrapped = relax.op.where(
        relax.op.less(indices, relax.const(0, idx_dtype)), relax.op.add(indices, relax.const(depth, idx_dtype)), indices
    )
    axis = int(attr.get("axis", -1))
    if axis < 0:  # counted in the output, which has one more dimension
        axis += indices.ty.ndim + 1
    hot = relax.op.one_hot(relax.op.astype(wrapped, "int64"), values[1].item(), values[0].item(), depth, axis)
    return relax.op.astype(hot, dtype)


def _bit_cast(bb, inputs, attr, opset):
    from onnx import helper

    x = inputs[0]
    to = str(np.dtype(helper.tensor_dtype_to_np_dtype(int(attr["to"]))))
    src = str(x.ty.dtype)
    if np.dtype(to).itemsize != np.dtype(src).itemsize or "bool" in (to, src):
        raise UnsupportedOperatorsError(
            f"BitCast from {src} to {to}: only between numeric types of one size", "cast in the exporter instead"
        )
    return bb.call_te(
        lambda t: te.compute(t.shape, lambda *i: tirx.reinterpret(to, t(*i)), name="bitcast"),
        x,
        primfunc_name_hint="bitcast",
    )


def _dropout(bb, inputs, attr, opset):
    # Inference (or a ratio of 0): the output is the input and the mask all true. Training
    # with a non-zero ratio is refused before import (rewrites.RULES).
    x = inputs[0]
    mask = relax.op.ones(x.ty.shape, "bool")
    return relax.Tuple([x, mask])


CONVERTERS = {
    "BitCast": _bit_cast,
    "Cosh": _cosh,
    "CumProd": _cumprod,
    "Dropout": _dropout,
    "Elu": _elu,
    "LpNormalization": _lp_normalization,
    "OneHot": _one_hot,
    "Selu": _selu,
    "Sinh": _sinh,
}
