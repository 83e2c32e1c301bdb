"""Default CPU schedules: fast code for convolutions, pooling and element-wise work without tuning.

TVM 0.27's CPU pipeline leaves every loop nest as written (scalar, single-threaded); its
dlight CPU rules cover only GEMV and row reductions. These rules, applied one kernel at a time
by `default_schedules`, give every other kernel a schedule:

- `Conv2dNCHWc`: the register-blocked direct convolution of TVM's former x86 TOPI schedule
  (and of oneDNN's direct kernels). Per parallel task (n, oc_chunk, oh), a tile of `reg_n`
  output pixels x 16 output channels stays in vector registers while the reduction runs over
  input-channel chunks and the kernel window; the fused epilogue (bias, batch norm, residual
  add, ReLU) runs on the tile before it is stored. `reg_n` is sized to the target's vector
  registers (`register_tile`). Depthwise and grouped NCHWc convolutions (graph.py's
  depthwise_conv2d_nchwc, grouped_conv2d_nchwc) get the same tiling.
- `Conv2dNCHW`: fallback for convolutions left in NCHW (graph.py blocks nearly all of them):
  a tile of output channels x vectorized output width.
- `Generic`: pooling, layout transforms, concat, element-wise and reductions: the outer
  spatial loops in parallel, the innermost spatial loop vectorized.

A rule that cannot schedule a function returns None, so the function stays correct but slow;
MetaSchedule (`--tune-trials`) can still replace any of them.
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx
from tvm.s_tir import dlight
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule

from edgefleet.compiler.graph import grouped_output_blocks, is_aarch64

# At most this many output pixels per register tile (more only lengthens the unrolled body).
MAX_REG_TILE = 14
# At most this many pixels per tile of two output-channel blocks: 16 accumulators (14 x 2 spilled).
MAX_PAIR_TILE = 8
# The same for dense convolutions (x86 float), timed per kernel on the AVX-512 host: 7 x 2 was at
# least as fast as 8 x 2 on ResNet-50 / MobileNetV2 / SqueezeNet shapes (rows of 13 and 27: 195-227
# GFLOP/s against 113-148, a ragged 8-pixel tile), 12 x 2 no faster on rows of 7-56 and 1.7-3.1x
# slower on rows of 13 and 55, 14 x 2 spilled (docs/performance.md, benchmarks/conv_tiles.py). Found
# later why 8 x 2 lost: its 1 KB of accumulators is where TVM stops putting a buffer on the stack.
MAX_DENSE_PAIR_TILE = 7
# The same for grouped 1x1 convolutions, in balanced tiles (`_pointwise_pair_tile`): a tile of 8 x 2
# (1 KB of accumulators) is a heap buffer in TVM, zeroed by a call per tile.
MAX_POINTWISE_PAIR_TILE = 7
# Fewer pixels than this per tile of two blocks hide too little of the FMA latency (AVX2: 2 x 2).
MIN_PAIR_TILE = 4
# A kernel's outer loops run in parallel only where the block they carry has at least this much
# work (`block_work`: multiply-adds for a convolution, elements for element-wise work); below it they
# stay serial on the calling thread. TVM splits a parallel loop into one part per thread and, with
# its pool not spinning (the camera runtime's default), wakes the worker and waits for it at every
# kernel. benchmarks/parallel_threshold.py at 2 threads (docs/performance.md, "Threads and
# spinning"), serial / parallel time per kernel, median: on a quiet machine 0.30 below 1 M, 1.0 at
# 1-4 M, 1.27 at 4-16 M, 1.52 from 16 M; on a busy one (load 4.6-5.6) 0.28, 0.73, 0.89, 1.00. Two
# threads are for cameras whose cores are free (the default is one), so the quiet break-even counts:
# 2^22, where the quiet machine starts to gain and a busy one loses about a tenth.
PARALLEL_MIN_WORK = 1 << 22
# An x86 float depthwise convolution's multiply-adds count this many times against PARALLEL_MIN_WORK:
# its time is memory, not multiply-adds (MobileNetV2's 2.7-4.1 M ones take 61-79 µs, a dense 1x1 of
# 4.8 M 66 µs), so its second thread pays from half the work (benchmarks/pool_kernels.py).
DEPTHWISE_WORK_WEIGHT = 2
_AVX512_CPUS = (
    "skylake-avx512",
    "cascadelake",
    "cooperlake",
    "icelake",
    "tigerlake",
    "sapphirerapids",
    "emeraldrapids",
    "graniterapids",
    "znver4",
    "znver5",
)


def _vector_registers(target: tvm.target.Target) -> tuple[int, int]:
    """(vector registers, fp32 lanes per register) of the target's ISA."""
    attrs = target.attrs
    mcpu, triple = str(attrs.get("mcpu", "")), str(attrs.get("mtriple", ""))
    mattr = [str(a) for a in attrs.get("mattr", [])]
    if triple.startswith("aarch64"):
        return 32, 4
    if triple.startswith("arm"):
        return 16, 4
    if mcpu.startswith(_AVX512_CPUS) or any("avx512f" in a for a in mattr):
        return 32, 16
    return 16, 8


def vector_lanes(target: tvm.target.Target) -> int:
    """fp32 (int32) lanes per vector register of the target's ISA."""
    return _vector_registers(target)[1]


def _unroll_channels(target: tvm.target.Target) -> bool:
    """AArch64: the input-channel loop of a register tile unrolled (a 6 x 16 tile's 24 FMAs carried
    5 loop instructions per input channel), with tiles of `_unrolled_tile` pixels; a row's last,
    shorter tile is partitioned off (a ragged tile's predicate inside the unrolled body made LLVM
    shuffle accumulators between registers: 2.2x the instructions of a SqueezeNet 3x3). ARMv7 (16
    registers, tiles of 2) counted 12% more with it (SqueezeNet on rasp3b: 275.5 M instead of
    245.3 M); x86 keeps its schedule."""
    return is_aarch64(target)


def register_tile(target: tvm.target.Target, block: int = 16) -> int:
    """Output pixels per tile so that tile x `block` fp32 accumulators, the weight vectors and
    one broadcast fit the target's vector registers (no spills in the inner loop).

    AVX-512: 32 x 16 lanes -> 14 (capped); AVX2: 16 x 8 -> 6; AArch64 NEON: 32 x 4 -> 6;
    ARMv7 NEON: 16 x 4 -> 2.
    """
    regs, lanes = _vector_registers(target)
    per_pixel = max(1, block // lanes)
    return max(1, min(MAX_REG_TILE, (regs - per_pixel - 1) // per_pixel))


def output_tile(
    target: tvm.target.Target, width: int, block: int, pairable: bool, max_pair: int = MAX_PAIR_TILE
) -> tuple[int, int]:
    """(output pixels, output-channel blocks) of a register tile over a row of `width` pixels.

    Two output-channel blocks (`pairable`: both read the same input channels) share each input
    broadcast: twice the multiply-adds per load. Taken where the pair's tile has at least
    `MIN_PAIR_TILE` pixels and as many accumulators as one block's tile: on AVX-512 (ShuffleNet's
    stride-2 grouped 3x3 alone: 8 x 2 about 11% faster than 8 x 1; the model: benchmarks/grouped_convs.py,
    "single" vs "after"). AVX2's 16 registers (and NEON's) fit a pair of 2 pixels only, which
    measured no better than 4 x 1.
    """
    single = _pixel_tile(width, register_tile(target, block))
    if not pairable:
        return single, 1
    regs, lanes = _vector_registers(target)
    per_pixel = max(1, block // lanes)
    limit = min(max_pair, (regs - 2 * per_pixel - 1) // (2 * per_pixel))
    pair = _pixel_tile(width, limit)
    if 2 * pair < single:
        # A divisor tile too short for the pair (rows of 55: 5 x 2 against 11 x 1): a full tile with
        # a ragged last one. SqueezeNet's 16 -> 64 1x1 / 3x3 on rows of 55, per kernel on the AVX-512
        # host: 7 x 2 1.08 / 1.09x faster than 11 x 1, 5 x 2 1.09 / 1.03x (benchmarks/conv_tiles.py).
        pair = min(width, limit)
    return (pair, 2) if pair >= min(width, MIN_PAIR_TILE) and 2 * pair >= single else (single, 1)


def _extent(sch: s_tir.Schedule, loop) -> int | None:
    ext = sch.get(loop).extent
    return int(ext) if isinstance(ext, tirx.IntImm) else None


def _unrolled_tile(width: int, block: int, registers: int) -> int:
    """Pixels per tile of a row of `width` whose input-channel loop is unrolled (`_unroll_channels`).

    Unrolled, LLVM loads a pixel's input channels two vectors at a time (`ldp`) and multiplies by
    lane, so each pixel holds two input vectors beside its block/4 accumulators, with block/4
    weight vectors live: 4 pixels of 16 channels (4 x (4 + 2) + 4 = 28 of 32 registers; tiles of 5
    and 6 spilled: SqueezeNet on rasp4b 132.2 M and 46.9 M for a 3x3 on rows of 27 alone, against
    124.3 M). The row's tiles are balanced (14 -> 4, 4, 4, 2 rather than tiles of 2), the last one
    partitioned off when it is shorter.
    """
    per_pixel = max(1, block // 4)
    limit = min(MAX_REG_TILE, (registers - per_pixel) // (per_pixel + 2))
    tiles = -(-width // limit)
    return -(-width // tiles)


def _largest_divisor(n: int, limit: int) -> int:
    return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


def _pixel_tile(width: int, limit: int) -> int:
    """A divisor of the row width when one is close to `limit`, else `limit` with a ragged last
    tile (a row of 13 or 55 pixels must not fall back to tiles of 1)."""
    best = _largest_divisor(width, limit)
    return best if 2 * best > min(width, limit) else min(width, limit)


def _iter_kinds(sch: s_tir.Schedule, block) -> str:
    kinds = {tirx.IterVar.DataPar: "S", tirx.IterVar.CommReduce: "R"}
    return "".join(kinds.get(int(iv.iter_type), "O") for iv in sch.get(block).iter_vars)


def _name(sch: s_tir.Schedule, block) -> str:
    return sch.get(block).name_hint


def _blocks(sch: s_tir.Schedule) -> list:
    return list(sch.get_child_blocks(sch.get_sblock("root")))


def _schedule_pad(sch: s_tir.Schedule, block, target: tvm.target.Target) -> None:
    loops = sch.get_loops(block)
    if len(loops) >= 3:
        _parallel(sch, block, loops[: len(loops) - 2], target)
    inner = _extent(sch, loops[-1])
    if inner is not None and 1 < inner <= 64:
        sch.vectorize(loops[-1])


def block_work(sch: s_tir.Schedule, block) -> int | None:
    """Iterations of `block`'s domain (output elements x reduction size); None when not constant."""
    work = 1
    for iv in sch.get(block).iter_vars:
        if not isinstance(iv.dom.extent, tirx.IntImm):
            return None
        work *= int(iv.dom.extent)
    return work


def _parallel(sch: s_tir.Schedule, block, loops: list, target: tvm.target.Target, weight: int = 1) -> None:
    """Fuse `loops`, the outer loops of `block`, into one parallel loop where the block's work
    reaches PARALLEL_MIN_WORK (or is not known) on x86; below it they stay serial and unfused (a
    fused serial loop only adds a div/mod per index). ARM keeps every kernel parallel: the threshold
    was measured on x86 cores only, and serial kernels changed rasp4b's instruction counts (SqueezeNet
    124.33 M -> 123.63 M at one thread, the launches)."""
    if _runs_serial(sch, block, target, weight):
        return
    sch.parallel(sch.fuse(*loops) if len(loops) > 1 else loops[0])


def _runs_serial(sch: s_tir.Schedule, block, target: tvm.target.Target, weight: int = 1) -> bool:
    """Whether `_parallel` leaves `block`'s loops serial: x86, its work (times `weight`) known and below
    PARALLEL_MIN_WORK."""
    work = block_work(sch, block)
    return _is_x86(target) and work is not None and work * weight < PARALLEL_MIN_WORK


def _same(sch: s_tir.Schedule, a, b) -> bool:
    return sch.get(a).same_as(sch.get(b))


def _epilogue(sch: s_tir.Schedule, conv, others: list):
    """Inline the injective blocks after `conv` into one output block; None if that is not possible.

    When the convolution itself writes the function's output, a cache-write gives it a tile
    to accumulate in and a copy block that plays the epilogue. On AArch64 the last block calling a
    fixed-width intrinsic (`_FIXED_WIDTH_INTRINSICS`) stays a block of its own with the blocks
    before it inlined (`_narrow_apart`).
    """
    outputs = list(sch.get_output_blocks(sch.get_sblock("root")))
    if len(outputs) != 1:
        return None
    out = outputs[0]
    apart = _narrow_apart(sch, others, out)
    for block in others:
        if not _same(sch, block, out) and not (apart is not None and _same(sch, block, apart)):
            sch.compute_inline(block)
    if _same(sch, out, conv):
        return sch.cache_write(conv, 0, "global")
    return out


def _conv_with_epilogue(sch: s_tir.Schedule, conv, blocks: list, pad_names: tuple[str, ...], rank: int):
    """(pad blocks, epilogue block) of a nest holding `conv`, its input pads and injective blocks
    after it; None when the nest holds anything else."""
    pads = [b for b in blocks if _name(sch, b) in pad_names]
    others = [
        b
        for b in blocks
        if not _same(sch, b, conv) and not any(_same(sch, b, p) for p in pads) and _iter_kinds(sch, b) == "S" * rank
    ]
    if len(pads) + len(others) + 1 != len(blocks):
        return None
    epi = _epilogue(sch, conv, others)
    return None if epi is None else (pads, epi)


def _finish_conv(
    sch: s_tir.Schedule, conv, epi, pads: list, reduction_loop, target: tvm.target.Target
) -> s_tir.Schedule:
    """Split off the accumulator init, vectorize the epilogue's inner loop, schedule the pads."""
    sch.decompose_reduction(conv, reduction_loop)
    _vectorize_epilogue(sch, epi, target)
    for pad in pads:
        _schedule_pad(sch, pad, target)
    return sch


# Target intrinsics LLVM cannot split into narrower vectors: an epilogue calling one is
# vectorized in vectors of this many lanes (graph.sqrdmulh_rescales, graph.rounding_shifts: SQRDMULH
# and SRSHL on 4 int32 lanes).
_FIXED_WIDTH_INTRINSICS = {"llvm.aarch64.neon.sqrdmulh": 4, "llvm.aarch64.neon.srshl": 4}


# x86's rescale (x86_intrin.RDHM_OP) is written out after vectorization, some twenty LLVM IR
# operations per vector: LLVM then stopped unrolling a convolution epilogue's pixel loop (up to
# a register tile), and the accumulator tile went through the stack. Such loops are unrolled here.
_EPILOGUE_UNROLL_MAX = 32


def _narrow_apart(sch: s_tir.Schedule, others: list, out):
    """The last of `others` calling a fixed-width intrinsic, unless it is the output block; None if none.

    SQRDMULH and SRSHL run 4 int32 lanes per instruction, and an epilogue calling them is vectorized in
    4-lane pieces: the int8 narrowing after them (zero point, clamp, casts) then ran per 4 outputs too
    (smax, smin, xtn, eor, uzp1 and an insert per 4). Apart, the rescale writes a pixel's channels to a
    buffer of that pixel (registers: compute_at in `_epilogue_at` compacts it; a "local" one became a
    heap workspace per call) in 4-lane pieces and the rest of the epilogue runs on the whole channel block."""
    calls = [b for b in others if _calls_fixed_width(sch, b)]
    return None if not calls or _same(sch, calls[-1], out) else calls[-1]


def _calls_fixed_width(sch: s_tir.Schedule, block) -> bool:
    return any(name in str(sch.get(block)) for name in _FIXED_WIDTH_INTRINSICS)


def _epilogue_at(sch: s_tir.Schedule, epi, loop) -> None:
    """Move the epilogue under `loop`; a rescale kept apart by `_narrow_apart` computes each pixel's
    channels right before the epilogue uses them, in 4-lane pieces (`_vectorize`)."""
    apart = [b for b in sch.get_producers(epi) if _calls_fixed_width(sch, b)]
    for block in apart:
        sch.reverse_compute_at(block, loop)
    sch.reverse_compute_at(epi, loop)
    for block in apart:
        sch.compute_at(block, sch.get_loops(epi)[-2])
        _vectorize(sch, block, sch.get_loops(block)[-1])


def _vectorize_epilogue(sch: s_tir.Schedule, epi, target: tvm.target.Target) -> None:
    from edgefleet.compiler.x86_intrin import RDHM_OP

    loops = sch.get_loops(epi)
    pixels = _extent(sch, loops[-2]) if len(loops) > 1 else None
    if RDHM_OP.removeprefix("tirx.") not in str(sch.get(epi)) or pixels is None:
        _vectorize(sch, epi, loops[-1])
        return
    if 2 * _extent(sch, loops[-1]) == vector_lanes(target) and pixels % 2 == 0:
        # Half-register channel blocks (8 on AVX-512): two pixels' channels, contiguous in NCHWc,
        # fill one register, so the high multiply runs on whole registers (graph.sqrdmulh_rescales).
        loops[-2], inner = sch.split(sch.fuse(loops[-2], loops[-1]), [pixels // 2, None])
        pixels //= 2
        sch.vectorize(inner)
    else:
        _vectorize(sch, epi, loops[-1])
    if pixels <= _EPILOGUE_UNROLL_MAX:
        sch.unroll(loops[-2])


def _vectorize(sch: s_tir.Schedule, block, loop) -> None:
    """Vectorize `loop` of `block`, in unrolled pieces of a fixed-width intrinsic's lanes where it calls one."""
    body = str(sch.get(block))
    lanes = min((n for name, n in _FIXED_WIDTH_INTRINSICS.items() if name in body), default=None)
    extent = _extent(sch, loop)
    if lanes is not None and (extent is None or extent % lanes):
        return  # scalar calls: another vector width does not lower
    if lanes is not None and extent > lanes:
        outer, loop = sch.split(loop, [None, lanes])
        sch.unroll(outer)
    sch.vectorize(loop)


class _SafeRule(CPUScheduleRule):
    """A schedule primitive that refuses a loop nest means the rule does not fit it: try the next rule."""

    def apply(self, func: tirx.PrimFunc, target: tvm.target.Target, tunable: bool):
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        self.target = target
        try:
            return self.schedule(s_tir.Schedule(func))
        except (s_tir.ScheduleError, RuntimeError):  # TVM 0.27 raises its errors as RuntimeError subclasses
            return None


class Conv2dNCHWc(_SafeRule):
    """Register-blocked direct convolution on NCHW{c} data with OIHW{i}{o} prepacked weights."""

    def schedule(self, sch: s_tir.Schedule) -> s_tir.Schedule | None:
        blocks = _blocks(sch)
        convs = [
            b
            for b in blocks
            if _name(sch, b).startswith(("conv2d_NCHWc", "depthwise_conv2d_NCHWc", "group_conv2d_NCHWc"))
        ]
        if len(convs) != 1 or _iter_kinds(sch, convs[0]) not in ("SSSSSRRR", "SSSSSRR", "SSSSSRRRR", "SSSSSRRRRR"):
            return None
        conv = convs[0]
        if _iter_kinds(sch, conv) == "SSSSSRRRRR":
            return _dot(sch, conv, blocks, self.target)
        if _iter_kinds(sch, conv) == "SSSSSRR":
            return _depthwise(sch, conv, blocks, self.target)
        if _iter_kinds(sch, conv) == "SSSSSRRRR":
            return _grouped(sch, conv, blocks, self.target)
        return _dense(sch, conv, blocks, self.target)


def _dense(sch: s_tir.Schedule, conv, blocks: list, target: tvm.target.Target):
    """Dense NCHWc: per (chunk, row), tiles of reg_n pixels x the output block accumulate over the
    input-channel chunks and the kernel window."""
    ow_n, ocb_n = (_extent(sch, loop) for loop in sch.get_loops(conv)[3:5])
    if None in (ow_n, ocb_n):
        return None
    is_float = str(sch.get(conv).writes[0].source.dtype) == "float32"
    # float32 only: the int8 kernels' int16 multiply-adds counted 0.8% more unrolled (MobileNetV2-0.35, rasp4b).
    unrolled = _unroll_channels(target) and is_float
    reg_n = _unrolled_tile(ow_n, ocb_n, _vector_registers(target)[0]) if unrolled else 1
    if unrolled and ow_n % reg_n:
        sch, blocks, conv = _int32_indices(sch)
    found = _conv_with_epilogue(sch, conv, blocks, ("data_pad",), 5)
    if found is None:
        return None
    pads, epi = found
    n, occ, oh, ow, ocb, ic, kh, kw = sch.get_loops(conv)
    ic_n, ic_bn = _extent(sch, ic), int(sch.get(conv).reads[0].source.shape[-1])
    if ic_n is None or ic_n % ic_bn:
        return None
    if _lane_multiplies(sch, conv, target, ic_bn, ocb_n):
        return _lane(sch, conv, epi, pads, target)
    oc_t = 1
    if not unrolled:
        # AVX-512 float (the only 16-lane registers): two output blocks share each input broadcast,
        # 7 x 2 instead of 14 x 1 (`output_tile`). AVX2, ARM and int8 keep one block, and a block
        # narrower than 16 (few output channels) holds fewer accumulators per pixel: more pixels fit.
        pairable = _vector_registers(target)[1] == 16 and is_float
        reg_n, oc_t = _dense_tile(target, ow_n, ocb_n, _extent(sch, occ) if pairable else 1)
    ow_o, ow_i = sch.split(ow, [None, reg_n])
    ic_o, ic_i = sch.split(ic, [None, ic_bn])
    inner = [ic_i, ow_i, ocb]
    if oc_t > 1:
        occ, occ_i = sch.split(occ, [None, oc_t])
        sch.unroll(occ_i)
        inner.insert(1, occ_i)
    sch.reorder(n, occ, oh, ow_o, ic_o, kh, kw, *inner)
    if unrolled:
        sch.unroll(ic_i)
        if ow_n % reg_n:
            sch.annotate(ow_o, "pragma_loop_partition_hint", 1)
    _epilogue_at(sch, epi, ow_o)
    _parallel(sch, conv, [n, occ, oh], target)
    # Vectorize before splitting off the init: the schedule checks need a whole reduction block.
    sch.unroll(ow_i)
    sch.vectorize(ocb)
    return _finish_conv(sch, conv, epi, pads, ic_o, target)


def _dense_tile(target: tvm.target.Target, width: int, block: int, chunks: int | None) -> tuple[int, int]:
    """`output_tile` of a dense float conv with `chunks` output blocks that may pair. An odd number
    pairs all but its last block, which takes the pair's tile with its second half predicated off:
    from 5 blocks up (that tail is at most a fifth of the work), or where the pair's tile is as long as
    one block's (rows of 7). Per kernel on the AVX-512 host against one block (benchmarks/conv_tiles.py):
    9, 13 and 63 blocks 1.04-1.08x; 3 blocks 1.14x on rows of 7, 1.00x on rows of 13, 0.93x on rows of 28."""
    single = output_tile(target, width, block, False)
    if chunks is None or chunks < 2:
        return single
    pair = output_tile(target, width, block, True, MAX_DENSE_PAIR_TILE)
    return single if chunks % 2 and chunks < 5 and pair[0] < single[0] else pair


def _int32_indices(sch: s_tir.Schedule):
    """(schedule, blocks, dense conv) of the kernel with int32 indices. The last tile of a row is
    partitioned off by LoopPartition's hint; TVM's NarrowDataType renames int64 loop variables but
    not the hint that names them, so the hint would be lost on int64 loops."""
    sch = s_tir.Schedule(tirx.transform.ForceNarrowIndexToInt32()(sch.mod)["main"])
    blocks = _blocks(sch)
    return sch, blocks, next(b for b in blocks if _name(sch, b).startswith("conv2d_NCHWc"))


def _dot(sch: s_tir.Schedule, conv, blocks: list, target: tvm.target.Target):
    """int8 NCHWc on raw operands (graph.dot_product_convs; reductions kh, kw, ic chunk, ic/4, 4):
    the fp32 tiling with each 4 output channels x 4 input channels one SDOT (TVM's
    ARM_DOT_4x4_i8_SDOT intrinsic, as arm_intrin.SDOT_4x4_I8: the pixel's 4 inputs broadcast, a
    16-byte weight vector; stride-one ones with 8- or 16-channel input blocks by lane instead, `_dot_lane`);
    on x86 VNNI (uint8 input) each 16 (or 8) output channels x 4 input channels one vpdpbusd
    (x86_intrin.VNNI_U8I8)."""
    found = _conv_with_epilogue(sch, conv, blocks, ("data_pad",), 5)
    if found is None:
        return None
    pads, epi = found
    n, occ, oh, ow, ocb, kh, kw, ic, ic_f, ic_s = sch.get_loops(conv)
    ow_n, ocb_n = _extent(sch, ow), _extent(sch, ocb)
    if None in (ow_n, ocb_n) or _extent(sch, ic_s) != 4:
        return None
    from edgefleet.compiler.arm_intrin import SDOT_4x4_I8

    lanes, intrin = _dot_intrinsic(sch, conv, ocb_n)
    if ocb_n % lanes:
        return None
    if intrin == SDOT_4x4_I8 and _sdot_lanes(sch, conv):
        return _dot_lane(sch, conv, epi, pads, target)
    # The tile must divide the row (a ragged tile's predicate does not tensorize). Where no divisor
    # fills the registers (rows of 7 or 14), half the channels per pass hold twice the pixels.
    limit = register_tile(target, ocb_n)
    tile, passes = _largest_divisor(ow_n, limit), 1
    if 2 * tile <= min(ow_n, limit) and ocb_n % (2 * lanes) == 0:
        tile, passes = _largest_divisor(ow_n, register_tile(target, ocb_n // 2)), 2
    ow_o, ow_i = sch.split(ow, [None, tile])
    oc_p, oc_o, oc_i = sch.split(ocb, [passes, None, lanes])
    sch.reorder(n, occ, oh, ow_o, oc_p, ic, kh, kw, ic_f, ow_i, oc_o, oc_i, ic_s)
    _epilogue_at(sch, epi, ow_o)
    _parallel(sch, conv, [n, occ, oh], target)
    sch.decompose_reduction(conv, ic)
    sch.tensorize(oc_i, intrin)
    sch.unroll(ow_i)
    sch.unroll(oc_o)
    _vectorize_epilogue(sch, epi, target)
    for pad in pads:
        _schedule_pad(sch, pad, target)
    return sch


def _sdot_lanes(sch: s_tir.Schedule, conv) -> bool:
    """Whether an SDOT convolution reads whole 8- or 16-byte vectors of input channels per pixel, as
    rows of one matrix (stride one): `_dot_lane`."""
    ic_bn = int(sch.get(conv).reads[0].source.shape[-1])
    return ic_bn in (8, 16) and _stride_one(sch, conv, *(sch.get_loops(conv)[i] for i in (3, 6)))


def _dot_lane(sch: s_tir.Schedule, conv, epi, pads: list, target: tvm.target.Target) -> s_tir.Schedule:
    """int8 NCHWc on SDOT by lane (XNNPACK's dot-product kernels): per pixel one load of its 8 or 16
    input channels, each 4 of them one lane of `sdot v.4s, w.16b, a.4b[k]` into the pixel's
    accumulators (arm_intrin.sdot_lane_intrin). The broadcast form (`SDOT_4x4_I8`) loaded and
    broadcast every 4 input channels of every pixel, `ld1r` and an address add per 4 SDOTs."""
    from edgefleet.compiler.arm_intrin import sdot_lane_intrin

    n, occ, oh, ow, ocb, kh, kw, ic, ic_f, ic_s = sch.get_loops(conv)
    ow_n, ocb_n = _extent(sch, ow), _extent(sch, ocb)
    ic_bn = int(sch.get(conv).reads[0].source.shape[-1])
    tile, passes = _lane_tile_passes(target, ow_n, ocb_n)
    ow_o, ow_i = sch.split(ow, [None, tile])
    oc_p, oc_i = sch.split(ocb, [passes, None])
    sch.reorder(n, occ, oh, ow_o, oc_p, ic, kh, kw, ow_i, ic_f, oc_i, ic_s)
    _epilogue_at(sch, epi, ow_o)
    _parallel(sch, conv, [n, occ, oh], target)
    init = sch.decompose_reduction(conv, ic)
    sch.tensorize(ow_i, sdot_lane_intrin(tile, ic_bn, ocb_n // passes))
    sch.vectorize(sch.get_loops(init)[-1])
    _vectorize_epilogue(sch, epi, target)
    for pad in pads:
        _schedule_pad(sch, pad, target)
    return sch


# Groups of 4 outputs per pass of an SDOT fully connected layer (`DenseDot`): as many accumulators
# and weight vectors, and the input's broadcast, fit the 32 vector registers.
DENSE_DOT_GROUPS = 10


class DenseDot(_SafeRule):
    """graph.dot_product_dense's int8 fully connected layer (`matmul_dot`, raw int8 row times weights
    packed [N/4, K/4, 4, 4]): per pass up to DENSE_DOT_GROUPS x 4 outputs accumulate in registers, each
    4 outputs x 4 inputs one SDOT (arm_intrin.SDOT_4x4_I8), the row's 4 inputs broadcast once for all."""

    def schedule(self, sch: s_tir.Schedule) -> s_tir.Schedule | None:
        from edgefleet.compiler.arm_intrin import SDOT_4x4_I8

        blocks = _blocks(sch)
        dots = [b for b in blocks if _name(sch, b) == "matmul_dot"]
        if len(dots) != 1:
            return None
        dot = dots[0]
        # The epilogue: element-wise blocks (a per-output constant widened in one of its own).
        others = [b for b in blocks if not _same(sch, b, dot) and "R" not in _iter_kinds(sch, b)]
        epi = _epilogue(sch, dot, others) if len(others) + 1 == len(blocks) else None
        if epi is None:
            return None
        i, j, k = sch.get_loops(dot)
        groups = _extent(sch, j) // 4
        j_o, j_t, j_i = sch.split(j, [None, _largest_divisor(groups, DENSE_DOT_GROUPS), 4])
        k_o, k_i = sch.split(k, [None, 4])
        sch.reorder(i, j_o, k_o, j_t, j_i, k_i)
        _epilogue_at(sch, epi, j_o)
        _parallel(sch, dot, [i, j_o], self.target)
        init = sch.decompose_reduction(dot, k_o)
        sch.tensorize(j_i, SDOT_4x4_I8)
        sch.unroll(j_t)
        # Every access to the accumulators 4 lanes wide, as the SDOTs': with the init and the epilogue
        # on whole tiles, LLVM kept them as scalars and moved every lane in and out around each SDOT.
        for block in (init, epi):
            outer, lanes = sch.split(sch.get_loops(block)[-1], [None, 4])
            sch.unroll(outer)
            _vectorize(sch, block, lanes)
        return sch


def _lane_multiplies(sch: s_tir.Schedule, conv, target: tvm.target.Target, ic_bn: int, ocb_n: int) -> bool:
    """AArch64 int16 x int16 -> int32 convolutions (tflite_quant.py's dense int8 convolutions where
    no dot product runs them) with whole groups of LANE_CHANNELS input channels: `_lane`."""
    from edgefleet.compiler.arm_intrin import LANE_CHANNELS

    block = sch.get(conv)
    out = block.writes[0].source
    operands = {str(r.source.dtype) for r in block.reads if not r.source.same_as(out)}
    return (
        is_aarch64(target)
        and str(out.dtype) == "int32"
        and operands == {"int16"}
        and ic_bn % LANE_CHANNELS == 0
        and ocb_n % 4 == 0
        and _stride_one(sch, conv, *(sch.get_loops(conv)[i] for i in (3, 7)))
    )


def _stride_one(sch: s_tir.Schedule, conv, ow, kw) -> bool:
    """Whether the convolution's neighbouring output pixels (loop `ow`; `kw` the window's columns) read
    neighbouring input pixels (no stride, no dilation): `_lane` multiplies a tile's inputs as rows of one matrix."""
    ow_n, kw_n = _extent(sch, ow), _extent(sch, kw)
    width = int(sch.get(conv).reads[0].source.shape[3])
    return ow_n is not None and kw_n is not None and width == ow_n + kw_n - 1


def _lane(sch: s_tir.Schedule, conv, epi, pads: list, target: tvm.target.Target) -> s_tir.Schedule:
    """int16 NCHWc on AArch64 by lane (XNNPACK's Cortex-A72 int8 kernels): per pixel, one 128-bit load
    of 8 input channels, each of them multiplied as a lane (`smlal v.4s, w.4h, a.h[k]`) into the
    pixel's output-channel accumulators (arm_intrin.smlal_lane_intrin). The broadcast form loaded
    and broadcast every input channel of every pixel (`ld1r` and an address add per 16 multiply-adds).
    A lane operand must sit in v0-v15: a pixel holds one such input vector beside its accumulators.
    Tiles divide the row (a ragged tile's predicate does not tensorize); where none fills the
    registers, half the output channels per pass hold twice the pixels, as in `_dot`."""
    from edgefleet.compiler.arm_intrin import LANE_CHANNELS, smlal_lane_intrin

    n, occ, oh, ow, ocb, ic, kh, kw = sch.get_loops(conv)
    ow_n, ocb_n = _extent(sch, ow), _extent(sch, ocb)
    ic_bn = int(sch.get(conv).reads[0].source.shape[-1])
    assert ow_n is not None and ocb_n is not None
    tile, passes = _lane_tile_passes(target, ow_n, ocb_n)
    ow_o, ow_i = sch.split(ow, [None, tile])
    oc_p, oc_i = sch.split(ocb, [passes, None])
    ic_o, ic_m, ic_i = sch.split(ic, [None, ic_bn // LANE_CHANNELS, LANE_CHANNELS])
    sch.reorder(n, occ, oh, ow_o, oc_p, ic_o, kh, kw, ic_m, ow_i, ic_i, oc_i)
    _epilogue_at(sch, epi, ow_o)
    _parallel(sch, conv, [n, occ, oh], target)
    init = sch.decompose_reduction(conv, ic_o)
    sch.tensorize(ow_i, smlal_lane_intrin(tile, ocb_n // passes))
    sch.vectorize(sch.get_loops(init)[-1])
    _vectorize_epilogue(sch, epi, target)
    for pad in pads:
        _schedule_pad(sch, pad, target)
    return sch


def _lane_tile(target: tvm.target.Target, block: int) -> int:
    """Pixels per by-lane tile (`_lane`, `_dot_lane`): each holds block/4 accumulators and its input
    vector; four registers stay for weights (16 channels: 5 pixels, 8: 9)."""
    regs, lanes = _vector_registers(target)
    return max(1, min(MAX_REG_TILE, (regs - 4) // (block // lanes + 1)))


def _lane_tile_passes(target: tvm.target.Target, width: int, block: int) -> tuple[int, int]:
    """(pixels per tile, passes over the output block) of a by-lane kernel (`_lane`, `_dot_lane`): the
    tile divides the row (a ragged tile's predicate does not tensorize); where none fills the
    registers, half the output channels per pass hold twice the pixels."""
    tile = _largest_divisor(width, _lane_tile(target, block))
    if 2 * tile <= min(width, _lane_tile(target, block)) and block % 8 == 0:
        return _largest_divisor(width, _lane_tile(target, block // 2)), 2
    return tile, 1


def _dot_intrinsic(sch: s_tir.Schedule, conv, ocb_n: int) -> tuple[int, str]:
    """(output channels per instruction, tensor intrinsic) for a dot-product convolution: uint8
    input (graph.dot_product_convs(unsigned=True), x86 VNNI) -> vpdpbusd on 16 lanes where the block
    has 16, else 8; int8 -> SDOT on 4."""
    from edgefleet.compiler.arm_intrin import SDOT_4x4_I8
    from edgefleet.compiler.x86_intrin import VNNI_U8I8

    if str(sch.get(conv).reads[0].source.dtype) == "uint8":
        lanes = 16 if ocb_n % 16 == 0 else 8
        return lanes, VNNI_U8I8[lanes]
    return 4, SDOT_4x4_I8


def _depthwise(sch: s_tir.Schedule, conv, blocks: list, target: tvm.target.Target):
    """Depthwise NCHWc: per (chunk, row), reg_n pixels x 16 channels accumulate over the window."""
    found = _conv_with_epilogue(sch, conv, blocks, ("data_pad",), 5)
    if found is None:
        return None
    pads, epi = found
    n, occ, oh, ow, ocb, kh, kw = sch.get_loops(conv)
    ow_n, ocb_n = _extent(sch, ow), _extent(sch, ocb)
    if None in (ow_n, ocb_n):
        return None
    if str(sch.get(conv).reads[0].source.dtype) == "uint8":
        return _depthwise_dot(sch, conv, epi, pads, target)
    ow_o, ow_i = sch.split(ow, [None, _depthwise_tile(sch, conv, target, ow_n, ocb_n)])
    sch.reorder(n, occ, oh, ow_o, kh, kw, ow_i, ocb)
    _epilogue_at(sch, epi, ow_o)
    weight = 1
    if _is_x86(target):
        is_float = str(sch.get(conv).writes[0].source.dtype) == "float32"
        weight = DEPTHWISE_WORK_WEIGHT if is_float else 1
        rows = [p for p in pads if _pads_per_row(sch, p, _extent(sch, oh), _extent(sch, kh), is_float)]
        pads = _pads_per_block(sch, conv, [p for p in pads if p not in rows], occ, target, weight) if is_float else pads
        pads += _pad_rows(sch, rows, oh)
        # Parallel over two halves of the rows, each an inner loop: with every row in the fused parallel
        # loop, MobileNetV2's 112 x 112 and 56 x 56 ones were 1.10-1.18x slower at one thread and
        # 0.71-0.73 of that at two (benchmarks/pool_kernels.py), at half rows 0.54-0.58 of the serial time.
        if is_float and not _runs_serial(sch, conv, target, weight) and _extent(sch, oh) % 2 == 0:
            oh = sch.split(oh, [2, None])[0]
    _parallel(sch, conv, [n, occ, oh], target, weight)
    sch.unroll(ow_i)
    sch.vectorize(ocb)
    return _finish_conv(sch, conv, epi, pads, kh, target)


def _depthwise_dot(sch: s_tir.Schedule, conv, epi, pads: list, target: tvm.target.Target) -> s_tir.Schedule:
    """graph.depthwise_conv2d_nchwc_dot on x86 VNNI: per (chunk, row) a tile of pixels x 16 channels
    accumulates over the window's rows, each pixel's row of 4 taps one vpdpbusd on its 4 input pixels
    transposed (x86_intrin.VNNI_WINDOW_U8I8); pads as the int8 depthwise ones (`_pads_per_row`)."""
    from edgefleet.compiler.x86_intrin import VNNI_WINDOW_U8I8

    n, occ, oh, ow, ocb, kh, kw = sch.get_loops(conv)
    # A divisor of the row (a ragged tile's predicate does not tensorize): 1 on a prime row.
    ow_o, ow_i = sch.split(ow, [None, _largest_divisor(_extent(sch, ow), register_tile(target))])
    sch.reorder(n, occ, oh, ow_o, kh, ow_i, ocb, kw)
    _epilogue_at(sch, epi, ow_o)
    rows = [p for p in pads if _pads_per_row(sch, p, _extent(sch, oh), _extent(sch, kh), False)]
    pads = [p for p in pads if p not in rows] + _pad_rows(sch, rows, oh)
    _parallel(sch, conv, [n, occ, oh], target)
    init = sch.decompose_reduction(conv, kh)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.tensorize(ocb, VNNI_WINDOW_U8I8)
    sch.unroll(ow_i)
    _vectorize_epilogue(sch, epi, target)
    for pad in pads:
        _schedule_pad(sch, pad, target)
    return sch


# Pixels per register tile of an AArch64 integer depthwise convolution: the first that divides the row.
DEPTHWISE_INT_TILES = (4, 2)


def _depthwise_tile(sch: s_tir.Schedule, conv, target: tvm.target.Target, width: int, block: int) -> int:
    """Pixels per register tile of a depthwise convolution over a row of `width` pixels.

    AArch64 integer ones (int16 x int16 -> int32, the int8 models'): 4 or 2 pixels, whichever divides
    the row, else the whole row up to `register_tile` + 1 pixels (7). `register_tile`'s 6 pixels of 16
    channels hold 24 accumulators beside the 9 taps' 18 weight vectors and the rescale's 12 constant
    vectors: reloaded from the stack per tile, and on rows it does not divide (14, 7) a ragged last
    tile; MobileNetV2 1.0 on rasp5 counted 0.80-0.96 instructions per multiply-add on those rows,
    0.61-0.67 on rows of 112-28 (tiles of 4). Tiles of 3 counted more than of 2 or 6 on rows of 6."""
    is_int = str(sch.get(conv).writes[0].source.dtype) == "int32"
    if not (is_aarch64(target) and is_int):
        return _pixel_tile(width, register_tile(target, block))
    tile = next((t for t in DEPTHWISE_INT_TILES if width % t == 0), None)
    if tile is None and width <= register_tile(target, block) + 1:
        return width
    return tile or _pixel_tile(width, register_tile(target, block))


# A depthwise input block's padded plane above this many bytes is padded per output row (`_pad_rows`).
PAD_PLANE_BYTES = 32 << 10


def _pads_per_row(sch: s_tir.Schedule, pad, rows: int | None, window: int | None, by_plane: bool) -> bool:
    """Whether a depthwise convolution's `pad` goes under its row loop (`_pad_rows`): where the stride
    is above one or (`by_plane`, float) the padded plane of one channel block exceeds PAD_PLANE_BYTES.
    Per kernel on the AVX-512 host (benchmarks/depthwise_pads.py, MobileNetV2's layers): stride 2
    1.76-2.98x faster, stride 1 on rows of 28-112 1.01-1.09x, on rows of 14 and 7 (16 KiB planes, in L1
    whole) 0.78-0.96x: there each row copied kh times costs more than the single pass. int8 (x86 VNNI
    MobileNetV2 1.0, benchmarks/kernel_profile.py): stride 2 on rows of 112 0.081 -> 0.072 ms, but stride
    1 per row slower on rows of 112 and 56 (0.068 -> 0.073, 0.079 -> 0.091 ms), so strided ones only."""
    shape = [int(d) for d in sch.get(pad).writes[0].source.shape]
    if rows is None or window is None:
        return False
    strided = shape[2] - window + 1 > rows
    return strided or (by_plane and shape[2] * shape[3] * shape[4] * 4 > PAD_PLANE_BYTES)


def _pad_rows(sch: s_tir.Schedule, pads: list, row) -> list:
    """Pad a depthwise convolution's input per output row, inside its loop: the window's rows of one
    channel block (3 x 114 x 16 floats at most in MobileNetV2) stay in L1 for the row's multiply-adds.
    A pad of the whole input first wrote and re-read it through L2 or beyond (6 x 114 x 114 x 16 floats,
    5 MB, for the 96-channel stride-2 layer); rows are copied kh / stride times, from L1.
    Returns the pads left to schedule on their own (none)."""
    for pad in pads:
        sch.compute_at(pad, row)
        sch.vectorize(sch.get_loops(pad)[-1])
    return []


def _pads_per_block(sch: s_tir.Schedule, conv, pads: list, block, target: tvm.target.Target, weight: int) -> list:
    """Pad a depthwise convolution's input per channel block where it is not padded per row
    (`_pads_per_row`: a plane of one block in L1): each block's padded plane is written and read back
    in L1 instead of the whole padded input through L2 (576 channels at 14 x 14: 590 KB). Per kernel
    on the AVX-512 host (benchmarks/depthwise_pads.py): 384x14, 576x14 and 960x7 1.21-1.49x faster.
    Serial kernels only: a parallel kernel fuses the block and row loops. Returns the pads left to
    schedule on their own."""
    return _pad_rows(sch, pads, block) if _runs_serial(sch, conv, target, weight) else pads


def _pointwise_pair_tile(target: tvm.target.Target, width: int, block: int) -> tuple[int, int]:
    """`output_tile` of a grouped 1x1 conv whose groups span pairs of output blocks: at most
    `MAX_POINTWISE_PAIR_TILE` pixels, the row in balanced tiles (16 -> 6, 6, 4; 32 -> 7, 7, 7, 7, 4).

    A tile's accumulators live in a buffer that TVM puts on the stack below 1 KB and on the heap from
    there, zeroed by a memset call and written back per tile: with 8 x 2 (1 KB) on the 16-64 input
    channels of a group's 1x1 that cost a fifth of the kernel. Per kernel on the AVX-512 host
    (ShuffleNet-like groups of 16-128 input channels, rows of 16 and 32): 6 x 2 and 7 x 2 1.03-1.30x
    8 x 2, 4 x 2 0.96-1.25x. The stride-2 grouped 3x3 (576 multiply-adds per output) keeps 8 x 2: its
    long reduction hides that cost, and 6 x 2 / 7 x 2 were 0.97 / 0.91x there."""
    px, oc_t = output_tile(target, width, block, True, MAX_POINTWISE_PAIR_TILE)
    if oc_t == 1:
        return px, oc_t
    tiles = -(-width // min(width, MAX_POINTWISE_PAIR_TILE))
    return -(-width // tiles), oc_t


def _grouped(sch: s_tir.Schedule, conv, blocks: list, target: tvm.target.Target):
    """Grouped NCHWc (graph.grouped_conv2d_nchwc, reductions ic, ib, rh, rw): the tiling of the
    plain blocked conv, with its ic chunk / lane split already in the compute; where a group spans
    several output blocks, two of them per tile share each input broadcast (`output_tile`)."""
    found = _conv_with_epilogue(sch, conv, blocks, ("data_pad",), 5)
    if found is None:
        return None
    pads, epi = found
    n, occ, oh, ow, ocb, ic, ib, kh, kw = sch.get_loops(conv)
    ow_n, ocb_n = _extent(sch, ow), _extent(sch, ocb)
    if None in (ow_n, ocb_n):
        return None
    block = sch.get(conv)
    inputs = [r.source for r in block.reads if not r.source.same_as(block.writes[0].source)]
    data, kernel = (next([int(d) for d in b.shape] for b in inputs if len(b.shape) == rank) for rank in (5, 6))
    per_group = grouped_output_blocks(data, kernel)
    pairable = per_group is not None and per_group % 2 == 0
    pointwise = (_extent(sch, kh), _extent(sch, kw)) == (1, 1)
    px, oc_t = (
        _pointwise_pair_tile(target, ow_n, ocb_n)
        if pairable and pointwise
        else output_tile(target, ow_n, ocb_n, pairable)
    )
    ow_o, ow_i = sch.split(ow, [None, px])
    occ_o, occ_i = sch.split(occ, [None, oc_t])
    sch.reorder(n, occ_o, oh, ow_o, ic, kh, kw, ib, occ_i, ow_i, ocb)
    _epilogue_at(sch, epi, ow_o)
    _parallel(sch, conv, [n, occ_o, oh], target)
    sch.unroll(occ_i)
    sch.unroll(ow_i)
    sch.vectorize(ocb)
    return _finish_conv(sch, conv, epi, pads, ic, target)


class VnniMatmul(_SafeRule):
    """An int8 fully connected layer on x86 VNNI (graph.matmul_vnni): per pass, one 16-lane int32
    accumulator per block of 16 outputs stays in a register over the whole reduction; each step
    broadcasts 4 input bytes once and runs one vpdpbusd per block (x86_intrin.VNNI_U8I8), on the
    pass's weights as one stream. The blocks' independent chains hide vpdpbusd's latency; the
    generic schedule widened every weight and multiplied 8 lanes per `vpmulld`."""

    def schedule(self, sch: s_tir.Schedule) -> s_tir.Schedule | None:
        from edgefleet.compiler.x86_intrin import VNNI_U8I8

        blocks = _blocks(sch)
        found = [b for b in blocks if _name(sch, b) == "matmul_vnni"]
        if len(found) != 1 or _iter_kinds(sch, found[0]) != "SSRR":
            return None
        matmul = found[0]
        weights = next(r.source for r in sch.get(matmul).reads if len(r.source.shape) == 4)
        epi = _epilogue(sch, matmul, [b for b in blocks if not _same(sch, b, matmul)])
        if epi is None:
            return None
        i, j, ko, ki = sch.get_loops(matmul)
        j_pass, j_block, j_lane = sch.split(j, [None, int(weights.shape[2]) // 16, 16])
        sch.reorder(i, j_pass, ko, j_block, j_lane, ki)
        sch.reverse_compute_at(epi, j_pass)
        _parallel(sch, matmul, [i, j_pass], self.target)
        sch.decompose_reduction(matmul, ko)
        sch.tensorize(j_lane, VNNI_U8I8[16])
        sch.unroll(j_block)
        _vectorize(sch, epi, sch.get_loops(epi)[-1])
        return sch


class Conv2dNCHW(_SafeRule):
    """Plain NCHW convolution: output channels unrolled, output width vectorized."""

    def schedule(self, sch: s_tir.Schedule) -> s_tir.Schedule | None:
        blocks = _blocks(sch)
        convs = [
            b
            for b in blocks
            if _iter_kinds(sch, b) == "SSSSRRR" and _name(sch, b).startswith(("conv2d_nchw", "group_conv2d_nchw"))
        ]
        if len(convs) != 1:
            return None
        conv = convs[0]
        found = _conv_with_epilogue(sch, conv, blocks, ("pad_temp", "data_pad"), 4)
        if found is None:
            return None
        pads, epi = found
        n, oc, oh, ow, rc, rh, rw = sch.get_loops(conv)
        oc_n, ow_n = _extent(sch, oc), _extent(sch, ow)
        if None in (oc_n, ow_n):
            return None
        oc_t = _largest_divisor(oc_n, 8)
        vec = _largest_divisor(ow_n, 16)
        oc_o, oc_i = sch.split(oc, [None, oc_t])
        ow_o, ow_i = sch.split(ow, [None, vec])
        sch.reorder(n, oc_o, oh, ow_o, rc, rh, rw, oc_i, ow_i)
        _epilogue_at(sch, epi, ow_o)
        _parallel(sch, conv, [n, oc_o, oh], self.target)
        sch.unroll(oc_i)
        sch.vectorize(ow_i)
        return _finish_conv(sch, conv, epi, pads, rc, self.target)


class ChannelPermute(_SafeRule):
    """A channel permutation or concat of NCHW{b}c data (graph.channel_permute_nchwc,
    channel_concat_nchwc) fused with element-wise ops, as one pass: the source channel depends on
    the output chunk and lane only, so with the pixels in serial loops its index math is
    loop-invariant and each pixel is one gather. `Generic` ran one pass per op with a div/mod
    chain per element: the real ShuffleNet's padding drop, bias, ReLU and shuffle took 0.09 ms
    per 272 channels at 14 px, 0.02 ms in one pass. A permutation alone keeps `Generic`."""

    def schedule(self, sch: s_tir.Schedule) -> s_tir.Schedule | None:
        blocks = _blocks(sch)
        outputs = list(sch.get_output_blocks(sch.get_sblock("root")))
        if (
            len(outputs) != 1
            or len(blocks) < 2
            or not any(_name(sch, b).startswith(("channel_permute_NCHWc", "channel_concat_NCHWc")) for b in blocks)
            or any(_iter_kinds(sch, b) != "SSSSS" for b in blocks)
        ):
            return None
        for block in blocks:
            if not _same(sch, block, outputs[0]):
                sch.compute_inline(block)
        n, c, _, _, k = sch.get_loops(outputs[0])
        _parallel(sch, outputs[0], [n, c], self.target)
        _vectorize(sch, outputs[0], k)
        return sch


class Generic(_SafeRule):
    """Any loop nest: outer spatial loops in parallel, the innermost spatial loop vectorized."""

    def schedule(self, sch: s_tir.Schedule) -> s_tir.Schedule | None:
        if _requantizes(sch, self.target) and "R" not in "".join(_iter_kinds(sch, b) for b in _blocks(sch)):
            _inline_element_wise(sch)
        for block in _blocks(sch):
            if _unroll_channels(self.target) and _row_times_matrix(sch, block):
                continue
            if _is_x86(self.target) and _weight_rows_in_order(sch, block):
                continue
            _schedule_any(sch, block, self.target)
        return sch


def _row_times_matrix(sch: s_tir.Schedule, block) -> bool:
    """A float32 row vector times a matrix (a classifier's fully connected layer) on AArch64: up to
    5 x 8 outputs in local accumulators per pass, the reduction unrolled by 4. The generic schedule
    (8 outputs per pass, the reduction rolled) counted 0.33 M instructions for MobileNetV2-0.35's
    448 x 1000 layer on rasp5, this one 0.24 M. The same for int16 ones into int32 (rasp4b's int8
    classifier, graph.int16_dense: 0.221 M for that layer, 0.406 M on int32 operands before).
    False (nothing done) for any other block."""
    loops = sch.get_loops(block)
    if _iter_kinds(sch, block) != "SSR" or len(loops) != 3 or not _float_or_int16_products(sch, block):
        return False
    i, j, k = loops
    rows, cols, depth = (_extent(sch, loop) for loop in loops)
    if rows != 1 or cols is None or depth is None or cols % 4 or depth % 4:
        return False
    lanes = 8 if cols % 8 == 0 else 4
    vectors = _largest_divisor(cols // lanes, 5)
    j_o, j_v, j_i = sch.split(j, [None, vectors, lanes])
    k_o, k_i = sch.split(k, [None, 4])
    sch.reorder(i, j_o, k_o, k_i, j_v, j_i)
    acc = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(acc, j_o)
    sch.parallel(sch.fuse(i, j_o))
    sch.unroll(k_i)
    sch.unroll(j_v)
    sch.vectorize(j_i)
    sch.decompose_reduction(block, k_o)
    copy_o, copy_i = sch.split(sch.get_loops(acc)[-1], [None, lanes])
    sch.unroll(copy_o)
    sch.vectorize(copy_i)
    return True


def _float_or_int16_products(sch: s_tir.Schedule, block) -> bool:
    """float32 products, or int16 ones summed in int32 (graph.int16_dense)."""
    b = sch.get(block)
    out = b.writes[0].source
    operands = {str(r.source.dtype) for r in b.reads if not r.source.same_as(out)}
    return str(out.dtype) == "float32" or (str(out.dtype) == "int32" and operands == {"int16"})


def _weight_rows_in_order(sch: s_tir.Schedule, block) -> bool:
    """A float32 row vector times a (K, N) matrix (a classifier's fully connected layer) on x86, below
    the parallel threshold: the reduction outermost, so each weight row is read once, in order, into the
    row of N sums (4 KB for 1000 classes, in L1). The generic schedule ran one 8-lane strip of columns
    down all K rows at a time: 32 bytes of each 4 KB row per pass, every cache line fetched twice from
    beyond L2 (5 MB for MobileNetV2's 1280 x 1000). False (nothing done) for any other block."""
    loops = sch.get_loops(block)
    if _iter_kinds(sch, block) != "SSR" or len(loops) != 3 or str(sch.get(block).writes[0].source.dtype) != "float32":
        return False
    i, j, k = loops
    rows, cols, work = _extent(sch, i), _extent(sch, j), block_work(sch, block)
    lanes = next((w for w in (16, 8) if cols and cols % w == 0), None)
    if rows != 1 or lanes is None or work is None or work >= PARALLEL_MIN_WORK:
        return False
    j_o, j_i = sch.split(j, [None, lanes])
    sch.reorder(i, k, j_o, j_i)
    sch.vectorize(j_i)
    sch.decompose_reduction(block, k)
    return True


def _is_x86(target: tvm.target.Target) -> bool:
    return str(target.attrs.get("mtriple", "")).startswith("x86_64")


def _requantizes(sch: s_tir.Schedule, target: tvm.target.Target) -> bool:
    """Whether the kernel writes one quantized tensor: int8 on x86, int8 or int16 (the zero-point-corrected
    input of an int16 convolution) on AArch64. Measured there; ARMv7 keeps one loop per block."""
    outputs = list(sch.get_output_blocks(sch.get_sblock("root")))
    dtype = str(sch.get(outputs[0]).writes[0].source.dtype) if len(outputs) == 1 else None
    if _is_x86(target):
        return dtype in ("int8", "uint8")
    return is_aarch64(target) and dtype in ("int8", "int16")


def _inline_element_wise(sch: s_tir.Schedule) -> None:
    """One loop nest for a kernel of element-wise blocks only (an int8 requantization after a channel
    slice, about 15 blocks): each block its own parallel loop and int32/int64 buffer cost more than
    the arithmetic (x86 int8 MobileNetV2s; on rasp5 0.424 M instructions of MobileNetV2-0.35's such
    kernels, 0.144 M as one nest, and fewer parallel launches). Not in kernels with a reduction: a
    convolution left to this rule would read its inlined padding per multiply-add. Blocks that do not
    inline stay as they are."""
    out = sch.get_output_blocks(sch.get_sblock("root"))[0]
    for block in _blocks(sch):
        if _same(sch, block, out):
            continue
        try:
            sch.compute_inline(block)
        except (s_tir.ScheduleError, RuntimeError):
            continue


def _schedule_any(sch: s_tir.Schedule, block, target: tvm.target.Target) -> None:
    kinds = _iter_kinds(sch, block)
    loops = sch.get_loops(block)
    if len(loops) != len(kinds) or "O" in kinds or kinds != "S" * kinds.count("S") + "R" * kinds.count("R"):
        return  # loops not one-to-one with the block's iterators: leave it
    spatial, reduce = loops[: kinds.count("S")], loops[kinds.count("S") :]
    if not spatial:
        return
    if not reduce:
        # Element-wise / layout transform / concat / padding: rows in parallel, the last axis in
        # vectors (flattening everything costs a div/mod per element in the index math).
        spatial = _short_last_axis_into_row(sch, spatial, target)
        last, last_n = spatial[-1], _extent(sch, spatial[-1])
        width = next((w for w in (16, 8, 4) if last_n and last_n % w == 0), None)
        outer = spatial[:-1]
        if last_n is not None and last_n > 64 and width:
            last_o, last = sch.split(last, [None, width])
            outer = [*outer, last_o]
        elif last_n is None or last_n == 1:
            outer, last = spatial, None
        elif last_n > 64:
            # No vector width divides a long row (a pool's padded 114): a serial inner loop;
            # flattened, its 312k elements cost 2 ms of index math (the real ShuffleNet's max pool).
            last = None
        if outer:
            _parallel(sch, block, outer, target)
        if last is not None:
            _vectorize(sch, block, last)
        return
    # Reductions (pooling, dense, mean, softmax): the innermost spatial loop, or a 16-wide
    # piece of it, moves inside the reduction as one vector accumulator.
    inner, inner_n = spatial[-1], _extent(sch, spatial[-1])
    outer = spatial[:-1]
    width = next((w for w in (16, 8, 4) if inner_n and inner_n % w == 0), None)
    if inner_n is not None and inner_n > 64 and width:
        inner_o, inner = sch.split(inner, [None, width])
        outer, inner_n = [*outer, inner_o], width
    if inner_n is None or inner_n == 1 or inner_n > 64 or not outer:
        _parallel(sch, block, spatial, target)
        return
    sch.reorder(*outer, *reduce, inner)
    _parallel(sch, block, outer, target)
    sch.vectorize(inner)
    sch.decompose_reduction(block, reduce[0])


def _short_last_axis_into_row(sch: s_tir.Schedule, spatial: list, target: tvm.target.Target) -> list:
    """On AArch64, a last axis shorter than a vector (an NHWC image's 3 channels) fused with the one
    before it, so the row of pixels x channels is the vector axis: rasp4b's int16 shift of the int8
    model input ran 3 lanes per pixel (about 0.12 M instructions for MobileNetV2-0.35's 96 x 96 x 3).
    Only where the row is whole 8-lane vectors (a 3 x 3 map's 9 stays as it is)."""
    if not is_aarch64(target) or len(spatial) < 2:
        return spatial
    last_n, row_n = _extent(sch, spatial[-1]), _extent(sch, spatial[-2])
    if last_n is None or row_n is None or not 1 < last_n < 4 or (last_n * row_n) % 8:
        return spatial
    return [*spatial[:-2], sch.fuse(spatial[-2], spatial[-1])]


def rules() -> list:
    """The rules in priority order (see `default_schedules`)."""
    return [Conv2dNCHWc(), VnniMatmul(), Conv2dNCHW(), DenseDot(), dlight.cpu.GEMV(), ChannelPermute(), Generic()]


def schedule_func(func: tirx.PrimFunc, target: tvm.target.Target) -> s_tir.Schedule | None:
    """The default schedule of one kernel, with its trace (tuning stores it as a record)."""
    for rule in rules():
        sch = rule.apply(func, target, False)
        if isinstance(sch, list):
            sch = sch[0] if sch else None
        if sch is not None:
            return sch
    return None


def default_schedules(on_failure) -> tvm.transform.Pass:
    """Apply the rules to every kernel not scheduled yet (e.g. by the tuning database), one kernel at a time.

    dlight's CPU GEMV handles dense layers; its Reduction rule is left out: it made a 1000-way
    softmax take 8 ms (vs 0.01 ms with `Generic`). A rule that raises on a kernel (dlight's
    `ApplyDefaultSchedule` would fail the whole pipeline) leaves that kernel as written and calls
    `on_failure(kernel name, exception)`.
    """

    @tvm.transform.module_pass(opt_level=0, name="EdgefleetDefaultSchedules")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        for gv, func in list(mod.functions.items()):
            if not isinstance(func, tirx.PrimFunc) or bool(func.attrs.get("tirx.is_scheduled", False)):
                continue
            target = func.attrs.get("target") or tvm.target.Target.current(allow_none=False)
            try:
                sch = schedule_func(func, target)
            except Exception as exc:  # a rule's bug or TVM's error, on this kernel only
                on_failure(gv.name_hint, exc)
                continue
            if sch is not None:
                mod[gv] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
        return mod

    return _pass
