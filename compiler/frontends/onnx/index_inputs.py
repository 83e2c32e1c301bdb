"""Valid sample values for an ONNX model's integer inputs, read from how the graph uses them.

Verification feeds random values; an integer input that indexes a tensor (Gather, embedding
lookups) must stay inside the indexed axis or onnxruntime refuses the run. Values are followed
through operators that keep them as they are (Cast, Reshape, Unsqueeze, ...); arithmetic on
them is not followed (its inputs need no bound).
"""

from __future__ import annotations

from collections import defaultdict

from edgefleet.package import TensorSpec

# Operators whose output holds the same values as input 0 (index values pass through unchanged).
_PASS_THROUGH = {
    "Cast",
    "Identity",
    "Reshape",
    "Unsqueeze",
    "Squeeze",
    "Flatten",
    "Transpose",
    "Expand",
    "Concat",
    "Slice",
    "Tile",
}
# Operator -> (index input position, attribute naming the indexed axis, its default).
_INDEXING = {"Gather": (1, "axis", 0), "GatherElements": (1, "axis", 0), "ScatterElements": (1, "axis", 0)}
# Operators taking an integer operand as a count, position or shape: without a known bound, zeros are safe there.
_ZERO_SAFE = {"GatherND", "ScatterND", "OneHot", "TopK", "Range", "ConstantOfShape", "Pad", "Split", "Trilu", "CumSum"}


def _axis(node, name: str, default: int) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


def _consumers(graph) -> dict[str, list]:
    users = defaultdict(list)
    for node in graph.node:
        for position, name in enumerate(node.input):
            users[name].append((node, position))
    return users


def _bound(node, position: int, shapes: dict) -> tuple[int, int] | None:
    """Inclusive bound the use (node, position) puts on the values read there; None: no bound."""
    if node.op_type in _INDEXING and position == _INDEXING[node.op_type][0]:
        _, attr, default = _INDEXING[node.op_type]
        data = shapes.get(node.input[0])
        if data:
            return 0, max(data[_axis(node, attr, default) % len(data)] - 1, 0)
        return 0, 0
    if node.op_type in _ZERO_SAFE or node.op_type in _INDEXING:
        return 0, 0
    return None


def _ranges_of(name: str, users: dict, shapes: dict, seen: set) -> list[tuple[int, int]]:
    found = []
    for node, position in users.get(name, []):
        if node.op_type in _PASS_THROUGH and position == 0 or node.op_type == "Concat":
            for out in node.output:
                if out not in seen:
                    seen.add(out)
                    found += _ranges_of(out, users, shapes, seen)
        elif (bound := _bound(node, position, shapes)) is not None:
            found.append(bound)
    return found


def integer_input_ranges(model, specs: list[TensorSpec]) -> dict[str, tuple[int, int]]:
    """Integer input name -> inclusive (low, high) valid for every index use the graph makes of it."""
    import numpy as np

    from edgefleet.compiler.frontends.onnx.rewrites import _with_input_shapes

    integers = [s for s in specs if np.dtype(s.dtype).kind in "iu"]
    if not integers:
        return {}
    _, shapes = _with_input_shapes(model, {s.name: s.shape for s in specs})
    users = _consumers(model.graph)
    ranges = {}
    for spec in integers:
        found = _ranges_of(spec.name, users, shapes or {}, {spec.name})
        if found:
            ranges[spec.name] = (max(lo for lo, _ in found), max(min(hi for _, hi in found), 0))
    return ranges
