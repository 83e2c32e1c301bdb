"""8-, 4- and 2-bit element types (compiler/frontends/onnx/lowbit.py) through the real compile path
(EdgefleetBackend: checks, import, optimize, build, export, load, run), compared with ONNX's
reference implementation on values chosen to hit every rounding and special-value rule: all
float16 values, ties and near-ties of every target format, subnormals, NaN, +-inf, -0, the
largest finite values and what lies just beyond them."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from edgefleet.compiler import conformance as c
from edgefleet.errors import UnsupportedOperatorsError

# The probe values overflow the narrower types on purpose.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

FLOAT8 = ["FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ"]
FLOATS = [*FLOAT8, "FLOAT4E2M1"]
INTS = ["INT4", "UINT4", "INT2", "UINT2"]
OPSET = 25


@pytest.fixture(autouse=True)
def _home(edgefleet_home):
    return edgefleet_home


def _np_dtype(name: str) -> np.dtype:
    return np.dtype(helper.tensor_dtype_to_np_dtype(getattr(TensorProto, name)))


def _model(nodes, inputs, outputs, initializers=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 11
    onnx.checker.check_model(model)
    return model


def _io(name: str, onnx_type: str, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, getattr(TensorProto, onnx_type), list(shape))


def _run(model, feeds: dict[str, np.ndarray]):
    """(edgefleet's outputs, the reference's outputs)."""
    actual = c._backend_class().run_model(model, list(feeds.values()))
    return actual, ReferenceEvaluator(model).run(None, feeds)


def _assert_same(actual: np.ndarray, expected: np.ndarray, what: str) -> None:
    """Same dtype and shape; NaN where the reference has NaN; every other element bit for bit
    (so -0 and 0 differ, unlike the onnx runner's comparison)."""
    assert actual.dtype == expected.dtype, what
    assert actual.shape == expected.shape, what
    nan = (
        np.isnan(expected.astype(np.float64))
        if expected.dtype.kind not in "iu" and "int" not in expected.dtype.name
        else np.zeros(expected.shape, bool)
    )
    got_nan = np.isnan(actual.astype(np.float64)) if nan.any() else nan
    width = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[expected.dtype.itemsize]
    bad = (nan != got_nan) | (~nan & (actual.view(width) != expected.view(width)))
    if bad.any():
        idx = np.flatnonzero(bad.ravel())[:8]
        raise AssertionError(
            f"{what}: {bad.sum()} of {bad.size} differ, e.g. at {idx.tolist()}: got {actual.ravel()[idx]} expected {expected.ravel()[idx]}"
        )


def _float32_probes() -> np.ndarray:
    """Every float16 value, and for every format: each representable value, the midpoints
    between neighbours (ties) and one float32 ulp either side, the overflow region, float32
    subnormals, NaN payloads and random bit patterns."""
    values = [np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)]
    for name in [*FLOATS, "FLOAT8E8M0"]:
        grid = np.unique(np.arange(256, dtype=np.uint8).view(_np_dtype(name)).astype(np.float32))
        grid = grid[np.isfinite(grid)]
        grid = np.concatenate([grid, [grid.max() * 1.25, grid.max() * 2]])  # past the largest finite value
        mid = ((grid[:-1].astype(np.float64) + grid[1:]) / 2).astype(np.float32)
        near = np.concatenate(
            [mid, np.nextafter(mid, np.float32(np.inf)), np.nextafter(mid, np.float32(-np.inf)), grid]
        )
        values += [near, -near]
    rng = np.random.default_rng(0)
    specials = np.array(
        [
            0x7F800000,
            0xFF800000,
            0x7FC00000,
            0xFFC00000,
            0x7F800001,
            0x7FBFFFFF,
            0x00000001,
            0x807FFFFF,
            0x00400000,
            0x80000000,
            0x7F7FFFFF,
        ],
        np.uint32,
    )
    values += [
        specials.view(np.float32),
        rng.integers(0, 1 << 32, 20000, dtype=np.uint64).astype(np.uint32).view(np.float32),
    ]
    return np.concatenate(values).astype(np.float32)


with np.errstate(over="ignore"):
    PROBES = _float32_probes()


@pytest.mark.parametrize("source", ["FLOAT", "FLOAT16", "BFLOAT16"])
def test_cast_to_float8_and_float4(source):
    # One model per source type: every target format, saturate=1 and 0, Cast and CastLike.
    x = PROBES.astype(_np_dtype(source))
    nodes, outputs, inputs = [], [], [_io("x", source, x.shape)]
    feeds = {"x": x}
    for k, dst in enumerate(FLOATS):
        for saturate in (1, 0):
            nodes.append(
                helper.make_node("Cast", ["x"], [f"y{k}_{saturate}"], to=getattr(TensorProto, dst), saturate=saturate)
            )
            outputs.append(_io(f"y{k}_{saturate}", dst, x.shape))
        inputs.append(_io(f"like{k}", dst, [1]))
        feeds[f"like{k}"] = np.zeros(1, _np_dtype(dst))
        nodes.append(helper.make_node("CastLike", ["x", f"like{k}"], [f"z{k}"], saturate=0))
        outputs.append(_io(f"z{k}", dst, x.shape))
    actual, expected = _run(_model(nodes, inputs, outputs), feeds)
    for out, a, e in zip(outputs, actual, expected):
        _assert_same(a, e, f"{source} -> {out.name}")


def test_cast_from_float8_and_float4_every_bit_pattern():
    inputs, nodes, outputs, feeds = [], [], [], {}
    for k, src in enumerate([*FLOATS, "FLOAT8E8M0"]):
        x = np.arange(256 if src != "FLOAT4E2M1" else 16, dtype=np.uint8).view(_np_dtype(src)).reshape(-1, 16)
        feeds[f"x{k}"] = x
        inputs.append(_io(f"x{k}", src, x.shape))
        for dst in ("FLOAT", "FLOAT16", "DOUBLE", "BFLOAT16"):
            nodes.append(helper.make_node("Cast", [f"x{k}"], [f"y{k}_{dst}"], to=getattr(TensorProto, dst)))
            outputs.append(_io(f"y{k}_{dst}", dst, x.shape))
    actual, expected = _run(_model(nodes, inputs, outputs), feeds)
    for out, a, e in zip(outputs, actual, expected):
        _assert_same(a, e, out.name)


@pytest.mark.parametrize("source", ["FLOAT", "FLOAT16"])
def test_cast_to_float8e8m0_every_round_mode(source):
    x = np.abs(PROBES).astype(_np_dtype(source))  # ONNX leaves negative values undefined
    nodes, outputs = [], []
    for mode in ("up", "down", "nearest"):
        for saturate in (1, 0):
            name = f"y_{mode}_{saturate}"
            nodes.append(
                helper.make_node("Cast", ["x"], [name], to=TensorProto.FLOAT8E8M0, saturate=saturate, round_mode=mode)
            )
            outputs.append(_io(name, "FLOAT8E8M0", x.shape))
    actual, expected = _run(_model(nodes, [_io("x", source, x.shape)], outputs), {"x": x})
    for out, a, e in zip(outputs, actual, expected):
        _assert_same(a, e, out.name)


def test_float8_and_float4_inside_the_model():
    # Values that stay inside the compiled model (float4 is carried unpacked there).
    x = PROBES[np.isfinite(PROBES)][:5001].reshape(3, 1667)
    nodes = [
        helper.make_node("Cast", ["x"], ["a"], to=TensorProto.FLOAT8E5M2FNUZ, saturate=1),
        helper.make_node("Cast", ["a"], ["y"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["x"], ["b"], to=TensorProto.FLOAT4E2M1),
        helper.make_node("Cast", ["b"], ["z"], to=TensorProto.FLOAT16),
    ]
    model = _model(nodes, [_io("x", "FLOAT", x.shape)], [_io("y", "FLOAT", x.shape), _io("z", "FLOAT16", x.shape)])
    actual, expected = _run(model, {"x": x})
    for name, a, e in zip("yz", actual, expected):
        _assert_same(a, e, name)


def test_int4_and_int2_casts():
    rng = np.random.default_rng(1)
    # ONNX leaves float -> integer undefined out of range and for NaN: finite values that fit.
    floats = np.concatenate([np.arange(-40, 40, 0.25), rng.uniform(-1e6, 1e6, 500)]).astype(np.float32)
    ints = np.concatenate([np.arange(-300, 300), rng.integers(-(2**31), 2**31 - 1, 500)]).astype(np.int32)
    inputs = [
        _io("f", "FLOAT", floats.shape),
        _io("h", "FLOAT16", floats.shape),
        _io("i", "INT32", ints.shape),
        _io("l", "INT64", ints.shape),
    ]
    feeds = {"f": floats, "h": floats.astype(np.float16), "i": ints, "l": ints.astype(np.int64) * 3}
    nodes, outputs = [], []
    for dst in INTS:
        for src, shape in (("f", floats.shape), ("h", floats.shape), ("i", ints.shape), ("l", ints.shape)):
            name = f"{src}_{dst}"
            nodes.append(helper.make_node("Cast", [src], [name], to=getattr(TensorProto, dst)))
            outputs.append(_io(name, dst, shape))
        # every value of the type (odd counts exercise the packing's last byte)
        values = np.arange(-8, 16, dtype=np.int32)
        values = values[
            (values >= ml_dtypes.iinfo(_np_dtype(dst)).min) & (values <= ml_dtypes.iinfo(_np_dtype(dst)).max)
        ]
        x = values.astype(_np_dtype(dst))[:-1]
        feeds[dst] = x
        inputs.append(_io(dst, dst, x.shape))
        for to in ("FLOAT", "FLOAT16", "DOUBLE", "INT8", "UINT8", "INT64", "UINT32"):
            name = f"{dst}_{to}"
            nodes.append(helper.make_node("Cast", [dst], [name], to=getattr(TensorProto, to)))
            outputs.append(_io(name, to, x.shape))
    actual, expected = _run(_model(nodes, inputs, outputs), feeds)
    for out, a, e in zip(outputs, actual, expected):
        _assert_same(a, e, out.name)


@pytest.mark.parametrize("onnx_type", ["FLOAT8E5M2", "FLOAT4E2M1", "INT4"])
def test_empty_tensors(onnx_type):
    x = np.zeros((0, 3), _np_dtype(onnx_type))
    nodes = [
        helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["y"], ["z"], to=getattr(TensorProto, onnx_type)),
    ]
    model = _model(nodes, [_io("x", onnx_type, x.shape)], [_io("y", "FLOAT", x.shape), _io("z", onnx_type, x.shape)])
    actual, expected = _run(model, {"x": x})
    for name, a, e in zip("yz", actual, expected):
        _assert_same(a, e, name)


@pytest.mark.parametrize("dst", [*FLOATS, *INTS])
def test_quantize_linear(dst):
    rng = np.random.default_rng(2)
    # per-channel scales along axis 1; x / scale hits ties (k + 0.5) and the saturation ranges
    scale = np.array([0.5, 2.0, 3.0], np.float32)
    ties = (np.arange(-40, 40) + 0.5).astype(np.float32)
    base = np.concatenate(
        [ties, rng.uniform(-600, 600, 400).astype(np.float32), [0.0, -0.0, np.inf, -np.inf, 1e9, -1e9]]
    ).astype(np.float32)
    x = (base[:, None] * scale[None, :]).astype(np.float32)
    dtype = _np_dtype(dst)
    zero = np.array(
        [1, 0, -1]
        if dst.startswith("INT")
        else [1, 0, 2]
        if dst.startswith("UINT")
        else [0.5, 0, -1]
        if dst == "FLOAT4E2M1"
        else [0, 0, 0],
        np.float32,
    ).astype(dtype)
    if dst in INTS:
        x = x[np.isfinite(x).all(axis=1)]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"], axis=1)]
    outputs = [_io("y", dst, x.shape)]
    if dst in FLOAT8:
        nodes.append(helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y0"], axis=1, saturate=0))
        outputs.append(_io("y0", dst, x.shape))
    model = _model(nodes, [_io("x", "FLOAT", x.shape), _io("s", "FLOAT", [3]), _io("z", dst, [3])], outputs)
    actual, expected = _run(model, {"x": x, "s": scale, "z": zero})
    for out, a, e in zip(outputs, actual, expected):
        _assert_same(a, e, f"QuantizeLinear -> {out.name}")


def test_quantize_linear_float16_input():
    x = np.arange(-300, 300, 0.75).astype(np.float16)
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], [f"y{k}"], axis=0) for k in range(2)]
    nodes[1].input[2] = "z4"
    model = _model(
        nodes,
        [_io("x", "FLOAT16", x.shape), _io("s", "FLOAT16", []), _io("z", "FLOAT8E4M3FN", []), _io("z4", "INT4", [])],
        [_io("y0", "FLOAT8E4M3FN", x.shape), _io("y1", "INT4", x.shape)],
    )
    actual, expected = _run(
        model,
        {
            "x": x,
            "s": np.array(1.5, np.float16),
            "z": np.array(0, ml_dtypes.float8_e4m3fn),
            "z4": np.array(-3, ml_dtypes.int4),
        },
    )
    for name, a, e in zip(["y0", "y1"], actual, expected):
        _assert_same(a, e, name)


@pytest.mark.parametrize("src", [*FLOATS, *INTS])
def test_dequantize_linear(src):
    dtype = _np_dtype(src)
    count = 256 if src in FLOAT8 else 1 << (4 if src in ("FLOAT4E2M1", "INT4", "UINT4") else 2)
    x = (
        np.arange(count, dtype=np.uint8).view(dtype)
        if src in FLOATS
        else (np.arange(count) + ml_dtypes.iinfo(dtype).min).astype(dtype)
    )
    x = np.stack([x, x[::-1]], axis=0)  # axis 0 gets per-row scales
    zero = np.array(
        [1, -1] if src.startswith("INT") else [3, 0] if src.startswith("UINT") else [0, 0], np.float32
    ).astype(dtype)
    scale = np.array([0.375, 1e-3], np.float32)
    nodes = [
        helper.make_node("DequantizeLinear", ["x", "s", "z"], ["y"], axis=0),
        helper.make_node("DequantizeLinear", ["x", "s16"], ["y16"], axis=0),
    ]
    inputs = [_io("x", src, x.shape), _io("s", "FLOAT", [2]), _io("z", src, [2]), _io("s16", "FLOAT16", [2])]
    outputs = [_io("y", "FLOAT", x.shape), _io("y16", "FLOAT16", x.shape)]
    actual, expected = _run(
        _model(nodes, inputs, outputs), {"x": x, "s": scale, "z": zero, "s16": scale.astype(np.float16)}
    )
    for out, a, e in zip(outputs, actual, expected):
        _assert_same(a, e, f"DequantizeLinear {src} -> {out.name}")


def test_dequantize_linear_of_int4_weights_in_the_model():
    # Weight-only quantization as exported: int4 weights and zero points are initializers.
    rng = np.random.default_rng(3)
    w = rng.integers(-8, 8, (5, 7)).astype(ml_dtypes.int4)
    zero = rng.integers(-8, 8, (5,)).astype(ml_dtypes.int4)
    inits = [
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(zero, "wz"),
        numpy_helper.from_array(np.linspace(0.01, 0.05, 5).astype(np.float32), "ws"),
    ]
    nodes = [
        helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wf"], axis=0),
        helper.make_node("MatMul", ["x", "wf"], ["y"]),
    ]
    # (wz is listed among the graph inputs too, as older exporters list initializers)
    model = _model(nodes, [_io("x", "FLOAT", [3, 5]), _io("wz", "INT4", [5])], [_io("y", "FLOAT", [3, 7])], inits)
    x = rng.standard_normal((3, 5)).astype(np.float32)
    actual, expected = _run(model, {"x": x})
    np.testing.assert_allclose(actual[0], expected[0], rtol=1e-5, atol=1e-6)


def test_constant_nodes():
    # Constant folding turns small Constant nodes into initializers; large ones reach the importer.
    rng = np.random.default_rng(4)
    big = 70001
    values = {
        "k8": rng.standard_normal(big).astype(ml_dtypes.float8_e5m2),
        "k4": rng.integers(-8, 8, big).astype(ml_dtypes.int4),
        "kf4": rng.standard_normal(big).astype(ml_dtypes.float4_e2m1fn),
        "small": np.array([1.5, -6, 0.5], ml_dtypes.float4_e2m1fn),
    }
    nodes = [
        helper.make_node("Constant", [], [name], value=numpy_helper.from_array(v, name)) for name, v in values.items()
    ]
    nodes += [helper.make_node("Cast", [name], [f"{name}_f"], to=TensorProto.FLOAT) for name in values]
    nodes.append(helper.make_node("Cast", ["x"], ["x4"], to=TensorProto.FLOAT4E2M1))
    outputs = [_io(f"{name}_f", "FLOAT", v.shape) for name, v in values.items()] + [
        _io("small", "FLOAT4E2M1", [3]),
        _io("x4", "FLOAT4E2M1", [3]),
    ]
    model = _model(nodes, [_io("x", "FLOAT", [3])], outputs)
    actual, expected = _run(model, {"x": np.array([7.0, -0.3, 2.5], np.float32)})
    for out, a, e in zip(outputs, actual, expected):
        _assert_same(a, e, out.name)


@pytest.mark.parametrize(
    ("node", "inputs", "reason"),
    [
        (
            helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT8E4M3FN),
            [("x", "DOUBLE")],
            r"Cast \(DOUBLE to FLOAT8E4M3FN\)",
        ),
        (
            helper.make_node("Cast", ["x"], ["y"], to=TensorProto.INT32),
            [("x", "FLOAT8E5M2")],
            r"Cast \(FLOAT8E5M2 to INT32\)",
        ),
        (helper.make_node("Cast", ["x"], ["y"], to=TensorProto.UINT2), [("x", "INT4")], r"Cast \(INT4 to UINT2\)"),
        (helper.make_node("Abs", ["x"], ["y"]), [("x", "FLOAT8E4M3FN")], r"Abs \(FLOAT8E4M3FN tensors\)"),
        (
            helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT6E2M3),
            [("x", "FLOAT")],
            r"Cast \(FLOAT6E2M3 tensors\)",
        ),
        (
            helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"], axis=0, block_size=2),
            [("x", "FLOAT"), ("s", "FLOAT"), ("z", "INT4")],
            r"QuantizeLinear \(blocked quantization of low-bit types\)",
        ),
    ],
)
def test_what_stays_refused(node, inputs, reason):
    shapes = {"x": [4, 2], "s": [2, 2], "z": [2, 2]}
    outputs = [helper.make_empty_tensor_value_info("y")]
    graph = helper.make_graph([node], "g", [_io(n, t, shapes[n]) for n, t in inputs], outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    with pytest.raises(UnsupportedOperatorsError, match=reason):
        c._backend_class().prepare(model)
