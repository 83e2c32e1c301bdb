"""Depthwise convolutions on x86: the input padded per output row inside the kernel's loop against
a pad of the whole input first (issue 22).

For each depthwise layer of MobileNetV2 (channels x row x stride, 3 x 3 window): a depthwise conv +
bias + ReLU model through edgefleet's CPU pipeline for the x86-64-v4 library, once with the default
schedule (`schedules._pad_rows`: the window's padded rows written under the row loop, or one channel
block's padded plane under the block loop where the plane fits L1, `_pads_per_block`) and once with
the pad left as a pass of its own over the whole input. The conv kernel is timed alone as its best
single call out of `--calls` (see benchmarks/conv_tiles.py); the two schedules alternate for
`--rounds` rounds. Prints GFLOP/s of both and the ratio.

    python benchmarks/depthwise_pads.py [--shapes 96x112x2,144x56x1] [--calls 400] [--rounds 2]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conv_tiles import best_rates, conv_model, kernel_ab_args  # noqa: E402  (benchmarks/ is not a package)

SHAPES = "32x112x1,96x112x2,144x56x1,144x56x2,192x28x1,192x28x2,384x14x1,576x14x1,576x14x2,960x7x1"


def main() -> None:
    from edgefleet.compiler import schedules

    args = kernel_ab_args(SHAPES)

    def whole_input(_sch, pads, _row):
        return pads

    print(f"load average {os.getloadavg()[0]:.1f}; GFLOP/s of the depthwise kernel, best of {args.calls} calls")
    # "per row": the default placement (per row, or per block where the plane fits L1).
    print(f"  {'shape':<12} {'whole pad':>9} {'per row':>8} {'ratio':>6}")
    for shape in args.shapes.split(","):
        channels, width, stride = (int(v) for v in shape.split("x"))
        model, gflop = conv_model(channels, channels, 3, width, stride, groups=channels)
        variants = {"whole pad": whole_input, "per row": schedules._pad_rows}
        rate = best_rates(model, gflop, "_pad_rows", variants, args)
        print(
            f"  {shape:<12} {rate['whole pad']:9.1f} {rate['per row']:8.1f} {rate['per row'] / rate['whole pad']:6.2f}"
        )
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
