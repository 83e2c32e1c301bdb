"""ONNX's 8-, 4- and 2-bit element types in Cast, CastLike, QuantizeLinear and DequantizeLinear.

Types: FLOAT8E4M3FN, FLOAT8E4M3FNUZ, FLOAT8E5M2, FLOAT8E5M2FNUZ, FLOAT8E8M0, FLOAT4E2M1, INT4,
UINT4, INT2, UINT2. TVM 0.27 has dtypes for all of them but cannot convert them as ONNX does:
its FP8 legalization decodes subnormals, NaN, inf and both FNUZ formats wrongly, a cast to
float8 does not build for the CPU, and 4-/2-bit tensors have no usable conversions. So every
conversion here is integer bit manipulation in TE kernels, following ONNX's reference (which is
ml_dtypes' rounding): round to nearest even, `saturate`, each format's NaN/inf/-0 rules, and
FLOAT8E8M0's `round_mode`.

How values travel through a compiled model: at its inputs and outputs they have their TVM dtype
(float8_e4m3fn, ..., int4), which TVM's runtime converts from and to ml_dtypes numpy arrays for
the 8-bit types; agent/runtime.py does it for the 4- and 2-bit ones, packed two or four to a
byte, the first element in the high bits (TVM's runtime layout for float4_e2m1fn). Inside the
model every value is "carried" one element per byte: floats as their bit pattern in a uint8,
integers as their value in an int8/uint8. No TVM kernel then sees a low-bit dtype: TVM's FP8
legalization turns a float8 scalar inside a fused kernel into float32, and its kernels do not
address packed 4-/2-bit elements as the runtime lays them out. `LowbitImport` converts at the
graph's inputs and outputs (a view of the same bytes, plus unpacking/packing for 4/2 bits).

Any other operator that touches these types is still refused (compiler/frontends/onnx/rewrites.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FloatFormat:
    dtype: str  # TVM dtype at the model's inputs and outputs
    bits: int
    mantissa: int
    bias: int
    # "ieee": inf and NaNs (E5M2); "fn": no inf, NaN is all ones; "fnuz": no inf, no -0, NaN is
    # the sign bit alone; "finite": no inf, no NaN (FLOAT4E2M1).
    kind: str

    @property
    def exponent(self) -> int:
        return self.bits - 1 - self.mantissa

    @property
    def max_magnitude(self) -> int:
        """Bit pattern (without sign) of the largest finite value."""
        all_ones = (1 << (self.bits - 1)) - 1
        return {"ieee": (((1 << self.exponent) - 1) << self.mantissa) - 1, "fn": all_ones - 1}.get(self.kind, all_ones)


FLOATS = {
    "FLOAT8E4M3FN": FloatFormat("float8_e4m3fn", 8, 3, 7, "fn"),
    "FLOAT8E4M3FNUZ": FloatFormat("float8_e4m3fnuz", 8, 3, 8, "fnuz"),
    "FLOAT8E5M2": FloatFormat("float8_e5m2", 8, 2, 15, "ieee"),
    "FLOAT8E5M2FNUZ": FloatFormat("float8_e5m2fnuz", 8, 2, 16, "fnuz"),
    "FLOAT4E2M1": FloatFormat("float4_e2m1fn", 4, 1, 1, "finite"),
}
E8M0 = "FLOAT8E8M0"
E8M0_DTYPE = "float8_e8m0fnu"
# name -> (bits, signed)
INTS = {"INT4": (4, True), "UINT4": (4, False), "INT2": (2, True), "UINT2": (2, False)}
TYPES = set(FLOATS) | set(INTS) | {E8M0}
SUBBYTE = {"FLOAT4E2M1", *INTS}
TVM_DTYPES = {name: f.dtype for name, f in FLOATS.items()} | {name: name.lower() for name in INTS} | {E8M0: E8M0_DTYPE}
OPERATORS = {"Cast", "CastLike", "QuantizeLinear", "DequantizeLinear"}
# Operators that may hold these types (checked before import): OPERATORS, and Constant (whose
# value is imported in carried form, like an initializer's).
ACCEPTED = OPERATORS | {"Constant"}
# TVM's OpPatternKind kOpaque: FuseOps fuses nothing into or out of a kernel annotated so.
_OPAQUE = 8

# Which standard types each direction handles. Encoding to a float8/float4 starts from float32
# (exact from FLOAT16/BFLOAT16; from DOUBLE it would round twice); decoding is exact into any of these.
_ENCODE_FROM = {"FLOAT", "FLOAT16", "BFLOAT16"}
_DECODE_TO = {"FLOAT", "FLOAT16", "DOUBLE", "BFLOAT16"}
_NUMERIC = {
    "FLOAT",
    "FLOAT16",
    "DOUBLE",
    "BFLOAT16",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
}
_RELAX_DTYPES = {
    "FLOAT": "float32",
    "FLOAT16": "float16",
    "DOUBLE": "float64",
    "BFLOAT16": "bfloat16",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "BOOL": "bool",
}
_ONNX_NAMES = {v: k for k, v in _RELAX_DTYPES.items()} | {v: k for k, v in TVM_DTYPES.items()}
_ROUND_MODES = {"up", "down", "nearest"}


def _bits_of(onnx_type: str) -> int:
    return 4 if onnx_type == "FLOAT4E2M1" else INTS[onnx_type][0] if onnx_type in INTS else 8


def carried_dtype(onnx_type: str) -> str:
    """The dtype a low-bit type has inside the model (one element per byte)."""
    return "int8" if INTS.get(onnx_type, (0, False))[1] else "uint8"


# --- which uses are supported (checked before import) -----------------------------------------


def cast_supported(src: str | None, dst: str | None) -> bool:
    if src in FLOATS or src == E8M0:
        return dst in _DECODE_TO
    if dst in FLOATS or dst == E8M0:
        return src in _ENCODE_FROM
    if dst in INTS:
        return src in _NUMERIC  # (ml_dtypes, hence ONNX's reference, has no casts between 4/2-bit types)
    return src in INTS and dst in _NUMERIC


def _attr(node, name: str, default=None):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def type_name(value: int) -> str:
    """ONNX element type number -> its name (FLOAT8E4M3FN, ...)."""
    import onnx

    return onnx.TensorProto.DataType.Name(value)


def quantized_type(node, dtypes: dict[str, str]) -> str:
    """QuantizeLinear's output type: the zero point's, else output_dtype, else UINT8."""
    if len(node.input) > 2 and node.input[2]:
        return dtypes.get(node.input[2], "?")
    return type_name(_attr(node, "output_dtype", 0) or 2)


def rejection(node, dtypes: dict[str, str]) -> str | None:
    """Why this use of low-bit types cannot be compiled, or None. `node` is one of ACCEPTED."""
    op = node.op_type
    if op == "Constant":
        return None
    if op in ("Cast", "CastLike"):
        src = dtypes.get(node.input[0])
        dst = type_name(_attr(node, "to")) if op == "Cast" else dtypes.get(node.input[1])
        if dst == E8M0 and _attr(node, "round_mode", b"up").decode() not in _ROUND_MODES:
            return f"round_mode={_attr(node, 'round_mode').decode()}"
        return None if cast_supported(src, dst) else f"{src} to {dst}"
    if _attr(node, "block_size", 0):
        return "blocked quantization of low-bit types"
    if op == "QuantizeLinear":
        target, source = quantized_type(node, dtypes), dtypes.get(node.input[0])
        if _attr(node, "precision", 0):
            return "precision attribute with low-bit types"
        # Float4's zero point is added in x's type by ONNX: exact only in float32.
        allowed = {"FLOAT"} if target == "FLOAT4E2M1" else {"FLOAT", "FLOAT16"}
        if target not in FLOATS and target not in INTS or source not in allowed or dtypes.get(node.input[1]) != source:
            return f"{source} to {target}"
        return None
    x = dtypes.get(node.input[0])  # DequantizeLinear
    out = type_name(_attr(node, "output_dtype", 0)) if _attr(node, "output_dtype", 0) else dtypes.get(node.input[1])
    if (
        (x not in FLOATS and x not in INTS)
        or dtypes.get(node.input[1]) not in ("FLOAT", "FLOAT16")
        or out not in _DECODE_TO
    ):
        return f"{x} to {out}"
    return None


# --- TE kernels ---------------------------------------------------------------------------------


def _te():
    from tvm import te, tirx

    return te, tirx


def _i32(v: int):
    return _te()[1].const(v, "int32")


def _u32(v: int):
    return _te()[1].const(v, "uint32")


def _round_shift(v, s):
    """v >> s rounded to nearest even (int32 v >= 0, 1 <= s <= 31, v + 2^(s-1) < 2^31)."""
    return (v + ((_i32(1) << (s - 1)) - 1) + ((v >> s) & 1)) >> s


def encode_float(x, fmt: FloatFormat, saturate: bool):
    """float32 te.Tensor -> fmt's bit patterns (uint8)."""
    te, tir = _te()
    m, b, n = fmt.mantissa, fmt.bias, fmt.bits
    sign_bit, top = 1 << (n - 1), fmt.max_magnitude

    def element(*i):
        # The input's bits, the finite magnitude and the result's magnitude are each read many times
        # below: bound once (lets), the expression stays linear in size instead of copying each.
        u, finite, mag = (tir.Var(name, "int32") for name in ("u", "finite", "mag"))
        a = u & 0x7FFFFFFF
        exp = finite >> 23
        # A normal result: round the float32 pattern to m mantissa bits, then rebias the exponent.
        normal = _round_shift(finite, _i32(23 - m)) - ((127 - b) << m)
        # A subnormal (or zero) result: the 24-bit significand in units of the smallest subnormal.
        significand = (finite & 0x7FFFFF) | tir.Select(exp > 0, _i32(0x800000), _i32(0))
        shift = tir.max(tir.min(_i32(151 - b - m) - exp, _i32(31)), _i32(1))
        rounded = tir.Select(exp >= 128 - b, normal, _round_shift(significand, shift))
        if saturate or fmt.kind == "finite":
            overflow = _i32(top)
        elif fmt.kind == "ieee":
            overflow = _i32(top + 1)  # inf
        else:
            overflow = _i32(-1)  # NaN, filled in below
        sign = tir.Select(u < 0, _i32(sign_bit), _i32(0))
        if fmt.kind == "fnuz":
            nan = _i32(sign_bit)
            bits = tir.Select(mag == 0, _i32(0), tir.Select(mag < 0, nan, sign | mag))
        else:
            bits = sign | tir.Select(mag < 0, _i32(sign_bit - 1), mag)
            # ml_dtypes (ONNX's reference): E5M2 NaN is 0x7E; FLOAT4E2M1 has no NaN and gives a
            # zero of the opposite sign.
            nan = {"ieee": sign | (top + 1) | (1 << (m - 1)), "fn": sign | (sign_bit - 1), "finite": sign ^ sign_bit}[
                fmt.kind
            ]
        result = tir.Select(a > 0x7F800000, nan, bits).astype("uint8")
        # `finite` clamps inf to the overflow path; NaN is picked by `result`'s outer Select.
        return tir.Let(
            u,
            tir.reinterpret("int32", x(*i)),
            tir.Let(
                finite, tir.min(a, _i32(0x7F800000)), tir.Let(mag, tir.Select(rounded > top, overflow, rounded), result)
            ),
        )

    return te.compute(x.shape, element, name="encode_" + fmt.dtype)


def decode_float(x, fmt: FloatFormat):
    """fmt's bit patterns (uint8 te.Tensor) -> float32."""
    te, tir = _te()
    m, b, n = fmt.mantissa, fmt.bias, fmt.bits
    sign_bit = 1 << (n - 1)
    qnan, inf = _u32(0x7FC00000), _u32(0x7F800000)

    def element(*i):
        byte = x(*i).astype("uint32")
        mag = byte & (sign_bit - 1)
        exp, frac = mag >> m, mag & ((1 << m) - 1)
        normal = ((exp + (127 - b)) << 23) | (frac << (23 - m))
        # Subnormals: frac * 2^(1 - b - m) is exact in float32.
        subnormal = tir.reinterpret("uint32", frac.astype("float32") * tir.const(2.0 ** (1 - b - m), "float32"))
        bits = tir.Select(exp == 0, subnormal, normal)
        if fmt.kind == "fn":
            bits = tir.Select(mag == sign_bit - 1, qnan, bits)
        elif fmt.kind == "fnuz":
            bits = tir.Select(byte == sign_bit, qnan, bits)
        elif fmt.kind == "ieee":
            bits = tir.Select(exp == (1 << fmt.exponent) - 1, tir.Select(frac == 0, inf, qnan), bits)
        return tir.reinterpret("float32", bits | ((byte >> (n - 1)) << 31))

    return te.compute(x.shape, element, name="decode_" + fmt.dtype)


def encode_e8m0(x, saturate: bool, round_mode: str):
    """float32 -> FLOAT8E8M0 as onnx.numpy_helper.to_float8e8m0: the exponent field, rounded
    by round_mode from the mantissa bits (the sign is ignored), NaN/inf -> NaN (0xFF)."""
    te, tir = _te()

    def element(*i):
        u = tir.reinterpret("int32", x(*i))
        exp = (u >> 23) & 0xFF

        def bit_set(mask):
            return tir.Select((u & mask) != 0, _i32(1), _i32(0))

        if round_mode == "up":
            up = bit_set(0x7FFFFF)
        elif round_mode == "nearest":
            up = bit_set(0x400000) & (bit_set(0x200000) | bit_set(0x1FFFFF) | tir.Select(exp > 0, _i32(1), _i32(0)))
        else:
            up = _i32(0)
        if saturate:
            up = tir.Select(exp == 0xFE, _i32(0), up)
        return tir.Select(exp == 0xFF, _i32(0xFF), exp + up).astype("uint8")

    return te.compute(x.shape, element, name="encode_e8m0")


def decode_e8m0(x):
    """FLOAT8E8M0 -> float32: 2^(e - 127) (e = 0 is a float32 subnormal), 0xFF -> NaN."""
    te, tir = _te()

    def element(*i):
        e = x(*i).astype("uint32")
        bits = tir.Select(e == 0xFF, _u32(0x7FC00000), tir.Select(e == 0, _u32(0x400000), e << 23))
        return tir.reinterpret("float32", bits)

    return te.compute(x.shape, element, name="decode_e8m0")


def unpack(packed, count: int, onnx_type: str):
    """Packed bytes (1-D uint8) -> `count` carried elements (1-D)."""
    te = _te()[0]
    bits = _bits_of(onnx_type)
    per, mask = 8 // bits, (1 << bits) - 1
    signed = INTS.get(onnx_type, (0, False))[1]

    def element(i):
        v = (packed[i // per].astype("int32") >> ((per - 1 - i % per) * bits)) & mask
        if signed:
            half = 1 << (bits - 1)
            v = (v ^ half) - half
        return v.astype(carried_dtype(onnx_type))

    return te.compute((count,), element, name="unpack_" + onnx_type.lower())


def pack(values, onnx_type: str):
    """Carried elements (1-D, n) -> n bytes whose first ceil(n * bits / 8) hold them packed.

    The buffer is n bytes, not ceil(n * bits / 8), because Relax sizes a sub-byte tensor at one
    byte per element when it checks the view that gives the output its type (the runtime sizes
    it packed)."""
    te, tir = _te()
    bits = _bits_of(onnx_type)
    per, mask = 8 // bits, (1 << bits) - 1
    n = int(values.shape[0])

    def element(j):
        total = _i32(0)
        for k in range(per):
            index = j * per + k
            v = values[tir.min(index, n - 1)].astype("int32") & mask
            total = total | tir.Select(index < n, v << ((per - 1 - k) * bits), _i32(0))
        return total.astype("uint8")

    return te.compute((n,), element, name="pack_" + onnx_type.lower())


# --- Relax -------------------------------------------------------------------------------------


class LowbitImport:
    """Per-import state: the ONNX type of each carried Relax value, and the conversions."""

    def __init__(self, bb) -> None:
        self.bb = bb
        self.carried: dict = {}  # Relax value -> ONNX type

    def onnx_type(self, expr) -> str:
        if expr in self.carried:
            return self.carried[expr]
        return _ONNX_NAMES.get(str(expr.ty.dtype), str(expr.ty.dtype))

    def involved(self, op_name: str, inputs, attrs) -> bool:
        types = {self.onnx_type(x) for x in inputs if x is not None and hasattr(x.ty, "dtype")}
        if op_name == "Cast":
            types.add(type_name(attrs["to"]))
        if op_name == "QuantizeLinear" and attrs.get("output_dtype"):
            types.add(type_name(attrs["output_dtype"]))
        return bool(types & TYPES)

    def constant(self, tensor_proto):
        """A Constant node's low-bit value, carried."""
        from tvm import relax

        const = relax.const(carry(tensor_proto))
        self.carried[const] = type_name(tensor_proto.data_type)
        return const

    def _emit(self, expr, onnx_type: str | None = None):
        var = self.bb.emit(expr)
        if onnx_type in TYPES:
            self.carried[var] = onnx_type
        return var

    def _te(self, name: str, func, *args, onnx_type: str | None = None):
        return self._emit(self.bb.call_te(func, *args, primfunc_name_hint=name), onnx_type)

    def _unfused_te(self, name: str, func, *args, onnx_type: str | None = None):
        """`_te` with a kernel that FuseOps leaves on its own (op pattern opaque). The float encode binds
        its input in a let; a producer fused into it would land in the let's value, and TVM 0.27's bf16
        legalization drops a bf16 -> float32 cast there (the let holds the raw 16 bits)."""
        call = self.bb.call_te(func, *args, primfunc_name_hint=name)
        kernel = call.args[0]
        self.bb.update_func(kernel, self.bb.get()[kernel].with_attr("op_pattern", _OPAQUE))
        return self._emit(call, onnx_type)

    def carried_form(self, expr):
        """`expr` as the model carries it inside: a value of a low-bit TVM dtype (a graph input)
        is converted, anything else is returned as it is."""
        if expr in self.carried or not hasattr(expr.ty, "dtype"):
            return expr
        onnx_type = _ONNX_NAMES.get(str(expr.ty.dtype))
        return self.from_boundary(expr, onnx_type) if onnx_type in TYPES else expr

    # the graph's inputs and outputs

    def from_boundary(self, var, onnx_type: str):
        from tvm import relax

        shape = [int(d) for d in var.ty.shape.values]
        count = int(np.prod(shape))
        if onnx_type not in SUBBYTE or count == 0:  # (an empty tensor has no bytes to unpack)
            return self._emit(relax.op.memory.view(var, relax.ShapeExpr(shape), carried_dtype(onnx_type)), onnx_type)
        packed = self.bb.emit(
            relax.op.memory.view(var, relax.ShapeExpr([-(-count * _bits_of(onnx_type) // 8)]), "uint8")
        )
        flat = self._te("unpack", lambda p: unpack(p, count, onnx_type), packed)
        return self._emit(relax.op.reshape(flat, shape), onnx_type)

    def to_boundary(self, expr):
        from tvm import relax

        onnx_type = self.carried[expr]
        shape = [int(d) for d in expr.ty.shape.values]
        count = int(np.prod(shape))
        if onnx_type in SUBBYTE and count:
            flat = self.bb.emit(relax.op.reshape(expr, [count]))
            expr = self._te("pack", lambda v: pack(v, onnx_type), flat)
        return self.bb.emit(relax.op.memory.view(expr, relax.ShapeExpr(shape), TVM_DTYPES[onnx_type]))

    # conversions

    def _to_float32(self, x):
        from tvm import relax

        return x if str(x.ty.dtype) == "float32" else self.bb.emit(relax.op.astype(x, "float32"))

    def decode(self, x):
        """A carried float8/float4/e8m0 value -> float32; any other value cast to float32."""
        src = self.onnx_type(x)
        if src in FLOATS:
            return self._te("decode", lambda t: decode_float(t, FLOATS[src]), x)
        if src == E8M0:
            return self._te("decode", decode_e8m0, x)
        return self._to_float32(x)

    def encode(self, x32, dst: str, saturate: bool, round_mode: str = "up"):
        """float32 -> a carried float8/float4/e8m0 value."""
        if dst == E8M0:
            return self._te("encode", lambda t: encode_e8m0(t, saturate, round_mode), x32, onnx_type=dst)
        return self._unfused_te("encode", lambda t: encode_float(t, FLOATS[dst], saturate), x32, onnx_type=dst)

    def wrap_int(self, x, dst: str):
        """Any numeric value -> INT4/UINT4/INT2/UINT2 (carried), the two's-complement low bits:
        ONNX's integer casts; floats are truncated toward zero first."""
        from tvm import relax

        bits, signed = INTS[dst]
        v = relax.op.bitwise_and(relax.op.astype(x, "int32"), relax.const((1 << bits) - 1, "int32"))
        if signed:
            half = relax.const(1 << (bits - 1), "int32")
            v = relax.op.subtract(relax.op.bitwise_xor(v, half), half)
        return self._emit(relax.op.astype(v, carried_dtype(dst)), dst)

    def cast(self, x, dst: str, saturate: bool = True, round_mode: str = "up"):
        from tvm import relax

        src = self.onnx_type(x)
        if src in FLOATS or src == E8M0:
            y = self.decode(x)
            return y if dst == "FLOAT" else self._emit(relax.op.astype(y, _RELAX_DTYPES[dst]))
        if dst in FLOATS or dst == E8M0:
            return self.encode(self._to_float32(x), dst, saturate, round_mode)
        if dst in INTS:
            return self.wrap_int(x, dst)
        return self._emit(relax.op.astype(x, _RELAX_DTYPES[dst]))  # from a carried integer

    def _per_axis(self, value, rank: int, axis: int):
        """Scale/zero point shaped to broadcast against x, as ONNX's reference reshapes them."""
        from tvm import relax

        shape = [int(d) for d in value.ty.shape.values]
        if len(shape) == 0:
            return value
        dims = [] if int(np.prod(shape)) == 1 else [shape[0] if k == axis else 1 for k in range(rank)]
        return self._emit(relax.op.reshape(value, dims), self.carried.get(value))

    def quantize(self, x, scale, zero_point, attrs):
        from tvm import relax

        if zero_point is not None:
            dst = self.onnx_type(zero_point)
        else:
            dst = type_name(attrs.get("output_dtype") or 2)
        rank = len(x.ty.shape.values)
        axis = attrs.get("axis", 1) % max(rank, 1)
        q = self.bb.emit(relax.op.divide(x, self._per_axis(scale, rank, axis)))
        if dst in INTS:
            bits, signed = INTS[dst]
            low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
            v = relax.op.astype(relax.op.round(q), "int32")  # round half to even, as np.rint
            if zero_point is not None:
                v = relax.op.add(v, relax.op.astype(self._per_axis(zero_point, rank, axis), "int32"))
            return self._emit(relax.op.astype(relax.op.clip(v, low, high), carried_dtype(dst)), dst)
        q32 = self._to_float32(q)
        if dst == "FLOAT4E2M1":
            # ONNX adds float4's zero point; float8's must be zero and is ignored.
            if zero_point is not None:
                q32 = self.bb.emit(relax.op.add(q32, self.decode(self._per_axis(zero_point, rank, axis))))
            return self.encode(q32, dst, True)
        return self.encode(q32, dst, bool(attrs.get("saturate", 1)))

    def dequantize(self, x, scale, zero_point, attrs):
        from tvm import relax

        rank = len(x.ty.shape.values)
        axis = attrs.get("axis", 1) % max(rank, 1)
        src = self.onnx_type(x)
        dx = self.decode(x)
        if src in INTS and zero_point is not None:  # ONNX ignores float8/float4 zero points
            dx = relax.op.subtract(dx, self._to_float32(self._per_axis(zero_point, rank, axis)))
        y = relax.op.multiply(dx, self._to_float32(self._per_axis(scale, rank, axis)))
        out = type_name(attrs["output_dtype"]) if attrs.get("output_dtype") else self.onnx_type(scale)
        y = self.bb.emit(y)
        return y if out == "FLOAT" else self._emit(relax.op.astype(y, _RELAX_DTYPES[out]))

    def convert(self, op_name: str, inputs, attrs):
        if op_name == "Cast":
            return self.cast(inputs[0], type_name(attrs["to"]), bool(attrs.get("saturate", 1)), _mode(attrs))
        if op_name == "CastLike":
            return self.cast(inputs[0], self.onnx_type(inputs[1]), bool(attrs.get("saturate", 1)), _mode(attrs))
        zero_point = inputs[2] if len(inputs) > 2 else None
        if op_name == "QuantizeLinear":
            return self.quantize(inputs[0], inputs[1], zero_point, attrs)
        return self.dequantize(inputs[0], inputs[1], zero_point, attrs)


def _mode(attrs) -> str:
    mode = attrs.get("round_mode", b"up")
    return mode.decode() if isinstance(mode, bytes) else str(mode)


def carry(tensor_proto) -> np.ndarray:
    """A low-bit TensorProto's values in carried form (one element per byte)."""
    from onnx import numpy_helper

    onnx_type, array = type_name(tensor_proto.data_type), numpy_helper.to_array(tensor_proto)
    return array.astype(carried_dtype(onnx_type)) if onnx_type in INTS else array.view(np.uint8)
