"""Relax graph passes for CPU targets: clean the imported graph, then pack convolutions as NCHWc.

TVM 0.27's default CPU pipeline keeps ONNX's NCHW layout and lowers every operator to an
unscheduled loop nest. These passes prepare the graph for the default schedules in
`schedules.py`:

1. cleanup: fold batch norm into the convolution weights, drop inference no-ops (dropout),
   turn ONNX `Sum`/`Max`/`Min`/`Mean` (stack + reduction) into element-wise chains, remove
   identity broadcasts. Besides
   saving work, this lets ConvertLayout run: it fails on dropout's tuple and on 5-D stacks.
2. layout: convolutions with channels divisible by the block go to NCHW{b}c data with
   OIHW{b}i{b}o weights (the layout oneDNN and TVM's old x86 schedules use); ConvertLayout
   carries the layout through element-wise ops, pooling and concat. FoldConstant then repacks
   the constant weights once, at compile time (weight prepacking).
3. legalize: TVM's own conv2d legalization refuses blocked layouts, so NCHWc convolutions
   are lowered here with TOPI's `conv2d_NCHWc` / `depthwise_conv2d_NCHWc` computes.
"""

from __future__ import annotations

import functools
import re

import numpy as np
import tvm
import tvm.sym
import tvm_ffi
from tvm import relax, topi
from tvm.relax.dpl import TupleGetItemPattern, is_op, rewrite_call, wildcard

from edgefleet.compiler import vector_math, x86_intrin
from edgefleet.compiler.build import tvm_message

# 16 fp32 lanes fill one AVX-512 register, two AVX2 registers or four NEON registers: one
# block size keeps the prepacked weights and the tuning database the same across CPU targets.
CHANNEL_BLOCK = 16


def _rewrite_main(mod: tvm.IRModule, pattern, rewriter) -> tvm.IRModule:
    for gv, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            mod[gv] = rewrite_call(pattern, rewriter, func)
    return mod


def _mutate_functions(mod: tvm.IRModule, mutator: relax.PyExprMutator) -> tvm.IRModule:
    """Run a PyExprMutator over every Relax function of `mod` (created with `mutator(mod)`)."""
    for gv, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            mutator.builder_.update_func(gv, mutator.visit_expr(func))
    return mutator.builder_.get()


def _drop_dropout(mod: tvm.IRModule) -> tvm.IRModule:
    x = wildcard()
    return _rewrite_main(mod, TupleGetItemPattern(is_op("relax.nn.dropout")(x), 0), lambda _e, m: m[x])


def _identity_broadcast(mod: tvm.IRModule) -> tvm.IRModule:
    x, shape = wildcard(), wildcard()
    pat = is_op("relax.broadcast_to")(x, shape)

    def rewrite(expr, m):
        src, dst = m[x].ty, expr.ty
        same = (
            isinstance(src, relax.TensorType)
            and src.shape is not None
            and tvm_ffi.structural_equal(src.shape, dst.shape)
        )
        return m[x] if same else expr

    return _rewrite_main(mod, pat, rewrite)


# ONNX's variadic Sum / Max / Min / Mean import as stack(..., axis=0) then a reduction over
# axis 0: element-wise chains instead, which fuse and need no 5-D stack (ConvertLayout fails on
# those stacks).
_STACK_REDUCTIONS = {
    "relax.sum": relax.op.add,
    "relax.max": relax.op.maximum,
    "relax.min": relax.op.minimum,
    "relax.mean": relax.op.add,
}


def _stack_reductions_to_chains(mod: tvm.IRModule) -> tvm.IRModule:
    tup = wildcard()
    stack = is_op("relax.stack")(tup)
    pat = is_op("relax.sum")(stack) | is_op("relax.max")(stack) | is_op("relax.min")(stack) | is_op("relax.mean")(stack)

    def rewrite(expr, m):
        stacked = m[stack]
        fields = m[tup].fields if isinstance(m[tup], relax.Tuple) else None
        axes = [int(a) for a in expr.attrs.axis] if expr.attrs.axis is not None else None
        if fields is None or int(stacked.attrs.axis) != 0 or axes != [0] or expr.attrs.keepdims:
            return expr
        shapes = [f.ty.shape if isinstance(f.ty, relax.TensorType) else None for f in fields]
        if any(s is None or not tvm_ffi.structural_equal(s, shapes[0]) for s in shapes):
            return expr
        combine = _STACK_REDUCTIONS[expr.op.name]
        out = fields[0]
        for f in fields[1:]:
            out = combine(out, f)
        if expr.op.name == "relax.mean":
            out = relax.op.divide(out, relax.const(len(fields), str(expr.ty.dtype)))
        return out

    return _rewrite_main(mod, pat, rewrite)


# Accumulating operators that run in float32 for float16 tensors, as ONNX Runtime's CPU kernels
# and ONNX's reference do; float16 accumulation drifts past ONNX's tolerance (attention,
# convolutions over long windows).
_WIDEN_FLOAT16 = {"relax.matmul", "relax.nn.conv1d", "relax.nn.conv2d", "relax.nn.softmax", "relax.nn.log_softmax"}


def _float16_accumulate_in_float32(mod: tvm.IRModule) -> tvm.IRModule:
    @relax.expr_functor.mutator
    class _Widen(relax.PyExprMutator):
        def visit_call_(self, call: relax.Call) -> relax.Expr:
            call = self.visit_expr_post_order(call)
            if not (
                isinstance(call.op, tvm.ir.Op)
                and call.op.name in _WIDEN_FLOAT16
                and isinstance(call.ty, relax.TensorType)
                and str(call.ty.dtype) == "float16"
            ):
                return call
            args = [
                relax.op.astype(a, "float32")
                if isinstance(a.ty, relax.TensorType) and str(a.ty.dtype) == "float16"
                else a
                for a in call.args
            ]
            name = call.op.name
            if name == "relax.matmul":
                wide = relax.op.matmul(args[0], args[1], out_dtype="float32")
            elif name in ("relax.nn.conv1d", "relax.nn.conv2d"):
                a = call.attrs
                conv = relax.op.nn.conv1d if name == "relax.nn.conv1d" else relax.op.nn.conv2d
                wide = conv(
                    args[0],
                    args[1],
                    strides=a.strides,
                    padding=a.padding,
                    dilation=a.dilation,
                    groups=a.groups,
                    data_layout=a.data_layout,
                    kernel_layout=a.kernel_layout,
                    out_layout=a.out_layout,
                    out_dtype="float32",
                )
            else:
                wide = relax.Call(call.op, args, call.attrs)
            return relax.op.astype(self.builder_.emit(wide), "float16")

    return _mutate_functions(mod, _Widen(mod))


# Element-wise ops whose constant operand ConvertLayout can move to another layout only at the
# other operand's rank: TFLite's per-channel bias is a (C,) constant added to an NHWC tensor.
_ELEMENTWISE = {
    "relax.add": relax.op.add,
    "relax.subtract": relax.op.subtract,
    "relax.multiply": relax.op.multiply,
    "relax.divide": relax.op.divide,
    "relax.maximum": relax.op.maximum,
    "relax.minimum": relax.op.minimum,
    # The integer requantization of quantized TFLite (tflite_quant.py): per-channel shifts and masks.
    "relax.right_shift": relax.op.right_shift,
    "relax.bitwise_and": relax.op.bitwise_and,
}


def _full_rank_operands(mod: tvm.IRModule) -> tvm.IRModule:
    """Constants broadcast against a 4-D tensor reshaped to 4-D, and clip(x, lo, hi) as minimum(maximum(x, lo), hi).

    Same values (NumPy broadcasting prepends the ones); it lets ConvertLayout carry TFLite's
    bias adds and RELU6 clips into the blocked layout with their convolution instead of
    running them in NHWC between two transposes.
    """

    def const_4d(expr: relax.Expr, other: relax.Expr, out: relax.Expr, dtype: str) -> relax.Expr:
        value = expr.value.numpy() if isinstance(expr, tvm.ir.expr.GenericConst) else None
        if value is None:
            return expr
        # One value in all (a per-tensor multiplier, a pooling count with no border): a scalar,
        # when the other operand alone has the output's shape. ConvertLayout cannot broadcast a
        # (1, 1, 1, 1) constant against a blocked 5-D tensor.
        same_shape = isinstance(other.ty, relax.TensorType) and tvm_ffi.structural_equal(other.ty.shape, out.ty.shape)
        if value.size > 0 and same_shape and np.all(value == value.flat[0]):
            return relax.const(value.flat[0], dtype)
        return relax.const(value.reshape((1,) * (4 - value.ndim) + value.shape), dtype) if value.ndim < 4 else expr

    @relax.expr_functor.mutator
    class _Rank(relax.PyExprMutator):
        def visit_call_(self, call: relax.Call) -> relax.Expr:
            call = self.visit_expr_post_order(call)
            if not isinstance(call.op, tvm.ir.Op) or not isinstance(call.ty, relax.TensorType) or call.ty.ndim != 4:
                return call
            dtype = str(call.ty.dtype)
            if call.op.name == "relax.clip":
                lo, hi = (relax.const(float(v.value), dtype) for v in call.args[1:])
                return relax.op.minimum(self.builder_.emit(relax.op.maximum(call.args[0], lo)), hi)
            if call.op.name in _ELEMENTWISE and len(call.args) == 2:
                a, b = (
                    const_4d(call.args[0], call.args[1], call, dtype),
                    const_4d(call.args[1], call.args[0], call, dtype),
                )
                return _ELEMENTWISE[call.op.name](a, b) if (a, b) != tuple(call.args) else call
            return call

    return _mutate_functions(mod, _Rank(mod))


def cleanup() -> tvm.transform.Pass:
    """Graph simplifications that are valid for inference on any target."""

    @tvm.transform.module_pass(opt_level=0, name="EdgefleetCleanup")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        if _has_op(mod, "relax.nn.batch_norm"):
            # Weights often arrive computed (broadcast_to of a constant): fold them first, or
            # batch norm cannot be folded into them (ResNet-50's BN stayed 4 ops). Only then:
            # folding before DecomposeOpsForInference trips TVM's reshape legalization on
            # shape tensors (ConstantOfShape graphs).
            mod = tvm.transform.Sequential([relax.transform.FoldConstant(), relax.transform.FoldBatchnormToConv2D()])(
                mod
            )
        mod = tvm.transform.Sequential(
            [
                relax.transform.DecomposeOpsForInference(),
                relax.transform.FoldConstant(),
                relax.transform.CanonicalizeBindings(),
            ]
        )(mod)
        mod = _drop_dropout(mod)
        mod = _identity_broadcast(mod)
        mod = _stack_reductions_to_chains(mod)
        mod = _float16_accumulate_in_float32(mod)
        mod = _full_rank_operands(mod)
        return tvm.transform.Sequential(
            [
                relax.transform.CanonicalizeBindings(),
                relax.transform.DeadCodeElimination(),
                relax.transform.FoldConstant(),
            ]
        )(mod)

    return _pass


def _has_op(mod: tvm.IRModule, name: str) -> bool:
    found = []

    def visit(expr) -> None:
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name == name:
            found.append(expr)

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return bool(found)


def nchwc_layout(
    block: int = CHANNEL_BLOCK, x86_rewrites: bool = False, narrow_float_outputs: bool = False
) -> tvm.transform.Pass:
    """Blocked layout for convolutions, then fold the weight repacking into constants
    (`narrow_float_outputs`: see `block_remaining_convs`).

    ConvertLayout leaves a convolution in NCHW when its channels do not divide by `block`
    (e.g. a first layer with 3 input channels); `schedules.py` has a schedule for those too.
    A graph without convolutions is left alone: there is nothing to block, and ConvertLayout's
    layout inference fails on some reductions it would otherwise walk through. `x86_rewrites` adds
    `sink_channel_slices` and re-blocked binary operands in `sink_layout_transforms`, measured on x86
    only so far (ARM's instruction counts were measured without them). Layout moves that leave
    every element in place (a TFLite NHWC image into its first convolution's single block) become
    reshapes: `layout_moves_as_reshapes`. On x86 a padded float output that `narrow_float_outputs`
    would narrow is compacted in one pass (`block_remaining_convs`' `compact_float_outputs`).
    """
    passes = tvm.transform.Sequential(
        [
            # TFLite's NHWC convolutions become NCHW first, so that those ConvertLayout cannot
            # block (channels not divisible by the block, depthwise) still reach
            # block_remaining_convs, which takes NCHW; the transforms in between cancel.
            relax.transform.ConvertLayout({"relax.nn.conv2d": ["NCHW", "OIHW"]}),
            relax.transform.Normalize(),
            relax.transform.ConvertLayout({"relax.nn.conv2d": [f"NCHW{block}c", f"OIHW{block}i{block}o"]}),
            relax.transform.Normalize(),
            bool_layout_transforms_as_int8(),
            relax.transform.FoldConstant(),
            block_remaining_convs(block, narrow_float_outputs, compact_float_outputs=x86_rewrites),
            relax.transform.FoldConstant(),
            *([sink_channel_slices()] if x86_rewrites else []),
            sink_layout_transforms(block, reblock=x86_rewrites),
            relax.transform.FoldConstant(),
            layout_moves_as_reshapes(),
            # ConvertLayout unblocks a tensor once per consumer: a C2f block's split and concat
            # (YOLOv8) read the same conv output through two identical transforms.
            relax.transform.EliminateCommonSubexpr(call_only=True),
            relax.transform.CanonicalizeBindings(),
            relax.transform.DeadCodeElimination(),
        ],
        name="EdgefleetNCHWcPasses",
    )

    @tvm.transform.module_pass(opt_level=0, name="EdgefleetNCHWc")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return passes(mod) if _has_op(mod, "relax.nn.conv2d") else mod

    return _pass


def bool_layout_transforms_as_int8() -> tvm.transform.Pass:
    """A layout transform of a boolean tensor as one of int8 values, cast back after.

    ConvertLayout puts one before any operator it cannot carry a blocked layout through (e.g.
    `where` on a comparison of a blocked convolution's output), and TVM 0.27's legalization of a
    boolean layout_transform fails (it fills the padding with a float or int32 value, which the
    schedule refuses for a bool buffer): the whole layout step then failed. Same values.
    """

    @relax.expr_functor.mutator
    class _AsInt8(relax.PyExprMutator):
        def visit_call_(self, call: relax.Call) -> relax.Expr:
            call = self.visit_expr_post_order(call)
            if not (
                isinstance(call.op, tvm.ir.Op)
                and call.op.name == "relax.layout_transform"
                and isinstance(call.ty, relax.TensorType)
                and str(call.ty.dtype) == "bool"
            ):
                return call
            as_int8 = self.builder_.emit(relax.op.astype(call.args[0], "int8"))
            moved = self.builder_.emit(relax.Call(call.op, [as_int8], call.attrs))
            return relax.op.astype(moved, "bool")

    @tvm.transform.module_pass(opt_level=0, name="EdgefleetBoolLayoutTransforms")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return _mutate_functions(mod, _AsInt8(mod))

    return _pass


def _shape(expr: relax.Expr) -> list[int]:
    return [int(d) for d in expr.ty.shape.values]


def _block_for(channels: int, block: int) -> int:
    return max(b for b in (block, 8, 4, 2, 1) if channels % b == 0) if channels % block else block


def _pads_much(channels: int, block: int) -> bool:
    """Padding `channels` up to `block` adds more than an eighth of zero filters, and 8 divides them."""
    return channels % 8 == 0 and 8 * (-(-channels // block) * block - channels) > channels


def _pack_oihw(weight: np.ndarray, ib: int, ob: int) -> np.ndarray:
    o, i, h, w = weight.shape
    return np.ascontiguousarray(weight.reshape(o // ob, ob, i // ib, ib, h, w).transpose(0, 2, 4, 5, 3, 1))


def block_remaining_convs(
    block: int = CHANNEL_BLOCK, narrow_float_outputs: bool = False, compact_float_outputs: bool = False
) -> tvm.transform.Pass:
    """Blocked layouts for the convolutions ConvertLayout kept in NCHW, with smaller blocks.

    ConvertLayout uses one block size; a first layer (3 input channels) or a classifier with
    1000 outputs stays in NCHW and would get the slow NCHW schedule. Here each such conv gets
    the largest block that divides its channels (NCHW3c in, NCHW16c out for a first layer),
    with its weights packed at compile time, between two layout transforms.

    `narrow_float_outputs` (AArch64, 4-lane vectors: an 8-channel block is two whole vectors):
    float32 outputs that padding would grow by more than an eighth (MobileNetV2's 24 and 56 ->
    32 and 64) take an 8-channel block instead, without the padded filters and the slice.

    `compact_float_outputs` (x86: the padded filters in two 16-lane blocks take fewer FMA instructions
    than three 8-lane blocks): such an output keeps its padded block but leaves the convolution
    through one channel permutation into the 8-channel block, which the bias and residual adds join,
    instead of a transform to NCHW, a slice and a transform back (MobileNetV2's 24-channel stage:
    six kernel calls, 0.082 ms of 2.9 alone, became two; 0.97x per round end to end).
    """

    @relax.expr_functor.mutator
    class _Rewriter(relax.PyExprMutator):
        def visit_call_(self, call: relax.Call) -> relax.Expr:
            call = self.visit_expr_post_order(call)
            if (
                not isinstance(call.op, tvm.ir.Op)
                or call.op.name != "relax.nn.conv2d"
                or not isinstance(call.args[1], tvm.ir.expr.GenericConst)
            ):
                return call
            attrs = call.attrs
            if (
                str(attrs.data_layout) != "NCHW"
                or str(attrs.kernel_layout) != "OIHW"
                or str(attrs.out_layout) != "NCHW"
            ):
                return call
            weight = call.args[1].value.numpy()
            groups = int(attrs.groups)
            if groups != 1:
                # Depthwise: one input channel per group, one or M (a multiplier) outputs.
                one_input = weight.shape[1] == 1 and (
                    groups == weight.shape[0] or blocked_multiplier(len(weight), groups)
                )
                return self._depthwise(call, weight) if one_input else self._grouped(call, weight)
            o, i = weight.shape[:2]
            data = self.lookup_binding(call.args[0]) if isinstance(call.args[0], relax.Var) else None
            if o == 1 and weight.shape[2:] == (1, 1) and not (data is not None and _is_unblock(data)):
                # One output channel, 1x1, on NCHW data (YOLOv8's DFL head: the expectation over a
                # softmax's bins) is a weighted sum of channel planes, vectorized along rows in
                # NCHW; blocked, its two layout transforms took longer than the sum.
                return call
            ib = i if i < block else _block_for(i, block)
            # Fewer output channels than the block get a block that divides them (8 of 8, not 8 of
            # 16: padding doubled the small TFLite CNN's work). More are padded with zero filters
            # up to the block (1000 -> 1008 classes), then sliced off: 0.8% more work instead of
            # half-width vectors (for MobileNetV2's 24, 8-channel blocks without the slice
            # measured no faster). A first layer (fewer inputs than the block) takes a block that
            # divides its outputs too: a slice there kept what follows in NCHW (ShuffleNet v1's
            # 24-channel stem: batch norm, ReLU and a padded max pool, ~12% of its kernel time).
            narrowable = _pads_much(o, block) and str(call.ty.dtype) == "float32"
            narrow = narrow_float_outputs and narrowable
            ob = _block_for(o, block) if o < block or i < block or narrow else block
            o_pad = -(-o // ob) * ob
            if o_pad != o:
                weight = np.concatenate([weight, np.zeros((o_pad - o, *weight.shape[1:]), weight.dtype)])
            data = self.builder_.emit(
                relax.op.layout_transform(call.args[0], index_map=lambda n, c, h, w: (n, c // ib, h, w, c % ib))
            )
            conv = self.builder_.emit(
                relax.op.nn.conv2d(
                    data,
                    relax.const(_pack_oihw(weight, ib, ob)),
                    strides=attrs.strides,
                    padding=attrs.padding,
                    dilation=attrs.dilation,
                    data_layout=f"NCHW{ib}c",
                    kernel_layout=f"OIHW{ib}i{ob}o",
                    out_layout=f"NCHW{ob}c",
                    out_dtype=str(call.ty.dtype),
                )
            )
            if o_pad != o and compact_float_outputs and narrowable:
                return self._compact(conv, o)
            out = relax.op.layout_transform(conv, index_map=lambda n, c, h, w, cb: (n, c * ob + cb, h, w))
            if o_pad == o:
                return out
            return relax.op.strided_slice(self.builder_.emit(out), axes=[1], begin=[0], end=[o])

        def _compact(self, conv: relax.Expr, channels: int) -> relax.Expr:
            # The padded filters' channels dropped in one pass into the largest block dividing the rest.
            b = _block_for(channels, block)
            compact = self.builder_.call_te(
                lambda x: channel_permute_nchwc(x, lambda c: c, channels, b),
                conv,
                primfunc_name_hint="channel_permute_NCHWc",
            )
            return relax.op.layout_transform(
                self.builder_.emit(compact), index_map=lambda n, c, h, w, cb: (n, c * b + cb, h, w)
            )

        def _grouped(self, call: relax.Call, weight: np.ndarray) -> relax.Expr:
            # ConvertLayout keeps a grouped conv in NCHW when its groups split a block (ShuffleNet
            # v1: 6, 28, 34, 68, 136 channels per group), and the NCHW kernel was ~12x slower per
            # call than a blocked one. Each group's outputs are padded with zero filters to whole
            # blocks (68 -> 80: 1.18x the work), so that every output block lies in one group and
            # reads one broadcast input value per step; one permutation drops the padding.
            attrs, groups = call.attrs, int(call.attrs.groups)
            o, per_in = weight.shape[:2]
            per_out = o // groups
            padded = -(-per_out // block) * block
            if padded >= 2 * per_out:
                # Twice the work or more (8 or fewer outputs per group) stays in NCHW: the dense
                # block-diagonal form (4x the work) measured slower end to end than NCHW.
                return call
            ib, bi, ob = _block_for(per_in * groups, block), _block_for(per_in, block), _block_for(o, block)
            filters = np.zeros((groups, padded, *weight.shape[1:]), weight.dtype)
            filters[:, :per_out] = weight.reshape(groups, per_out, *weight.shape[1:])
            data = self.builder_.emit(
                relax.op.layout_transform(call.args[0], index_map=lambda n, c, h, w: (n, c // ib, h, w, c % ib))
            )
            conv = self.builder_.emit(
                relax.op.nn.conv2d(
                    data,
                    relax.const(_pack_oihw(filters.reshape(groups * padded, *weight.shape[1:]), bi, block)),
                    strides=attrs.strides,
                    padding=attrs.padding,
                    dilation=attrs.dilation,
                    groups=groups,
                    data_layout=f"NCHW{ib}c",
                    kernel_layout=f"OIHW{bi}i{block}o",
                    out_layout=f"NCHW{block}c",
                    out_dtype=str(call.ty.dtype),
                )
            )
            compact = self.builder_.call_te(
                lambda x: channel_permute_nchwc(x, lambda c: c // per_out * padded + c % per_out, o, ob),
                conv,
                primfunc_name_hint="channel_permute_NCHWc",
            )
            return relax.op.layout_transform(
                self.builder_.emit(compact), index_map=lambda n, c, h, w, cb: (n, c * ob + cb, h, w)
            )

        def _depthwise(self, call: relax.Call, weight: np.ndarray) -> relax.Expr:
            # ConvertLayout leaves depthwise convolutions (with or without a channel multiplier)
            # in NCHW; pack them like the others, in the largest block that divides their inputs.
            attrs, c = call.attrs, weight.shape[0]
            b = _block_for(int(attrs.groups), block)
            data = self.builder_.emit(
                relax.op.layout_transform(call.args[0], index_map=lambda n, ch, h, w: (n, ch // b, h, w, ch % b))
            )
            packed = np.ascontiguousarray(
                weight.reshape(c // b, b, 1, *weight.shape[2:]).transpose(0, 2, 3, 4, 1)[:, :, :, :, None, :]
            )
            conv = self.builder_.emit(
                relax.op.nn.conv2d(
                    data,
                    relax.const(packed),
                    strides=attrs.strides,
                    padding=attrs.padding,
                    dilation=attrs.dilation,
                    groups=attrs.groups,
                    data_layout=f"NCHW{b}c",
                    kernel_layout=f"OIHW1i{b}o",
                    out_layout=f"NCHW{b}c",
                    out_dtype=str(call.ty.dtype),
                )
            )
            return relax.op.layout_transform(conv, index_map=lambda n, ch, h, w, cb: (n, ch * b + cb, h, w))

    @tvm.transform.module_pass(opt_level=0, name="EdgefleetBlockRemainingConvs")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return _mutate_functions(mod, _Rewriter(mod))

    return _pass


# astype, negative, right_shift, bitwise_and and floor_divide: quantized TFLite's integer requantization (tflite_quant.py).
_SINKABLE_UNARY = ("relax.nn.relu", "relax.clip", "relax.sigmoid", "relax.nn.silu", "relax.astype", "relax.negative")
_SINKABLE_BINARY = (
    "relax.add",
    "relax.subtract",
    "relax.multiply",
    "relax.divide",
    "relax.maximum",
    "relax.minimum",
    "relax.right_shift",
    "relax.bitwise_and",
    "relax.floor_divide",
)
_SINKABLE_POOLS = ("relax.nn.max_pool2d", "relax.nn.avg_pool2d")


def _is_unblock(expr: relax.Expr) -> bool:
    """A layout_transform from NCHW{b}c back to NCHW (what the blocked convolutions leave behind)."""
    if not (
        isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name == "relax.layout_transform"
    ):
        return False
    src, dst = expr.args[0].ty, expr.ty
    return isinstance(src, relax.TensorType) and src.ndim == 5 and dst.ndim == 4 and expr.attrs.pad_value is None


def _block_const(value: np.ndarray, block: int) -> np.ndarray | None:
    """A per-channel (or scalar) NCHW constant in NCHW{b}c form; None for anything else."""
    if value.ndim == 0 or value.size == 1:
        return value.reshape(())
    if value.ndim == 4 and value.shape[0] == 1 and value.shape[2:] == (1, 1) and value.shape[1] % block == 0:
        return np.ascontiguousarray(value.reshape(1, value.shape[1] // block, block, 1, 1).transpose(0, 1, 3, 4, 2))
    return None


def _blocks_channels(index_map, block: int) -> bool:
    """Whether `index_map` is (n, c, h, w) -> (n, c // block, h, w, c % block)."""
    idx = [tvm.tirx.Var(f"i{k}", "int64") for k in range(4)]
    n, c, h, w = idx
    expected = [n, c // block, h, w, c % block]
    mapped = index_map.map_indices(idx)
    analyzer = tvm.sym.Analyzer()
    return len(mapped) == 5 and all(analyzer.can_prove(analyzer.simplify(a - b) == 0) for a, b in zip(mapped, expected))


def _is_identity(outer: relax.Call, inner: relax.Call) -> bool:
    """Whether layout_transform `outer` undoes `inner` (so the pair can go)."""
    shape_in = [int(d) for d in inner.args[0].ty.shape.values]
    if shape_in != [int(d) for d in outer.ty.shape.values]:
        return False
    m1, m2 = inner.attrs.index_map, outer.attrs.index_map
    analyzer = tvm.sym.Analyzer()
    idx = [tvm.tirx.Var(f"i{k}", "int64") for k in range(len(shape_in))]
    for var, extent in zip(idx, shape_in):
        analyzer.bind(var, tvm.ir.Range(0, extent))
    back = m2.map_indices([analyzer.simplify(e) for e in m1.map_indices(idx)])
    return all(analyzer.can_prove(analyzer.simplify(a - b) == 0) for a, b in zip(back, idx))


def _static_shape(expr: relax.Expr) -> list[int] | None:
    shape = expr.ty.shape if isinstance(expr.ty, relax.TensorType) else None
    values = shape.values if isinstance(shape, relax.ShapeExpr) else None
    if values is None or not all(isinstance(d, tvm.tirx.IntImm) for d in values):
        return None
    return [int(d) for d in values]


def channel_shuffle_groups(shapes: list[list[int] | None], axes: list[int] | None) -> int | None:
    """The groups of a channel shuffle written as reshape (N, C, H, W) -> (N, G, C/G, H, W),
    transpose of axes 1 and 2, reshape back to (N, C, H, W) (ShuffleNet v1/v2): `shapes` are
    the four tensors' shapes, `axes` the transpose's. None for any other reshape/transpose."""
    src, split, swapped, out = shapes
    if src is None or split is None or swapped is None or out != src or len(src) != 4 or len(split) != 5:
        return None
    n, c, h, w = src
    g = split[1]
    if axes != [0, 2, 1, 3, 4] or split != [n, g, c // g, h, w] or g * split[2] != c:
        return None
    return g


# Binary ops whose per-channel constant may be padded with zeros: the padded channels are dropped
# after (no division, whose zero padding would divide by zero there).
_PADDABLE_BINARY = {
    "relax.add": relax.op.add,
    "relax.subtract": relax.op.subtract,
    "relax.multiply": relax.op.multiply,
    "relax.maximum": relax.op.maximum,
    "relax.minimum": relax.op.minimum,
    "relax.right_shift": relax.op.right_shift,
}


def sink_channel_slices() -> tvm.transform.Pass:
    """Move the slice that drops a padded convolution's extra channels below its bias, activation
    and global pooling (run after `block_remaining_convs`, before `sink_layout_transforms`).

    SqueezeNet's classifier is a 1x1 conv to 1000 channels, padded to 1008 (whole blocks) and
    sliced back right after: its bias, ReLU and global average then ran on NCHW data, after a
    layout transform of the whole 13x13 map (together about 5% of its kernel time). With the slice
    below them (per-channel constants padded with zeros), the transform below them too and then
    into the blocked mean, only the 1008 averages are sliced.

    int8's requantization of a padded output (MobileNetV2's 24-channel projections, computed as 32: a
    64-bit product, a transform to NCHW, then the rest of the rescale and the residual add in NCHW) sinks
    whole: integer constants are padded with their last channel's value (a valid multiplier and shift, so
    the rescale passes still match it; the padded channels are sliced off), and an integer op of two
    equal slices is the slice of the op, so the residual add sinks too; the projection then writes int8.
    """

    @relax.expr_functor.mutator
    class _Sinker(relax.PyExprMutator):
        def _leading_slice(self, arg: relax.Expr) -> tuple[relax.Expr, int] | None:
            """(x, k) when `arg` is bound to strided_slice(x, axes=[1], begin=[0], end=[k]) of a 4-D x."""
            bound = self.lookup_binding(arg) if isinstance(arg, relax.Var) else None
            if not (
                isinstance(bound, relax.Call)
                and isinstance(bound.op, tvm.ir.Op)
                and bound.op.name == "relax.strided_slice"
                and all(isinstance(a, relax.Tuple) for a in bound.args[1:])
            ):
                return None
            axes, begin, end, *strides = ([int(v.value) for v in a.fields] for a in bound.args[1:])
            if axes != [1] or begin != [0] or (strides and strides[0] != [1]) or _static_shape(bound.args[0]) is None:
                return None
            return (bound.args[0], end[0]) if len(_shape(bound.args[0])) == 4 else None

        def _padded(self, const: relax.Expr, channels: int) -> relax.Expr | None:
            value = const.value.numpy() if isinstance(const, tvm.ir.expr.GenericConst) else None
            if value is not None and value.ndim == 0:
                return const
            if value is None or value.ndim != 4 or value.shape[0] != 1 or value.shape[2:] != (1, 1):
                return None
            pad = ((0, 0), (0, channels - value.shape[1]), (0, 0), (0, 0))
            mode = "constant" if value.dtype.kind == "f" else "edge"
            return relax.const(np.pad(value, pad, mode), str(value.dtype))

        def _same_slices(self, call: relax.Call) -> relax.Expr | None:
            """op(x, y) for an integer binary op of slice(x) and slice(y) to the same channels of equal shapes."""
            found = [self._leading_slice(arg) for arg in call.args]
            if None in found or str(call.ty.dtype).startswith("float") or found[0][1] != found[1][1]:
                return None
            (x, _), (y, _) = found
            if _shape(x) != _shape(y):
                return None
            return _PADDABLE_BINARY[call.op.name](x, y)

        def visit_call_(self, call: relax.Call) -> relax.Expr:
            call = self.visit_expr_post_order(call)
            name = call.op.name if isinstance(call.op, tvm.ir.Op) else ""
            if name in _PADDABLE_BINARY and (joined := self._same_slices(call)) is not None:
                kept = self._leading_slice(call.args[0])[1]
                return relax.op.strided_slice(self.builder_.emit(joined), axes=[1], begin=[0], end=[kept])
            found = self._leading_slice(call.args[0]) if call.args else None
            other = call.args[1] if name in _PADDABLE_BINARY else None
            if found is None and name in _PADDABLE_BINARY:
                found, other = self._leading_slice(call.args[1]), call.args[0]
            if found is None:
                return call
            x, kept = found
            if name == "relax.astype" and (str(x.ty.dtype), str(call.ty.dtype)) == ("int8", "int16"):
                return call  # a convolution's int16 operand: dot_product_convs reads its int8 input before it
            if name in _SINKABLE_UNARY:
                moved = relax.Call(call.op, [x, *call.args[1:]], call.attrs)
            elif name == "relax.mean" and [int(a) % 4 for a in call.attrs.axis or []] in ([2, 3], [3, 2]):
                moved = relax.op.mean(x, axis=[2, 3], keepdims=call.attrs.keepdims)
            elif other is not None and (wide := self._padded(other, _shape(x)[1])) is not None:
                args = [x, wide] if other.same_as(call.args[1]) else [wide, x]
                moved = _PADDABLE_BINARY[name](*args)
            else:
                return call
            return relax.op.strided_slice(self.builder_.emit(moved), axes=[1], begin=[0], end=[kept])

    @tvm.transform.module_pass(opt_level=0, name="EdgefleetSinkChannelSlices")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return relax.transform.DeadCodeElimination()(_mutate_functions(mod, _Sinker(mod)))

    return _pass


def sink_layout_transforms(block: int = CHANNEL_BLOCK, reblock: bool = False) -> tvm.transform.Pass:
    """Move NCHW{b}c -> NCHW transforms below element-wise ops, then drop transform pairs.

    ConvertLayout leaves depthwise convolutions to `block_remaining_convs`, whose transforms
    sit between blocked neighbours: conv -> to NCHW -> bias, ReLU6 -> to NCHW16c -> conv.
    Rewriting op(unblock(x), c) as unblock(op(x, blocked c)) and then cancelling
    unblock/block pairs keeps the whole chain blocked.
    """

    @relax.expr_functor.mutator
    class _Sinker(relax.PyExprMutator):
        def _unblock_of(self, arg: relax.Expr) -> relax.Call | None:
            bound = self.lookup_binding(arg) if isinstance(arg, relax.Var) else None
            return bound if bound is not None and _is_unblock(bound) else None

        def _clip_as_op(self, call: relax.Call) -> relax.Call:
            # ONNX Clip (ReLU6) arrives as call_tir to TE maximum/minimum PrimFuncs.
            if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.call_tir"):
                return call
            callee, args = call.args[0], call.args[1]
            name = callee.name_hint if isinstance(callee, tvm.ir.GlobalVar) else ""
            kind = re.match(r"(maximum|minimum)\d*$", name)
            if (
                not kind
                or not isinstance(args, relax.Tuple)
                or len(args.fields) != 2
                or not isinstance(args.fields[1], tvm.ir.expr.GenericConst)
            ):
                return call
            x, const = args.fields
            if const.value.numpy().size != 1 or not tvm_ffi.structural_equal(x.ty, call.ty):
                return call
            return getattr(relax.op, kind.group(1))(x, const)

        def _blocked_pool(self, call: relax.Call) -> relax.Expr:
            # A first layer's output (3 input channels, converted by block_remaining_convs) is
            # pooled in NCHW unless the pool moves below its transform: 19% of SqueezeNet.
            lt = self._unblock_of(call.args[0])
            attrs = call.attrs
            if lt is None or str(attrs.layout) != "NCHW" or str(attrs.out_layout) != "NCHW":
                return call
            blocked = f"NCHW{_shape(lt.args[0])[4]}c"
            common = dict(
                pool_size=attrs.pool_size,
                strides=attrs.strides,
                padding=attrs.padding,
                dilation=attrs.dilation,
                ceil_mode=attrs.ceil_mode,
                layout=blocked,
                out_layout=blocked,
            )
            if call.op.name == "relax.nn.max_pool2d":
                pooled = relax.op.nn.max_pool2d(lt.args[0], **common)
            else:
                pooled = relax.op.nn.avg_pool2d(lt.args[0], count_include_pad=attrs.count_include_pad, **common)
            return relax.Call(lt.op, [self.builder_.emit(pooled)], lt.attrs)

        def _blocked_mean(self, call: relax.Call) -> relax.Expr:
            # A global average over H, W (TFLite's MEAN head) reduces the blocked tensor directly:
            # (N, C/b, H, W, b) -> (N, C/b, b) is (N, C) in channel order, so the unblock transform
            # of the whole feature map is not needed.
            lt = self._unblock_of(call.args[0])
            axes = sorted(int(a) % 4 for a in call.attrs.axis) if call.attrs.axis is not None else None
            if lt is None or axes != [2, 3]:
                return call
            mean = self.builder_.emit(relax.op.mean(lt.args[0], axis=[2, 3], keepdims=False))
            return relax.op.reshape(mean, _shape(call))

        def _bound_op(self, arg: relax.Expr, name: str) -> relax.Call | None:
            bound = self.lookup_binding(arg) if isinstance(arg, relax.Var) else None
            is_op = isinstance(bound, relax.Call) and isinstance(bound.op, tvm.ir.Op) and bound.op.name == name
            return bound if is_op else None

        def _blocked_shuffle(self, call: relax.Call) -> relax.Expr:
            # A channel shuffle after a blocked conv ran in NCHW between two layout transforms
            # (a quarter of the grouped test net's time): as a channel permutation of the
            # blocked tensor, the transform pair around it cancels.
            swap = self._bound_op(call.args[0], "relax.permute_dims")
            split = self._bound_op(swap.args[0], "relax.reshape") if swap is not None else None
            lt = self._unblock_of(split.args[0]) if split is not None else None
            if lt is None:
                return call
            axes = [int(a) for a in swap.attrs.axes] if swap.attrs.axes is not None else None
            shapes = [_static_shape(e) for e in (split.args[0], split, swap, call)]
            g = channel_shuffle_groups(shapes, axes)
            if g is None:
                return call
            per_group = _shape(call)[1] // g
            shuffled = self.builder_.call_te(
                lambda x: channel_permute_nchwc(x, lambda c: c % g * per_group + c // g),
                lt.args[0],
                primfunc_name_hint="channel_permute_NCHWc",
            )
            return relax.Call(lt.op, [self.builder_.emit(shuffled)], lt.attrs)

        def _blocked_slice(self, call: relax.Call) -> relax.Expr:
            # A channel split on whole blocks (YOLOv8's C2f: a 32-channel conv output in two
            # halves) slices the blocks: the split no longer unblocks all that follows it.
            lt = self._unblock_of(call.args[0])
            if lt is None:
                return call
            axes, begin, end, *strides = ([int(v.value) for v in arg.fields] for arg in call.args[1:])
            if strides and strides[0] != [1]:
                return call
            channels, b = _shape(call.args[0])[1], _shape(lt.args[0])[4]
            lo, hi = (min(max(v + channels if v < 0 else v, 0), channels) for v in (begin[0], end[0]))
            if [a % 4 for a in axes] != [1] or lo % b or hi % b or hi <= lo:
                return call
            sliced = self.builder_.emit(relax.op.strided_slice(lt.args[0], axes=[1], begin=[lo // b], end=[hi // b]))
            return relax.Call(lt.op, [sliced], lt.attrs)

        def _same_block_concat(self, call: relax.Call) -> relax.Expr | None:
            # A channel concat of unblocked tensors with the same block (C2f's halves and its
            # bottleneck's output) concatenates the blocks: no kernel of its own beyond the copy.
            fields = call.args[0].fields if isinstance(call.args[0], relax.Tuple) else []
            lts = [self._unblock_of(f) for f in fields]
            if not lts or None in lts or int(call.attrs.axis) % 4 != 1:
                return None
            if len({_shape(lt.args[0])[4] for lt in lts}) != 1:
                return None
            joined = self.builder_.emit(relax.op.concat([lt.args[0] for lt in lts], axis=1))
            return relax.Call(lts[0].op, [joined], lts[0].attrs)

        def _blocked_concat(self, call: relax.Call) -> relax.Expr:
            # ShuffleNet v1's stride-2 units concatenate a blocked conv's output with a pooled
            # NCHW input (112 + 24 channels): in NCHW, every residual add after it ran in NCHW
            # between layout transforms too. Concatenated blocked, in the largest block that
            # divides the result, the transforms after it cancel.
            same = self._same_block_concat(call)
            if same is not None:
                return same
            parts = call.args[0].fields if isinstance(call.args[0], relax.Tuple) else None
            if parts is None or call.attrs.axis is None or int(call.attrs.axis) % 4 != 1 or len(_shape(call)) != 4:
                return call
            unblocked = [self._unblock_of(p) for p in parts]
            if all(lt is None for lt in unblocked):
                return call
            inputs = [p if lt is None else lt.args[0] for p, lt in zip(parts, unblocked)]
            b = _block_for(_shape(call)[1], block)
            concat = self.builder_.call_te(
                lambda *xs: channel_concat_nchwc(list(xs), b), *inputs, primfunc_name_hint="channel_concat_NCHWc"
            )
            return relax.op.layout_transform(
                self.builder_.emit(concat), index_map=lambda n, c, h, w, cb: (n, c * b + cb, h, w)
            )

        def _reblocked(self, call: relax.Call) -> relax.Expr:
            # ShuffleNet v1's 14x14 stage: a residual add of a 16-channel-block conv output and the
            # stage's input, unblocked from 8-channel blocks, ran in NCHW with the transforms on
            # both sides in every unit (11% of its kernel time). The 8-block operand is blocked by
            # 16 here once (the same transform its group conv reads, merged by CSE), so the adds
            # after it have operands in one block and the units stay blocked.
            a, b = call.args
            lts = [self._unblock_of(a), self._unblock_of(b)]
            if _static_shape(a) is None or _shape(a) != _shape(b) or _shape(call) != _shape(a):
                return call
            keep = max((0, 1), key=lambda k: _shape(lts[k].args[0])[4])
            bk = _shape(lts[keep].args[0])[4]
            if _shape(a)[1] % bk or str(a.ty.dtype) != str(b.ty.dtype) or str(a.ty.dtype) == "bool":
                return call
            moved = self.builder_.emit(
                relax.op.layout_transform(call.args[1 - keep], index_map=lambda n, c, h, w: (n, c // bk, h, w, c % bk))
            )
            args = [lts[keep].args[0], moved] if keep == 0 else [moved, lts[keep].args[0]]
            joined = self.builder_.emit(relax.Call(call.op, args, call.attrs))
            return relax.Call(lts[keep].op, [joined], lts[keep].attrs)

        def visit_call_(self, call: relax.Call) -> relax.Expr:
            call = self._clip_as_op(self.visit_expr_post_order(call))
            if not isinstance(call.op, tvm.ir.Op):
                return call
            name = call.op.name
            if name == "relax.layout_transform":
                inner = self._unblock_of(call.args[0])
                return inner.args[0] if inner is not None and _is_identity(call, inner) else call
            if name in _SINKABLE_UNARY:
                lt = self._unblock_of(call.args[0])
                # Not to bool: the sunk transform would be a boolean one (see bool_layout_transforms_as_int8).
                if lt is None or str(call.ty.dtype) == "bool":
                    return call
                return relax.Call(
                    lt.op, [self.builder_.emit(relax.Call(call.op, [lt.args[0], *call.args[1:]], call.attrs))], lt.attrs
                )
            if name in _SINKABLE_POOLS:
                return self._blocked_pool(call)
            if name == "relax.mean":
                return self._blocked_mean(call)
            if name == "relax.reshape":
                return self._blocked_shuffle(call)
            if name == "relax.strided_slice":
                return self._blocked_slice(call)
            if name == "relax.concat":
                return self._blocked_concat(call)
            if name not in _SINKABLE_BINARY:
                return call
            a, b = call.args
            lt_a, lt_b = self._unblock_of(a), self._unblock_of(b)
            if lt_a is not None and lt_b is not None:
                if not (
                    tvm_ffi.structural_equal(lt_a.attrs.index_map, lt_b.attrs.index_map)
                    and tvm_ffi.structural_equal(lt_a.args[0].ty, lt_b.args[0].ty)
                ):
                    return self._reblocked(call) if reblock else call
                new_args = [lt_a.args[0], lt_b.args[0]]
            elif (lt_a is None) == (lt_b is None):
                return call
            else:
                lt, other = (lt_a, b) if lt_a is not None else (lt_b, a)
                if not isinstance(other, tvm.ir.expr.GenericConst):
                    return call
                blocked = _block_const(other.value.numpy(), _shape(lt.args[0])[4])
                if blocked is None:
                    return call
                const = relax.const(blocked, str(other.ty.dtype))
                new_args = [lt.args[0], const] if lt_a is not None else [const, lt.args[0]]
            lt = lt_a if lt_a is not None else lt_b
            return relax.Call(lt.op, [self.builder_.emit(relax.Call(call.op, new_args, call.attrs))], lt.attrs)

    @tvm.transform.module_pass(opt_level=0, name="EdgefleetSinkLayoutTransforms")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return relax.transform.DeadCodeElimination()(_mutate_functions(mod, _Sinker(mod)))

    return _pass


def _moves_in_order(shape_in: list[int], shape_out: list[int], index_of) -> bool:
    """Whether the element at row-major position p of a `shape_in` tensor lands at position p of
    the `shape_out` one, `index_of` mapping input indices to output indices: then the move is a reshape."""
    analyzer = tvm.sym.Analyzer()
    idx = [tvm.tirx.Var(f"i{k}", "int64") for k in range(len(shape_in))]
    for var, extent in zip(idx, shape_in):
        analyzer.bind(var, tvm.ir.Range(0, extent))

    def flat(index, shape):
        position = tvm.tirx.const(0, "int64")
        for i, extent in zip(index, shape):
            position = position * extent + i
        return position

    moved = flat([analyzer.simplify(e) for e in index_of(idx)], shape_out)
    return analyzer.can_prove(analyzer.simplify(moved - flat(idx, shape_in)) == 0)


def layout_moves_as_reshapes() -> tvm.transform.Pass:
    """A layout transform (or transpose of it) that keeps every element at its memory position
    becomes a reshape, which the VM runs as a view of the same buffer.

    A TFLite model's NHWC image goes through transpose(NHWC -> NCHW) and then the first
    convolution's NCHW3c transform: two copies of the whole 224 x 224 x 3 input that compose to
    the identity on memory (NHWC with all 3 channels in one block is NCHW3c). An int8 image's
    first convolution then reads the view through one pass (the 3 channels padded to 4 for SDOT and
    VNNI, or shifted by the zero point into int16). Integer transforms without a transpose stay: an
    NCHWc -> NCHW move at 1 x 1 pixels in front of a channel slice would become a reshape inside
    the requantization kernel, which then misses the schedule of `schedules.Generic`.
    """

    @relax.expr_functor.mutator
    class _AsReshape(relax.PyExprMutator):
        def _transpose_below(self, x: relax.Expr) -> tuple[relax.Expr, list[int]] | None:
            """(source, axes) when `x` is bound to permute_dims(source, axes) with static shapes."""
            bound = self.lookup_binding(x) if isinstance(x, relax.Var) else None
            if not (isinstance(bound, relax.Call) and isinstance(bound.op, tvm.ir.Op)):
                return None
            if bound.op.name != "relax.permute_dims" or _static_shape(bound.args[0]) is None:
                return None
            ndim = len(_shape(bound.args[0]))
            axes = bound.attrs.axes
            return bound.args[0], [int(a) for a in axes] if axes is not None else list(range(ndim))[::-1]

        def visit_call_(self, call: relax.Call) -> relax.Expr:
            call = self.visit_expr_post_order(call)
            if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.layout_transform"):
                return call
            out = _static_shape(call)
            if out is None or call.attrs.pad_value is not None:
                return call
            source, axes = self._transpose_below(call.args[0]) or (call.args[0], None)
            if axes is None and "float" not in str(call.ty.dtype):
                return call
            shape_in = _static_shape(source)
            if shape_in is None or int(np.prod(shape_in)) != int(np.prod(out)):
                return call
            index_map = call.attrs.index_map

            def index_of(idx):
                return index_map.map_indices([idx[a] for a in axes] if axes is not None else idx)

            return relax.op.reshape(source, out) if _moves_in_order(shape_in, out, index_of) else call

    @tvm.transform.module_pass(opt_level=0, name="EdgefleetLayoutMovesAsReshapes")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return relax.transform.DeadCodeElimination()(_mutate_functions(mod, _AsReshape(mod)))

    return _pass


def _legalize_conv2d(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    attrs = call.attrs
    data_layout = str(attrs.data_layout)
    if len(data_layout) == 4:
        return _DEFAULT_CONV2D(bb, call)
    out_dtype = str(call.ty.dtype)
    groups = int(attrs.groups)
    data_shape = _shape(call.args[0])
    channels = data_shape[1] * data_shape[4]
    kshape = _shape(call.args[1])
    out_channels = kshape[0] * kshape[5]
    if groups == channels == out_channels and groups > 1 and kshape[1] * kshape[4] == 1:
        return bb.call_te(
            depthwise_conv2d_nchwc,
            call.args[0],
            call.args[1],
            [int(s) for s in attrs.strides],
            [int(p) for p in attrs.padding],
            [int(d) for d in attrs.dilation],
            out_dtype,
            primfunc_name_hint="depthwise_conv2d_NCHWc",
        )
    multiplier = _multiplier_conv(bb, call, channels, out_channels)
    if multiplier is not None:
        return multiplier
    if groups == 1:
        return bb.call_te(
            topi.nn.conv2d_NCHWc,
            call.args[0],
            call.args[1],
            [int(s) for s in attrs.strides],
            [int(p) for p in attrs.padding],
            [int(d) for d in attrs.dilation],
            data_layout,
            str(attrs.out_layout),
            out_dtype,
            primfunc_name_hint="conv2d_NCHWc",
        )
    # Grouped (AlexNet, ResNeXt, ShuffleNet) and depthwise-multiplier convolutions: TOPI has no
    # NCHWc kernel for them, and an unlowered call fails at VM codegen.
    return bb.call_te(
        grouped_conv2d_nchwc,
        call.args[0],
        call.args[1],
        groups,
        [int(s) for s in attrs.strides],
        [int(p) for p in attrs.padding],
        [int(d) for d in attrs.dilation],
        out_dtype,
        primfunc_name_hint="group_conv2d_NCHWc",
    )


def blocked_multiplier(out_channels: int, groups: int) -> bool:
    """Whether a depthwise convolution with a channel multiplier (`out_channels // groups` outputs
    per input channel, groups = input channels) is blocked like a plain depthwise one."""
    return out_channels > groups and out_channels % groups == 0


def _multiplier_conv(bb: relax.BlockBuilder, call: relax.Call, channels: int, out_channels: int) -> relax.Expr | None:
    """A depthwise NCHW{b}c convolution with multiplier M as a depthwise kernel plus a channel permutation.

    In channel order, output lane k of block j reads input lane (j % M) * b / M + k // M (M
    dividing the block b): a gather in the innermost loop. Computed in the order "M blocks per input block" (block
    j * M + m holds output m of input channels j*b .. j*b + b - 1), every output block reads one
    input block lane for lane, as a depthwise conv does; one permutation after (fused with the
    bias and ReLU that follow) restores the channel order. None when the weights are not constant.
    """
    attrs, (data, weight) = call.attrs, call.args
    kshape, block = _shape(weight), _shape(data)[4]
    if (
        int(attrs.groups) != channels
        or kshape[1] * kshape[4] != 1
        or kshape[5] != block
        or not blocked_multiplier(out_channels, channels)
        or not isinstance(weight, tvm.ir.expr.GenericConst)
    ):
        return None
    m = out_channels // channels
    # Per output channel o (channel order): its filter; reordered so block j*M + mi, lane k holds
    # output channel (j*b + k) * M + mi.
    filters = weight.value.numpy().transpose(0, 5, 1, 2, 3, 4).reshape(out_channels, *kshape[2:4])
    order = np.arange(out_channels).reshape(channels // block, block, m).transpose(0, 2, 1).reshape(-1)
    packed = filters[order].reshape(out_channels // block, block, 1, *kshape[2:4], 1).transpose(0, 2, 3, 4, 5, 1)
    conv = bb.emit(
        bb.call_te(
            depthwise_conv2d_nchwc,
            data,
            relax.const(np.ascontiguousarray(packed)),
            [int(s) for s in attrs.strides],
            [int(p) for p in attrs.padding],
            [int(d) for d in attrs.dilation],
            str(call.ty.dtype),
            m,
            primfunc_name_hint="depthwise_conv2d_NCHWc",
        )
    )

    def source(o):  # output channel o = (j*b + k) * M + mi sits in block j*M + mi, lane k
        c = o // m
        return (c // block * m + o % m) * block + c % block

    return bb.call_te(lambda x: channel_permute_nchwc(x, source), conv, primfunc_name_hint="channel_permute_NCHWc")


def channel_permute_nchwc(data, source, channels: int | None = None, block: int | None = None):
    """NCHW{b}c data with its channels reordered: output channel c is input channel `source(c)`
    (a channel shuffle, a multiplier convolution's channel order restored, or a grouped
    convolution's padding dropped: `channels` outputs in blocks of `block`, by default the
    input's), without leaving the blocked layout."""
    from tvm import te

    n, chunks, h, w, b = (int(d) for d in data.shape)
    b_out = block or b
    shape = (n, chunks, h, w, b) if channels is None else (n, channels // b_out, h, w, b_out)

    def value(n, c, y, x, k):
        src = source(c * b_out + k)
        return data[n, src // b, y, x, src % b]

    return te.compute(shape, value, name="channel_permute_NCHWc")


def channel_concat_nchwc(tensors: list, block: int):
    """NCHW or NCHW{b}c tensors (any b each) concatenated along the channels, as NCHW{block}c."""
    from tvm import te, tirx

    counts = [int(t.shape[1]) * (int(t.shape[4]) if len(t.shape) == 5 else 1) for t in tensors]
    offsets = np.cumsum([0, *counts[:-1]]).tolist()
    n, _, h, w = (int(tensors[0].shape[i]) for i in range(4))

    def read(t, ch, i, y, x):
        if len(t.shape) == 4:
            return t[i, ch, y, x]
        b = int(t.shape[4])
        return t[i, ch // b, y, x, ch % b]

    def value(i, c, y, x, k):
        ch = c * block + k
        out = read(tensors[-1], ch - offsets[-1], i, y, x)
        for t, off, count in zip(tensors[-2::-1], offsets[-2::-1], counts[-2::-1]):
            # if_then_else evaluates only the branch taken: the other's index is out of range.
            out = tirx.if_then_else(ch < off + count, read(t, ch - off, i, y, x), out)
        return out

    return te.compute((n, sum(counts) // block, h, w, block), value, name="channel_concat_NCHWc")


def grouped_output_blocks(data_shape: list[int], kernel_shape: list[int]) -> int | None:
    """Output channel blocks per group of a grouped NCHW{bd}c convolution with
    [O/bo, I/g/bi, KH, KW, bi, bo] weights, when its groups span whole output blocks (all lanes of
    an output block read the same input channel at each step); None otherwise."""
    channels = data_shape[1] * data_shape[4]
    ochunks, icchunks, _, _, bi, bo = kernel_shape
    groups = channels // (icchunks * bi)
    out_per_group = ochunks * bo // groups
    return None if out_per_group % bo else out_per_group // bo


def grouped_conv2d_nchwc(data, kernel, groups, strides, padding, dilation, out_dtype):
    """Grouped convolution on NCHW{bd}c data with OIHW{bi}i{bo}o weights ([O/bo, I/g/bi, KH, KW, bi, bo]).

    Output channel o reads input channels g*I/g .. (g+1)*I/g - 1 with g = o // (O/groups): the
    channel arithmetic maps each to its block and lane.
    """
    from tvm import te

    n, _, ih, iw, bd = (int(d) for d in data.shape)
    ochunks, icchunks, kh, kw, bi, bo = (int(d) for d in kernel.shape)
    in_per_group, out_per_group = icchunks * bi, ochunks * bo // groups
    (sh, sw), (dh, dw) = strides, dilation
    top, left, bottom, right = padding
    oh = (ih + top + bottom - (kh - 1) * dh - 1) // sh + 1
    ow = (iw + left + right - (kw - 1) * dw - 1) // sw + 1
    padded = data
    if any(padding):
        padded = topi.nn.pad(data, [0, 0, top, left, 0], [0, 0, bottom, right, 0], name="data_pad")
    ic, ib = te.reduce_axis((0, icchunks), name="ic"), te.reduce_axis((0, bi), name="ib")
    rh, rw = te.reduce_axis((0, kh), name="rh"), te.reduce_axis((0, kw), name="rw")

    blocks_per_group = grouped_output_blocks([int(d) for d in data.shape], [int(d) for d in kernel.shape])

    def value(b, c, y, x, k):
        if blocks_per_group is not None and bi == bd and in_per_group % bd == 0:
            # Groups span whole blocks: the input pixel does not depend on the output lane k, so
            # the schedule's vector over k multiplies one broadcast value (no gather).
            chunk, lane = c // blocks_per_group * (in_per_group // bd) + ic, ib
        elif blocks_per_group is not None:
            # Output blocks within one group, its inputs splitting blocks (block_remaining_convs'
            # padded groups): still one broadcast input value per step, at a computed block and lane.
            channel = c // blocks_per_group * in_per_group + ic * bi + ib
            chunk, lane = channel // bd, channel % bd
        else:
            channel = (c * bo + k) // out_per_group * in_per_group + ic * bi + ib
            chunk, lane = channel // bd, channel % bd
        pixel = padded[b, chunk, y * sh + rh * dh, x * sw + rw * dw, lane]
        return te.sum(pixel.astype(out_dtype) * kernel[c, ic, rh, rw, ib, k].astype(out_dtype), axis=[ic, ib, rh, rw])

    return te.compute((n, ochunks, oh, ow, bo), value, name="group_conv2d_NCHWc")


def depthwise_conv2d_nchwc(data, kernel, strides, padding, dilation, out_dtype, multiplier=1, pad_value=0):
    """Depthwise convolution on NCHW{b}c data with [C*M/b, 1, KH, KW, 1, b] weights; output block
    c reads input block c // M (M = `multiplier`, see `_multiplier_conv` for the channel order).
    The border reads `pad_value` (int8_depthwise_convs: the input's zero point).

    TOPI 0.27 declares depthwise_conv2d_NCHWc but leaves it unimplemented (it raises).
    """
    from tvm import te

    n, in_chunks, ih, iw, cb = (int(d) for d in data.shape)
    chunks = in_chunks * multiplier
    _, _, kh, kw, _, _ = (int(d) for d in kernel.shape)
    (sh, sw), (dh, dw) = strides, dilation
    top, left, bottom, right = padding
    oh = (ih + top + bottom - (kh - 1) * dh - 1) // sh + 1
    ow = (iw + left + right - (kw - 1) * dw - 1) // sw + 1
    padded = (
        topi.nn.pad(data, [0, 0, top, left, 0], [0, 0, bottom, right, 0], pad_value=pad_value, name="data_pad")
        if any(padding)
        else data
    )
    rh, rw = te.reduce_axis((0, kh), name="rh"), te.reduce_axis((0, kw), name="rw")
    return te.compute(
        (n, chunks, oh, ow, cb),
        lambda b, c, y, x, k: te.sum(
            padded[b, c // multiplier, y * sh + rh * dh, x * sw + rw * dw, k].astype(out_dtype)
            * kernel[c, 0, rh, rw, 0, k].astype(out_dtype),
            axis=[rh, rw],
        ),
        name="depthwise_conv2d_NCHWc",
    )


def depthwise_conv2d_nchwc_dot(data, taps, zero: int, strides, padding, width: int, shift: int):
    """A depthwise convolution of uint8 NCHW16c `data` (or of int8 data read + `shift` as uint8) by
    `taps` [C/16, KH, 16, 4] (int8_depthwise_convs: a window row's taps per channel, zero past the
    window's `width`): per output pixel, window row and 16 channels the 4 input pixels from the row's first,
    one vpdpbusd (schedules._depthwise_dot). The input is padded with `zero` (+ `shift`) and with
    columns on the right where the last window's 4 pixels run past the row (their taps are zero)."""
    from tvm import te

    n, chunks, ih, iw, cb = (int(d) for d in data.shape)
    kh = int(taps.shape[1])
    (sh, sw), (top, left, bottom, right) = strides, padding
    oh = (ih + top + bottom - kh) // sh + 1
    ow = (iw + left + right - width) // sw + 1
    right += max(0, (ow - 1) * sw + DOT_GROUP - (iw + left + right))
    if shift:
        padded = _shifted_pad(data, shift, zero, (top, left, bottom, right))
    else:
        padded = topi.nn.pad(data, [0, 0, top, left, 0], [0, 0, bottom, right, 0], pad_value=zero, name="data_pad")
    rh, rk = te.reduce_axis((0, kh), name="rh"), te.reduce_axis((0, DOT_GROUP), name="rk")
    return te.compute(
        (n, chunks, oh, ow, cb),
        lambda b, c, y, x, k: te.sum(
            padded[b, c, y * sh + rh, x * sw + rk, k].astype("int32") * taps[c, rh, k, rk].astype("int32"),
            axis=[rh, rk],
        ),
        name="depthwise_conv2d_NCHWc",
    )


_DEFAULT_CONV2D = tvm.ir.Op.get("relax.nn.conv2d").get_attr("FLegalize")


def legalize(on_fallback, vector_exp: bool = False) -> tvm.transform.Pass:
    """TVM's LegalizeOps, plus NCHWc convolutions (which it leaves unlowered), and with
    `vector_exp` float32 exp, sigmoid and softmax in vectorizable arithmetic (vector_math.py).

    A blocked convolution that cannot be lowered (its kernel raises, or nothing lowers that
    layout) falls back alone: it runs in NCHW between layout transforms, and
    `on_fallback(description, reason)` says so.
    """

    def conv2d(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
        blocked = len(str(call.attrs.data_layout)) > 4
        try:
            lowered = _legalize_conv2d(bb, call)
            reason = "no kernel lowers this layout" if lowered.same_as(call) else None
        except Exception as exc:  # TVM surfaces its C++ errors as several Python types
            if not blocked:
                raise
            reason = tvm_message(exc, 300)
        if reason is None or not blocked:
            return lowered
        on_fallback(describe_conv2d(call), reason)
        return _conv2d_in_nchw(bb, call)

    rules = vector_math.legalize_rules() if vector_exp else {}
    return relax.transform.LegalizeOps({**rules, "relax.nn.conv2d": conv2d})


def describe_conv2d(call: relax.Call) -> str:
    """The convolution in a user's terms: "conv2d 32->64 channels 3x3 groups=2 (NCHW16c)"."""
    a, data, weight = call.attrs, call.args[0].ty, call.args[1].ty

    def channels(ty) -> int:  # static for a convolution, unlike a symbolic batch or size
        return int(ty.shape[1]) * (int(ty.shape[4]) if ty.ndim == 5 else 1)

    groups = f" groups={int(a.groups)}" if int(a.groups) != 1 else ""
    return f"conv2d {channels(data)}->{channels(call.ty)} channels {int(weight.shape[2])}x{int(weight.shape[3])}{groups} ({a.data_layout})"


def _conv2d_in_nchw(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    """A blocked convolution as NCHW data, OIHW weights and a plain conv2d, blocked again after.

    LegalizeOps lowers what this returns in turn; the weight's transform folds into a constant.
    """
    a = call.attrs
    data, weight = call.args
    db, ib, ob = int(data.ty.shape[4]), int(weight.ty.shape[4]), int(weight.ty.shape[5])
    unblocked = bb.emit(relax.op.layout_transform(data, index_map=lambda n, c, h, w, cb: (n, c * db + cb, h, w)))
    oihw = bb.emit(
        relax.op.layout_transform(weight, index_map=lambda o, i, h, w, bi, bo: (o * ob + bo, i * ib + bi, h, w))
    )
    conv = relax.op.nn.conv2d(
        unblocked,
        oihw,
        strides=a.strides,
        padding=a.padding,
        dilation=a.dilation,
        groups=a.groups,
        out_dtype=str(call.ty.dtype),
    )
    if call.ty.ndim == 4:
        return conv
    cb = int(call.ty.shape[4])
    return relax.op.layout_transform(bb.emit(conv), index_map=lambda n, c, h, w: (n, c // cb, h, w, c % cb))


_CALL_TIR = tvm.ir.Op.get("relax.call_tir")
_INT32 = np.iinfo(np.int32)


def int32_multipliers() -> tvm.transform.Pass:
    """Int64 constants that fit in int32, as multiplier operands of legalized multiplies, become
    int32 constants cast to int64 inside the kernel (run after FoldConstant, before fusion).

    The int8 requantization multiplies int32 accumulators by per-channel Q31 multipliers in int64.
    With the multiplier an int64 buffer LLVM sees a full 64 x 64-bit product, which NEON lacks
    (each lane goes through a general register); with both sides sign-extended int32 loads it
    emits AArch64's widening `smull`/`smull2` (and x86 `vpmuldq`). FoldConstant would fold the
    cast back into an int64 constant, hence after it: the cast fuses into the multiplying kernel.
    """

    @relax.expr_functor.mutator
    class _Narrow(relax.PyExprMutator):
        def visit_call_(self, call: relax.Call) -> relax.Expr:
            call = super().visit_call_(call)
            if not (call.op.same_as(_CALL_TIR) and call.args[0].name_hint.startswith("multiply")):
                return call
            args = [self._narrowed(arg) for arg in call.args[1].fields]
            if all(a.same_as(b) for a, b in zip(args, call.args[1].fields, strict=True)):
                return call
            return relax.Call(call.op, [call.args[0], relax.Tuple(args), *call.args[2:]], call.attrs, call.ty_args)

        def _narrowed(self, arg: relax.Expr) -> relax.Expr:
            if not (isinstance(arg, tvm.ir.expr.GenericConst) and arg.value.dtype == "int64"):
                return arg
            values = arg.value.numpy()
            if values.size and (values.min() < _INT32.min or values.max() > _INT32.max):
                return arg
            return self.builder_.emit_te(topi.cast, relax.const(values.astype(np.int32), "int32"), "int64")

    @tvm.transform.module_pass(opt_level=0, name="EdgefleetInt32Multipliers")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return relax.transform.AnnotateTIROpPattern()(_mutate_functions(mod, _Narrow(mod)))

    return _pass


# A part of a concat written in place must start where the output's vector stores may (an
# AVX-512 register); a part that starts elsewhere keeps its copy.
_INPLACE_ALIGN_BYTES = 64


def inplace_concats(unscheduled: dict[str, tvm.tirx.PrimFunc] | None = None) -> tvm.transform.Pass:
    """Channel concats written in place by their producers (x86 targets; after the default schedules).

    With batch 1 the channels are the outermost dimension of an NCHW or NCHW{b}c tensor, so each
    part of a channel concat is one contiguous range of the result. When every part is computed by
    a kernel whose output nothing else reads, each such kernel gets a copy that writes its range of
    the result's buffer: the first allocates the whole result, the others write into it in place
    (call_tir_inplace), and the concat's copy is gone (SqueezeNet's fire modules, Inception's
    branches). The kernels are scheduled already; only their output's address moves. A copy of a
    kernel found in `unscheduled` (name -> PrimFunc before the schedules, build.py's fallback for a
    kernel that does not build scheduled) gets its unscheduled copy there too.
    """

    @tvm.transform.module_pass(opt_level=0, name="EdgefleetInplaceConcats")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        rewriter = _InplaceConcats(mod, unscheduled if unscheduled is not None else {})
        for gv, func in list(mod.functions.items()):
            if isinstance(func, relax.Function) and isinstance(func.body, relax.SeqExpr):
                blocks = [rewriter.block(b) for b in func.body.blocks]
                body = relax.SeqExpr(blocks, func.body.body)
                rewriter.bb.update_func(gv, relax.Function(func.params, body, func.ret_ty, func.is_pure, func.attrs))
        return relax.transform.DeadCodeElimination()(rewriter.bb.get())

    return _pass


class _InplaceConcats:
    def __init__(self, mod: tvm.IRModule, unscheduled: dict[str, tvm.tirx.PrimFunc]) -> None:
        self.mod = mod
        self.unscheduled = unscheduled
        self.bb = relax.BlockBuilder(mod)
        self.copies: dict[tuple[str, tuple[int, ...], int], tvm.ir.GlobalVar] = {}

    def _parts(self, call: relax.Call, producers: dict, users: dict) -> list[tuple[relax.Var, int]] | None:
        """(part, its first channel in the result) of a channel concat every part of which can be
        written in place; else None."""
        if not (
            call.op.same_as(_CALL_TIR) and len(call.args) == 2 and call.args[0].name_hint.startswith("concatenate")
        ):
            return None
        parts, out = list(call.args[1].fields), _static_shape(call)
        shapes = [_static_shape(p) for p in parts]
        if out is None or out[0] != 1 or len(set(parts)) != len(parts) or any(s is None for s in shapes):
            return None
        plane = int(np.prod(out[2:])) * tvm.DataType(str(call.ty.dtype)).bits // 8
        found, channel = [], 0
        for part, shape in zip(parts, shapes):
            producer = producers.get(part)
            if (
                shape[:1] + shape[2:] != out[:1] + out[2:]
                or channel * plane % _INPLACE_ALIGN_BYTES
                or producer is None
                or len(users.get(part, [])) != 1
            ):
                return None
            found.append((part, channel))
            channel += shape[1]
        return found

    def _producers(self, block: relax.DataflowBlock) -> dict:
        """Dataflow vars bound to a call_tir of one PrimFunc with one output and no shape arguments."""
        return {
            b.var: b.value
            for b in block.bindings
            if isinstance(b.var, relax.DataflowVar)
            and isinstance(b.value, relax.Call)
            and b.value.op.same_as(_CALL_TIR)
            and len(b.value.args) == 2
            and isinstance(b.value.ty, relax.TensorType)
            and isinstance(self.mod[b.value.args[0]], tvm.tirx.PrimFunc)
        }

    def block(self, block: relax.BindingBlock) -> relax.BindingBlock:
        if not isinstance(block, relax.DataflowBlock):
            return block
        producers, users = self._producers(block), relax.analysis.udchain(block)
        ranges: dict[relax.Var, tuple[relax.Var, int, relax.TensorType]] = {}
        for b in block.bindings:
            parts = self._parts(b.value, producers, users) if isinstance(b.value, relax.Call) else None
            for part, channel in parts or []:
                ranges[part] = (b.var, channel, b.value.ty)
        if not ranges:
            return block
        written: dict[relax.Var, relax.Var] = {}  # concat -> the last kernel that wrote into its buffer
        bindings = []
        for b in block.bindings:
            if b.var in ranges:
                concat, channel, ty = ranges[b.var]
                kernel = self._into(b.value.args[0], _static_shape(concat), channel)
                args = list(b.value.args[1].fields)
                previous = written.get(concat)
                value = (
                    relax.call_tir(kernel, relax.Tuple(args), ty)
                    if previous is None
                    else relax.op.call_tir_inplace(kernel, relax.Tuple([*args, previous]), len(args), ty)
                )
                written[concat] = relax.DataflowVar(f"{b.var.name}_in_{concat.name}", ty)
                bindings.append(relax.VarBinding(written[concat], value))
            elif b.var in written:
                bindings.append(relax.VarBinding(b.var, written[b.var]))
            else:
                bindings.append(b)
        return relax.DataflowBlock(bindings)

    def _into(self, gv: tvm.ir.GlobalVar, shape: list[int], channel: int) -> tvm.ir.GlobalVar:
        """A copy of kernel `gv` whose output is channels `channel`... of a `shape` tensor."""
        key = (gv.name_hint, tuple(shape), channel)
        if key not in self.copies:
            copy = self.bb.add_func(_write_into(self.mod[gv], shape, channel), f"{gv.name_hint}_into")
            plain = self.unscheduled.get(gv.name_hint)
            if plain is not None:
                self.unscheduled[copy.name_hint] = _write_into(plain, shape, channel)
            self.copies[key] = copy
        return self.copies[key]


def _write_into(func: tvm.tirx.PrimFunc, shape: list[int], channel: int) -> tvm.tirx.PrimFunc:
    """PrimFunc `func` with its output (last) parameter a `shape` tensor, written from `channel` on."""
    from tvm.tirx import buffer

    out = func.params[-1]
    whole = buffer.decl_buffer([tvm.tirx.IntImm("int64", d) for d in shape], out.ty.dtype, f"{out.name}_whole")
    start = [tvm.tirx.IntImm("int64", channel if k == 1 else 0) for k in range(len(shape))]
    body = tvm.tirx.SeqStmt([tvm.tirx.DeclBuffer(out, data=tvm.tirx.address_of(whole[tuple(start)])), func.body])
    return tvm.tirx.PrimFunc([*func.params[:-1], whole], body, func.ret_type, func.attrs)


def is_aarch64(target: tvm.target.Target) -> bool:
    """Whether `target` is AArch64 (rasp4b, rasp5, aarch64): AdvSIMD's SQRDMULH and SRSHL on int32 lanes."""
    return str(target.attrs.get("mtriple", "")).startswith("aarch64")


def has_dot_product(target: tvm.target.Target) -> bool:
    """Whether `target` is AArch64 with the Armv8.2 dot product (SDOT/UDOT), e.g. rasp5's Cortex-A76."""
    mattr = [str(a) for a in target.attrs.get("mattr", [])]
    return is_aarch64(target) and "+dotprod" in mattr


def has_vnni(target: tvm.target.Target) -> bool:
    """Whether `target` is x86 with AVX-512 VNNI (`vpdpbusd`, unsigned x signed bytes), e.g. ml_c6i's
    Ice Lake or Zen 4; the generic x86-64-v3 / v4 levels have it not."""
    if not str(target.attrs.get("mtriple", "")).startswith("x86_64"):
        return False
    return "avx512vnni" in tvm.target.codegen.llvm_get_cpu_features(target)


# SDOT multiplies 4 int8 pairs per int32 lane: the input-channel block splits into groups of 4.
DOT_GROUP = 4
_INT8 = np.iinfo(np.int8)
# Input channels an SDOT convolution needs (one SDOT sums 4). A minimum of 16 measured better
# while each SDOT tile row allocated workspaces (8.81 M per int8 MobileNetV2-0.35 inference on
# rasp5 with its 8-channel convolutions on SDOT, 8.33 M without); with arm_intrin's SDOT, which
# allocates nothing, they gain: 6.16 M with, 6.92 M without.
DOT_MIN_CHANNELS = 4
# x86 VNNI (`dot_product_convs(unsigned=True)`): vpdpbusd's unsigned operand is the input + 128; an
# output-channel block is a multiple of its 8 (256-bit) or 16 (512-bit) int32 lanes.
VNNI_SHIFT = 128
VNNI_LANES = 8


def dot_product_convs(unsigned: bool = False, shift_in_producer: bool = True) -> tvm.transform.Pass:
    """Blocked int8 convolutions on raw int8 operands for SDOT (run after `nchwc_layout`, dot-product targets only).

    The TFLite importer (tflite_quant.py) gives dense convolutions zero-point-corrected int16
    operands, `conv(x - zx, w)`; SDOT needs int8 ones. With the input padded by its zero point,
    conv(x - zx, w) = conv(x, w) - zx * sum(w) per output channel (exact in int32), so the
    convolution runs on x itself (`conv2d_nchwc_dot`, TOPI's NCHWc int8 compute with weights
    packed OIHW{ib/4}i{ob}o4i: 4 input channels innermost, one SDOT's operand per 4 output
    channels) and one constant per channel corrects it: on SDOT its sums start at -zx * sum(w)
    (`_started_conv`; `sqrdmulh_rescales` adds the bias there), on VNNI its fused epilogue subtracts
    the constant (`fold_int8_corrections` moves it into the rescale). An input-channel
    block that is not a multiple of 4 (an RGB input's 3) is padded with zero weights. Only with at
    least DOT_MIN_CHANNELS input channels (after that padding); depthwise convolutions keep the
    int16 form: their reduction is over the window, not over channels (x86: `int8_depthwise_convs`).

    `unsigned` (x86 VNNI targets, `has_vnni`): `vpdpbusd` multiplies unsigned by signed bytes, so
    the convolution reads x + 128 as uint8 (shifted, and padded with zx + 128, inside its kernel)
    and the correction is (zx + 128) * sum(w): exact. Output-channel blocks that are not a multiple
    of VNNI_LANES keep the int16 form. `shift_in_producer`: where x is a kernel's output that only this
    convolution reads (MobileNetV2's depthwise outputs, and the projections no residual add reads), that
    kernel writes x + 128 as uint8 and the convolution reads it as it is: int8 MobileNetV2 1.0's kernels
    on the VNNI host 1.630 -> 1.514 ms (docs/performance.md, "int8 on x86: the shift to uint8 in the
    producer").
    """
    shift = VNNI_SHIFT if unsigned else 0

    @relax.expr_functor.mutator
    class _Dot(relax.PyExprMutator):
        def __init__(self, mod: tvm.IRModule, single_use: set) -> None:
            super().__init__(mod)
            self.single_use = single_use  # vars read by one binding only

        def visit_call_(self, call: relax.Call) -> relax.Expr:
            call = self.visit_expr_post_order(call)
            found = self._raw_operands(call)
            if found is None or (unsigned and found[2].shape[5] % VNNI_LANES):
                return call
            x, zero, weight = found
            ragged = -weight.shape[4] % DOT_GROUP
            if ragged:  # e.g. RGB: a 4th input channel of zero weights adds nothing; its input value is free
                x = self.builder_.emit(relax.op.nn.pad(x, [0, 0] * 4 + [0, ragged], pad_value=zero))
                weight = np.pad(weight, [(0, 0)] * 4 + [(0, ragged), (0, 0)])
            a = call.attrs
            # zx * sum(w) over input channels and window, per output channel, in the output's blocks.
            ob = weight.shape[5]
            correction = (zero + shift) * weight.astype(np.int64).sum(axis=(1, 2, 3, 4)).reshape(1, -1, 1, 1, ob)
            in_kernel = shift
            if shift and shift_in_producer and _handed_over(self, self.single_use, x):
                x, zero, in_kernel = _shifted_by_producer(self.builder_, x), zero + shift, 0
            args = [x, relax.const(_pack_dot(weight).astype(np.int8), "int8"), zero]
            args += [[int(s) for s in a.strides], [int(p) for p in a.padding], [int(d) for d in a.dilation], in_kernel]
            if unsigned:
                conv = self.builder_.call_te(conv2d_nchwc_dot, *args, primfunc_name_hint="conv2d_NCHWc_int8")
                return relax.op.subtract(self.builder_.emit(conv), relax.const(correction.astype(np.int32), "int32"))
            # SDOT: the sums start at -zx sum(w) (`sqrdmulh_rescales` adds the bias to that start).
            return _started_conv(self.builder_, args, relax.const((-correction).astype(np.int32), "int32"))

        def _raw_operands(self, call: relax.Call) -> tuple[relax.Expr, int, np.ndarray] | None:
            """(int8 input, its zero point, int16 weights [O, I, KH, KW, ib, ob]) of a blocked dense
            convolution `conv(astype(x, int16) - zx, w)` whose weights fit int8; else None."""
            if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.nn.conv2d"):
                return None
            a = call.attrs
            if int(a.groups) != 1 or str(call.ty.dtype) != "int32" or len(str(a.data_layout)) == 4:
                return None
            weight = call.args[1]
            if not isinstance(weight, tvm.ir.expr.GenericConst):
                return None
            w = weight.value.numpy()
            if w.ndim != 6 or w.shape[1] * (w.shape[4] + -w.shape[4] % DOT_GROUP) < DOT_MIN_CHANNELS:
                return None
            if w.min() < _INT8.min or w.max() > _INT8.max:
                return None
            found = _raw_int8_input(self, call.args[0])
            return None if found is None else (*found, w)

    @tvm.transform.module_pass(opt_level=0, name="EdgefleetDotProductConvs")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return relax.transform.DeadCodeElimination()(_mutate_functions(mod, _Dot(mod, _single_use(mod))))

    return _pass


def _handed_over(mutator: relax.PyExprMutator, single_use: set, x: relax.Expr) -> bool:
    """Whether `x` (int8) is computed by a kernel of its own and read by one convolution only (`single_use`:
    `_single_use`): its producer can then write it as uint8 x + 128 (`_shifted_by_producer`)."""
    return isinstance(x, relax.Var) and x in single_use and mutator.lookup_binding(x) is not None


def _shifted_by_producer(builder: relax.BlockBuilder, x: relax.Expr) -> relax.Expr:
    """uint8(x + 128), which FuseOps puts in the epilogue of the kernel that computes x (a depthwise
    convolution's, in MobileNetV2): the convolution then reads it as it is, where its own kernel read
    the whole int8 input and wrote it shifted before its first multiply-add."""
    wide = builder.emit(relax.op.astype(x, "int16"))
    moved = builder.emit(relax.op.add(wide, relax.const(VNNI_SHIFT, "int16")))
    return builder.emit(relax.op.astype(moved, "uint8"))


def _single_use(mod: tvm.IRModule) -> set:
    """The dataflow variables of `mod`'s Relax functions that one binding reads and nothing else."""
    single = set()
    for func in mod.functions.values():
        if isinstance(func, relax.Function) and isinstance(func.body, relax.SeqExpr):
            for block in func.body.blocks:
                if isinstance(block, relax.DataflowBlock):
                    chain = relax.analysis.udchain(block)
                    single |= {v for v, users in chain.items() if len(users) == 1 and isinstance(v, relax.DataflowVar)}
    return single


def _raw_int8_input(mutator: relax.PyExprMutator, operand: relax.Expr) -> tuple[relax.Expr, int] | None:
    """(int8 x, zx) of a convolution operand `astype(x, int16) - zx` (zx a scalar constant), else None.

    The subtract is blocked with its producer, or (the NHWC input, a tensor also read by a residual
    add) computed before a transpose and the blocking, or a reshape (`layout_moves_as_reshapes`):
    x gets those moves, emitted by `mutator`."""

    moves = []
    names = ("relax.layout_transform", "relax.permute_dims", "relax.reshape")
    while (move := _bound_call(mutator, operand, names)) is not None:
        moves.append(move)
        operand = move.args[0]
    shifted = _bound_call(mutator, operand, ("relax.subtract",))
    cast = None if shifted is None else _bound_call(mutator, shifted.args[0], ("relax.astype",))
    if cast is None or str(cast.args[0].ty.dtype) != "int8":
        return None
    zero = shifted.args[1]
    if not isinstance(zero, tvm.ir.expr.GenericConst) or zero.value.numpy().ndim != 0:
        return None
    x = cast.args[0]
    for move in reversed(moves):
        if move.op.name == "relax.permute_dims":
            x = mutator.builder_.emit(relax.op.permute_dims(x, move.attrs.axes))
        elif move.op.name == "relax.reshape":
            x = mutator.builder_.emit(relax.op.reshape(x, move.args[1]))
        else:
            x = mutator.builder_.emit(relax.op.layout_transform(x, move.attrs.index_map, move.attrs.pad_value))
    return x, int(zero.value.numpy())


def _bound_call(mutator: relax.PyExprMutator, expr: relax.Expr, names: tuple[str, ...]) -> relax.Call | None:
    """The call `expr` is (or is bound to) when it is one of the operators `names`, else None."""
    if isinstance(expr, relax.Var):
        expr = mutator.lookup_binding(expr)
    ok = isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name in names
    return expr if ok else None


def dot_product_dense() -> tvm.transform.Pass:
    """int8 fully connected layers on raw int8 operands for SDOT (dot-product targets, after `dot_product_convs`).

    The TFLite importer multiplies `reshape(astype(x, int32) - zx)` by int32 weights (tflite_quant.py):
    on rasp5 the classifier ran int32 multiply-adds on 5.1 MB of weights. As in `dot_product_convs`,
    (x - zx) W = x W - zx * sum(W) per column, exact in int32: `matmul_dot` multiplies the raw int8 row
    by int8 weights packed [N/4, K/4, 4, 4] (one SDOT's operand per 4 outputs x 4 inputs), and one
    constant per output is subtracted in the fused epilogue. Only where K and N are multiples of 4.
    """

    def lower(builder: relax.BlockBuilder, x: relax.Expr, zero: int, w: np.ndarray, shape) -> relax.Expr | None:
        if w.shape[1] % DOT_GROUP:
            return None
        dense = builder.call_te(
            matmul_dot,
            builder.emit(relax.op.reshape(x, shape)),
            relax.const(_pack_dense_dot(w), "int8"),
            primfunc_name_hint="matmul_dot",
        )
        correction = zero * w.astype(np.int64).sum(axis=0)
        return relax.op.subtract(builder.emit(dense), relax.const(correction.astype(np.int32), "int32"))

    return _raw_int8_dense("EdgefleetDotProductDense", lower)


def int16_dense() -> tvm.transform.Pass:
    """int8 fully connected layers on int16 operands (AArch64 without the dot product): the row
    `int16(x) - zx` times int16 weights into int32, which LLVM multiplies as `smlal` on 8 lanes
    (schedules._row_times_matrix) where int32 operands took an `mla` per 4 products."""

    def lower(builder: relax.BlockBuilder, x: relax.Expr, zero: int, w: np.ndarray, shape) -> relax.Expr:
        row = relax.op.subtract(relax.op.astype(x, "int16"), relax.const(zero, "int16"))
        flat = builder.emit(relax.op.reshape(builder.emit(row), shape))
        return builder.call_te(
            matmul_widening, flat, relax.const(w.astype(np.int16), "int16"), primfunc_name_hint="matmul"
        )

    return _raw_int8_dense("EdgefleetInt16Dense", lower)


def matmul_widening(x, w):
    """x [rows, K] times w [K, N], both widened to int32 per product."""
    from tvm import te

    k = te.reduce_axis((0, int(w.shape[0])), name="k")
    shape = (int(x.shape[0]), int(w.shape[1]))
    return te.compute(
        shape, lambda i, j: te.sum(x[i, k].astype("int32") * w[k, j].astype("int32"), axis=k), name="matmul"
    )


def _raw_int8_dense(name: str, lower) -> tvm.transform.Pass:
    """A pass lowering each fully connected layer `reshape(int32(x) - zx, shape) @ w` of an int8 x and
    constant weights [K, N] that fit int8, K a multiple of DOT_GROUP, to `lower(builder, x, zx, w,
    shape)` (None keeps the layer): the raw int8 row for a dot-product instruction."""

    @relax.expr_functor.mutator
    class _Dense(relax.PyExprMutator):
        def visit_call_(self, call: relax.Call) -> relax.Expr:
            call = self.visit_expr_post_order(call)
            w = _int8_matmul_weights(call)
            ok = w is not None and w.shape[0] % DOT_GROUP == 0
            flat = _bound_call(self, call.args[0], ("relax.reshape",)) if ok else None
            found = None if flat is None else _raw_int8_input(self, flat.args[0])
            lowered = None if found is None else lower(self.builder_, *found, w, flat.args[1])
            return call if lowered is None else lowered

    @tvm.transform.module_pass(opt_level=0, name=name)
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return relax.transform.DeadCodeElimination()(_mutate_functions(mod, _Dense(mod)))

    return _pass


def _int8_matmul_weights(call: relax.Call) -> np.ndarray | None:
    """The constant weights [K, N] of an int32 `relax.matmul` when they fit int8, else None."""
    if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.matmul"):
        return None
    weight = call.args[1]
    if not isinstance(weight, tvm.ir.expr.GenericConst) or str(call.ty.dtype) != "int32":
        return None
    w = weight.value.numpy()
    if w.ndim != 2 or str(w.dtype) != "int32":
        return None
    return w if w.min() >= _INT8.min and w.max() <= _INT8.max else None


def _pack_dense_dot(weight: np.ndarray) -> np.ndarray:
    """[K, N] -> int8 [N/4, K/4, 4, 4]: 4 consecutive inputs of 4 consecutive outputs in 16 bytes."""
    depth, outputs = weight.shape
    blocks = weight.T.reshape(outputs // DOT_GROUP, DOT_GROUP, depth // DOT_GROUP, DOT_GROUP)
    return np.ascontiguousarray(blocks.transpose(0, 2, 1, 3)).astype(np.int8)


def matmul_dot(x, w):
    """x [rows, K] int8 times the packed int8 weights w [N/4, K/4, 4, 4] of `_pack_dense_dot`, in int32."""
    from tvm import te

    rows, depth = (int(d) for d in x.shape)
    k = te.reduce_axis((0, depth), name="k")
    g = DOT_GROUP

    def value(i, j):
        return te.sum(x[i, k].astype("int32") * w[j // g, k // g, j % g, k % g].astype("int32"), axis=k)

    return te.compute((rows, int(w.shape[0]) * g), value, name="matmul_dot")


def int8_depthwise_convs(unsigned: bool = False) -> tvm.transform.Pass:
    """Blocked int8 depthwise convolutions on their raw int8 input (x86 targets; after `nchwc_layout`).

    The TFLite importer gives them `conv(astype(x, int16) - zx, w)`: the producer then writes an
    int16 tensor, the kernel pads a copy of it and widens int16 lanes to multiply in int32. As in
    `dot_product_convs`, conv(x - zx, w) = conv(x, w) - zx * sum(w) with x padded by zx, exact in
    int32: the kernel reads int8 (XNNPACK's AVX-512 depthwise: a sign-extending load, `vpmulld`),
    the producer writes int8, and the per-channel constant goes into the rescale
    (`fold_int8_corrections`). Depthwise convolutions with a channel multiplier keep the int16 form.

    `unsigned` (x86 VNNI, `has_vnni`): those on 16-channel blocks with windows at most 4 wide and no
    dilation read x + 128 as uint8 (`depthwise_conv2d_nchwc_dot`: each window row of 16 channels one
    `vpdpbusd` of 4 taps, x86_intrin.VNNI_WINDOW_U8I8, where `vpmulld` took two micro-ops per tap), the
    correction (zx + 128) * sum(w); written so by their producer where they are its only reader (as in
    `dot_product_convs`: MobileNetV2's expansions), else shifted in their own pad.
    """

    @relax.expr_functor.mutator
    class _Depthwise(relax.PyExprMutator):
        def __init__(self, mod: tvm.IRModule, single_use: set) -> None:
            super().__init__(mod)
            self.single_use = single_use

        def visit_call_(self, call: relax.Call) -> relax.Expr:
            call = self.visit_expr_post_order(call)
            w = self._weights(call)
            found = None if w is None else _raw_int8_input(self, call.args[0])
            if found is None:
                return call
            x, zero = found
            a = call.attrs
            strides, padding, dilation = ([int(v) for v in values] for values in (a.strides, a.padding, a.dilation))
            if unsigned and w.shape[5] == 16 and w.shape[3] <= DOT_GROUP and dilation == [1, 1]:
                conv = self._on_windows(x, zero, w, strides, padding)
                zero += VNNI_SHIFT
            else:
                conv = self.builder_.call_te(
                    depthwise_conv2d_nchwc,
                    x,
                    relax.const(w.astype(np.int8), "int8"),
                    strides,
                    padding,
                    dilation,
                    "int32",
                    pad_value=zero,
                    primfunc_name_hint="depthwise_conv2d_NCHWc",
                )
            correction = zero * w.astype(np.int64).sum(axis=(1, 2, 3, 4)).reshape(1, w.shape[0], 1, 1, w.shape[5])
            return relax.op.subtract(self.builder_.emit(conv), relax.const(correction.astype(np.int32), "int32"))

        def _on_windows(self, x: relax.Expr, zero: int, w: np.ndarray, strides: list, padding: list) -> relax.Expr:
            """`depthwise_conv2d_nchwc_dot` of x (shifted by its producer where it hands x over) by w's taps
            as [C/16, KH, 16, 4] (a window row of 4 taps per channel, zeros past its width)."""
            taps = np.pad(w[:, 0, :, :, 0, :], [(0, 0), (0, 0), (0, DOT_GROUP - w.shape[3]), (0, 0)])
            weights = relax.const(taps.transpose(0, 1, 3, 2).astype(np.int8), "int8")
            shift = VNNI_SHIFT
            if _handed_over(self, self.single_use, x):
                x, zero, shift = _shifted_by_producer(self.builder_, x), zero + VNNI_SHIFT, 0
            return self.builder_.call_te(
                depthwise_conv2d_nchwc_dot,
                x,
                weights,
                zero,
                strides,
                padding,
                w.shape[3],
                shift,
                primfunc_name_hint="depthwise_conv2d_NCHWc",
            )

        def _weights(self, call: relax.Call) -> np.ndarray | None:
            """The int16 weights [C/b, 1, KH, KW, 1, b] of a blocked int32 depthwise conv (no multiplier)
            when they fit int8, else None."""
            if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.nn.conv2d"):
                return None
            if str(call.ty.dtype) != "int32" or len(str(call.attrs.data_layout)) == 4:
                return None
            weight = call.args[1]
            if not isinstance(weight, tvm.ir.expr.GenericConst):
                return None
            w = weight.value.numpy()
            depthwise = (
                w.ndim == 6 and w.shape[1] == w.shape[4] == 1 and w.shape[0] * w.shape[5] == int(call.attrs.groups)
            )
            if not depthwise or str(w.dtype) != "int16" or w.min() < _INT8.min or w.max() > _INT8.max:
                return None
            return w

    @tvm.transform.module_pass(opt_level=0, name="EdgefleetInt8DepthwiseConvs")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return relax.transform.DeadCodeElimination()(_mutate_functions(mod, _Depthwise(mod, _single_use(mod))))

    return _pass


# The raw int8 convolutions whose correction `fold_int8_corrections` moves into the rescale.
_RAW_INT8_CONVS = ("conv2d_NCHWc_int8", "depthwise_conv2d_NCHWc")


def fold_int8_corrections() -> tvm.transform.Pass:
    """The zero-point correction of a raw int8 convolution folded into its rescale's constant (x86;
    after `dot_product_convs` / `int8_depthwise_convs`).

    The rescale is `int64(acc - k) * q + c` (tflite_quant.py: c = bias q + the rounding nudge), with
    k = (zx [+ 128]) * sum(w) per channel: LLVM then subtracts in 64-bit lanes and multiplies 64 x 64
    bits (`vpsubq`, `vpmullq`). As `int64(acc) * q + (c - k q)`, the same integers while the raw
    sum fits int32 (checked from the weights: 256 max|w| per product), the product is of two widened
    int32 values (`vpmuldq`) and the subtract is gone.
    """

    @relax.expr_functor.mutator
    class _Fold(relax.PyExprMutator):
        def visit_call_(self, call: relax.Call) -> relax.Expr:
            call = self.visit_expr_post_order(call)
            found = self._rescale(call)
            if found is None:
                return call
            acc, q, c = found
            product = self.builder_.emit(relax.op.multiply(self.builder_.emit(relax.op.astype(acc, "int64")), q))
            return relax.op.add(product, relax.const(c, "int64"))

        def _rescale(self, call: relax.Call) -> tuple[relax.Expr, relax.Expr, np.ndarray] | None:
            """(raw acc, q, c - k q) of `int64(acc - k) * q + c` on a raw int8 convolution, else None."""
            add = _bound_call(self, call, ("relax.add",))
            product = None if add is None else _bound_call(self, add.args[0], ("relax.multiply",))
            widened = None if product is None else _bound_call(self, product.args[0], ("relax.astype",))
            shifted = None if widened is None else _bound_call(self, widened.args[0], ("relax.subtract",))
            consts = None if shifted is None else (shifted.args[1], product.args[1], add.args[1])
            if consts is None or not all(isinstance(k, tvm.ir.expr.GenericConst) for k in consts):
                return None
            k, q, c = (v.value.numpy() for v in consts)
            if str(widened.ty.dtype) != "int64" or str(k.dtype) != "int32" or not self._fits(shifted.args[0]):
                return None
            folded = c.astype(np.int64) - k.astype(np.int64) * q.astype(np.int64)
            return shifted.args[0], product.args[1], folded

        def _fits(self, acc: relax.Expr) -> bool:
            """Whether `acc` is a raw int8 convolution whose sums fit int32 (|x| <= 256, |w| <= 128)."""
            call = acc if not isinstance(acc, relax.Var) else self.lookup_binding(acc)
            if not (isinstance(call, relax.Call) and call.op.same_as(_CALL_TIR)):
                return False
            if not call.args[0].name_hint.startswith(_RAW_INT8_CONVS):
                return False
            weight = call.args[1].fields[1]
            if not isinstance(weight, tvm.ir.expr.GenericConst):
                return False
            out = _shape(acc)
            per_output = weight.value.numpy().size // (out[1] * out[4])
            return 256 * 128 * per_output <= _INT32.max

    @tvm.transform.module_pass(opt_level=0, name="EdgefleetFoldInt8Corrections")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return relax.transform.DeadCodeElimination()(_mutate_functions(mod, _Fold(mod)))

    return _pass


def int8_dense_weights() -> tvm.transform.Pass:
    """int8 fully connected layers with int8 weights, widened inside the kernel (x86 targets).

    The TFLite importer multiplies the zero-point-corrected input by int32 weights (tflite_quant.py:
    one product per weight, no reuse): MobileNetV2's 1280 x 1000 classifier read 5.1 MB per
    inference, from L3. Weights that fit int8 (TFLite's are symmetric) are read as int8 and widened
    per load: a quarter of the bytes, the same int32 products.
    """

    @relax.expr_functor.mutator
    class _Dense(relax.PyExprMutator):
        def visit_call_(self, call: relax.Call) -> relax.Expr:
            call = self.visit_expr_post_order(call)
            w = _int8_matmul_weights(call)
            if w is None or str(call.args[0].ty.dtype) != "int32" or call.args[0].ty.ndim != 2:
                return call
            return self.builder_.call_te(
                matmul_int8_weights, call.args[0], relax.const(w.astype(np.int8), "int8"), primfunc_name_hint="matmul"
            )

    @tvm.transform.module_pass(opt_level=0, name="EdgefleetInt8DenseWeights")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return _mutate_functions(mod, _Dense(mod))

    return _pass


def matmul_int8_weights(x, w):
    """x [rows, K] int32 times w [K, N] int8, widened per product, in int32."""
    from tvm import te

    k = te.reduce_axis((0, int(w.shape[0])), name="k")
    shape = (int(x.shape[0]), int(w.shape[1]))
    return te.compute(shape, lambda i, j: te.sum(x[i, k] * w[k, j].astype("int32"), axis=k), name="matmul")


def vnni_dense() -> tvm.transform.Pass:
    """int8 fully connected layers on vpdpbusd (x86 VNNI targets, `has_vnni`; before `int8_dense_weights`).

    A layer `reshape(int32(x) - zx) @ w` of an int8 x and weights that fit int8 reads uint8(x + 128)
    and subtracts (zx + 128) * sum(w) per output after it (exact in int32, as
    `dot_product_convs(unsigned=True)`). The outputs are padded to whole blocks of 16 (zero weights,
    sliced off after) and the weights packed [passes, K/4, outputs per pass, 4]: each pass of up to
    VNNI_DENSE_PASS blocks reads its weights as one sequential stream (`matmul_vnni`,
    schedules.VnniMatmul). The int8-weight form widened every weight and multiplied 8 lanes per
    `vpmulld` (1000 outputs: vectors of 8); one vpdpbusd multiplies 64 pairs.
    """
    return _raw_int8_dense("EdgefleetVnniDense", _vnni_dense)


# Blocks of 16 outputs per pass of a VNNI fully connected layer, at most (`vnni_dense`): one
# accumulator chain each, enough to hide vpdpbusd's latency behind the weight loads.
VNNI_DENSE_PASS = 8


def _vnni_dense(builder: relax.BlockBuilder, x: relax.Expr, zero: int, w: np.ndarray, shape) -> relax.Expr:
    """uint8(x + 128) [rows, K] @ w [K, N] on vpdpbusd, minus (zero + 128) * sum(w), N outputs (`vnni_dense`)."""
    depth, outputs = w.shape
    wide = relax.op.astype(relax.op.reshape(x, shape), "int32")
    shifted = builder.emit(relax.op.astype(relax.op.add(wide, relax.const(VNNI_SHIFT, "int32")), "uint8"))
    blocks = -(-outputs // 16)
    per_pass = max(n for n in range(1, VNNI_DENSE_PASS + 1) if blocks % n == 0)
    padded = np.pad(w, [(0, 0), (0, 16 * blocks - outputs)])
    packed = padded.reshape(depth // DOT_GROUP, DOT_GROUP, blocks // per_pass, 16 * per_pass).transpose(2, 0, 3, 1)
    acc = builder.emit(
        builder.call_te(
            matmul_vnni,
            shifted,
            relax.const(np.ascontiguousarray(packed).astype(np.int8), "int8"),
            primfunc_name_hint="matmul_vnni",
        )
    )
    correction = (zero + VNNI_SHIFT) * padded.astype(np.int64).sum(axis=0)
    acc = builder.emit(relax.op.subtract(acc, relax.const(correction.astype(np.int32), "int32")))
    return relax.op.strided_slice(acc, axes=[1], begin=[0], end=[outputs]) if 16 * blocks > outputs else acc


def matmul_vnni(x, w):
    """x [rows, K] uint8 times w [passes, K/4, outputs per pass, 4] int8 (`_vnni_dense`), int32 sums."""
    from tvm import te

    per_pass = int(w.shape[2])
    ko = te.reduce_axis((0, int(w.shape[1])), name="ko")
    ki = te.reduce_axis((0, DOT_GROUP), name="ki")
    shape = (int(x.shape[0]), int(w.shape[0]) * per_pass)
    return te.compute(
        shape,
        lambda i, j: te.sum(
            x[i, ko * DOT_GROUP + ki].astype("int32") * w[j // per_pass, ko, j % per_pass, ki].astype("int32"),
            axis=[ko, ki],
        ),
        name="matmul_vnni",
    )


def _pack_dot(weight: np.ndarray) -> np.ndarray:
    """[O, I, KH, KW, ib, ob] -> [O, I, KH, KW, ib/4, ob, 4]: 4 consecutive input channels of one output channel adjacent."""
    o, i, kh, kw, ib, ob = weight.shape
    grouped = weight.reshape(o, i, kh, kw, ib // DOT_GROUP, DOT_GROUP, ob)
    return np.ascontiguousarray(grouped.transpose(0, 1, 2, 3, 4, 6, 5))


def _started_conv(builder: relax.BlockBuilder, args: list, start: relax.Expr) -> relax.Expr:
    """`conv2d_nchwc_dot(*args)` whose sums start at `start`'s value of their output channel
    ([1, C/b, 1, 1, b] int32) instead of 0: the kernel's init writes it, and the epilogue has no add of
    it (XNNPACK's kernels start their accumulators at the bias the same way). TE drops a reduction's
    `init` (TVM 0.27's create_prim_func), so the block's init is set on the PrimFunc."""
    return _started_call(builder, "conv2d_NCHWc_int8", conv2d_nchwc_dot, args[:2], start, *args[2:])


def _started_call(builder: relax.BlockBuilder, name: str, compute, operands: list, start: relax.Expr, *attrs):
    """A call of the kernel `compute(*operands, *attrs)` (one reduction into [N, C/b, H, W, b]) whose sums
    start at `start[0, c, 0, 0, b]` instead of 0 (`_started_conv`)."""
    from tvm.relax.utils import gen_call_tir_inputs

    func, args, out = gen_call_tir_inputs(lambda *tensors: compute(*tensors[:-1], *attrs), *operands, start)
    gv = builder.add_func(func.with_body(_init_from(func.body, func.params[len(operands)])), name)
    return relax.call_tir(gv, args, out)


def _init_from(stmt, start):
    """`stmt` with each reduction block's init storing `start[0, c, 0, 0, b]` (c, b: the output's chunk
    and lane) where it stored 0."""
    from tvm import s_tir

    if isinstance(stmt, s_tir.SBlockRealize):
        return s_tir.SBlockRealize(stmt.iter_values, stmt.predicate, _init_from(stmt.block, start))
    if isinstance(stmt, tvm.tirx.For):
        body = _init_from(stmt.body, start)
        return tvm.tirx.For(stmt.loop_var, stmt.min, stmt.extent, stmt.kind, body, None, stmt.annotations)
    if isinstance(stmt, tvm.tirx.SeqStmt):
        return tvm.tirx.SeqStmt([_init_from(part, start) for part in stmt])
    if not isinstance(stmt, s_tir.SBlock):
        return stmt
    if stmt.init is None:
        body = _init_from(stmt.body, start)
        return s_tir.SBlock(stmt.iter_vars, stmt.reads, stmt.writes, stmt.name_hint, body, None, *_block_extras(stmt))
    index = stmt.init.indices
    zero = tvm.tirx.IntImm(index[1].ty.dtype, 0)
    at = [zero, index[1], zero, zero, index[4]]
    init = tvm.tirx.BufferStore(stmt.init.buffer, tvm.tirx.BufferLoad(start, at), index)
    # The reads stay the update's (tensorize matches them): `start` is an input, read by the init alone.
    return s_tir.SBlock(stmt.iter_vars, stmt.reads, stmt.writes, stmt.name_hint, stmt.body, init, *_block_extras(stmt))


def _block_extras(block) -> list:
    """A block's allocations, match buffers and annotations, for a copy with another body or init."""
    return [block.alloc_buffers, block.match_buffers, block.annotations]


def conv2d_nchwc_dot(data, kernel, zero: int, strides, padding, dilation, shift: int = 0):
    """TOPI's int8 NCHWc convolution (int32 sums of 4-channel int8 products) on `data` padded with
    its zero point `zero` (a zero-point-corrected 0, as TFLite's kernels skip the border). With a
    `shift` (VNNI_SHIFT) it reads data + shift as uint8, padded with zero + shift."""
    top, left, bottom, right = padding
    if shift:
        return topi.nn.conv2d_NCHWc_int8(
            _shifted_pad(data, shift, zero, padding), kernel, strides, 0, dilation, "NCHWc", "NCHWc", "int32", DOT_GROUP
        )
    padded = (
        topi.nn.pad(data, [0, 0, top, left, 0], [0, 0, bottom, right, 0], pad_value=zero, name="data_pad")
        if any(padding)
        else data
    )
    return topi.nn.conv2d_NCHWc_int8(padded, kernel, strides, 0, dilation, "NCHWc", "NCHWc", "int32", DOT_GROUP)


def _shifted_pad(data, shift: int, zero: int, padding):
    """uint8(data + shift), padded with uint8(zero + shift): one block the schedules treat as a pad."""
    from tvm import te, tirx

    top, left, bottom, right = padding
    n, c, h, w, b = data.shape

    def value(i, ci, y, x, k):
        inside = tirx.all(y >= top, y < h + top, x >= left, x < w + left)
        read = data[i, ci, y - top, x - left, k].astype("int32")
        return tirx.if_then_else(inside, read + shift, tirx.const(zero + shift, "int32")).astype("uint8")

    return te.compute((n, c, h + top + bottom, w + left + right, b), value, name="data_pad")


_NUDGE = 1 << 30
_Q31 = np.iinfo(np.int32).max


def _bound_arg(mutator: relax.PyExprMutator, expr: relax.Expr, name: str, index: int = 0) -> relax.Expr | None:
    """Argument `index` of the call `expr` is bound to (in `mutator`'s bindings) when that is a `name` call, else None."""
    call = _bound_call(mutator, expr, (name,))
    return None if call is None else call.args[index]


def _const_value(expr: relax.Expr | None) -> np.ndarray | None:
    return expr.value.numpy() if isinstance(expr, tvm.ir.expr.GenericConst) else None


def _whole_registers(shape: list[int] | None, lanes: int) -> bool:
    """Whether a tensor's last axis is whole registers of `lanes` int32, or half of one on rows of
    pixel pairs (8 channels on AVX-512: schedules._vectorize_epilogue fills a register with two pixels)."""
    if not shape:
        return False
    if shape[-1] % lanes == 0:
        return True
    return shape[-1] % (lanes // 2) == 0 and len(shape) > 1 and shape[-2] % 2 == 0


def sqrdmulh_rescales(x86_lanes: int = 0) -> tvm.transform.Pass:
    """The int8 rescale's 64-bit high multiply as AArch64's SQRDMULH on int32 lanes (run after
    `nchwc_layout`, dot-product targets: see build.py), or, given `x86_lanes` (int32 lanes per
    vector register), as `x86_rounding_doubling_high_mul` (the same integers) where the last axis
    is whole registers, or half of one on rows of an even number of pixels (two pixels' 8 channels
    per AVX-512 register in the convolution epilogues); another narrow one keeps its 64-bit product,
    whose 8 int64 lanes fill one register (5 instructions, 8 on even and odd lanes of 8).

    tflite_quant.py writes TFLite's SaturatingRoundingDoublingHighMul of (acc + bias) by the Q31
    multiplier q as `(int64(acc) * q + (bias q + 2^30)) >> 31` (the bias folded into the rounding
    constant), which NEON runs in 64-bit lanes, two per register (widening SMLAL pairs, then a
    narrowing shift). SQRDMULH computes (a b + 2^30) >> 31 on four int32 lanes in one instruction,
    saturating only for a = b = INT32_MIN, which a positive q excludes: so it is
    SQRDMULH(acc + bias, q), bias recovered exactly from the constant (rescales whose constant is
    not bias q + 2^30 with an int32 bias are left as they are; one with a left shift before the product, a
    residual add's input side, on x86 only, with that product in int32).
    """

    @relax.expr_functor.mutator
    class _Rescale(relax.PyExprMutator):
        def visit_call_(self, call: relax.Call) -> relax.Expr:
            call = self.visit_expr_post_order(call)
            found = self._rescale(call)
            if found is None:
                return call
            acc, bias, q = found
            shape = _static_shape(acc)
            if x86_lanes and not _whole_registers(shape, x86_lanes):
                return call
            if str(acc.ty.dtype) == "int64":
                acc = self._int32_shifted(acc)
                if acc is None:
                    return call
            if np.any(bias):
                started = self._started_at(acc, bias)
                if started is None:
                    started = self.builder_.emit(relax.op.add(acc, relax.const(bias.astype(np.int32), "int32")))
                acc = started
            high_mul = x86_rounding_doubling_high_mul if x86_lanes else sqrdmulh
            return self.builder_.call_te(
                high_mul, acc, relax.const(q.astype(np.int32), "int32"), primfunc_name_hint=high_mul.__name__
            )

        def _started_at(self, acc: relax.Expr, bias: np.ndarray) -> relax.Expr | None:
            """The convolution `acc` is bound to with its sums started at `bias` (an SDOT one's start of
            `dot_product_convs` plus `bias`; a blocked int32 `conv2d`, `_started_conv2d`) instead of an add
            of it to its outputs; None for any other `acc`, and on x86."""
            if x86_lanes:
                return None
            conv = _bound_call(self, acc, ("relax.nn.conv2d",))
            if conv is not None:
                return self._started_conv2d(conv, bias)
            call = _bound_call(self, acc, ("relax.call_tir",))
            if call is None or not call.args[0].name_hint.startswith("conv2d_NCHWc_int8"):
                return None
            *operands, start = call.args[1].fields
            value = _const_value(start)
            if value is None or value.ndim != 5:
                return None
            total = value.astype(np.int64) + bias
            if total.shape != value.shape or total.min() < _INT32.min or total.max() > _INT32.max:
                return None
            started = relax.const(total.astype(np.int32), "int32")
            return self.builder_.emit(relax.call_tir(call.args[0], relax.Tuple([*operands, started]), call.ty_args[0]))

        def _started_conv2d(self, conv: relax.Call, bias: np.ndarray) -> relax.Expr | None:
            """A blocked dense or depthwise int32 convolution (rasp4b's int16 ones) lowered as
            `legalize` would, its sums started at the bias; None for others."""
            a = conv.attrs
            shape, kshape = _static_shape(conv), _static_shape(conv.args[1])
            if len(str(a.data_layout)) == 4 or str(conv.ty.dtype) != "int32" or shape is None or kshape is None:
                return None
            start = np.broadcast_to(bias, (1, shape[1], 1, 1, shape[4]))
            geometry = [[int(s) for s in a.strides], [int(p) for p in a.padding], [int(d) for d in a.dilation]]
            if int(a.groups) == 1:
                name, compute = "conv2d_NCHWc", topi.nn.conv2d_NCHWc
                attrs = [*geometry, str(a.data_layout), str(a.out_layout), "int32"]
            elif int(a.groups) == shape[1] * shape[4] and kshape[1] * kshape[4] == 1:
                name, compute, attrs = "depthwise_conv2d_NCHWc", depthwise_conv2d_nchwc, [*geometry, "int32"]
            else:
                return None
            started = relax.const(start.astype(np.int32), "int32")
            return self.builder_.emit(_started_call(self.builder_, name, compute, list(conv.args), started, *attrs))

        def _rescale(self, call: relax.Call) -> tuple[relax.Expr, np.ndarray, np.ndarray] | None:
            """(acc, int32 bias, q) of `int32((int64(acc) * q + c) >> 31)`, c = bias q + 2^30, acc int32 (or, on
            x86, an int64 one for `_int32_shifted`); else None."""
            if not (
                isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.astype" and str(call.ty.dtype) == "int32"
            ):
                return None
            shift, by = (
                _bound_arg(self, call.args[0], "relax.right_shift"),
                _const_value(_bound_arg(self, call.args[0], "relax.right_shift", 1)),
            )
            if shift is None or by is None or by.ndim or int(by) != 31:
                return None
            product, offset = (
                _bound_arg(self, shift, "relax.add"),
                _const_value(_bound_arg(self, shift, "relax.add", 1)),
            )
            widened = None if product is None else _bound_arg(self, product, "relax.multiply")
            q = None if product is None else _const_value(_bound_arg(self, product, "relax.multiply", 1))
            acc = None if widened is None else _bound_arg(self, widened, "relax.astype")
            dtypes = ("int32", "int64") if x86_lanes else ("int32",)  # int64: see _int32_shifted
            if acc is None or q is None or offset is None or str(acc.ty.dtype) not in dtypes:
                return None
            rank = acc.ty.ndim
            if q.ndim not in (0, rank) or offset.ndim not in (0, rank) or q.min() <= 0 or q.max() > _Q31:
                return None
            bias, rest = np.divmod(offset - _NUDGE, q)
            if np.any(rest) or bias.min() < _INT32.min or bias.max() > _INT32.max:
                return None
            return acc, bias, q

        def _int32_shifted(self, acc: relax.Expr) -> relax.Expr | None:
            """`(int32(t) - z) * 2^k` for `acc` = `(int64(t) - z) * 2^k` of int8 t with k <= 23 (a residual add's
            input side: tflite_quant.py shifts it left by 20 before the product), exact in int32 since
            |t - z| <= 255; else None."""
            diff = _bound_arg(self, acc, "relax.multiply")
            scale = _const_value(_bound_arg(self, acc, "relax.multiply", 1))
            widened = None if diff is None else _bound_arg(self, diff, "relax.subtract")
            zero = None if diff is None else _const_value(_bound_arg(self, diff, "relax.subtract", 1))
            t = None if widened is None else _bound_arg(self, widened, "relax.astype")
            if t is None or str(t.ty.dtype) != "int8" or scale is None or zero is None or scale.size != 1:
                return None
            if zero.size != 1 or not _INT8.min <= int(zero.reshape(())) <= _INT8.max:
                return None
            k = int(scale.reshape(()))
            if k <= 0 or k & (k - 1) or k > 1 << 23:
                return None
            emit = self.builder_.emit
            shifted = emit(relax.op.subtract(emit(relax.op.astype(t, "int32")), relax.const(zero.astype(np.int32))))
            return emit(relax.op.multiply(shifted, relax.const(np.int32(k))))

    @tvm.transform.module_pass(opt_level=0, name="EdgefleetSqrdmulhRescales")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return relax.transform.DeadCodeElimination()(_mutate_functions(mod, _Rescale(mod)))

    return _pass


# SRSHL's shift count is one signed byte per lane; a rounding right shift by 32 or more is not TFLite's.
_MAX_ROUNDING_SHIFT = 31


def rounding_shifts() -> tvm.transform.Pass:
    """The int8 rescale's rounding division by 2^e as AArch64's SRSHL (a rounding shift by a negative
    count, 4 int32 lanes per instruction; run after `sqrdmulh_rescales`, dot-product targets: see build.py).

    tflite_quant.py writes TFLite's RoundingDivideByPOT as `((w >> p) + r) >> r` with w = v - [v < 0],
    p = e - 1 and r = 1 per channel (p = r = 0 where e = 0), which NEON runs as a shift, a halving add
    and their constants. SRSHL by -(p + r) computes (w + 2^(p+r-1)) >> (p + r) without overflow, the
    same nested floors: equal for every w. Only tensors whose channels are whole 4-lane vectors
    (AArch64 has no 32-bit scalar SRSHL: schedules._vectorize runs it in 4-lane pieces).
    """

    @relax.expr_functor.mutator
    class _Shift(relax.PyExprMutator):
        def visit_call_(self, call: relax.Call) -> relax.Expr:
            call = self.visit_expr_post_order(call)
            found = self._rounding(call)
            if found is None:
                return call
            w, count = found
            return self.builder_.call_te(
                srshl, w, relax.const(count.astype(np.int32), "int32"), primfunc_name_hint="srshl"
            )

        def _rounding(self, call: relax.Call) -> tuple[relax.Expr, np.ndarray] | None:
            """(w, -(p + r)) of `((w >> p) + r) >> r` on int32 with r in {0, 1} and p = 0 where r = 0; else None."""
            if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.right_shift"):
                return None
            last = call.ty.shape.values[-1] if call.ty.shape and call.ty.ndim > 0 else None
            if str(call.ty.dtype) != "int32" or not isinstance(last, tvm.tirx.IntImm) or int(last) % 4:
                return None
            r = _const_value(call.args[1])
            added = _bound_arg(self, call.args[0], "relax.add")
            r2 = _const_value(_bound_arg(self, call.args[0], "relax.add", 1))
            w = None if added is None else _bound_arg(self, added, "relax.right_shift")
            p = None if added is None else _const_value(_bound_arg(self, added, "relax.right_shift", 1))
            if w is None or r is None or r2 is None or p is None or str(w.ty.dtype) != "int32":
                return None
            if r.shape != r2.shape or np.any(r != r2) or not np.all((r == 0) | (r == 1)):
                return None
            p, r = np.broadcast_arrays(p, r)
            if (
                p.ndim not in (0, call.ty.ndim)
                or np.any((r == 0) & (p != 0))
                or p.min() < 0
                or (p + r).max() > _MAX_ROUNDING_SHIFT
            ):
                return None
            return w, -(p + r)

    @tvm.transform.module_pass(opt_level=0, name="EdgefleetRoundingShifts")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return relax.transform.DeadCodeElimination()(_mutate_functions(mod, _Shift(mod)))

    return _pass


def saturating_narrowings() -> tvm.transform.Pass:
    """The int8 requantization's last step, `int8(clip(x - 128, lo, hi))` of int32 x (output zero point
    -128: MobileNetV2's ReLU6 outputs) with -128 <= lo <= hi <= 127, as AArch64's saturating narrowings
    (run after `rounding_shifts`: AArch64 targets, see build.py).

    LLVM ran the clip on 4 int32 lanes (`smax`, `smin`, their constants rematerialized where registers
    ran out) before a `tbl` per 16 outputs. clip(x - 128, -128, 127) = u8(x) - 128, with u8 the clamp to
    [0, 255] of the clamp to int16: `sqxtn` per 4 outputs and `sqxtun` per 8 (LLVM's patterns for both
    clamps), the - 128 an `eor` of the sign bit per 16; a narrower [lo, hi] is clamped after, on 16 int8
    lanes. Equal for every x the rescale gives: only after an SRSHL by one or more bits (|x| <= 2^30, so
    x - 128 does not wrap, where the clip of the wrapped difference and the saturation would differ); on
    whole 16-channel blocks (with 8-channel ones too: MobileNetV2-0.35 on rasp5 3.51 M instead of 3.50 M).
    Other zero points are left alone: TVM's simplifier moves their add through the int16 clamp, and
    LLVM no longer sees the saturation.

    The rounding division's sign fix-up before that SRSHL (w = v - [v < 0], an `ssra` per 4 outputs) is
    dropped too: it moves only negative v, whose rounding right shift by e >= 1 bits is <= 0 with or
    without it ((v + 2^(e-1)) >> e for v <= -1), and every x <= 0 narrows to lo (x - 128 <= -128 <= lo).

    Where such an output is read back as an int16 convolution's input minus its zero point,
    `int16(int8(...)) - (-128)` (tflite_quant.py; rasp4b's dense and every AArch64 depthwise
    convolution), that is clip(x, lo + 128, hi + 128) on int16: `saturating_int16` (`sqxtun` per 4
    outputs, a `umin` per 8) where the sign flip and the widening added back took an `eor` and a
    `saddw` per 8.
    """

    @relax.expr_functor.mutator
    class _Narrow(relax.PyExprMutator):
        def __init__(self, mod: tvm.IRModule):
            super().__init__(mod)
            self.narrowed: list[tuple[relax.Call, relax.Expr, int, int]] = []  # (call, x, lo, hi)

        def visit_call_(self, call: relax.Call) -> relax.Expr:
            call = self.visit_expr_post_order(call)
            widened = self._widened(call)
            if widened is not None:
                return self.builder_.call_te(saturating_int16, *widened, primfunc_name_hint="saturating_int16")
            found = self._clipped(call)
            if found is None:
                return call
            x, lo, hi = found
            x = self._without_sign_fixup(x)
            narrowed = self.builder_.call_te(saturating_int8, x, lo, hi, primfunc_name_hint="saturating_int8")
            self.narrowed.append((narrowed, x, lo, hi))
            return narrowed

        def _widened(self, call: relax.Call) -> tuple[relax.Expr, int, int] | None:
            """(x, lo, hi) of `astype(n, int16) - (-128)` where n is a narrowing this pass wrote."""
            if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.subtract"):
                return None
            zero = _const_value(call.args[1])
            narrowed = _bound_arg(self, call.args[0], "relax.astype")
            if zero is None or zero.size != 1 or int(zero.reshape(())) != -128 or str(call.ty.dtype) != "int16":
                return None
            if narrowed is None or not isinstance(narrowed, relax.Var):
                return None
            bound = self.lookup_binding(narrowed)
            return next(((x, lo, hi) for n, x, lo, hi in self.narrowed if n.same_as(bound)), None)

        def _clipped(self, call: relax.Call) -> tuple[relax.Expr, int, int] | None:
            """(x, lo, hi) of `astype(minimum(maximum(add(x, -128), lo), hi), int8)` on int32 with scalar constants."""
            found = _relu_narrowing(self, call)
            if found is None:
                return None
            x, lo, hi = found
            last = x.ty.shape.values[-1] if x.ty.shape and x.ty.ndim > 0 else None
            if not isinstance(last, tvm.tirx.IntImm) or int(last) % 16 or not self._halved(x):
                return None
            return x, lo, hi

        def _halved(self, x: relax.Expr) -> bool:
            """Whether `x` is an SRSHL (`rounding_shifts`) by -1 or less everywhere: |x| <= 2^30."""
            call = _bound_call(self, x, ("relax.call_tir",))
            if call is None or not call.args[0].name_hint.startswith("srshl"):
                return False
            count = _const_value(call.args[1].fields[1]) if isinstance(call.args[1], relax.Tuple) else None
            return count is not None and count.max() <= -1

        def _without_sign_fixup(self, x: relax.Expr) -> relax.Expr:
            """SRSHL(v, count) for `x` = SRSHL(v + (v >> 31), count) (tflite_quant.py's w = v - [v < 0]), else `x`."""
            w, count = _bound_call(self, x, ("relax.call_tir",)).args[1].fields
            v = _bound_arg(self, w, "relax.add")
            negative = _bound_arg(self, w, "relax.add", 1)
            by = _const_value(_bound_arg(self, negative, "relax.right_shift", 1)) if negative is not None else None
            if v is None or by is None or by.size != 1 or int(by.reshape(())) != 31:
                return x
            if not _bound_arg(self, negative, "relax.right_shift").same_as(v):
                return x
            return self.builder_.emit(self.builder_.call_te(srshl, v, count, primfunc_name_hint="srshl"))

    @tvm.transform.module_pass(opt_level=0, name="EdgefleetSaturatingNarrowings")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return relax.transform.DeadCodeElimination()(_mutate_functions(mod, _Narrow(mod)))

    return _pass


def _relu_narrowing(mutator: relax.PyExprMutator, call: relax.Expr) -> tuple[relax.Expr, int, int] | None:
    """(x, lo, hi) of `astype(minimum(maximum(add(x, -128), lo), hi), int8)` on int32 with scalar constants
    and -128 <= lo <= hi <= 127 (an output with zero point -128 whose clip floor is at or above it: ReLU's)."""
    if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.astype") or str(call.ty.dtype) != "int8":
        return None
    low = _bound_arg(mutator, call.args[0], "relax.minimum")
    high = _const_value(_bound_arg(mutator, call.args[0], "relax.minimum", 1))
    added = None if low is None else _bound_arg(mutator, low, "relax.maximum")
    lo = None if low is None else _const_value(_bound_arg(mutator, low, "relax.maximum", 1))
    x = None if added is None else _bound_arg(mutator, added, "relax.add")
    zero = None if added is None else _const_value(_bound_arg(mutator, added, "relax.add", 1))
    if x is None or any(v is None or v.size != 1 for v in (high, lo, zero)) or str(x.ty.dtype) != "int32":
        return None
    zero, lo, hi = (int(v.reshape(())) for v in (zero, lo, high))
    return (x, lo, hi) if zero == -128 and -128 <= lo <= hi <= 127 else None


def relu_rounding_divisions(wide_shifts: bool = False) -> tvm.transform.Pass:
    """The rounding division's sign fix-up dropped before a narrowing to a ReLU output (x86: the
    AArch64 targets drop it in `saturating_narrowings`, on their SRSHL).

    tflite_quant.py writes RoundingDivideByPOT as `((w >> p) + 1) >> 1` with w = v + (v >> 31)
    (v - [v < 0]: ties away from zero), 5 instructions per vector on x86 (`vpsrad`, `vpaddd`, `vpsravd`,
    `vpsubd`, `vpsrad`). Before `int8(clip(x - 128, lo, hi))` with lo >= -128 it is `((v >> p) + 1) >> 1`
    (3): the fix-up moves only negative v, for which both forms are <= 0 (floor(w / 2^p) <= -1, plus
    one, halved), and every x <= 0 narrows to lo; v >= 0 is unchanged. Only where every channel rounds
    (no channel with e = 0: |x| <= 2^30 + 1, so x - 128 does not wrap in either form).

    Where v is `x86_rounding_doubling_high_mul(a, q)` of a convolution's sums (plus its bias), the division
    is one shift: ((v >> p) + 1) >> 1 = (v + 2^p) >> (p + 1) (v = k 2^p + r, 0 <= r < 2^p: both are
    floor((k + 1) / 2)), and v + 2^p = ((a q + 2^30 + 2^(p+31)) >> 31) (a multiple of 2^31 added before the
    shift is its quotient after it), the 2^p in the 64-bit nudge (the operator's third operand, a constant
    per channel). With `wide_shifts` (AVX-512: 64-bit shifts by a count per lane) the shift by p + 1 is
    the operator's fourth operand, done on the 64-bit sum (floor(floor(S / 2^31) / 2^(p+1)) = floor(S /
    2^(p+32))), and the - 128 goes into the nudge too (- 128 2^(p+1) before the shift, - 128 after it), so
    `int8(clip(x, lo, hi))` is left: a `vpmovsdb` where [lo, hi] is int8's. Nothing to overflow then;
    AVX2 instead shifts the int32 result, exact while v + 2^p fits int32: v <= |a| for q < 2^31, so where
    the convolution's bound |a| <= terms x 255 x max|w| + max|b| (int8 or uint8 inputs) stays below 2^31 - 2^p.
    """

    @relax.expr_functor.mutator
    class _Division(relax.PyExprMutator):
        def visit_call_(self, call: relax.Call) -> relax.Expr:
            call = self.visit_expr_post_order(call)
            found = _relu_narrowing(self, call)
            division = None if found is None else self._division(found[0])
            if division is None:
                return call
            (v, p, one), (_, lo, hi) = division, found
            emit = self.builder_.emit
            shifted = self._nudged(v, _const_value(p))
            if shifted is None:
                rounded = emit(relax.op.right_shift(emit(relax.op.add(emit(relax.op.right_shift(v, p)), one)), one))
                shifted = emit(relax.op.add(rounded, relax.const(-128, "int32")))
            low = emit(relax.op.maximum(shifted, relax.const(lo, "int32")))
            return relax.op.astype(emit(relax.op.minimum(low, relax.const(hi, "int32"))), "int8")

        def _division(self, x: relax.Expr) -> tuple[relax.Expr, relax.Expr, relax.Expr] | None:
            """(v, p, 1) for `x` = `(((v + (v >> 31)) >> p) + 1) >> 1` on every channel, else None."""
            added, one = _bound_arg(self, x, "relax.right_shift"), _bound_arg(self, x, "relax.right_shift", 1)
            shifted = None if added is None else _bound_arg(self, added, "relax.add")
            ones = None if added is None else _const_value(_bound_arg(self, added, "relax.add", 1))
            fixed = None if shifted is None else _bound_arg(self, shifted, "relax.right_shift")
            v = None if fixed is None else _bound_arg(self, fixed, "relax.add")
            negative = None if fixed is None else _bound_arg(self, fixed, "relax.add", 1)
            by = None if negative is None else _const_value(_bound_arg(self, negative, "relax.right_shift", 1))
            if v is None or by is None or by.size != 1 or int(by.reshape(())) != 31:
                return None
            if not _bound_arg(self, negative, "relax.right_shift").same_as(v):
                return None
            if ones is None or np.any(ones != 1) or np.any(_const_value(one) != 1):
                return None
            return v, _bound_arg(self, shifted, "relax.right_shift", 1), one

        def _nudged(self, v: relax.Expr, p: np.ndarray | None) -> relax.Expr | None:
            """`((v >> p) + 1) >> 1` - 128 with the 2^p (and with `wide_shifts` the shift and the - 128) in
            `x86_rounding_doubling_high_mul(a, q)` = `v`, where exact; else None."""
            call = _bound_call(self, v, ("relax.call_tir",))
            name = x86_rounding_doubling_high_mul.__name__
            if call is None or p is None or p.min() < 0 or not call.args[0].name_hint.startswith(name):
                return None
            a, q = call.args[1].fields
            p = p.astype(np.int64)
            if wide_shifts and p.max() <= 22:  # the offset 2^p - 2^(p+8) an int32
                offset, shift = (
                    relax.const(((1 << p) - (1 << (p + 8))).astype(np.int32)),
                    relax.const((p + 1).astype(np.int32)),
                )
                return self.builder_.emit(
                    self.builder_.call_te(x86_rounding_doubling_high_mul, a, q, offset, shift, primfunc_name_hint=name)
                )
            bound = self._sums_bound(a)
            if p.max() > 30 or bound is None or bound >= _INT32.max - (1 << int(p.max())):
                return None
            offset = relax.const((1 << p).astype(np.int32), "int32")
            high_mul = self.builder_.emit(
                self.builder_.call_te(x86_rounding_doubling_high_mul, a, q, offset, primfunc_name_hint=name)
            )
            shifted = self.builder_.emit(relax.op.right_shift(high_mul, relax.const((p + 1).astype(np.int32), "int32")))
            return self.builder_.emit(relax.op.add(shifted, relax.const(-128, "int32")))

        def _sums_bound(self, a: relax.Expr) -> int | None:
            """A bound on |a| for `a` = a convolution of int8 or uint8 data by constant weights (the x86 int8
            `conv2d_NCHWc_int8` and `depthwise_conv2d_NCHWc` kernels), plus a constant bias; else None."""
            conv, bias = _bound_arg(self, a, "relax.add"), _const_value(_bound_arg(self, a, "relax.add", 1))
            conv, bias = (conv, np.abs(bias.astype(np.int64)).max()) if bias is not None else (a, 0)
            call = _bound_call(self, conv, ("relax.call_tir",))
            kernels = ("conv2d_NCHWc_int8", "depthwise_conv2d_NCHWc")
            if call is None or not call.args[0].name_hint.startswith(kernels) or len(call.args[1].fields) != 2:
                return None
            data, weights = call.args[1].fields[0], _const_value(call.args[1].fields[1])
            shape = _static_shape(conv)
            if weights is None or shape is None or len(shape) != 5 or str(data.ty.dtype) not in ("int8", "uint8"):
                return None
            terms = weights.size // (shape[1] * shape[4])  # products per output: padded channels only add
            return terms * 255 * int(np.abs(weights.astype(np.int64)).max()) + int(bias)

    @tvm.transform.module_pass(opt_level=0, name="EdgefleetReluRoundingDivisions")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return relax.transform.DeadCodeElimination()(_mutate_functions(mod, _Division(mod)))

    return _pass


def compact_channel_slices() -> tvm.transform.Pass:
    """A padded output's leading channels unblocked, sliced and blocked again in a smaller block as one
    channel permutation of the blocked tensor (x86, after the int8 passes: int8 MobileNetV2's 24-channel
    projections, computed as 32 in two 16-channel blocks and read by the expansions in blocks of 8, once
    `sink_channel_slices` has moved their requantization above the slice). Three kernels became one."""

    @relax.expr_functor.mutator
    class _Compact(relax.PyExprMutator):
        def visit_call_(self, call: relax.Call) -> relax.Expr:
            call = self.visit_expr_post_order(call)
            blocked = self._sliced_blocks(call)
            if blocked is None:
                return call
            shape = _shape(call)
            return self.builder_.call_te(
                lambda x: channel_permute_nchwc(x, lambda c: c, shape[1] * shape[4], shape[4]),
                blocked,
                primfunc_name_hint="channel_permute_NCHWc",
            )

        def _sliced_blocks(self, call: relax.Call) -> relax.Expr | None:
            """x for an int8 `call` = block(slice(unblock(x), channels 0..k)) into NCHW{b}c, else None."""
            if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.layout_transform"):
                return None
            sliced = _bound_call(self, call.args[0], ("relax.strided_slice",))
            unblock = None if sliced is None else _bound_call(self, sliced.args[0], ("relax.layout_transform",))
            shape = _static_shape(call)
            if unblock is None or not _is_unblock(unblock) or shape is None or len(shape) != 5:
                return None
            axes, begin, *rest = ([int(v.value) for v in arg.fields] for arg in sliced.args[1:])
            if axes != [1] or begin != [0] or (len(rest) > 1 and rest[1] != [1]) or str(call.ty.dtype) != "int8":
                return None
            if call.attrs.pad_value is not None or not _blocks_channels(call.attrs.index_map, shape[4]):
                return None
            return unblock.args[0] if _static_shape(unblock.args[0]) is not None else None

    @tvm.transform.module_pass(opt_level=0, name="EdgefleetCompactChannelSlices")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return relax.transform.DeadCodeElimination()(_mutate_functions(mod, _Compact(mod)))

    return _pass


def saturating_int8(x, lo: int, hi: int):
    """int8(clip(x - 128, lo, hi)) of int32 `x` as `saturating_narrowings` writes it: the sign bit of the
    clamp to [0, 255] of the clamp to int16 flipped, then [lo, hi] on int8 where it is narrower."""
    from tvm import te, tirx

    def value(*i):
        int16 = tirx.max(tirx.min(x[i], 32767), -32768).astype("int16")
        uint8 = tirx.max(tirx.min(int16, tirx.const(255, "int16")), tirx.const(0, "int16")).astype("uint8")
        out = tirx.bitwise_xor(uint8, tirx.const(128, "uint8")).astype("int8")
        if lo > -128:
            out = tirx.max(out, tirx.const(lo, "int8"))
        return tirx.min(out, tirx.const(hi, "int8")) if hi < 127 else out

    return te.compute(x.shape, value, name="saturating_int8")


def saturating_int16(x, lo: int, hi: int):
    """int16(saturating_int8(x, lo, hi)) + 128 = clip(x, lo + 128, hi + 128) of int32 `x`, as
    `saturating_narrowings` writes an int16 convolution's input: the clamp to [0, 65535] (`sqxtun`),
    then [lo + 128, hi + 128] on 8 uint16 lanes (hi + 128 <= 255 always: a `umin`)."""
    from tvm import te, tirx

    def value(*i):
        out = tirx.min(tirx.max(tirx.min(x[i], 65535), 0).astype("uint16"), tirx.const(hi + 128, "uint16"))
        if lo > -128:
            out = tirx.max(out, tirx.const(lo + 128, "uint16"))
        return out.astype("int16")

    return te.compute(x.shape, value, name="saturating_int16")


def _int32_lanes(intrinsic: str, x, y, name: str):
    """The AArch64 int32 `intrinsic` of `x` and `y` (a scalar or one value per broadcast position of x)."""
    return _lanes(lambda a, b: tvm.tirx.call_llvm_pure_intrin("int32", intrinsic, a, b), name, x, y)


def _lanes(value_of, name: str, x, *ys):
    """`value_of(x, *ys)` per element of `x`, each y a scalar or one value per broadcast position of x (same rank)."""
    from tvm import te

    def value(*i):
        return value_of(x[i], *(y[tuple(0 if int(y.shape[k]) == 1 else i[k] for k in range(len(y.shape)))] for y in ys))

    return te.compute(x.shape, value, name=name)


def srshl(x, count):
    """AArch64's SRSHL of int32 `x` by `count` (negative: a rounding right shift)."""
    return _int32_lanes("llvm.aarch64.neon.srshl", x, count, "srshl")


def sqrdmulh(x, q):
    """AArch64's SQRDMULH of int32 `x` by `q`."""
    return _int32_lanes("llvm.aarch64.neon.sqrdmulh", x, q, "sqrdmulh")


def x86_rounding_doubling_high_mul(x, q, *offset_shift):
    """(x q + 2^30) >> 31 of int32 `x` by a positive Q31 `q` (SQRDMULH's integers), plus an int32 `offset`
    where given (added as offset 2^31 to the 64-bit sum) and shifted right by a further `shift` >= 1 bits
    on the 64-bit sum where given, as x86_intrin.RDHM_OP: vpmuldq on even and odd lanes."""
    rdhm = functools.partial(tvm.tirx.call_intrin, "int32", x86_intrin.RDHM_OP)
    return _lanes(rdhm, "rounding_doubling_high_mul", x, q, *offset_shift)
