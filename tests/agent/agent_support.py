"""Helpers for the agent tests: frames, configs, running `edgefleet agent run` as a process."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support.broker import Broker
from support.scenes import box_iou  # noqa: F401  (the agent tests' IoU)

LABELS = ["dark", "bright"]


def brightness_onnx(path: Path, size: int = 16, threshold: float = 0.5) -> None:
    """A real (tiny) classifier: 'bright' when the mean pixel is over `threshold`, else 'dark'."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, size, size])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2])
    inits = [
        numpy_helper.from_array(np.array([1, 1], dtype=np.int64), "shape"),
        numpy_helper.from_array(np.array(threshold, dtype=np.float32), "half"),
        numpy_helper.from_array(np.array(20.0, dtype=np.float32), "gain"),
    ]
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["m"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Reshape", ["m", "shape"], ["r"]),
        helper.make_node("Sub", ["r", "half"], ["d"]),
        helper.make_node("Mul", ["d", "gain"], ["pos"]),
        helper.make_node("Neg", ["pos"], ["neg"]),
        helper.make_node("Concat", ["neg", "pos"], ["logits"], axis=1),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "brightness", [x], [y], inits), opset_imports=[helper.make_opsetid("", 13)]
    )
    model.ir_version = 8
    onnx.save(model, str(path))


DETECTION_BOXES = [[0.1, 0.2, 0.5, 0.6], [0.3, 0.3, 0.9, 0.8]]  # ymin, xmin, ymax, xmax


def detection_onnx(
    path: Path,
    size: int = 16,
    boxes: list[list[float]] = DETECTION_BOXES,
    classes: tuple[int, int] = (0, 1),
    dark_first: bool = False,
) -> None:
    """A real (tiny) detector in the SSD output layout: two fixed boxes of `classes`, the first scored by
    brightness (the mean pixel) and the second by darkness (1 - it), or the other way with `dark_first`;
    by default 'person' (class 0) by brightness, 'car' (class 1) by darkness."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, size, size])
    outputs = [
        helper.make_tensor_value_info("detection_boxes", TensorProto.FLOAT, [1, 2, 4]),
        helper.make_tensor_value_info("detection_classes", TensorProto.FLOAT, [1, 2]),
        helper.make_tensor_value_info("detection_scores", TensorProto.FLOAT, [1, 2]),
        helper.make_tensor_value_info("num_detections", TensorProto.FLOAT, [1]),
    ]
    inits = [
        numpy_helper.from_array(np.array([1, 1], dtype=np.int64), "shape"),
        numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one"),
        numpy_helper.from_array(np.array([boxes], dtype=np.float32), "boxes"),
        numpy_helper.from_array(np.array([classes], dtype=np.float32), "classes"),
        numpy_helper.from_array(np.array([2.0], dtype=np.float32), "count"),
    ]
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["m"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Reshape", ["m", "shape"], ["r"]),
        helper.make_node("Sub", ["one", "r"], ["inv"]),
        helper.make_node("Concat", ["inv", "r"] if dark_first else ["r", "inv"], ["detection_scores"], axis=1),
        helper.make_node("Identity", ["boxes"], ["detection_boxes"]),
        helper.make_node("Identity", ["classes"], ["detection_classes"]),
        helper.make_node("Identity", ["count"], ["num_detections"]),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "detector", [x], outputs, inits), opset_imports=[helper.make_opsetid("", 13)]
    )
    model.ir_version = 8
    onnx.save(model, str(path))


def square_detector_onnx(path: Path, size: int = 32, anchors: int = 8) -> None:
    """A real (tiny) detector with an anchor-free YOLO output [1, 5, anchors]: it finds the bright square.

    The mask is the pixels brighter than 0.5 (the letterbox's grey 114 and a dark background are
    not); the box is the mask's centroid with side sqrt(mask area), score 1 once it covers 4
    pixels. Every anchor repeats the box, a little shifted and lower scored, so NMS has
    duplicates to remove.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    centres = np.arange(size, dtype=np.float32) + 0.5
    k = np.arange(anchors, dtype=np.float32)
    jitter_add = np.zeros((1, 5, anchors), np.float32)
    jitter_add[0, 0] = 0.2 * k  # cx shifts by a fraction of a pixel: the duplicates overlap
    jitter_mul = np.ones((1, 5, anchors), np.float32)
    jitter_mul[0, 4] = 1.0 - 0.03 * k
    consts = {
        "half": np.float32(0.5),
        "four": np.float32(4.0),
        "one": np.float32(1.0),
        "quarter": np.float32(0.25),
        "eps": np.float32(1e-6),
        "axes": np.array([1, 2, 3], np.int64),
        "xs": centres.reshape(1, 1, 1, size),
        "ys": centres.reshape(1, 1, size, 1),
        "shape": np.array([1, 5, 1], np.int64),
        "reps": np.array([1, 1, anchors], np.int64),
        "jadd": jitter_add,
        "jmul": jitter_mul,
    }
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["grey"], axes=[1], keepdims=1),
        helper.make_node("Sub", ["grey", "half"], ["d"]),
        helper.make_node("Relu", ["d"], ["r"]),
        helper.make_node("Mul", ["r", "four"], ["r4"]),
        helper.make_node("Min", ["r4", "one"], ["mask"]),
        helper.make_node("ReduceSum", ["mask", "axes"], ["count"], keepdims=1),
        helper.make_node("Add", ["count", "eps"], ["safe"]),
        helper.make_node("Mul", ["mask", "xs"], ["mx"]),
        helper.make_node("ReduceSum", ["mx", "axes"], ["sx"], keepdims=1),
        helper.make_node("Div", ["sx", "safe"], ["cx"]),
        helper.make_node("Mul", ["mask", "ys"], ["my"]),
        helper.make_node("ReduceSum", ["my", "axes"], ["sy"], keepdims=1),
        helper.make_node("Div", ["sy", "safe"], ["cy"]),
        helper.make_node("Sqrt", ["count"], ["side"]),
        helper.make_node("Mul", ["count", "quarter"], ["c4"]),
        helper.make_node("Min", ["c4", "one"], ["score"]),
        helper.make_node("Concat", ["cx", "cy", "side", "side", "score"], ["row"], axis=1),
        helper.make_node("Reshape", ["row", "shape"], ["col"]),
        helper.make_node("Tile", ["col", "reps"], ["tiled"]),
        helper.make_node("Mul", ["tiled", "jmul"], ["scaled"]),
        helper.make_node("Add", ["scaled", "jadd"], ["output0"]),
    ]
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, size, size])
    y = helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 5, anchors])
    inits = [numpy_helper.from_array(np.asarray(v), name) for name, v in consts.items()]
    graph = helper.make_graph(nodes, "squares", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))


def square_jpeg(box: tuple[int, int, int, int], size: tuple[int, int] = (96, 64)) -> bytes:
    """A dark frame with a white square at box (x1, y1, x2, y2), as JPEG."""
    buf = io.BytesIO()
    image = Image.new("RGB", size, (40, 40, 40))
    image.paste((255, 255, 255), box)
    image.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def jpeg(value: int, size: tuple[int, int] = (64, 48)) -> bytes:
    """A solid grey JPEG: value > 128 is 'bright' for the test model."""
    buf = io.BytesIO()
    Image.new("RGB", size, (value, value, value)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def drop_frame(folder: Path, name: str, data: bytes) -> None:
    """Write then rename, as the folder source expects."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.tmp"
    tmp.write_bytes(data)
    tmp.rename(folder / name)


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):  # inline table: what tables nested deeper than [a.b] need
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_config(path: Path, sections: dict) -> Path:
    """A tiny TOML writer for test configs: top-level scalars, [tables], [[sources]]."""
    lines = []
    for key, value in sections.items():
        if not isinstance(value, (dict, list)) or (
            isinstance(value, list) and not (value and isinstance(value[0], dict))
        ):
            lines.append(f"{key} = {toml_value(value)}")
    for key, value in sections.items():
        if isinstance(value, dict):
            lines.append(f"\n[{key}]")
            nested = {k: v for k, v in value.items() if isinstance(v, dict)}
            lines += [f"{k} = {toml_value(v)}" for k, v in value.items() if not isinstance(v, dict)]
            for sub, table in nested.items():
                lines.append(f"\n[{key}.{sub}]")
                lines += [f"{k} = {toml_value(v)}" for k, v in table.items()]
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for item in value:
                lines.append(f"\n[[{key}]]")
                lines += [f"{k} = {toml_value(v)}" for k, v in item.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def agent_config(
    tmp_path: Path,
    broker: Broker,
    package: tuple[Path, Path],
    *,
    device: str = "cam-1",
    rules: dict | None = None,
    sources: list[dict] | None = None,
    host: str | None = None,
    transport: str = "paho",
    **extra,
) -> dict:
    cert, key = broker.pki.issue(device)
    pkg, trust = package
    config = {
        "version": 1,
        "state_dir": str(tmp_path / f"state-{device}"),
        "mqtt": {
            "host": host or broker.host,
            "port": broker.port,
            "device_id": device,
            "transport": transport,
            "reconnect_min_s": 0.5,
            "reconnect_max_s": 1.0,
            "tls": {"ca_file": str(broker.pki.ca_file), "cert_file": str(cert), "key_file": str(key)},
        },
        "model": {"package": str(pkg), "trusted_keys": [str(trust)]},
        "sources": sources
        or [{"type": "folder", "path": str(tmp_path / "incoming"), "max_fps": 200.0, "poll_s": 0.05}],
        "rules": rules or {"labels": ["bright"], "min_score": 0.9},
        "telemetry": {"interval_s": 3600.0},
        "health": {"enabled": False},
    }
    config.update(extra)
    return config


def start_agent(config_path: Path, *args: str, log: Path | None = None, env: dict | None = None) -> subprocess.Popen:
    """`edgefleet agent run` as a real process (so it can be SIGKILLed); `env` adds to the environment."""
    out = open(log, "ab") if log else subprocess.DEVNULL
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "edgefleet.cli", "agent", "run", "--config", str(config_path), *args],
        stdout=out,
        stderr=subprocess.STDOUT,
        env=env,
    )


def wait_until(predicate, timeout: float = 20.0, step: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(step)
    raise AssertionError(f"condition not met within {timeout} s")


def compile_test_package(root: Path, build_onnx, name: str, labels: list[str], **options) -> tuple[Path, Path]:
    """(package, trusted public key): `build_onnx(path)`'s model compiled for this machine by `edgefleet compile`."""
    from edgefleet.compiler.compile import compile_model
    from edgefleet.signing import create_signing_key, public_path

    key = create_signing_key(root / "signing.key")
    build_onnx(root / f"{name}.onnx")
    (root / "labels.txt").write_text("\n".join(labels) + "\n")
    result = compile_model(
        str(root / f"{name}.onnx"),
        "x86_64",
        output=root / f"{name}.tar.gz",
        name=name,
        version="1",
        labels=root / "labels.txt",
        key=key.path,
        quiet=True,
        **options,
    )
    return result.package, public_path(key.path)


@pytest.fixture(scope="session")
def agent_package(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(package, trusted public key): the brightness model compiled for this machine by `edgefleet compile`."""
    from edgefleet.package import Preprocessing

    return compile_test_package(
        tmp_path_factory.mktemp("agent-package"),
        brightness_onnx,
        "brightness",
        LABELS,
        preprocessing=Preprocessing(resize=(16, 16)),
    )
