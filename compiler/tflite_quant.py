"""Quantized TFLite operators with TFLite's own integer arithmetic.

TVM 0.27's Relax TFLite frontend lowers every quantized operator as dequantize -> float32 op ->
quantize. That is an approximation: float32 accumulation instead of int32, and round-half-even
float requantization instead of TFLite's fixed-point multiplier with its two roundings. Results
drift by one quantization step here and there, which int8 outputs make visible.

`ExactQuantConverter` is a subclass of TVM's `OperatorConverter` (TVM is not patched; `from_tflite`
takes the converter class). For the operators in `EXACT` it emits what TFLite's reference kernels
(tensorflow/lite/kernels/internal/reference/integer_ops) compute: int32 accumulation over
zero-point-corrected inputs, `QuantizeMultiplier` from the double-precision scale ratio, and
`MultiplyByQuantizedMultiplier` as SaturatingRoundingDoublingHighMul + RoundingDivideByPOT (the
product in int64, so nothing overflows; shifts and adds only, so the CPU pipeline carries it into the
blocked layout and fuses it into the convolution's epilogue). Every other quantized operator (other types, uint8
kernels, MEAN, LOGISTIC, ...) keeps TVM's float lowering: `unexact_quantized_ops` names them so
the compiler can say so, and verification against LiteRT decides whether the result is close enough.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

# Quantized operators that are exact here: own integer arithmetic, or (RESHAPE, SQUEEZE) moves
# of the int8 values that TVM already does without touching them.
EXACT = frozenset(
    {
        "QUANTIZE",
        "DEQUANTIZE",
        "CONV_2D",
        "DEPTHWISE_CONV_2D",
        "FULLY_CONNECTED",
        "ADD",
        "AVERAGE_POOL_2D",
        "RESHAPE",
        "SQUEEZE",
        "SOFTMAX",
    }
)
_TYPE_NAMES = {2: "int32", 3: "uint8", 7: "int16", 9: "int8"}
_EXACT_TYPES = {"int8", "int32"}  # int8 activations and weights, int32 biases: what was checked against LiteRT
# (Re)quantization is type-generic (AffineQuantize / Requantize): uint8 <-> int8 at a model's edge is exact too.
_EXACT_TYPES_OF = {"QUANTIZE": _EXACT_TYPES | {"uint8"}, "DEQUANTIZE": _EXACT_TYPES | {"uint8"}}
_ADD_LEFT_SHIFT = 20  # add.cc: data->left_shift for 8-bit inputs


def quant_params(tensor) -> tuple[np.ndarray, np.ndarray, int] | None:
    """(scales float32, zero points int64, axis) of a tflite.Tensor, or None when not quantized."""
    q = tensor.Quantization()
    if q is None or q.ScaleLength() == 0:
        return None
    scale = q.ScaleAsNumpy().astype(np.float32)
    zero = q.ZeroPointAsNumpy().astype(np.int64) if q.ZeroPointLength() else np.zeros_like(scale, dtype=np.int64)
    if scale.size == 1 and scale[0] == 0 and zero[0] == 0:  # TFLite's "no quantization" marker
        return None
    return scale, zero, int(q.QuantizedDimension())


def unexact_quantized_ops(model, builtin_name) -> Counter:
    """Operators touching quantized tensors that TVM's float lowering approximates,
    e.g. {"LOGISTIC (int8 quantized)": 2}."""
    graph = model.Subgraphs(0)
    found: Counter = Counter()
    for o in range(graph.OperatorsLength()):
        op = graph.Operators(o)
        name = builtin_name(op)
        indices = [i for i in [*op.InputsAsNumpy(), *op.OutputsAsNumpy()] if i >= 0]
        typed = [graph.Tensors(int(i)) for i in indices]
        quantized = [t for t in typed if quant_params(t) is not None]
        if not quantized or name.startswith("CUSTOM::"):
            continue  # custom ops (detection post-process): TVM dequantizes their inputs, as TFLite's kernel does
        kinds = sorted({_TYPE_NAMES.get(t.Type(), f"type {t.Type()}") for t in quantized})
        if name not in EXACT or not set(kinds) <= _EXACT_TYPES_OF.get(name, _EXACT_TYPES):
            found[f"{name} ({'/'.join(kinds)} quantized)"] += 1
    return found


def quantize_multiplier(real: float) -> tuple[int, int]:
    """TFLite's QuantizeMultiplier: real = q * 2^(shift - 31) with q a Q31 int32."""
    if real == 0.0:
        return 0, 0
    if real < 0:
        raise ValueError(f"negative quantization scale ratio {real}")
    q, shift = math.frexp(real)
    q_fixed = int(math.floor(q * (1 << 31) + 0.5))  # std::round (halves up for q > 0); Python's round() is half-even
    if q_fixed == 1 << 31:
        q_fixed //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    return q_fixed, shift


def _act_range(activation: int, scale: float, zero: int, dtype: str) -> tuple[int, int]:
    """CalculateActivationRangeQuantized: the fused activation as an integer clamp (float32 f / scale, rounded away from zero)."""
    from tflite.ActivationFunctionType import ActivationFunctionType as Act

    info = np.iinfo(dtype)
    lo, hi = int(info.min), int(info.max)

    def q(f: float) -> int:
        v = float(np.float32(f) / np.float32(scale))
        return zero + int(math.copysign(math.floor(abs(v) + 0.5), v))

    if activation == Act.NONE:
        return lo, hi
    if activation == Act.RELU:
        return max(lo, q(0.0)), hi
    if activation == Act.RELU6:
        return max(lo, q(0.0)), min(hi, q(6.0))
    if activation == Act.RELU_N1_TO_1:
        return max(lo, q(-1.0)), min(hi, q(1.0))
    raise NotImplementedError(f"quantized fused activation {activation}")


def _base():
    from tvm.relax.frontend.tflite.tflite_frontend import OperatorConverter

    return OperatorConverter


class ExactQuantConverter(_base()):
    """TVM's converter with TFLite's integer arithmetic for the quantized operators in EXACT."""

    # --- integer helpers (Relax expressions) ---------------------------------------------

    def _i64(self, values) -> object:
        from tvm import relax

        return relax.const(np.asarray(values, dtype=np.int64), "int64")

    def _i32(self, values) -> object:
        from tvm import relax

        return relax.const(np.asarray(values, dtype=np.int32), "int32")

    def _zp_corrected(self, tensor, dtype: str = "int64") -> object:
        """The operand as `dtype` values minus its zero point (TFLite's input_offset added)."""
        from tvm import relax

        expr = relax.op.astype(self.get_tensor_expr(tensor), dtype)
        params = quant_params(tensor.tensor)
        if params is not None and np.any(params[1] != 0):
            zero = params[1] if params[1].size > 1 else params[1][0]
            expr = relax.op.subtract(expr, relax.const(np.asarray(zero, dtype=dtype), dtype))
        return expr

    def _multiply_by_quantized_multiplier(self, x, reals, single_rounding: bool = False) -> object:
        """MultiplyByQuantizedMultiplier (double rounding, or single) with one multiplier per last-axis channel, or one in all.

        In int64 (the product needs 64 bits), returned as int32 (as TFLite's). Shifts and adds only:
        no comparison, no `where`, no boolean tensor, which ConvertLayout could not carry into the
        blocked layout (every requantization then ran in NHWC between layout transforms), and each
        operation with its tensor first (with a constant first, ConvertLayout keeps the constant's layout).
        """
        from tvm import relax

        reals = np.atleast_1d(np.asarray(reals, dtype=np.float64))
        pairs = [quantize_multiplier(float(r)) for r in reals]
        mult = np.array([p[0] for p in pairs], np.int64)
        shift = np.array([p[1] for p in pairs], np.int64)
        left, right = np.maximum(shift, 0), np.maximum(-shift, 0)
        pick = (lambda a: a) if reals.size > 1 else (lambda a: a[0])
        op = relax.op
        x = op.astype(x, "int64")
        if single_rounding:
            # (x * q + 2^(t-1)) >> t with t = 31 - shift: one rounding, halves up (arithmetic shift).
            total = 31 - shift
            rounded = op.right_shift(
                op.add(op.multiply(x, self._i64(pick(mult))), self._i64(pick(np.left_shift(1, total - 1)))),
                self._i64(pick(total)),
            )
            return op.astype(rounded, "int32")
        if np.any(left):
            x = op.multiply(x, self._i64(pick(np.left_shift(1, left))))
        # SaturatingRoundingDoublingHighMul: (ab + nudge) / 2^31 truncated toward zero, nudge 2^30
        # for ab >= 0 and 1 - 2^30 below. For ab < 0 the truncation is a floor after adding
        # 2^31 - 1, and 1 - 2^30 + 2^31 - 1 = 2^30: so for every sign it is (ab + 2^30) >> 31
        # (ARM's SQRDMULH, which gemmlowp's reference says it equals). The multiplier is positive,
        # so the one saturating case (both operands INT32_MIN) cannot occur.
        high = op.right_shift(op.add(op.multiply(x, self._i64(pick(mult))), self._i64(1 << 30)), self._i64(31))
        if np.any(right):
            # RoundingDivideByPOT (ties away from zero): (v + 2^(e-1) - [v < 0]) >> e, the arithmetic
            # shift a floor; v + 2^(e-1) - 1 moves exactly the negative ties and no others down.
            # Channels with no right shift (e = 0) add nothing.
            negative = self._sign(high)
            if not np.all(right > 0):
                negative = op.bitwise_and(negative, self._i64(pick(np.where(right > 0, -1, 0))))
            half = np.left_shift(1, right) >> 1
            high = op.right_shift(op.add(op.add(high, negative), self._i64(pick(half))), self._i64(pick(right)))
        return op.astype(high, "int32")

    def _sign(self, x) -> object:
        """-1 where the int64 `x` is negative, else 0 (an arithmetic shift)."""
        from tvm import relax

        return relax.op.right_shift(x, self._i64(63))

    def _to_output(self, acc, output_tensor, lo: int, hi: int) -> object:
        from tvm import relax

        zero = int(quant_params(output_tensor.tensor)[1][0])
        out = relax.op.clip(relax.op.add(acc, self._i32(zero)), lo, hi)
        return relax.op.astype(out, self.get_tensor_type_str(output_tensor.tensor.Type()))

    def _quantized(self, op) -> bool:
        """Whether `op` takes the exact integer lowering: quantized, in types checked against LiteRT.
        Others (uint8 kernels, int16) keep TVM's float lowering; verification judges them."""
        tensors = [t.tensor for t in [*self.get_input_tensors(op), *self.get_output_tensors(op)] if t.tensor_idx >= 0]
        quantized = [t for t in tensors if quant_params(t) is not None]
        return bool(quantized) and all(_TYPE_NAMES.get(t.Type()) in _EXACT_TYPES for t in quantized)

    def _options(self, op, cls):
        options = cls()
        raw = op.BuiltinOptions()
        options.Init(raw.Bytes, raw.Pos)
        return options

    # --- operators ---------------------------------------------------------------------

    def convert_quantize(self, op):
        from tvm import relax

        (inp,), (out,) = self.get_input_tensors(op), self.get_output_tensors(op)
        o_scale, o_zero, _ = quant_params(out.tensor)
        dtype = self.get_tensor_type_str(out.tensor.Type())
        info = np.iinfo(dtype)
        if quant_params(inp.tensor) is None:
            # AffineQuantize: round(x / scale) in double, halves away from zero, + zero point.
            x = relax.op.divide(
                relax.op.astype(self.get_tensor_expr(inp), "float64"), relax.const(float(o_scale[0]), "float64")
            )
            rounded = relax.op.multiply(
                relax.op.sign(x), relax.op.floor(relax.op.add(relax.op.abs(x), relax.const(0.5, "float64")))
            )
            q = relax.op.add(relax.op.astype(rounded, "int64"), self._i64(int(o_zero[0])))
            return relax.op.astype(relax.op.clip(q, int(info.min), int(info.max)), dtype)
        # Requantize: (x - zp_in) * (s_in / s_out) by the fixed-point multiplier.
        i_scale = quant_params(inp.tensor)[0]
        acc = self._multiply_by_quantized_multiplier(
            self._zp_corrected(inp), float(np.float64(i_scale[0]) / np.float64(o_scale[0]))
        )
        return self._to_output(acc, out, int(info.min), int(info.max))

    def convert_dequantize(self, op):
        from tvm import relax

        (inp,) = self.get_input_tensors(op)
        params = quant_params(inp.tensor)
        if params is None:
            return super().convert_dequantize(op)
        scale = (
            params[0]
            if params[0].size == 1
            else params[0].reshape([-1] + [1] * (len(inp.tensor.ShapeAsNumpy()) - 1 - params[2]))
        )
        # (q - zp) * scale: the int fits float32 exactly and the product rounds once, as in double then float.
        return relax.op.multiply(
            relax.op.astype(self._zp_corrected(inp), "float32"),
            relax.const(scale if scale.size > 1 else float(scale[0]), "float32"),
        )

    def convert_conv(self, op, conv_type):
        if not self._quantized(op):
            return super().convert_conv(op, conv_type)
        from tflite.Conv2DOptions import Conv2DOptions
        from tflite.DepthwiseConv2DOptions import DepthwiseConv2DOptions
        from tflite.Padding import Padding
        from tvm import relax
        from tvm.relax.frontend.tflite.tflite_frontend import get_pad_value

        inputs, (out,) = self.get_input_tensors(op), self.get_output_tensors(op)
        inp, weight = inputs[0], inputs[1]
        depthwise = conv_type == "depthwise"
        options = self._options(op, DepthwiseConv2DOptions if depthwise else Conv2DOptions)
        _, in_h, in_w, in_c = (int(d) for d in inp.tensor.ShapeAsNumpy())
        w = self.get_tensor_value(weight).astype(np.int64)
        w_scale, w_zero, _ = quant_params(weight.tensor)
        w = w - (
            w_zero.reshape(-1, 1, 1, 1)
            if not depthwise and w_zero.size > 1
            else (w_zero if w_zero.size > 1 else w_zero[0])
        )
        if depthwise:  # [1, kh, kw, C*m] -> HWOI, one group per input channel
            kh, kw, groups = w.shape[1], w.shape[2], in_c
            kernel = w.reshape(kh, kw, w.shape[3], 1)
            layout = "HWOI"
        else:  # OHWI -> HWIO
            kh, kw = w.shape[1], w.shape[2]
            kernel, layout, groups = w.transpose(1, 2, 3, 0), "HWIO", in_c // w.shape[3]
        dil_h, dil_w = options.DilationHFactor(), options.DilationWFactor()
        s_h, s_w = options.StrideH(), options.StrideW()
        pad = [0, 0, 0, 0]
        if options.Padding() == Padding.SAME:
            top, bottom = get_pad_value(in_h, dil_h * (kh - 1) + 1, s_h)
            left, right = get_pad_value(in_w, dil_w * (kw - 1) + 1, s_w)
            pad = [top, left, bottom, right]
        # Zero-point-corrected operands (padding with 0 is TFLite skipping the border) in int16,
        # which they fit, accumulated in int32: AArch64's widening multiply-accumulate (SMLAL)
        # instead of int32 multiplies; 4.6% fewer instructions for int8 MobileNetV2-0.35 on rasp4b.
        x = self._zp_corrected(inp, "int16")
        acc = relax.op.nn.conv2d(
            x,
            relax.const(kernel.astype(np.int16), "int16"),
            strides=[s_h, s_w],
            padding=pad,
            dilation=[dil_h, dil_w],
            groups=groups,
            data_layout="NHWC",
            kernel_layout=layout,
            out_dtype="int32",
        )
        return self._requantized(acc, inputs, out, w_scale, options.FusedActivationFunction())

    def _requantized(self, acc, inputs, out, w_scale, activation, single_rounding: bool = False):
        """Bias add (int32), fixed-point rescale by s_in * s_w / s_out per channel, zero point, activation clamp."""
        from tvm import relax

        if len(inputs) > 2 and inputs[2].tensor_idx >= 0:  # int32, as TFLite adds it
            acc = relax.op.add(acc, self._i32(self.get_tensor_value(inputs[2])))
        i_scale = np.float64(quant_params(inputs[0].tensor)[0][0])
        o_scale, o_zero, _ = quant_params(out.tensor)
        reals = i_scale * w_scale.astype(np.float64) / np.float64(o_scale[0])
        acc = self._multiply_by_quantized_multiplier(acc, reals, single_rounding)
        lo, hi = _act_range(activation, float(o_scale[0]), int(o_zero[0]), self.get_tensor_type_str(out.tensor.Type()))
        return self._to_output(acc, out, lo, hi)

    def convert_fully_connected(self, op):
        if not self._quantized(op):
            return super().convert_fully_connected(op)
        from tflite.FullyConnectedOptions import FullyConnectedOptions
        from tvm import relax

        inputs, (out,) = self.get_input_tensors(op), self.get_output_tensors(op)
        options = self._options(op, FullyConnectedOptions)
        w = self.get_tensor_value(inputs[1]).astype(np.int64)
        w_scale, w_zero, _ = quant_params(inputs[1].tensor)
        w = w - (w_zero.reshape(-1, 1) if w_zero.size > 1 else w_zero[0])
        rows = int(np.prod(inputs[0].tensor.ShapeAsNumpy())) // w.shape[1]  # TFLite flattens the input to [rows, K]
        x = relax.op.reshape(self._zp_corrected(inputs[0], "int32"), [rows, w.shape[1]])
        acc = relax.op.matmul(x, relax.const(w.T.astype(np.int32), "int32"), out_dtype="int32")
        # LiteRT's per-channel FULLY_CONNECTED rounds once (its reference kernel matched single
        # rounding on every output of int8 MobileNetV2's 1000-class head; double rounding missed
        # ties like 1535.95 / 2^10 by one step); per-tensor FC and convolutions round twice.
        result = self._requantized(
            acc, inputs, out, w_scale, options.FusedActivationFunction(), single_rounding=w_scale.size > 1
        )
        return relax.op.reshape(result, [int(d) for d in out.tensor.ShapeAsNumpy()])

    def _convert_elemwise(self, op, relax_op, comparison_op=False):
        from tflite.BuiltinOperator import BuiltinOperator

        opcode = self.model.OperatorCodes(op.OpcodeIndex())
        is_add = max(opcode.BuiltinCode(), opcode.DeprecatedBuiltinCode()) == BuiltinOperator.ADD
        if not (is_add and self._quantized(op)):
            return super()._convert_elemwise(op, relax_op, comparison_op)
        from tflite.AddOptions import AddOptions
        from tvm import relax

        (a, b), (out,) = self.get_input_tensors(op), self.get_output_tensors(op)
        # reference_integer_ops::Add: both sides shifted left 20 bits, each scaled by s / (2 max(s_a, s_b)),
        # summed, and the sum scaled by 2 max(s_a, s_b) / (2^20 s_out).
        a_scale, b_scale = np.float64(quant_params(a.tensor)[0][0]), np.float64(quant_params(b.tensor)[0][0])
        o_scale, o_zero, _ = quant_params(out.tensor)
        twice_max = 2 * max(a_scale, b_scale)
        sides = [
            self._multiply_by_quantized_multiplier(
                relax.op.multiply(self._zp_corrected(t), self._i64(1 << _ADD_LEFT_SHIFT)), s / twice_max
            )
            for t, s in ((a, a_scale), (b, b_scale))
        ]
        total = relax.op.add(sides[0], sides[1])
        acc = self._multiply_by_quantized_multiplier(
            total, twice_max / ((1 << _ADD_LEFT_SHIFT) * np.float64(o_scale[0]))
        )
        activation = self._options(op, AddOptions).FusedActivationFunction()
        lo, hi = _act_range(activation, float(o_scale[0]), int(o_zero[0]), self.get_tensor_type_str(out.tensor.Type()))
        return self._to_output(acc, out, lo, hi)

    def convert_pool2d(self, op, pool_type):
        if pool_type not in ("average", "max") or not self._quantized(op):
            return super().convert_pool2d(op, pool_type)
        from tflite.Padding import Padding
        from tflite.Pool2DOptions import Pool2DOptions
        from tvm import relax
        from tvm.relax.frontend.tflite.tflite_frontend import get_pad_value

        (inp,), (out,) = self.get_input_tensors(op), self.get_output_tensors(op)
        options = self._options(op, Pool2DOptions)
        kh, kw, s_h, s_w = options.FilterHeight(), options.FilterWidth(), options.StrideH(), options.StrideW()
        n, in_h, in_w, ch = (int(d) for d in inp.tensor.ShapeAsNumpy())
        pad = [0, 0, 0, 0]
        if options.Padding() == Padding.SAME:
            top, bottom = get_pad_value(in_h, kh, s_h)
            left, right = get_pad_value(in_w, kw, s_w)
            pad = [top, left, bottom, right]
        o_scale, o_zero, _ = quant_params(out.tensor)
        lo, hi = _act_range(
            options.FusedActivationFunction(),
            float(o_scale[0]),
            int(o_zero[0]),
            self.get_tensor_type_str(out.tensor.Type()),
        )
        x = self.get_tensor_expr(inp)
        if pool_type == "max":  # max over the window's values; TFLite's input and output share scale and zero point
            pooled = relax.op.astype(relax.op.nn.max_pool2d(x, (kh, kw), (s_h, s_w), pad, layout="NHWC"), "int64")
            return relax.op.astype(relax.op.clip(pooled, lo, hi), self.get_tensor_type_str(out.tensor.Type()))
        # reference_integer_ops::AveragePool: int32 sum of the raw values over the window's in-bounds
        # part (a depthwise conv with ones), divided by that count rounding halves away from zero.
        ones = relax.const(np.ones((kh, kw, ch, 1), np.int32), "int32")
        total = relax.op.nn.conv2d(
            relax.op.astype(x, "int32"),
            ones,
            strides=[s_h, s_w],
            padding=pad,
            groups=ch,
            data_layout="NHWC",
            kernel_layout="HWOI",
            out_dtype="int32",
        )
        count = _window_counts(in_h, in_w, kh, kw, s_h, s_w, pad)
        total = relax.op.astype(total, "int64")
        half = self._i64(count // 2)
        positive = relax.op.floor_divide(relax.op.add(total, half), self._i64(count))
        negative = relax.op.negative(
            relax.op.floor_divide(relax.op.add(relax.op.negative(total), half), self._i64(count))
        )
        # positive where total > 0, else negative, selected by the sign of total - 1 (no `where`, see above).
        not_positive = self._sign(relax.op.subtract(total, self._i64(1)))
        avg = relax.op.add(positive, relax.op.bitwise_and(not_positive, relax.op.subtract(negative, positive)))
        return relax.op.astype(relax.op.clip(avg, lo, hi), self.get_tensor_type_str(out.tensor.Type()))


def _window_counts(in_h: int, in_w: int, kh: int, kw: int, s_h: int, s_w: int, pad: list[int]) -> np.ndarray:
    """How many in-bounds input positions each pooling window covers, shaped [1, out_h, out_w, 1]."""
    top, left, bottom, right = pad
    out_h, out_w = (in_h + top + bottom - kh) // s_h + 1, (in_w + left + right - kw) // s_w + 1

    def along(size: int, k: int, stride: int, before: int, n_out: int) -> np.ndarray:
        start = np.arange(n_out) * stride - before
        return np.minimum(start + k, size) - np.maximum(start, 0)

    rows, cols = along(in_h, kh, s_h, top, out_h), along(in_w, kw, s_w, left, out_w)
    return (rows[:, None] * cols[None, :]).reshape(1, out_h, out_w, 1).astype(np.int64)
