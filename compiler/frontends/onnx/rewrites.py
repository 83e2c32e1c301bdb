"""ONNX graph rewrites applied before TVM's importer, and the attribute combinations it refuses.

Rewrites (each keeps the model's meaning; see docs/operators.md):
- `normalize_constants`: Constant nodes written with value_float/value_ints/... become the
  tensor form (`value`), the only one TVM's importer reads.
- `expand_functions`: an operator TVM cannot convert (or converts wrongly for the attributes
  used) is replaced by its ONNX function body when the ONNX schema defines one, so it is
  compiled from ops TVM does convert (e.g. NegativeLogLikelihoodLoss, Celu, Swish).

`rejections` lists what TVM's importer is known to get wrong, found by the conformance suite:
each rule names an operator and the attribute or input that makes TVM's result differ from
ONNX's. Such a model is refused before building, with a message naming both, instead of
compiling into a wrong answer.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import numpy as np
import onnx
import onnx.inliner
from onnx import helper, numpy_helper

from edgefleet.compiler.frontends.onnx import lowbit

EXPAND_DOMAIN = "edgefleet.expand"


def _attr(node, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _subgraphs(graph):
    yield graph
    for node in graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _subgraphs(a.g)
            for g in a.graphs:
                yield from _subgraphs(g)


def normalize_constants(model) -> None:
    """Constant(value_float=..) and friends -> Constant(value=tensor), in place."""
    for graph in _subgraphs(model.graph):
        for node in graph.node:
            if node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
                continue
            attrs = {a.name: a for a in node.attribute}
            if "value" in attrs or "sparse_value" in attrs:
                continue
            tensor = None
            if "value_float" in attrs:
                tensor = helper.make_tensor("value", onnx.TensorProto.FLOAT, [], [attrs["value_float"].f])
            elif "value_floats" in attrs:
                vals = list(attrs["value_floats"].floats)
                tensor = helper.make_tensor("value", onnx.TensorProto.FLOAT, [len(vals)], vals)
            elif "value_int" in attrs:
                tensor = helper.make_tensor("value", onnx.TensorProto.INT64, [], [attrs["value_int"].i])
            elif "value_ints" in attrs:
                vals = list(attrs["value_ints"].ints)
                tensor = helper.make_tensor("value", onnx.TensorProto.INT64, [len(vals)], vals)
            if tensor is not None:
                del node.attribute[:]
                node.attribute.append(helper.make_attribute("value", tensor))


# The operators TVM's importer lets take a shape value (its _construct_nodes); any other
# consumer of a Shape-derived value raises "cannot handle ShapeExpr inputs".
_SHAPE_COMPATIBLE = {
    "Reshape",
    "Resize",
    "ConstantOfShape",
    "Gather",
    "Slice",
    "Shape",
    "Expand",
    "Concat",
    "Equal",
    "Where",
    "Cast",
    "CastLike",
    "Squeeze",
}
# Of those, the ones whose output may again be a shape value.
_SHAPE_PROPAGATING = {"Gather", "Slice", "Shape", "Concat", "Squeeze", "Cast", "CastLike", "Where", "Equal", "Expand"}


def cast_shape_values(model) -> None:
    """Put Cast(to=INT64) between a Shape-derived value and each consumer TVM does not let take
    a shape value; TVM's Cast turns the shape into an int64 tensor (same values, same dtype)."""
    graph = model.graph
    shape_like: set[str] = set()
    for node in graph.node:
        if node.domain in ("", "ai.onnx") and (
            node.op_type == "Shape" or (node.op_type in _SHAPE_PROPAGATING and any(i in shape_like for i in node.input))
        ):
            shape_like.update(node.output)
    if not shape_like:
        return
    new_nodes = []
    casts: dict[str, str] = {}
    for node in graph.node:
        if node.domain not in ("", "ai.onnx") or node.op_type not in _SHAPE_COMPATIBLE:
            for k, name in enumerate(node.input):
                if name in shape_like:
                    if name not in casts:
                        casts[name] = f"{name}__edgefleet_tensor"
                        new_nodes.append(helper.make_node("Cast", [name], [casts[name]], to=onnx.TensorProto.INT64))
                    node.input[k] = casts[name]
        new_nodes.append(node)
    del graph.node[:]
    graph.node.extend(new_nodes)


def _opset(model, domain: str = "") -> int:
    for o in model.opset_import:
        if o.domain in (domain, "ai.onnx" if domain == "" else domain):
            return o.version
    return 1


def _used(graph, name: str) -> bool:
    """Whether a node or the graph's outputs read `name` (exporters name outputs nobody reads, e.g. Dropout masks)."""
    return any(name in n.input for n in graph.node) or any(o.name == name for o in graph.output)


def _is_constant(graph, name: str, produced: dict) -> bool:
    if not name:
        return True  # an omitted optional input
    if any(i.name == name for i in graph.initializer):
        return True
    node = produced.get(name)
    return node is not None and node.op_type == "Constant"


_FLOATS = {"FLOAT", "FLOAT16", "DOUBLE", "BFLOAT16"}


def _constant(graph, name: str, produced: dict) -> list | None:
    """The values of a constant input (initializer or Constant node) as a flat list, else None."""
    for init in graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init).ravel().tolist()
    node = produced.get(name)
    if node is not None and node.op_type == "Constant" and _attr(node, "value") is not None:
        return numpy_helper.to_array(_attr(node, "value")).ravel().tolist()
    return None


def _position_rule(node, index: int, graph, produced) -> str | None:
    # TVM's sequence converters index from the front only: negative positions land elsewhere.
    if index >= len(node.input) or not node.input[index]:
        return None
    value = _constant(graph, node.input[index], produced)
    return "a negative or run-time position" if value is None or any(v < 0 for v in value) else None


def _dtype_rejections(node, dtypes: dict[str, str], top_level: bool = True) -> str | None:
    names = {dtypes.get(v) for v in list(node.input) + list(node.output) if v}
    for attr in ("to", "output_dtype"):
        value = _attr(node, attr)
        if isinstance(value, int) and value:
            names.add(onnx.TensorProto.DataType.Name(value))
    bad = sorted(names & UNSUPPORTED_DTYPES)
    if not bad:
        return None
    # compiler/frontends/onnx/lowbit.py converts these in the main graph (its 4/2-bit values would lose
    # their type crossing a subgraph's boundary).
    if top_level and node.op_type in lowbit.ACCEPTED and set(bad) <= lowbit.TYPES:
        return lowbit.rejection(node, dtypes)
    return f"{'/'.join(bad)} tensors"


# --- known-wrong conversions ----------------------------------------------------------------
# Each rule: (operator, check(node, graph, produced, dtypes) -> reason or None).
# Found with benchmarks/onnx_conformance.py against apache-tvm 0.27.0.post1.

Rule = Callable[..., "str | None"]


def _non_constant_inputs(*indices: int, what: str) -> Rule:
    def check(node, graph, produced, dtypes):
        for i in indices:
            if i < len(node.input) and not _is_constant(graph, node.input[i], produced):
                return f"{what} computed at run time (TVM needs a constant)"
        return None

    return check


RULES: list[tuple[str, Rule]] = [
    ("BatchNormalization", lambda n, *_: "training_mode=1" if _attr(n, "training_mode", 0) else None),
    ("LayerNormalization", lambda n, *_: "Mean/InvStdDev outputs" if len([o for o in n.output[1:] if o]) else None),
    ("RoiAlign", lambda n, *_: "mode=max" if _attr(n, "mode", b"avg") == b"max" else None),
    ("SpaceToDepth", lambda n, *_: "mode=CRD" if _attr(n, "mode", b"DCR") == b"CRD" else None),
    ("SplitToSequence", lambda n, *_: "keepdims=0" if _attr(n, "keepdims", 1) == 0 else None),
    (
        "Mod",
        lambda n, g, p, dtypes: (
            "fmod=0 on floating-point inputs"
            if _attr(n, "fmod", 0) == 0 and dtypes.get(n.input[0]) in _FLOATS
            else None
        ),
    ),
    # Training-mode dropout is random, unless its ratio is 0 (then it passes everything).
    (
        "Dropout",
        lambda n, g, p, dtypes: (
            "training_mode input"
            if len(n.input) > 2
            and n.input[2]
            and _constant(g, n.input[2], p) != [False]
            and not (len(n.input) > 1 and n.input[1] and _constant(g, n.input[1], p) == [0.0])
            else None
        ),
    ),
    ("SequenceErase", lambda n, g, p, dtypes: _position_rule(n, 1, g, p)),
    ("SequenceInsert", lambda n, g, p, dtypes: _position_rule(n, 2, g, p)),
    ("SequenceAt", lambda n, g, p, dtypes: _position_rule(n, 1, g, p)),
    # float16 accumulations run in float32 (graph.py); the causal mask's float16 additions
    # still round one ulp away from ONNX's reference, past its tolerance.
    (
        "Attention",
        lambda n, g, p, dtypes: (
            "float16 inputs with is_causal=1"
            if dtypes.get(n.input[0]) == "FLOAT16" and _attr(n, "is_causal", 0)
            else None
        ),
    ),
    # TVM's converter is com.microsoft's Attention (num_heads); ONNX's own (opset 23) is expanded.
    ("Attention", lambda n, *_: "q_num_heads/kv_num_heads form" if _attr(n, "num_heads") is None else None),
    # TVM's Celu converter mixes a float64 alpha into float32 arithmetic; ONNX's body (Elu) works.
    ("Celu", lambda *_: "TVM's converter mixes float types"),
]
# Reasons that expanding into the ONNX function body does not cure (TVM's float16 arithmetic).
EXPANSION_WRONG_TOO = {"float16 inputs with is_causal=1"}
# Element types TVM cannot hold or cast correctly (8/6/4/2-bit floats and ints, strings, complex);
# lowbit.TYPES are compiled by edgefleet in lowbit.OPERATORS.
UNSUPPORTED_DTYPES = {
    "STRING",
    "COMPLEX64",
    "COMPLEX128",
    "FLOAT8E4M3FN",
    "FLOAT8E4M3FNUZ",
    "FLOAT8E5M2",
    "FLOAT8E5M2FNUZ",
    "UINT4",
    "INT4",
    "FLOAT4E2M1",
    "FLOAT8E8M0",
    "UINT2",
    "INT2",
    "FLOAT6E2M3",
    "FLOAT6E3M2",
}
# Checked after constant folding (to_relax), when it is known what stays computed at run time.
RUNTIME_RULES: list[tuple[str, Rule]] = [
    # conv_transpose_output_shape rewrites it into pads where the shapes allow.
    ("ConvTranspose", lambda n, *_: "output_shape attribute" if _attr(n, "output_shape") else None),
    (
        "NonMaxSuppression",
        _non_constant_inputs(2, 3, 4, what="max_output_boxes_per_class/iou_threshold/score_threshold"),
    ),
    ("Expand", _non_constant_inputs(1, what="the shape input")),
    # TVM's split needs strictly increasing indices; TopK's sort has no uint64 kernel.
    (
        "Split",
        lambda n, g, p, dtypes: (
            "a zero-size part" if len(n.input) > 1 and n.input[1] and 0 in (_constant(g, n.input[1], p) or []) else None
        ),
    ),
    ("TopK", lambda n, g, p, dtypes: "uint64 input" if dtypes.get(n.input[0]) == "UINT64" else None),
]


def _resize_reason(node, graph, produced, in_shape: list[int] | None, out_shape: list[int] | None) -> str | None:
    """Why TVM's Resize would differ from ONNX's for this node, or None.

    TVM computes sampling positions from the output/input size ratio; ONNX uses the given
    `scales` when they are given, so both agree only when in * scale is a whole size. Nearest
    rounding of exact halves (round_prefer_*) at fractional ratios comes out differently in
    TVM's float arithmetic, and TVM has no antialiasing or half_pixel_symmetric.
    """
    if _attr(node, "antialias", 0):
        return "antialias=1"
    if _attr(node, "coordinate_transformation_mode", b"half_pixel") == b"half_pixel_symmetric":
        return "coordinate_transformation_mode=half_pixel_symmetric"
    if in_shape is None or out_shape is None:
        return None
    scales = _constant(graph, node.input[2], produced) if len(node.input) > 2 and node.input[2] else None
    axes = _attr(node, "axes") or list(range(len(in_shape)))
    if scales:
        for axis, scale in zip(axes, scales):
            if abs(in_shape[axis] * scale - round(in_shape[axis] * scale)) > 1e-6:
                return "scales that do not give a whole output size"
    nearest_mode = _attr(node, "nearest_mode", b"round_prefer_floor")
    if _attr(node, "mode", b"nearest") == b"nearest" and nearest_mode.startswith(b"round_prefer"):
        for i, o in zip(in_shape, out_shape):
            if i and o and o % i and i % o:
                return f"nearest_mode={nearest_mode.decode()} at a fractional size ratio"
    return None


def shape_rejections(model, input_shapes: dict[str, list[int]]) -> Counter:
    """`Op (reason)` -> count for conversions that are wrong only for some shapes."""
    out: Counter = Counter()
    if not any(n.op_type in ("Resize", "ReduceMax", "ReduceMin") for n in model.graph.node):
        return out
    _, shapes = _with_input_shapes(model, input_shapes)
    shapes = shapes or {}
    produced = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.op_type == "Resize":
            reason = _resize_reason(node, model.graph, produced, shapes.get(node.input[0]), shapes.get(node.output[0]))
            if reason:
                out[f"Resize ({reason})"] += 1
        elif node.op_type in ("ReduceMax", "ReduceMin") and 0 in (shapes.get(node.input[0]) or []):
            # TVM's reductions start from the type's finite extreme; ONNX gives -inf / +inf.
            out[f"{node.op_type} (an empty input)"] += 1
    return out
    _, shapes = _with_input_shapes(model, input_shapes)
    produced = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.op_type == "Resize":
            reason = _resize_reason(
                node, model.graph, produced, (shapes or {}).get(node.input[0]), (shapes or {}).get(node.output[0])
            )
            if reason:
                out[f"Resize ({reason})"] += 1
    return out


def _dtypes(model) -> dict[str, str]:
    """Value name -> ONNX element type name (FLOAT, FLOAT8E4M3FN, ...), from shape inference."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # inference is best effort here; rules that need a dtype then do not fire
        inferred = model
    out = {}
    for vi in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
        elem = vi.type.tensor_type.elem_type
        if elem:
            out[vi.name] = onnx.TensorProto.DataType.Name(elem)
    for init in model.graph.initializer:
        out[init.name] = onnx.TensorProto.DataType.Name(init.data_type)
    return out


def rejections(model, rules: list[tuple[str, Rule]] = RULES) -> Counter:
    """`Op (reason)` -> count, for every node a rule refuses and that cannot be expanded."""
    out: Counter = Counter()
    dtypes: dict[str, str] | None = None
    for graph in _subgraphs(model.graph):
        produced = {o: n for n in graph.node for o in n.output}
        for node in graph.node:
            if node.domain not in ("", "ai.onnx"):
                continue
            if dtypes is None:
                dtypes = _dtypes(model)
            if rules is RULES:
                reason = _dtype_rejections(node, dtypes, graph is model.graph)
                if reason:
                    out[f"{node.op_type} ({reason})"] += 1
                    continue
            for op, rule in rules:
                if node.op_type != op:
                    continue
                reason = rule(node, graph, produced, dtypes)
                if reason and (reason in EXPANSION_WRONG_TOO or not _has_function(node.op_type, _opset(model))):
                    out[f"{op} ({reason})"] += 1
    return out


def _schema(op: str, opset: int):
    try:
        return onnx.defs.get_schema(op, opset, "")
    except onnx.defs.SchemaError:
        return None


def _has_function(op: str, opset: int) -> bool:
    schema = _schema(op, opset)
    return schema is not None and (schema.has_function or schema.has_context_dependent_function)


def expandable(op: str, opset: int) -> bool:
    """Whether `op` can be replaced by the function body its ONNX schema defines."""
    return _has_function(op, opset)


def _needs_expansion(node, graph, produced, dtypes, convertible: set[str], opset: int) -> bool:
    if node.domain not in ("", "ai.onnx") or not _has_function(node.op_type, opset):
        return False
    if node.op_type not in convertible:
        return True
    reasons = {rule(node, graph, produced, dtypes) for op, rule in RULES if op == node.op_type}
    return bool(reasons - {None}) and not reasons & EXPANSION_WRONG_TOO


def _set_default_attributes(node, schema) -> None:
    """Write out the schema's defaults for attributes `node` leaves unset: a function body refers to
    them (Cast(to=@output_datatype) in HannWindow), and the inliner drops a reference to an unset one."""
    present = {a.name for a in node.attribute}
    for name, spec in schema.attributes.items():
        default = spec.default_value
        if name not in present and default is not None and default.type != onnx.AttributeProto.UNDEFINED:
            attr = onnx.AttributeProto()
            attr.CopyFrom(default)
            attr.name = name
            node.attribute.append(attr)


def expand_functions(model, convertible: set[str]):
    """Inline the ONNX function body of each node TVM cannot convert correctly. Returns a new model."""
    opset = _opset(model)
    graph = model.graph
    produced = {o: n for n in graph.node for o in n.output}
    dtypes = _dtypes(model)
    todo = [n for n in graph.node if _needs_expansion(n, graph, produced, dtypes, convertible, opset)]
    if not todo:
        return model
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {
        vi.name: vi.type
        for vi in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output)
    }
    for init in model.graph.initializer:
        types.setdefault(init.name, helper.make_tensor_type_proto(init.data_type, list(init.dims)))
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = list(out.graph.node)
    index = {id(n): i for i, n in enumerate(graph.node)}
    for k, node in enumerate(todo):
        schema = _schema(node.op_type, opset)
        if schema.has_function and schema.function_body.node:
            body = onnx.FunctionProto()
            body.CopyFrom(schema.function_body)
        else:
            input_types = [
                types[i].SerializeToString() if i in types else onnx.TypeProto().SerializeToString() for i in node.input
            ]
            body = onnx.FunctionProto.FromString(
                schema.get_context_dependent_function(node.SerializeToString(), input_types)
            )
        name = f"{node.op_type}_{k}"
        body.name = name
        body.domain = EXPAND_DOMAIN
        if not any(o.domain in ("", "ai.onnx") for o in body.opset_import):
            body.opset_import.append(helper.make_opsetid("", opset))
        call = nodes[index[id(node)]]
        _set_default_attributes(call, schema)
        call.domain = EXPAND_DOMAIN
        call.op_type = name
        out.functions.append(body)
    out.opset_import.append(helper.make_opsetid(EXPAND_DOMAIN, 1))
    inlined = onnx.inliner.inline_local_functions(out, convert_version=True)
    del inlined.opset_import[:]
    inlined.opset_import.extend(o for o in out.opset_import if o.domain != EXPAND_DOMAIN)
    return inlined


# Folding stops at tensors this large: it exists to turn shape arithmetic into constants,
# not to precompute weights.
_FOLD_MAX_ELEMENTS = 1 << 16
_NEVER_FOLD = {
    "RandomNormal",
    "RandomNormalLike",
    "RandomUniform",
    "RandomUniformLike",
    "Multinomial",
    "Bernoulli",
    "If",
    "Loop",
    "Scan",
}


def _static_shape(vi) -> list[int] | None:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    return None if any(d is None for d in dims) else dims


def _with_input_shapes(model, input_shapes: dict[str, list[int]]):
    """A copy of `model` with the input shapes fixed, and every value's static shape (or None)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for inp in out.graph.input:
        if inp.name in input_shapes and inp.type.HasField("tensor_type"):
            shape = inp.type.tensor_type.shape
            del shape.dim[:]
            for d in input_shapes[inp.name]:
                shape.dim.add().dim_value = int(d)
    try:
        inferred = onnx.shape_inference.infer_shapes(out, data_prop=True)
    except Exception:  # shape inference is best effort: callers then leave the model as it is
        return out, None
    shapes = {
        vi.name: _static_shape(vi)
        for vi in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output)
    }
    shapes.update({i.name: list(i.dims) for i in out.graph.initializer})
    return out, shapes


def conv_transpose_output_shape(model, input_shapes: dict[str, list[int]]):
    """ConvTranspose(output_shape=...) -> explicit pads and output_padding, by ONNX's formula
    (TVM ignores output_shape). Left alone, and later refused, when a shape is not static."""
    nodes = [
        n
        for n in model.graph.node
        if n.op_type == "ConvTranspose" and n.domain in ("", "ai.onnx") and _attr(n, "output_shape")
    ]
    if not nodes:
        return model
    out, shapes = _with_input_shapes(model, input_shapes)
    if shapes is None:
        return model
    for node in out.graph.node:
        if node.op_type != "ConvTranspose" or not _attr(node, "output_shape"):
            continue
        x, w = shapes.get(node.input[0]), shapes.get(node.input[1])
        if x is None or w is None:
            continue
        n = len(x) - 2
        kernel = list(_attr(node, "kernel_shape", w[2:]))
        strides = list(_attr(node, "strides", [1] * n))
        dilations = list(_attr(node, "dilations", [1] * n))
        out_pad = list(_attr(node, "output_padding", [0] * n))
        target = list(_attr(node, "output_shape"))[-n:]
        begins, ends = [], []
        for i in range(n):
            total = strides[i] * (x[2 + i] - 1) + out_pad[i] + (kernel[i] - 1) * dilations[i] + 1 - target[i]
            if total < 0:  # a larger output than the pads can give: grow output_padding instead
                out_pad[i] -= total
                total = 0
            half = total // 2
            if _attr(node, "auto_pad", b"NOTSET") == b"SAME_UPPER":
                begins.append(half)
                ends.append(total - half)
            else:
                begins.append(total - half)
                ends.append(half)
        if any(p >= max(s, d) for p, s, d in zip(out_pad, strides, dilations)):
            continue  # not expressible; the runtime rule refuses it
        kept = [a for a in node.attribute if a.name not in ("output_shape", "auto_pad", "pads", "output_padding")]
        del node.attribute[:]
        node.attribute.extend(kept)
        node.attribute.extend(
            [helper.make_attribute("pads", begins + ends), helper.make_attribute("output_padding", out_pad)]
        )
    # Keep the caller's input shapes as they were: only the node changed.
    result = onnx.ModelProto()
    result.CopyFrom(model)
    del result.graph.node[:]
    result.graph.node.extend(out.graph.node)
    return result


# Rounds of folding: each round's shape inference sees through the slices and reshapes the
# previous round made constant (torch's chunk/view chains nest a few deep).
_FOLD_ROUNDS = 8


def fold_constants(model, input_shapes: dict[str, list[int]]):
    """Fold shape arithmetic to a fixed point (see `_fold_once`). Returns a new model, or `model`."""
    for _ in range(_FOLD_ROUNDS):
        folded = _fold_once(model, input_shapes)
        if folded is model:
            break
        model = folded
    return model


def _fold_once(model, input_shapes: dict[str, list[int]]):
    """With the input shapes fixed, replace Shape nodes and every node whose inputs are all
    constants by initializers (evaluated with ONNX's reference implementation). Returns a new
    model. Exported graphs compute reshape targets, pads and axes this way; TVM needs them constant."""
    import numpy as np
    from onnx import numpy_helper
    from onnx.reference import ReferenceEvaluator

    out, shapes = _with_input_shapes(model, input_shapes)
    if shapes is None:
        return model
    graph = out.graph
    graph_inputs = {i.name for i in graph.input} - {i.name for i in graph.initializer}
    known = {i.name: numpy_helper.to_array(i) for i in graph.initializer if i.name not in graph_inputs}
    opset = [o for o in out.opset_import]
    kept, folded = [], 0
    for node in graph.node:
        value = None
        standard = node.domain in ("", "ai.onnx")
        if standard and node.op_type == "Shape" and shapes.get(node.input[0]) is not None:
            dims = shapes[node.input[0]]
            start, end = _attr(node, "start", 0), _attr(node, "end", None)
            value = [np.array(dims[start:end] if end is not None else dims[start:], dtype=np.int64)]
        elif (
            standard
            and node.op_type not in _NEVER_FOLD
            and all(i == "" or i in known for i in node.input)
            and not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)
            and sum(known[i].size for i in node.input if i) <= _FOLD_MAX_ELEMENTS
        ):
            try:
                sub = helper.make_model(
                    helper.make_graph(
                        [node],
                        "fold",
                        [
                            helper.make_tensor_value_info(
                                i, helper.np_dtype_to_tensor_dtype(known[i].dtype), known[i].shape
                            )
                            for i in node.input
                            if i
                        ],
                        [helper.make_empty_tensor_value_info(o) for o in node.output if o],
                    ),
                    opset_imports=opset,
                    ir_version=out.ir_version,
                )
                value = ReferenceEvaluator(sub).run(None, {i: known[i] for i in node.input if i})
            except Exception:  # anything the reference cannot evaluate stays in the graph
                value = None
            if value is not None and any(not isinstance(v, np.ndarray) or v.size > _FOLD_MAX_ELEMENTS for v in value):
                value = None
        if value is None:
            kept.append(node)
            continue
        folded += 1
        for name, array in zip([o for o in node.output if o], value):
            known[name] = np.asarray(array)
            graph.initializer.append(numpy_helper.from_array(np.asarray(array), name))
    if not folded:
        return model
    del graph.node[:]
    graph.node.extend(kept)
    return out


def nms_strict_iou(model) -> None:
    """NonMaxSuppression: ONNX suppresses a box when IoU > threshold, TVM when IoU >= threshold.

    Feeding TVM the next float32 above the threshold makes `>=` select exactly what `>` does.
    Only a constant threshold (an initializer, after constant folding) can be adjusted; a
    run-time one is refused by RUNTIME_RULES.
    """
    initializers = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "NonMaxSuppression" or len(node.input) < 4 or node.input[3] not in initializers:
            continue
        threshold = numpy_helper.to_array(initializers[node.input[3]]).astype(np.float32)
        name = f"{node.input[3]}__edgefleet_strict"
        if name not in initializers:
            strict = numpy_helper.from_array(np.nextafter(threshold, np.float32(np.inf)).astype(np.float32), name)
            model.graph.initializer.append(strict)
            initializers[name] = strict
        node.input[3] = name


def exact_resize(model, input_shapes: dict[str, list[int]]):
    """Resize nodes TVM would compute wrongly (`_resize_reason`) and every Upsample -> per-axis
    Gather/MatMul with the weights ONNX's reference defines (compiler/frontends/onnx/resize.py). Needs
    static shapes and constant parameters; what cannot be rewritten is left for the refusal."""
    from edgefleet.compiler.frontends.onnx.resize import separable

    if not any(n.op_type in ("Resize", "Upsample") for n in model.graph.node):
        return model
    out, shapes = _with_input_shapes(model, input_shapes)
    if shapes is None:
        return model
    graph, opset = out.graph, _opset(out)
    produced = {o: n for n in graph.node for o in n.output}
    types = _elem_types(out)
    nodes, changed = [], False
    for node in graph.node:
        in_shape = shapes.get(node.input[0]) if node.op_type in ("Resize", "Upsample") else None
        out_shape = shapes.get(node.output[0])
        wanted = in_shape is not None and (
            node.op_type == "Upsample" or _resize_reason(node, graph, produced, in_shape, out_shape)
        )
        rewritten = separable(node, graph, opset, in_shape, types.get(node.input[0], 0), out_shape) if wanted else None
        if rewritten is None:
            nodes.append(node)
            continue
        changed = True
        nodes += rewritten[0]
        graph.initializer.extend(rewritten[1])
    if not changed:
        return model
    del graph.node[:]
    graph.node.extend(nodes)
    return out


def _elem_types(model) -> dict[str, int]:
    """Value name -> ONNX element type number, from shape inference (best effort)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # without types the rewrite only takes float32 for granted where it must
        return {}
    values = list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in values if vi.type.HasField("tensor_type")}
    types.update({i.name: i.data_type for i in model.graph.initializer})
    return types


def normalize_resize(model, input_shapes: dict[str, list[int]]):
    """Resize with `axes` or a keep_aspect_ratio_policy (opset 18) -> the full-rank form TVM reads.

    `axes` lists which dimensions roi / scales / sizes cover; the rewrite spells them out for
    every dimension (scale 1, roi 0..1, the input's own size elsewhere). A not_larger /
    not_smaller policy becomes the one `scales` value it implies (ONNX resizes with that
    scale), so `shape_rejections` can check that it gives whole output sizes.
    """
    if not any(
        n.op_type == "Resize" and (_attr(n, "axes") or _attr(n, "keep_aspect_ratio_policy", b"stretch") != b"stretch")
        for n in model.graph.node
    ):
        return model
    out, shapes = _with_input_shapes(model, input_shapes)
    if shapes is None:
        return model
    graph = out.graph
    produced = {o: n for n in graph.node for o in n.output}
    for node in graph.node:
        policy = _attr(node, "keep_aspect_ratio_policy", b"stretch")
        if node.op_type != "Resize" or not (_attr(node, "axes") or policy != b"stretch"):
            continue
        in_shape = shapes.get(node.input[0])
        values = [
            _constant(graph, node.input[i], produced) if len(node.input) > i and node.input[i] else None
            for i in (1, 2, 3)
        ]
        if in_shape is None or any(
            len(node.input) > i and node.input[i] and v is None for i, v in zip((1, 2, 3), values)
        ):
            continue  # not constant: the importer refuses it with its own message
        roi, scales, sizes = values
        rank = len(in_shape)
        axes = [a % rank for a in (_attr(node, "axes") or range(rank))]
        if sizes and policy != b"stretch":
            ratios = [s / in_shape[a] for s, a in zip(sizes, axes)]
            scale = min(ratios) if policy == b"not_larger" else max(ratios)
            scales, sizes = [scale] * len(axes), None
        full_scales = [1.0] * rank
        full_sizes = list(in_shape)
        full_roi = [0.0] * rank + [1.0] * rank
        for i, a in enumerate(axes):
            if scales:
                full_scales[a] = float(scales[i])
            if sizes:
                full_sizes[a] = int(sizes[i])
            if roi:
                full_roi[a], full_roi[rank + a] = float(roi[i]), float(roi[len(axes) + i])
        inputs = [node.input[0], "", "", ""]
        if roi:
            inputs[1] = f"{node.output[0]}__roi"
            graph.initializer.append(numpy_helper.from_array(np.array(full_roi, np.float32), inputs[1]))
        if scales:
            inputs[2] = f"{node.output[0]}__scales"
            graph.initializer.append(numpy_helper.from_array(np.array(full_scales, np.float32), inputs[2]))
        else:
            inputs[3] = f"{node.output[0]}__sizes"
            graph.initializer.append(numpy_helper.from_array(np.array(full_sizes, np.int64), inputs[3]))
        del node.input[:]
        node.input.extend(inputs if inputs[3] else inputs[:3])
        kept = [a for a in node.attribute if a.name not in ("axes", "keep_aspect_ratio_policy")]
        del node.attribute[:]
        node.attribute.extend(kept)
    result = onnx.ModelProto()
    result.CopyFrom(model)
    del result.graph.node[:]
    result.graph.node.extend(graph.node)
    del result.graph.initializer[:]
    result.graph.initializer.extend(graph.initializer)
    return result
