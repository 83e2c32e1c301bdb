"""AArch64 tensor intrinsics for the CPU schedules (schedules._dot).

TVM 0.27's `ARM_DOT_4x4_i8_SDOT` implementation names its intermediate vectors, which its
TVMScript turns into "local" buffers; LowerTVMBuiltin keeps only "global" allocations on the
stack, so each of the six became a TVMBackendAllocWorkspace / FreeWorkspace pair per tile row of
the convolution (measured: 18% of MobileNetV2 1.0's instructions on rasp5, in the TVM runtime).
This one computes the same SDOT as a single expression: nothing to allocate.
"""

from __future__ import annotations

from tvm.s_tir import TensorIntrin
from tvm.s_tir.tensor_intrin.arm_cpu import get_dotprod_intrin
from tvm.script import tirx as T

SDOT_4x4_I8 = "edgefleet_dot_4x4_i8i8s32_sdot"


@T.prim_func(s_tir=True)
def _sdot_4x4_impl(a: T.handle, b: T.handle, c: T.handle) -> None:
    A = T.match_buffer(a, (4,), dtype="int8", offset_factor=1)
    B = T.match_buffer(b, (4, 4), dtype="int8", offset_factor=1)
    C = T.match_buffer(c, (4,), dtype="int32", offset_factor=1)
    with T.sblock("root"):
        T.reads(C[0:4], A[0:4], B[0:4, 0:4])
        T.writes(C[0:4])
        # C[i] += sum_k A[k] * B[i, k]: the 4 input bytes broadcast to every 32-bit lane.
        C[T.ramp(T.int32(0), 1, 4)] = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.sdot.v4i32.v16i8"),
            C.vload([0], dtype="int32x4"),
            T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], dtype="int8x4"), dtype="int32"), 4), dtype="int8x16"),
            B.vload([0, 0], dtype="int8x16"),
            dtype="int32x4",
        )


# The description (what the 4x4 block computes) is TVM's; only the implementation differs.
TensorIntrin.register(SDOT_4x4_I8, get_dotprod_intrin("int8", "int32")[0], _sdot_4x4_impl)
