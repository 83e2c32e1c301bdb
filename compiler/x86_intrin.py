"""x86 VNNI tensor intrinsics for the CPU schedules (schedules._dot on x86, graph.dot_product_convs(unsigned=True)).

`vpdpbusd` adds, per int32 lane, the products of 4 unsigned bytes by 4 signed bytes: one
instruction for 4 input channels x 16 output channels (512 bits, AVX-512 VNNI) or x 8 (256 bits,
AVX-512 VNNI with VL, or AVX-VNNI). TVM 0.27 ships such an intrinsic (`dot_16x4_vnni`), but
calls `llvm.x86.avx512.vpdpbusd.512` with int32 vectors, which LLVM 22 refuses (its byte
operands are `<64 x i8>` now: "Call parameter type does not match function signature"), and it
has no 8-lane form. These compute the same as its description, one expression each.
"""

from __future__ import annotations

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
