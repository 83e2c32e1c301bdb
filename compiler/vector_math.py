"""exp, sigmoid and softmax for float32 in arithmetic that vectorizes (every CPU target).

TVM lowers `exp` (and `sigmoid`, which it writes with `exp`) to LLVM's `llvm.exp` intrinsic; on
x86 LLVM has no vector form of it and calls libm's `expf` once per lane: 1.6-2.6 ns per element
on x86-64-v4, against 0.13-0.15 for `exp` below and 0.04 for a multiply (16-lane loops over 2^20
floats). In a YOLOv8-style detector the SiLU epilogues (x * sigmoid(x)) took longer than the
convolutions they follow (docs/performance.md). Written as range reduction, a polynomial and an
exponent built from integer bits, exp is a dozen vector instructions, within 1 float32 ulp of
float64 exp (sigmoid within 2, as TVM's; tests/perf/test_cpu_schedules.py).
"""

from __future__ import annotations

import math

import tvm
from tvm import relax, te, tirx

# exp(x) = 2^n * exp(r) with n = round(x / ln 2) and |r| <= ln(2) / 2. ln 2 is split in two
# (Cody-Waite): n * LN2_HI is exact for |n| < 2^9 (LN2_HI has 9 significant bits), so r keeps
# the float32 precision that x - n * ln(2) in one step would lose.
LN2_HI = 0.693359375
LN2_LO = math.log(2) - LN2_HI
# Above this exp overflows float32 (exp(88.7229) > 3.4028e38): 2^128 comes out as inf.
EXP_HI = 88.7229
# Below ln(FLT_MIN) the result is subnormal (or 0 where the CPU flushes those): n stays >= -126.
EXP_LO = -87.33654
# Taylor coefficients 1/k! up to k = 7: the truncation error |r|^8 / 8! < 6e-9 for |r| <= ln(2)/2.
_POLY = [1.0 / math.factorial(k) for k in range(7, -1, -1)]


def exp(x: tirx.PrimExpr) -> tirx.PrimExpr:
    """exp(x) for a float32 expression, in operations LLVM vectorizes (no libm call)."""
    f32 = "float32"
    x = tirx.max(tirx.min(x, tirx.const(EXP_HI, f32)), tirx.const(EXP_LO, f32))
    n = tirx.floor(x * tirx.const(1.0 / math.log(2), f32) + tirx.const(0.5, f32))
    r = x - n * tirx.const(LN2_HI, f32) - n * tirx.const(LN2_LO, f32)
    p = tirx.const(_POLY[0], f32)
    for c in _POLY[1:]:
        p = p * r + tirx.const(c, f32)
    # 2^n as 2^a * 2^b (a = floor(n / 2)), each from its exponent bits: n ranges over
    # [-126, 128] and 2^128 has none (the overflow to inf happens in the multiply instead).
    ni = n.astype("int32")
    half = tirx.shift_right(ni, tirx.const(1, "int32"))
    return p * _pow2(half) * _pow2(ni - half)


def _pow2(k: tirx.PrimExpr) -> tirx.PrimExpr:
    """2^k for an int32 k in [-126, 127], as the float32 with exponent bits k + 127."""
    return tirx.reinterpret("float32", tirx.shift_left(k + tirx.const(127, "int32"), tirx.const(23, "int32")))


def sigmoid(x: tirx.PrimExpr) -> tirx.PrimExpr:
    """1 / (1 + exp(-x)): 0 where exp(-x) overflows, 1 where it vanishes."""
    one = tirx.const(1.0, "float32")
    return one / (one + exp(-x))


def softmax(x: te.Tensor, axis: int) -> te.Tensor:
    """Softmax along `axis` with the vectorizable exp (max, exp of the difference, sum, divide)."""
    axis %= len(x.shape)
    reduced = [d for i, d in enumerate(x.shape) if i != axis]

    def at(idx: tuple, k) -> tuple:
        return (*idx[:axis], k, *idx[axis:])

    def rest(idx: tuple) -> tuple:
        return (*idx[:axis], *idx[axis + 1 :])

    k = te.reduce_axis((0, x.shape[axis]), name="k")
    top = te.compute(reduced, lambda *i: te.max(x[at(i, k)], axis=k), name="softmax_max")
    e = te.compute(x.shape, lambda *i: exp(x[i] - top[rest(i)]), name="softmax_exp")
    k2 = te.reduce_axis((0, x.shape[axis]), name="k2")
    total = te.compute(reduced, lambda *i: te.sum(e[at(i, k2)], axis=k2), name="softmax_sum")
    return te.compute(x.shape, lambda *i: e[i] / total[rest(i)], name="softmax_norm")


def _softmax(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    if str(call.ty.dtype) != "float32":
        return _DEFAULT_SOFTMAX(bb, call)
    return bb.call_te(softmax, call.args[0], int(call.attrs.axis), primfunc_name_hint="vector_softmax")


_DEFAULT_SOFTMAX = tvm.ir.Op.get("relax.nn.softmax").get_attr("FLegalize")


def _elementwise(fn, name: str, default):
    """A LegalizeOps rule: float32 tensors as `fn` per element, any other dtype by TVM's rule."""

    def legalize(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
        if str(call.ty.dtype) != "float32":
            return default(bb, call)
        return bb.call_te(
            lambda x: te.compute(x.shape, lambda *i: fn(x(*i)), name=name), call.args[0], primfunc_name_hint=name
        )

    return legalize


def applies(target: tvm.target.Target) -> bool:
    """Whether `target` is a CPU: LLVM calls libm per lane on x86 and on ARM alike (on rasp4b 47% of
    the YOLOv8-style detector's instructions were `expf`)."""
    return str(target.kind.name) == "llvm"


def legalize_rules() -> dict:
    """LegalizeOps rules for exp, sigmoid and softmax with the vectorizable exp (SiLU arrives as x * sigmoid(x))."""
    rules = {"relax.nn.softmax": _softmax}
    for op, fn, name in (
        ("relax.exp", exp, "vector_exp"),
        ("relax.sigmoid", sigmoid, "vector_sigmoid"),
    ):
        rules[op] = _elementwise(fn, name, tvm.ir.Op.get(op).get_attr("FLegalize"))
    return rules
