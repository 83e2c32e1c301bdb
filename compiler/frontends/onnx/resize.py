"""Resize and Upsample that TVM computes differently from ONNX, as per-axis matrices ONNX itself defines.

TVM 0.27's Resize samples at the output/input size ratio (ONNX: at the given scale), rounds
nearest ties in float32, and has no antialias or half_pixel_symmetric; its Upsample converter
fails on opset 9's scales input. Every ONNX Resize mode is separable: along each axis, output
sample i is a fixed weighted sum of input samples (one-hot for nearest). With the shapes static,
those weights are constants: this module asks ONNX's reference implementation for them, by
resizing an identity matrix along that one axis, and writes the node as a Gather (nearest) or a
MatMul with that matrix per resized axis. The arithmetic is then TVM's plain gather/matmul, and
the sampling positions, rounding, filters and antialiasing are ONNX's own.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

_FLOATS = {
    onnx.TensorProto.FLOAT: np.float32,
    onnx.TensorProto.DOUBLE: np.float64,
    onnx.TensorProto.FLOAT16: np.float16,
}


def _attr(node, name: str, default=None):
    found = next((a for a in node.attribute if a.name == name), None)
    return default if found is None else helper.get_attribute_value(found)


def _values(graph, name: str) -> np.ndarray | None:
    """An initializer's or Constant node's value; None for a run-time value."""
    if not name:
        return None
    init = next((i for i in graph.initializer if i.name == name), None)
    if init is not None:
        return numpy_helper.to_array(init)
    node = next((n for n in graph.node if n.op_type == "Constant" and name in n.output), None)
    value = _attr(node, "value") if node is not None else None
    return numpy_helper.to_array(value) if value is not None else None


def _probe_inputs(node, graph, axis: int, rank: int, n: int) -> tuple[list, list] | None:
    """(input names, initializers) of a 2-D copy of `node` that resizes only its second axis as
    `node` resizes `axis`; the first axis holds an n x n identity. None if a parameter is not constant."""
    if node.op_type == "Upsample" or len(node.input) == 2:  # Upsample, and Resize-10 (X, scales)
        scales = _attr(node, "scales") if len(node.input) < 2 else _values(graph, node.input[1])
        if scales is None:
            return None
        probe_scales = np.array([1.0, float(np.ravel(scales)[axis])], np.float32)
        return ["x", "scales"], [numpy_helper.from_array(probe_scales, "scales")]
    axes = [a % rank for a in (_attr(node, "axes") or range(rank))]
    if axis not in axes:
        return ["x", "", "scales"], [numpy_helper.from_array(np.array([1.0, 1.0], np.float32), "scales")]
    i = axes.index(axis)
    given = [_values(graph, node.input[k]) if len(node.input) > k else None for k in (1, 2, 3)]
    if any(len(node.input) > k and node.input[k] and v is None for k, v in zip((1, 2, 3), given)):
        return None
    roi, scales, sizes = given
    inits, names = [], ["x", "", "", ""]
    if roi is not None and roi.size:
        names[1] = "roi"
        inits.append(numpy_helper.from_array(np.array([0, roi[i], 1, roi[len(axes) + i]], roi.dtype), "roi"))
    if scales is not None and scales.size:
        names[2] = "scales"
        inits.append(numpy_helper.from_array(np.array([1.0, scales[i]], np.float32), "scales"))
    else:
        names[3] = "sizes"
        inits.append(numpy_helper.from_array(np.array([n, sizes[i]], np.int64), "sizes"))
    return names, inits


def _run_probe(node, opset: int, names: list, inits: list, n: int) -> np.ndarray:
    """Run a 2-D copy of `node` (same attributes, given inputs) on an n x n identity."""
    from onnx.reference import ReferenceEvaluator

    while names and not names[-1]:
        names.pop()
    keep = [a for a in node.attribute if a.name not in ("axes", "keep_aspect_ratio_policy", "scales")]
    probe_node = helper.make_node(node.op_type, names, ["y"])
    probe_node.attribute.extend(keep)
    model = helper.make_model(
        helper.make_graph(
            [probe_node],
            "probe",
            [helper.make_tensor_value_info("x", onnx.TensorProto.DOUBLE, [n, n])],
            [helper.make_empty_tensor_value_info("y")],
            inits,
        ),
        opset_imports=[helper.make_opsetid("", opset)],
    )
    return np.asarray(ReferenceEvaluator(model).run(None, {"x": np.eye(n)})[0])


def axis_matrix(node, graph, opset: int, axis: int, rank: int, n: int) -> np.ndarray | None:
    """[n, m] weights: output sample j along `axis` = sum_k x[k] * W[k, j], by ONNX's reference."""
    probe = _probe_inputs(node, graph, axis, rank, n)
    if probe is None:
        return None
    return _run_probe(node, opset, *probe, n)


def _policy_matrix(node, opset: int, ratio: tuple[int, int], n: int, m: int) -> np.ndarray:
    """Nearest weights for one axis of a keep_aspect_ratio_policy Resize: ONNX samples at the
    policy's scale p/q but outputs round(n * p/q) samples, which no one-axis Resize of length n
    reproduces. A longer probe (n' = q*k, sizes p*k: the same float64 scale) has the same sampling
    positions; its samples past n fold onto n - 1, the clamp nearest applies at the edge."""
    from math import gcd

    p, q = ratio
    g = gcd(p, q)
    p, q = p // g, q // g
    k = max(-(-(n + 2) // q), -(-m // p))
    size = q * k
    names = ["x", "", "", "sizes"]
    sizes = numpy_helper.from_array(np.array([size, p * k], np.int64), "sizes")
    weights = _run_probe(node, opset, names, [sizes], size)[:, :m]
    weights[n - 1] += weights[n:].sum(axis=0)
    return weights[:n]


def _policy_weights(node, graph, opset: int, in_shape: list[int], out_shape: list[int] | None) -> dict | None:
    """Axis -> weights for a nearest Resize with keep_aspect_ratio_policy, or None if not supported."""
    mode = _attr(node, "coordinate_transformation_mode", b"half_pixel")
    if _attr(node, "mode", b"nearest") != b"nearest" or mode not in (b"half_pixel", b"asymmetric"):
        return None
    if out_shape is None:
        return None
    sizes = _values(graph, node.input[3]) if len(node.input) > 3 else None
    if sizes is None:
        return None
    rank = len(in_shape)
    axes = [a % rank for a in (_attr(node, "axes") or range(rank))]
    ratios = [(int(s), in_shape[a]) for s, a in zip(sizes, axes)]
    pick = min if _attr(node, "keep_aspect_ratio_policy") == b"not_larger" else max
    ratio = pick(ratios, key=lambda r: r[0] / r[1])
    return {a: _policy_matrix(node, opset, ratio, in_shape[a], out_shape[a]) for a in axes}


def _one_hot_columns(weights: np.ndarray) -> np.ndarray | None:
    """Source index per output sample when every output copies one input sample (nearest), else None."""
    if not np.all((weights == 0) | (weights == 1)) or not np.all(weights.sum(axis=0) == 1):
        return None
    return weights.argmax(axis=0).astype(np.int64)


def _apply_axis(
    name: str,
    prefix: str,
    weights: np.ndarray,
    axis: int,
    rank: int,
    dtype,
    nodes: list,
    inits: list,
) -> str:
    """Nodes computing `name` resized along `axis` by `weights`; returns the result's name."""
    index = _one_hot_columns(weights)
    out = f"{prefix}_axis{axis}"
    if index is not None:
        inits.append(numpy_helper.from_array(index, f"{out}_index"))
        nodes.append(helper.make_node("Gather", [name, f"{out}_index"], [out], axis=axis))
        return out
    if axis == rank - 1:
        inits.append(numpy_helper.from_array(weights.astype(dtype), f"{out}_weights"))
        nodes.append(helper.make_node("MatMul", [name, f"{out}_weights"], [out]))
    elif axis == rank - 2:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(weights.T).astype(dtype), f"{out}_weights"))
        nodes.append(helper.make_node("MatMul", [f"{out}_weights", name], [out]))
    else:
        perm = list(range(rank))
        perm[axis], perm[-1] = perm[-1], perm[axis]
        inits.append(numpy_helper.from_array(weights.astype(dtype), f"{out}_weights"))
        nodes += [
            helper.make_node("Transpose", [name], [f"{out}_t"], perm=perm),
            helper.make_node("MatMul", [f"{out}_t", f"{out}_weights"], [f"{out}_mm"]),
            helper.make_node("Transpose", [f"{out}_mm"], [out], perm=perm),
        ]
    return out


def separable(
    node,
    graph,
    opset: int,
    in_shape: list[int],
    elem_type: int,
    out_shape: list[int] | None = None,
) -> tuple[list, list] | None:
    """(nodes, initializers) computing `node` axis by axis, or None when it cannot be written so."""
    if elem_type not in _FLOATS and _attr(node, "mode", b"nearest") not in (b"nearest", "nearest"):
        return None  # integer linear/cubic would need ONNX's rounding of the weighted sums
    policy = None
    if _attr(node, "keep_aspect_ratio_policy", b"stretch") != b"stretch":
        # The policy couples the axes (one scale for all): probed per axis at that scale.
        try:
            policy = _policy_weights(node, graph, opset, in_shape, out_shape)
        except Exception:  # what the reference refuses stays for the refusal
            policy = None
        if policy is None:
            return None
    crop = _attr(node, "coordinate_transformation_mode", b"half_pixel") == b"tf_crop_and_resize"
    if crop and _attr(node, "extrapolation_value", 0.0):
        return None  # samples outside the roi take a constant: not a weighted sum
    rank, dtype = len(in_shape), _FLOATS.get(elem_type, np.float32)
    nodes, inits, current = [], [], node.input[0]
    for axis, n in enumerate(in_shape):
        try:
            if policy is not None:
                weights = policy.get(axis, np.eye(n))
            else:
                weights = axis_matrix(node, graph, opset, axis, rank, n)
        except Exception:  # the reference refuses what ONNX does not define (e.g. a cubic Upsample)
            return None
        if weights is None:
            return None
        if weights.shape == (n, n) and np.array_equal(weights, np.eye(n)):
            continue
        current = _apply_axis(current, f"{node.output[0]}__resize", weights, axis, rank, dtype, nodes, inits)
    nodes.append(helper.make_node("Identity", [current], [node.output[0]]))
    return nodes, inits
