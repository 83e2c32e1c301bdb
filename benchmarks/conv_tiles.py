"""Dense convolutions on AVX-512: a register tile of one output-channel block against two (issue 21).

For each shape (input channels x output channels x kernel x row [x stride]; layers of ResNet-50,
MobileNetV2 and SqueezeNet): a conv + bias + ReLU model through edgefleet's CPU pipeline for the
x86-64-v4 library, once with the default schedules (`output_tile` pairs two 16-channel blocks where
the output has an even number of them) and once with `output_tile` held to one block. Each conv
kernel is timed alone on random data as its best single call out of `--calls` (kernels of 0.01-1 ms
are shorter than a scheduler slice, so on shared cores the best call is still the kernel's own
speed); the two schedules alternate for `--rounds` rounds. Prints GFLOP/s of both and the ratio.

    python benchmarks/conv_tiles.py [--shapes 64x256x1x56,3x64x7x224x2] [--calls 400] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kernel_profile import kernel_times, scheduled_kernels  # noqa: E402  (benchmarks/ is not a package)

SHAPES = (
    "64x64x1x56,64x256x1x56,256x64x1x56,128x512x1x28,512x128x1x28,256x1024x1x14,1024x256x1x14,512x2048x1x7,"
    "2048x512x1x7,64x64x3x56,128x128x3x28,256x256x3x14,512x512x3x7,3x64x7x224x2,"
    "32x192x1x28,96x576x1x14,576x96x1x14,160x960x1x7,960x160x1x7,"
    "3x64x3x224x2,16x64x1x55,16x64x3x55,32x128x1x27,32x128x3x27,48x192x1x13,48x192x3x13,64x256x1x13,64x256x3x13"
)


def conv_model(
    cin: int, cout: int, k: int, width: int, stride: int = 1, groups: int = 1
) -> tuple[onnx.ModelProto, float]:
    """A square conv + bias + ReLU and its GFLOP (multiply-adds x 2)."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal((cout, cin // groups, k, k)) * 0.1).astype(np.float32), "w")
    b = numpy_helper.from_array((rng.standard_normal(cout) * 0.1).astype(np.float32), "b")
    out = (width + 2 * (k // 2) - k) // stride + 1
    nodes = [
        helper.make_node(
            "Conv", ["x", "w", "b"], ["c"], kernel_shape=[k, k], strides=[stride] * 2, pads=[k // 2] * 4, group=groups
        ),
        helper.make_node("Relu", ["c"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, width, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cout, out, out])],
        [w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model, 2 * cin // groups * cout * k * k * out * out / 1e9


def conv_ms(model: onnx.ModelProto, calls: int, kernel: str = "conv2d_NCHWc") -> float:
    """Best single call of the model's kernel whose name holds `kernel`, in ms."""
    # scheduled_kernels reads a model file (.onnx or .tflite).
    with tempfile.TemporaryDirectory(prefix="edgefleet-conv-") as tmp:
        path = Path(tmp) / "conv.onnx"
        onnx.save(model, str(path))
        rows = kernel_times(*scheduled_kernels(path, "x86-64-v4"), number=1, repeat=calls)
    return next(ms for ms, _, name in rows if kernel in name)


def kernel_ab_args(shapes: str) -> argparse.Namespace:
    """`--shapes`, `--calls`, `--rounds` of a per-kernel A/B benchmark; TVM's pool held to one thread."""
    import tvm

    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default=shapes)
    ap.add_argument("--calls", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    tvm.get_global_func("runtime.config_threadpool")(1, 1)
    return args


def best_rates(
    model: onnx.ModelProto,
    gflop: float,
    rule: str,
    variants: dict,
    args: argparse.Namespace,
    kernel: str = "conv2d_NCHWc",
) -> dict:
    """GFLOP/s of the model's conv kernel (or the one named by `kernel`) with `schedules.<rule>` set to
    each of `variants` in turn (alternating for `args.rounds` rounds, best call of each); the rule is
    restored after."""
    from edgefleet.compiler import schedules

    default = getattr(schedules, rule)
    best = dict.fromkeys(variants, float("inf"))
    try:
        for _ in range(args.rounds):
            for label, variant in variants.items():
                setattr(schedules, rule, variant)
                best[label] = min(best[label], conv_ms(model, args.calls, kernel))
    finally:
        setattr(schedules, rule, default)
    return {label: gflop / ms * 1e3 for label, ms in best.items()}


def main() -> None:
    from edgefleet.compiler import schedules

    args = kernel_ab_args(SHAPES)
    paired = schedules.output_tile

    def one_block(target, width, block, _pairable, max_pair=schedules.MAX_PAIR_TILE):
        return paired(target, width, block, False, max_pair)

    print(f"load average {os.getloadavg()[0]:.1f}; GFLOP/s of the conv kernel, best of {args.calls} calls")
    print(f"  {'shape':<14} {'1 block':>8} {'default':>8} {'ratio':>6}")
    for shape in args.shapes.split(","):
        model, gflop = conv_model(*(int(v) for v in shape.split("x")))
        rate = best_rates(model, gflop, "output_tile", {"1 block": one_block, "default": paired}, args)
        print(f"  {shape:<14} {rate['1 block']:8.0f} {rate['default']:8.0f} {rate['default'] / rate['1 block']:6.2f}")
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
