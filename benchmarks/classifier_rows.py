"""A classifier's fully connected layer on x86: the weight rows read in order against the generic
schedule (issues 21 and 22).

For each shape (inputs x classes: MobileNetV2's 1280 x 1000, DenseNet-121's and Inception's 1024 x
1000, ResNet-50's 2048 x 1000): an ONNX Gemm through edgefleet's CPU pipeline for the x86-64-v4
library, once with the default schedule (`schedules._weight_rows_in_order`: the reduction outermost)
and once with the generic one (an 8-lane strip of columns down all rows at a time). The matmul kernel
is timed alone as its best single call out of `--calls` (see benchmarks/conv_tiles.py); the two
schedules alternate for `--rounds` rounds. Prints both times and the ratio.

    python benchmarks/classifier_rows.py [--shapes 1280x1000,2048x1000] [--calls 400] [--rounds 2]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conv_tiles import best_rates, kernel_ab_args  # noqa: E402  (benchmarks/ is not a package)

SHAPES = "1280x1000,1024x1000,2048x1000"


def classifier_model(inputs: int, classes: int) -> tuple[onnx.ModelProto, float]:
    """A 1 x `inputs` Gemm to `classes` with bias and its GFLOP (multiply-adds x 2)."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((classes, inputs)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(classes).astype(np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)],
        "classifier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, inputs])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, classes])],
        [w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model, 2 * inputs * classes / 1e9


def main() -> None:
    from edgefleet.compiler import schedules

    args = kernel_ab_args(SHAPES)

    def generic(_sch, _block):
        return False

    print(f"load average {os.getloadavg()[0]:.1f}; ms of the matmul kernel, best of {args.calls} calls")
    print(f"  {'shape':<10} {'generic':>8} {'in order':>8} {'ratio':>6}")
    for shape in args.shapes.split(","):
        model, gflop = classifier_model(*(int(v) for v in shape.split("x")))
        variants = {"generic": generic, "in order": schedules._weight_rows_in_order}
        rate = best_rates(model, gflop, "_weight_rows_in_order", variants, args, kernel="matmul")
        ms = {label: gflop / r * 1e3 for label, r in rate.items()}
        print(f"  {shape:<10} {ms['generic']:8.3f} {ms['in order']:8.3f} {ms['generic'] / ms['in order']:6.2f}")
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
