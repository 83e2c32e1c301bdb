"""Agent overhead per frame beyond the model itself, frames per second, resident memory.

Runs the agent's real per-frame path (Agent.handle: decode JPEG, preprocess as the manifest
says, run the model, rules, thumbnail, outbox insert) on 640x480 camera JPEGs, and the model
alone on the same preprocessed input, for two packages compiled here: a tiny model (so the
agent's own cost dominates) and the first of ShuffleNet / SqueezeNet / ResNet-50 from the onnx
wheel that compiles (a real camera-size CNN).
No broker is contacted: the outbox stores what would be sent.

    /tmp/venv/bin/python benchmarks/agent_overhead.py [--frames 200]
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import multiprocessing
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from PIL import Image


def self_signed(root: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    (root / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (root / "c.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return root / "c.pem", root / "c.key"


def camera_jpegs(n: int) -> list[bytes]:
    # A smooth scene with sensor noise: about the size of a real 640x480 camera JPEG.
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:480, 0:640]
    frames = []
    for i in range(n):
        scene = 110 + 60 * np.sin(xx / (40 + i % 7)) * np.cos(yy / 55) + 30 * np.sin(i)
        pixels = np.clip(scene[..., None] + rng.normal(0, 6, (480, 640, 3)), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="JPEG", quality=85)
        frames.append(buf.getvalue())
    return frames


def compile_packages(root: Path) -> dict[str, tuple[Path, Path, list[str]]]:
    import onnx

    from edgefleet.compiler.compile import compile_model
    from edgefleet.errors import EdgefleetError
    from edgefleet.package import Preprocessing
    from edgefleet.signing import create_signing_key, public_path

    key = create_signing_key(root / "bench.key")
    tiny = root / "tiny.onnx"
    tests_dir = Path(__file__).resolve().parents[1] / "tests" / "agent"
    import sys

    sys.path.insert(0, str(tests_dir.parent))
    sys.path.insert(0, str(tests_dir))
    from agent_support import brightness_onnx

    brightness_onnx(tiny)
    (root / "tiny.txt").write_text("dark\nbright\n")
    light = Path(onnx.__file__).parent / "backend/test/data/light"
    (root / "imagenet.txt").write_text("\n".join(f"class{i}" for i in range(1000)) + "\n")
    imagenet = Preprocessing(resize=(224, 224), mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    out = {}
    candidates = [("tiny", tiny, root / "tiny.txt", Preprocessing(resize=(16, 16)), ["bright", "dark"])]
    # The first real CNN from the onnx wheel that this edgefleet compiles.
    candidates += [
        (m, light / f"light_{m}.onnx", root / "imagenet.txt", imagenet, ["class0"])
        for m in ("shufflenet", "squeezenet", "resnet50")
    ]
    for name, model, labels, pre, alert_labels in candidates:
        if name != "tiny" and len(out) == 2:
            break
        try:
            result = compile_model(
                str(model),
                "x86_64",
                output=root / f"{name}.tar.gz",
                name=name,
                labels=labels,
                preprocessing=pre,
                key=key.path,
                quiet=True,
                verify=False,
            )
        except EdgefleetError as exc:
            print(f"(skipping {name}: {exc.cause[:100]})")
            continue
        out[name] = (result.package, public_path(key.path), alert_labels)
    return out


def measure(
    name: str, package: Path, trust: Path, labels: list[str], frames: list[bytes], root: Path, min_score: float
) -> dict:
    from edgefleet.agent.config import parse_config
    from edgefleet.agent.preprocess import decode_image, preprocess
    from edgefleet.agent.run import Agent
    from edgefleet.agent.sources import Frame

    cert, key = self_signed(root)
    state = root / f"state-{name}-{min_score}-{len(labels)}"
    cfg = parse_config(
        {
            "version": 1,
            "state_dir": str(state),
            "mqtt": {
                "host": "127.0.0.1",
                "port": 1,
                "device_id": "bench",
                "tls": {"ca_file": str(cert), "cert_file": str(cert), "key_file": str(key)},
            },
            "model": {"package": str(package), "trusted_keys": [str(trust)]},
            "sources": [{"type": "folder", "path": str(root / "unused")}],
            "rules": {"labels": labels, "min_score": min_score, "thumbnail": True},
            "health": {"enabled": False},
        }
    )
    agent = Agent(cfg)
    agent._load_model()
    active = agent.slot.active
    batch = preprocess(decode_image(frames[0]), active.manifest.inputs[0], active.manifest.preprocessing)
    for _ in range(3):
        active.model.run([batch])
    model_ms: list[float] = []

    class Timed:
        """The same model, timing each run inside the frame's handling."""

        def run(self, inputs):
            start = time.perf_counter()
            out = active.model.run(inputs)
            model_ms.append((time.perf_counter() - start) * 1000)
            return out

    agent.slot.load_plain(type(active)(Timed(), active.manifest, active.directory))
    frame_ms = []
    for i, data in enumerate(frames):
        start = time.perf_counter()
        agent.handle(Frame(data, f"{name}-{i}", "folder"))
        frame_ms.append((time.perf_counter() - start) * 1000)
    alerts = sum(1 for m in agent.outbox.pending(limit=100_000) if m.kind == "alert")
    agent.outbox.close()
    overhead = [f - m for f, m in zip(frame_ms, model_ms)]
    return {
        "model_ms": statistics.median(model_ms),
        "frame_ms": statistics.median(frame_ms),
        "overhead_ms": statistics.median(overhead),
        "fps": 1000 / statistics.mean(frame_ms),
        "alerts": alerts,
        "rss_mib": psutil.Process().memory_info().rss / 2**20,
    }


def child(args: tuple, results) -> None:
    """Runs in a fresh process that imports only the agent, so its memory is what a camera would see."""
    results.put(measure(*args))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        frames = camera_jpegs(args.frames)
        packages = compile_packages(root)
        print(
            f"{args.frames} frames of 640x480 JPEG (~{statistics.mean(map(len, frames)) / 1024:.0f} KiB); medians per frame"
        )
        print(
            f"{'model':<11} {'alerts':<12} {'model ms':>9} {'frame ms':>9} {'overhead ms':>12} {'overhead/model':>15} {'fps':>7} {'RSS MiB':>8}"
        )
        spawn = multiprocessing.get_context("spawn")
        for name, (package, trust, labels) in packages.items():
            for rule_labels, min_score, mode in ((["no-such-label"], 0.5, "none"), (labels, 0.0, "every frame")):
                results = spawn.Queue()
                proc = spawn.Process(
                    target=child, args=((name, package, trust, rule_labels, frames, root, min_score), results)
                )
                proc.start()
                r = results.get()
                proc.join()
                print(
                    f"{name:<11} {mode:<12} {r['model_ms']:9.2f} {r['frame_ms']:9.2f} {r['overhead_ms']:12.2f} {r['overhead_ms'] / r['model_ms']:15.2f} {r['fps']:7.1f} {r['rss_mib']:8.0f}"
                )
        print(
            "overhead = decode + preprocess + drift stats + rules (+ thumbnail and an fsynced outbox insert per alert)"
        )


if __name__ == "__main__":
    main()
