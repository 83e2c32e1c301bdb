"""MobileNetV2 (Sandler et al. 2018) as an ONNX graph, built without downloads.

The architecture is the torchvision one (width 1.0, 224x224, 1000 classes) with batch norm
already folded into the convolutions, as an exported inference model has it. Weights are
random (He-scaled, seeded), which is what latency measurements need: the work per layer is
the same as with trained weights. Not for accuracy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# (expansion t, output channels c, repeats n, first stride s): table 2 of the paper.
INVERTED_RESIDUALS = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


def build(size: int = 224, classes: int = 1000, width: float = 1.0, seed: int = 0, opset: int = 13):
    """The model as an `onnx.ModelProto`; `width` < 1 and a small `size` give fast test models."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    counter = [0]

    def name(prefix: str) -> str:
        counter[0] += 1
        return f"{prefix}{counter[0]}"

    def ch(c: int) -> int:
        return max(8, int(c * width + 4) // 8 * 8)  # torchvision's _make_divisible

    def conv(x: str, cin: int, cout: int, k: int, stride: int, groups: int = 1, relu6: bool = True) -> str:
        w = name("w")
        b = name("b")
        fan_in = cin // groups * k * k
        inits.append(
            numpy_helper.from_array(
                (rng.standard_normal((cout, cin // groups, k, k)) * np.sqrt(2.0 / fan_in)).astype(np.float32), w
            )
        )
        inits.append(numpy_helper.from_array((rng.standard_normal(cout) * 0.01).astype(np.float32), b))
        y = name("conv")
        pad = k // 2
        nodes.append(
            helper.make_node(
                "Conv", [x, w, b], [y], kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4, group=groups
            )
        )
        if not relu6:
            return y
        z = name("relu6")
        lo, hi = name("lo"), name("hi")
        inits.append(numpy_helper.from_array(np.array(0.0, np.float32), lo))
        inits.append(numpy_helper.from_array(np.array(6.0, np.float32), hi))
        nodes.append(helper.make_node("Clip", [y, lo, hi], [z]))
        return z

    x, cin = "input", 3
    x = conv(x, cin, ch(32), 3, 2)
    cin = ch(32)
    for t, c, n, s in INVERTED_RESIDUALS:
        cout = ch(c)
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = cin * t
            y = conv(x, cin, hidden, 1, 1) if t != 1 else x
            y = conv(y, hidden, hidden, 3, stride, groups=hidden)
            y = conv(y, hidden, cout, 1, 1, relu6=False)
            if stride == 1 and cin == cout:
                added = name("add")
                nodes.append(helper.make_node("Add", [x, y], [added]))
                y = added
            x, cin = y, cout
    last = max(1280, ch(1280)) if width > 1.0 else ch(1280) if width < 1.0 else 1280
    x = conv(x, cin, last, 1, 1)
    pooled, flat = name("gap"), name("flat")
    nodes.append(helper.make_node("GlobalAveragePool", [x], [pooled]))
    nodes.append(helper.make_node("Flatten", [pooled], [flat], axis=1))
    fw, fb = name("fc_w"), name("fc_b")
    inits.append(
        numpy_helper.from_array((rng.standard_normal((classes, last)) * np.sqrt(1.0 / last)).astype(np.float32), fw)
    )
    inits.append(numpy_helper.from_array(np.zeros(classes, np.float32), fb))
    nodes.append(helper.make_node("Gemm", [flat, fw, fb], ["logits"], transB=1))
    graph = helper.make_graph(
        nodes,
        "mobilenetv2",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, classes])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="edgefleet")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def save(path: Path, **kwargs) -> Path:
    import onnx

    onnx.save(build(**kwargs), str(path))
    return Path(path)
