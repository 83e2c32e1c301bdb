"""x86 VNNI tensor intrinsics for the CPU schedules (schedules._dot on x86, graph.dot_product_convs(unsigned=True)).

`vpdpbusd` adds, per int32 lane, the products of 4 unsigned bytes by 4 signed bytes: one
instruction for 4 input channels x 16 output channels (512 bits, AVX-512 VNNI) or x 8 (256 bits,
AVX-512 VNNI with VL, or AVX-VNNI). TVM 0.27 ships such an intrinsic (`dot_16x4_vnni`), but
calls `llvm.x86.avx512.vpdpbusd.512` with int32 vectors, which LLVM 22 refuses (its byte
operands are `<64 x i8>` now: "Call parameter type does not match function signature"), and it
has no 8-lane form. These compute the same as its description, one expression each.
`VNNI_WINDOW_U8I8` turns the roles around for a depthwise convolution (schedules._depthwise_dot): per
output pixel and window row, the 4 input pixels' 16 channels (64 contiguous bytes of NCHW16c) are
transposed to 4 taps per channel by one shuffle (LLVM: `vpermd` of the load and an in-lane `vpshufb`; the
library targets every AVX-512 VNNI CPU, so VBMI's single `vpermb` is not assumed) and multiplied by
the 4 taps of each channel, where the int8 kernel spent a sign-extending load, a `vpmulld` (two
micro-ops) and a `vpaddd` per tap.

`RDHM_OP` is TFLite's SaturatingRoundingDoublingHighMul for int32 lanes (ARM's
SQRDMULH, which x86 lacks; graph.sqrdmulh_rescales on x86). Written as a 64-bit product, LLVM
widens a 16-lane vector into two 8-lane halves (vpmovzxdq, vextracti64x4, vpmovqd twice,
vinserti64x4 around the two vpmuldq). `vpmuldq` multiplies the even int32 lanes of its operands into
int64 lanes, so the even and odd lanes are multiplied in place instead (the odd ones shifted down)
and the two high halves merged with one masked move: the product of 16 lanes in 8 instructions.
"""

from __future__ import annotations

from tvm import tirx
from tvm.ir import op as ir_op
from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

# Output channels per vpdpbusd -> the registered intrinsic's name.
VNNI_U8I8 = {16: "edgefleet_dot_16x4_u8i8i32_vnni", 8: "edgefleet_dot_8x4_u8i8i32_vnni"}


def _intrin(lanes: int):
    bits = 32 * lanes

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (4,), dtype="uint8", offset_factor=1)
        B = T.match_buffer(b, (lanes, 4), dtype="int8", offset_factor=1)
        C = T.match_buffer(c, (lanes,), dtype="int32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            for i in T.serial(0, lanes):
                for k in T.serial(0, 4):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (4,), dtype="uint8", offset_factor=1)
        B = T.match_buffer(b, (lanes, 4), dtype="int8", offset_factor=1)
        C = T.match_buffer(c, (lanes,), dtype="int32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            # C[i] += sum_k A[k] * B[i, k]: the pixel's 4 input bytes broadcast to every 32-bit lane.
            C[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(f"llvm.x86.avx512.vpdpbusd.{bits}"),
                C.vload([0], dtype=f"int32x{lanes}"),
                T.reinterpret(
                    T.broadcast(T.reinterpret(A.vload([0], dtype="uint8x4"), dtype="int32"), lanes),
                    dtype=f"uint8x{4 * lanes}",
                ),
                B.vload([0, 0], dtype=f"int8x{4 * lanes}"),
                dtype=f"int32x{lanes}",
            )

    return desc, impl


for _lanes, _name in VNNI_U8I8.items():
    TensorIntrin.register(_name, *_intrin(_lanes))


# A depthwise convolution's window row on vpdpbusd: 16 channels x 4 taps.
VNNI_WINDOW_U8I8 = "edgefleet_dot_16x4_window_u8i8i32_vnni"
# Byte i * 4 + k of the transposed window: tap k of channel i, byte k * 16 + i of 4 pixels of 16 channels.
_WINDOW_ORDER = [k * 16 + i for i in range(16) for k in range(4)]


def _window_intrin():
    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (4, 16), dtype="uint8", offset_factor=1)
        B = T.match_buffer(b, (16, 4), dtype="int8", offset_factor=1)
        C = T.match_buffer(c, (16,), dtype="int32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4, 0:16], B[0:16, 0:4])
            T.writes(C[0:16])
            for i in T.serial(0, 16):
                for k in T.serial(0, 4):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk, vi], "int32") * T.cast(B[vi, vk], "int32")

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (4, 16), dtype="uint8", offset_factor=1)
        B = T.match_buffer(b, (16, 4), dtype="int8", offset_factor=1)
        C = T.match_buffer(c, (16,), dtype="int32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4, 0:16], B[0:16, 0:4])
            T.writes(C[0:16])
            # 4 pixels' 16 channels (64 contiguous bytes) transposed to 4 taps per channel.
            C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
                C.vload([0], dtype="int32x16"),
                T.Shuffle([A.vload([0, 0], dtype="uint8x64")], _WINDOW_ORDER),
                B.vload([0, 0], dtype="int8x64"),
                dtype="int32x16",
            )

    return desc, impl


TensorIntrin.register(VNNI_WINDOW_U8I8, *_window_intrin())


# A TIR operator of its own, so that TVM vectorizes it as one call (TVectorizable) and it is
# written out after vectorization (LowerIntrin), when its operands are whole vectors.
RDHM_OP = "tirx.edgefleet_x86_rounding_doubling_high_mul"
_PURE = 1  # CallEffectKind::kPure: no side effect, so CSE and dead-code elimination may treat it as arithmetic
_NUDGE = 1 << 30
_LOW = 0xFFFFFFFF


def _int64(value: int, lanes: int) -> tirx.PrimExpr:
    return tirx.Broadcast(tirx.IntImm("int64", value), lanes) if lanes > 1 else tirx.IntImm("int64", value)


def _lower_rdhm(call: tirx.Call) -> tirx.PrimExpr:
    """(a q + 2^30) >> 31 of int32 lanes a, q: on even and odd lanes where the vector has pairs of lanes.
    A third operand c adds c 2^31 to the 64-bit sum, so c after the shift (the rounding division's
    2^p in graph.relu_rounding_divisions): one per-channel constant in the nudge instead of a vpaddd.
    A fourth, s >= 1, shifts the 64-bit sum by 31 + s instead of 31 (that division's shift by p + 1,
    AVX-512's vpsravq): the two shifts of a requantization in one."""
    a, q, *rest = call.args
    offset, shift = (rest + [None, None])[:2]
    dtype = call.ty.dtype
    lanes = dtype.lanes
    if lanes % 2:  # a scalar (or an odd vector): the 64-bit product as written
        int64 = f"int64x{lanes}" if lanes > 1 else "int64"
        wide = a.astype(int64) * q.astype(int64) + _int64(_NUDGE, lanes)
        if offset is not None:
            wide = wide + (offset.astype(int64) << _int64(31, lanes))
        by = _int64(31, lanes) if shift is None else shift.astype(int64) + _int64(31, lanes)
        return (wide >> by).astype(dtype)
    half = lanes // 2
    nudge_even = nudge_odd = _int64(_NUDGE, half)
    if offset is not None:
        even_c, odd_c = _even_odd(offset, half)
        nudge_even, nudge_odd = (nudge_even + (even_c << _int64(31, half)), nudge_odd + (odd_c << _int64(31, half)))
    if not isinstance(a, tirx.Add):
        even, odd = _even_odd_products(a, q, half)
        return _merge_high_halves(dtype, half, even + nudge_even, odd + nudge_odd, shift)
    # (x + b) q + 2^30 as x q + (b q + 2^30): the bias's products and the nudge are the same for every
    # pixel of an unrolled epilogue (LLVM computes them once), so the int32 add of the bias (one vpaddd
    # per 16 outputs) goes. Equal wherever x + b does not overflow int32.
    even, odd = _even_odd_products(a.a, q, half)
    even_b, odd_b = _even_odd_products(a.b, q, half)
    return _merge_high_halves(dtype, half, even + (even_b + nudge_even), odd + (odd_b + nudge_odd), shift)


def _even_odd(v: tirx.PrimExpr, half: int) -> tuple[tirx.PrimExpr, tirx.PrimExpr]:
    """The even and the odd int32 lanes of v as int64 lanes: sign-extended low halves and
    arithmetic-shifted high halves of v seen as int64 pairs."""
    pairs = tirx.call_intrin(f"int64x{half}", "tirx.reinterpret", v)
    return (pairs << _int64(32, half)) >> _int64(32, half), pairs >> _int64(32, half)


def _even_odd_products(a: tirx.PrimExpr, q: tirx.PrimExpr, half: int) -> tuple[tirx.PrimExpr, tirx.PrimExpr]:
    """The int64 products of the even and of the odd int32 lanes of a and q: LLVM sees 32 x 32-bit
    signed products and emits vpmuldq for both."""
    (even_a, odd_a), (even_q, odd_q) = _even_odd(a, half), _even_odd(q, half)
    return even_a * even_q, odd_a * odd_q


def _merge_high_halves(dtype, half: int, even, odd, shift: tirx.PrimExpr | None) -> tirx.PrimExpr:
    """Bits 31 + s.. of each 64-bit sum (s = 0 without a shift) as int32 lanes: the even lane's in the low
    half after >> 31 + s, the odd one's in the high half after << 1 or, shifted, >> s - 1 (its high half
    is then the sum >> 31 + s), merged with one masked move."""
    if shift is None:
        low, high = even >> _int64(31, half), odd << _int64(1, half)
    else:
        even_s, odd_s = _even_odd(shift, half)
        low, high = even >> (even_s + _int64(31, half)), odd >> (odd_s - _int64(1, half))
    merged = (low & _int64(_LOW, half)) | (high & _int64(~_LOW, half))
    return tirx.call_intrin(dtype, "tirx.reinterpret", merged)


ir_op.register_op_attr(RDHM_OP, "TCallEffectKind", _PURE)
ir_op.register_op_attr(RDHM_OP, "TVectorizable", True)
# The name TVMScript prints it by: without one, every print of a kernel that calls it (the compiler
# prints kernels, e.g. to key them) logged a warning per call site.
ir_op.register_op_attr(RDHM_OP, "TScriptPrinterName", RDHM_OP.removeprefix("tirx."))
tirx.register_intrin_lowering(RDHM_OP, target="llvm", f=_lower_rdhm, level=99)
