"""AArch64 tensor intrinsics for the CPU schedules (schedules._dot, schedules._lane).

TVM 0.27's `ARM_DOT_4x4_i8_SDOT` implementation names its intermediate vectors, which its
TVMScript turns into "local" buffers; LowerTVMBuiltin keeps only "global" allocations on the
stack, so each of the six became a TVMBackendAllocWorkspace / FreeWorkspace pair per tile row of
the convolution (measured: 18% of MobileNetV2 1.0's instructions on rasp5, in the TVM runtime).
This one computes the same SDOT as a single expression: nothing to allocate. Its description is
written here too: importing TVM's `tvm.s_tir.tensor_intrin.arm_cpu` runs that package's
`__init__`, which parses every target's intrinsics (CUDA's hundreds among them) at 12-24 s per
process, the largest part of a small model's `edgefleet compile`.
"""

from __future__ import annotations

from tvm import tirx
from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

SDOT_4x4_I8 = "edgefleet_dot_4x4_i8i8s32_sdot"


@T.prim_func(s_tir=True)
def _sdot_4x4_desc(a: T.handle, b: T.handle, c: T.handle) -> None:
    A = T.match_buffer(a, (4,), dtype="int8", offset_factor=1)
    B = T.match_buffer(b, (4, 4), dtype="int8", offset_factor=1)
    C = T.match_buffer(c, (4,), dtype="int32", offset_factor=1)
    with T.sblock("root"):
        T.reads(C[0:4], A[0:4], B[0:4, 0:4])
        T.writes(C[0:4])
        for i, k in T.grid(4, 4):
            with T.sblock("update"):
                vi, vk = T.axis.remap("SR", [i, k])
                C[vi] = C[vi] + T.Cast("int32", A[vk]) * T.Cast("int32", B[vi, vk])


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


TensorIntrin.register(SDOT_4x4_I8, _sdot_4x4_desc, _sdot_4x4_impl)


# Input channels per lane-indexed step: one 128-bit load of a pixel's int16 inputs feeds eight multiplies.
LANE_CHANNELS = 8


def _smull_lane(A, B, pixel, k, group, channels: int) -> tirx.PrimExpr:
    """int32(B[k, 4g:4g+4]) * int32(A[p, k]): weights times lane k of the pixel's input vector (LLVM:
    `smull v.4s, b.4h, a.h[k]`; added to an accumulator, `smlal`)."""
    return tirx.call_llvm_pure_intrin(
        "int32x4",
        "llvm.aarch64.neon.smull.v4i32",
        B.vload([k, group * 4], dtype="int16x4"),
        tirx.Shuffle([A.vload([pixel, 0], dtype=f"int16x{channels}")], [k] * 4),
    )


def _smlal_lane_intrin(pixels: int, channels: int, outputs: int) -> tuple[tirx.PrimFunc, tirx.PrimFunc]:
    """C[p, j] += sum_k int32(A[p, k]) * int32(B[k, j]) for `pixels` consecutive pixels, `channels`
    int16 inputs and `outputs` output channels (rows of A, B and C some stride apart)."""

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        sa, sb, sc = T.int64(), T.int64(), T.int64()
        A = T.match_buffer(a, (pixels, channels), dtype="int16", offset_factor=1, strides=[sa, 1])
        B = T.match_buffer(b, (channels, outputs), dtype="int16", offset_factor=1, strides=[sb, 1])
        C = T.match_buffer(c, (pixels, outputs), dtype="int32", offset_factor=1, strides=[sc, 1])
        with T.sblock("root"):
            T.reads(C[0:pixels, 0:outputs], A[0:pixels, 0:channels], B[0:channels, 0:outputs])
            T.writes(C[0:pixels, 0:outputs])
            for p, k, j in T.grid(pixels, channels, outputs):
                with T.sblock("update"):
                    vp, vj, vk = T.axis.remap("SSR", [p, j, k])
                    C[vp, vj] = C[vp, vj] + T.cast(A[vp, vk], "int32") * T.cast(B[vk, vj], "int32")

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        sa, sb, sc = T.int64(), T.int64(), T.int64()
        A = T.match_buffer(a, (pixels, channels), dtype="int16", offset_factor=1, strides=[sa, 1])
        B = T.match_buffer(b, (channels, outputs), dtype="int16", offset_factor=1, strides=[sb, 1])
        C = T.match_buffer(c, (pixels, outputs), dtype="int32", offset_factor=1, strides=[sc, 1])
        with T.sblock("root"):
            T.reads(C[0:pixels, 0:outputs], A[0:pixels, 0:channels], B[0:channels, 0:outputs])
            T.writes(C[0:pixels, 0:outputs])
            # Input channel outermost: one input channel's weights serve every pixel of the tile, then
            # the next's (per pixel, all of them were live at once: spilled). One store per product:
            # as one sum, LLVM's reassociation started each in a register of its own and added the
            # accumulator last (twice the registers).
            for k in T.unroll(channels):
                for p in T.unroll(pixels):
                    for g in T.unroll(outputs // 4):
                        C[p, T.ramp(g * 4, 1, 4)] = C[p, T.ramp(g * 4, 1, 4)] + _smull_lane(A, B, p, k, g, channels)

    return desc, impl


def smlal_lane_intrin(pixels: int, outputs: int) -> str:
    """The name of the lane-indexed int16 multiply-add of `pixels` x LANE_CHANNELS inputs x `outputs` channels."""
    name = f"edgefleet_smlal_lane_{pixels}x{LANE_CHANNELS}x{outputs}_i16i16s32"
    if TensorIntrin.get(name, allow_missing=True) is None:  # one per tile shape, registered on first use
        TensorIntrin.register(name, *_smlal_lane_intrin(pixels, LANE_CHANNELS, outputs))
    return name


def _sdot_lane(A, B, pixel, f, group, channels: int) -> tuple[tirx.PrimExpr, tirx.PrimExpr]:
    """SDOT's operands: the weights of 4 outputs x input channels 4f..4f+3 (16 bytes), and those 4
    bytes of the pixel's input vector, its 32-bit lane f splatted (LLVM: `sdot v.4s, b.16b, a.4b[f]`)."""
    words = tirx.reinterpret(f"int32x{channels // 4}", A.vload([pixel, 0], dtype=f"int8x{channels}"))
    # A Shuffle has no more lanes than its inputs: 8 channels (2 words) are given twice.
    lane = tirx.Shuffle([words] * (16 // channels), [f] * 4)
    return B.vload([f, group * 4, 0], dtype="int8x16"), tirx.reinterpret("int8x16", lane)


def _sdot_lane_intrin(pixels: int, channels: int, outputs: int) -> tuple[tirx.PrimFunc, tirx.PrimFunc]:
    """C[p, o] += sum_k int32(A[p, k]) * int32(B[k / 4, o, k % 4]) for `pixels` consecutive pixels,
    `channels` int8 inputs (8 or 16) and `outputs` output channels, the weights packed as SDOT reads
    them (graph.dot_product_convs: 4 input channels innermost)."""
    groups = channels // 4

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        sa, sb, sc = T.int64(), T.int64(), T.int64()
        A = T.match_buffer(a, (pixels, channels), dtype="int8", offset_factor=1, strides=[sa, 1])
        B = T.match_buffer(b, (groups, outputs, 4), dtype="int8", offset_factor=1, strides=[sb, 4, 1])
        C = T.match_buffer(c, (pixels, outputs), dtype="int32", offset_factor=1, strides=[sc, 1])
        with T.sblock("root"):
            T.reads(C[0:pixels, 0:outputs], A[0:pixels, 0:channels], B[0:groups, 0:outputs, 0:4])
            T.writes(C[0:pixels, 0:outputs])
            for p, f, o, s in T.grid(pixels, groups, outputs, 4):
                with T.sblock("update"):
                    vp, vo, vf, vs = T.axis.remap("SSRR", [p, o, f, s])
                    C[vp, vo] = C[vp, vo] + T.cast(A[vp, vf * 4 + vs], "int32") * T.cast(B[vf, vo, vs], "int32")

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        sa, sb, sc = T.int64(), T.int64(), T.int64()
        A = T.match_buffer(a, (pixels, channels), dtype="int8", offset_factor=1, strides=[sa, 1])
        B = T.match_buffer(b, (groups, outputs, 4), dtype="int8", offset_factor=1, strides=[sb, 4, 1])
        C = T.match_buffer(c, (pixels, outputs), dtype="int32", offset_factor=1, strides=[sc, 1])
        with T.sblock("root"):
            T.reads(C[0:pixels, 0:outputs], A[0:pixels, 0:channels], B[0:groups, 0:outputs, 0:4])
            T.writes(C[0:pixels, 0:outputs])
            # 4 input channels outermost, as in the smlal form: their weights serve every pixel of the tile.
            for f in T.unroll(groups):
                for p in T.unroll(pixels):
                    for g in T.unroll(outputs // 4):
                        C[p, T.ramp(g * 4, 1, 4)] = T.call_llvm_pure_intrin(
                            T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.sdot.v4i32.v16i8"),
                            C.vload([p, g * 4], dtype="int32x4"),
                            *_sdot_lane(A, B, p, f, g, channels),
                            dtype="int32x4",
                        )

    return desc, impl


def sdot_lane_intrin(pixels: int, channels: int, outputs: int) -> str:
    """The name of the lane-indexed SDOT of `pixels` x `channels` int8 inputs x `outputs` channels."""
    name = f"edgefleet_sdot_lane_{pixels}x{channels}x{outputs}_i8i8s32"
    if TensorIntrin.get(name, allow_missing=True) is None:  # one per tile shape, registered on first use
        TensorIntrin.register(name, *_sdot_lane_intrin(pixels, channels, outputs))
    return name
