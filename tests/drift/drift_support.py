"""Helpers for the drift tests: a tiny real ONNX classifier and camera-like frames."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from edgefleet.net import free_port

LABELS = ["dark", "bright"]


def brightness_classifier(path: Path, size: int = 16) -> None:
    """A real (tiny) classifier: 'bright' when the mean pixel is over 0.5, else 'dark'; its
    confidence grows with the distance from 0.5, so darkened frames shift confidence too."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, size, size])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2])
    inits = [
        numpy_helper.from_array(np.array([1, 1], dtype=np.int64), "shape"),
        numpy_helper.from_array(np.array(0.5, dtype=np.float32), "half"),
        numpy_helper.from_array(np.array(8.0, dtype=np.float32), "gain"),
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


def scene(rng: np.random.Generator, size: tuple[int, int] = (64, 48)) -> Image.Image:
    """A 'normal' frame: mid-grey scene with texture (mean ~0.35-0.75, contrast ~0.1-0.2)."""
    level = rng.uniform(90, 190)
    pixels = np.clip(rng.normal(level, rng.uniform(25, 50), (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def darken(image: Image.Image, factor: float = 0.2) -> Image.Image:
    """Night: the same scene at a fraction of the light."""
    return Image.fromarray((np.asarray(image, dtype=np.float32) * factor).astype(np.uint8), "RGB")


def blur(image: Image.Image, radius: float = 6) -> Image.Image:
    """Fog or a smeared lens: the contrast collapses."""
    return image.filter(ImageFilter.GaussianBlur(radius))


def jpeg(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_images(folder: Path, images: list[Image.Image]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        (folder / f"frame-{i:04d}.jpg").write_bytes(jpeg(image))
    return folder


class LiveServer:
    """An ASGI app under a real uvicorn in a thread, on a free port."""

    def __init__(self, app) -> None:
        import threading

        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "LiveServer":
        import time

        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


class WebhookReceiver:
    """A plain HTTP server that records the JSON bodies POSTed to it."""

    def __init__(self) -> None:
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.bodies: list[dict] = []
        received = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "WebhookReceiver":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def compile_with_baseline(root: Path, n_images: int = 300) -> tuple[Path, Path, Path]:
    """(package, trusted public key, baseline image folder): the classifier compiled for this machine with --baseline-images."""
    from edgefleet.compiler.compile import compile_model
    from edgefleet.package import Preprocessing
    from edgefleet.signing import create_signing_key, public_path

    key = create_signing_key(root / "signing.key")
    brightness_classifier(root / "brightness.onnx")
    (root / "labels.txt").write_text("\n".join(LABELS) + "\n")
    rng = np.random.default_rng(1)
    images = write_images(root / "train", [scene(rng) for _ in range(n_images)])
    result = compile_model(
        str(root / "brightness.onnx"),
        "x86_64",
        output=root / "brightness.tar.gz",
        name="brightness",
        version="1",
        labels=root / "labels.txt",
        preprocessing=Preprocessing(resize=(16, 16)),
        key=key.path,
        quiet=True,
        baseline_images=str(images),
    )
    return result.package, public_path(key.path), images


def telemetry_windows(package: Path, pub: Path, kind: str, n: int, frames: int = 120, seed: int = 0) -> list[dict]:
    """`n` agent telemetry bodies whose drift summaries come from the agent's own code on real
    frames ("normal", "dark" or "blur") run through the package's model."""
    from edgefleet.agent.metrics import AgentMetrics, luma_stats
    from edgefleet.agent.postprocess import interpret
    from edgefleet.agent.preprocess import decode_image, preprocess
    from edgefleet.agent.runtime import load_model
    from edgefleet.package import open_package
    from edgefleet.signing import load_public_key

    rng = np.random.default_rng(seed)
    change = {"normal": lambda im: im, "dark": darken, "blur": blur}[kind]
    out = []
    with open_package(package, [load_public_key(pub)]) as opened:
        model, m = load_model(opened), opened.manifest
        for _ in range(n):
            metrics = AgentMetrics()
            for _ in range(frames):
                image = decode_image(jpeg(change(scene(rng))))
                result = interpret(model.run([preprocess(image, m.inputs[0], m.preprocessing)]), m)
                metrics.frame_ok(0.002, 0.001, *luma_stats(image), result.top_label, result.top_score)
            out.append({"schema": 1, "model": {"name": m.name, "version": m.version}, **metrics.window()})
    return out
