"""Tiny real ONNX classifiers compiled by the real compiler, for update and rollout tests.

good  logits that favour class 0 strongly: high top-1 confidence
flat  the same graph with zero weights: a uniform softmax (installs and runs fine, but
      its confidence is far lower: what the fleet's model-health gate must stop)
nan   log(x - 1): NaN on the smoke test's zero input, so probation fails
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SIZE = 16
LABELS = ["person", "vehicle", "empty"]


def build_onnx(path: Path, kind: str) -> Path:
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, SIZE, SIZE])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3])
    # Per-channel means scaled and shifted into class logits: small, but a real graph that the
    # compiler imports, optimizes, builds and verifies like any other.
    scale = np.array([[1.0, 0.0, 0.0]] if kind == "good" else [[0.0, 0.0, 0.0]], np.float32)
    shift = np.array([[8.0, 0.0, 0.0]] if kind == "good" else [[0.0, 0.0, 0.0]], np.float32)
    nodes = []
    first = "input"
    inits = [numpy_helper.from_array(scale, "scale"), numpy_helper.from_array(shift, "shift")]
    if kind == "nan":
        inits.append(numpy_helper.from_array(np.ones((1,), np.float32), "one"))
        nodes += [
            helper.make_node("Sub", ["input", "one"], ["shifted"]),
            helper.make_node("Log", ["shifted"], ["logged"]),
        ]
        first = "logged"
    nodes += [
        helper.make_node("GlobalAveragePool", [first], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Mul", ["flat", "scale"], ["scaled"]),
        helper.make_node("Add", ["scaled", "shift"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["output"], axis=1),
    ]
    graph = helper.make_graph(nodes, f"tiny_{kind}", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def compile_tiny(workdir: Path, kind: str, version: str, key: Path, name: str = "tiny", target: str = "x86_64") -> Path:
    from edgefleet.compiler.compile import compile_model

    workdir.mkdir(parents=True, exist_ok=True)
    src = build_onnx(workdir / f"{name}-{kind}.onnx", kind)
    labels = workdir / "labels.txt"
    labels.write_text("\n".join(LABELS) + "\n")
    out = workdir / f"{name}-{version}-{kind}.tar.gz"
    compile_model(
        str(src),
        target,
        output=out,
        name=name,
        version=version,
        labels=labels,
        preprocessing={"resize": (SIZE, SIZE)},
        verify=kind != "nan",
        key=key,
        quiet=True,
    )
    return out
