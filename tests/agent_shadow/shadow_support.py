"""Real packages for the shadow tests (one signing key), and a camera process driven as the fleet would."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from agent_support import (
    LABELS,
    agent_config,
    brightness_onnx,
    detection_onnx,
    drop_frame,
    start_agent,
    wait_until,
    write_config,
)
from support.packages import broken_copy

from edgefleet.package import sha256_file

SLOW_SIDE = 256  # the slow candidate's input side: its matrix products are what make it slow


def slow_onnx(path: Path, layers: int = 3) -> None:
    """The brightness classifier (threshold 0.5) plus a chain of 768x256 @ 256x256 products on its
    input, each ~0.1 GFLOP, added to the logits with a weight of 1e-9 (kept in the graph, too small
    to change a label)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    side = SLOW_SIDE
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(np.array([1, 1], dtype=np.int64), "shape"),
        numpy_helper.from_array(np.array([3 * side, side], dtype=np.int64), "rows"),
        numpy_helper.from_array(np.array(0.5, dtype=np.float32), "half"),
        numpy_helper.from_array(np.array(20.0, dtype=np.float32), "gain"),
        numpy_helper.from_array(np.array(1e-9, dtype=np.float32), "tiny"),
    ]
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["m"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Reshape", ["m", "shape"], ["r"]),
        helper.make_node("Reshape", ["image", "rows"], ["h0"]),
    ]
    for i in range(layers):
        inits.append(numpy_helper.from_array((rng.random((side, side)) / side).astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [f"h{i}", f"w{i}"], [f"h{i + 1}"]))
    nodes += [
        helper.make_node("ReduceMean", [f"h{layers}"], ["hm"], axes=[0, 1], keepdims=1),
        helper.make_node("Mul", ["hm", "tiny"], ["noise"]),
        helper.make_node("Sub", ["r", "half"], ["d"]),
        helper.make_node("Mul", ["d", "gain"], ["g"]),
        helper.make_node("Add", ["g", "noise"], ["pos"]),
        helper.make_node("Neg", ["pos"], ["neg"]),
        helper.make_node("Concat", ["neg", "pos"], ["logits"], axis=1),
    ]
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, side, side])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2])
    model = helper.make_model(
        helper.make_graph(nodes, "slow", [x], [y], inits), opset_imports=[helper.make_opsetid("", 13)]
    )
    model.ir_version = 8
    onnx.save(model, str(path))


# The detection candidate: its first box is the active model's, its second the active one's moved
# down by 0.05 (IoU 0.275 / 0.325 with it); both are 'car', and each takes the other box's score.
DETECTION_CANDIDATE = {
    "boxes": [[0.1, 0.2, 0.5, 0.6], [0.35, 0.3, 0.95, 0.8]],
    "classes": (1, 1),
    "dark_first": True,
}


def _compile(
    root: Path,
    key: Path,
    build,
    version: str,
    labels: list[str],
    side: int,
    name: str = "brightness",
    task: str = "classification",
) -> Path:
    from edgefleet.compiler.compile import compile_model

    work = root / f"{name}-{version}"
    work.mkdir()
    build(work / "model.onnx")
    (work / "labels.txt").write_text("\n".join(labels) + "\n")
    return compile_model(
        str(work / "model.onnx"),
        "x86_64",
        output=root / f"{name}-{version}.tar.gz",
        name=name,
        version=version,
        labels=work / "labels.txt",
        preprocessing={"resize": (side, side)},
        task=task,
        key=key,
        quiet=True,
    ).package


@pytest.fixture(scope="session")
def shadow_packages(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Packages named "brightness", signed by one key ("trust" its public key):
    "1" the active model: 'bright' when the mean pixel is over 0.5 (input 16x16);
    "2" 'bright' over 0.3, same input (the candidate reuses the active model's preprocessing);
    "3" labels swapped, input 8x8: 'bright' on a dark frame (a candidate that would alert on every dark frame);
    "4" slow: the version 1 classifier plus ~0.3 GFLOP of matrix products (input 256x256);
    "5-untrusted" version 5 signed by a key the camera does not trust;
    "2-tampered" / "2-unsigned" version 2's package with model.so changed / manifest.sig removed;
    "det-1" / "det-2": detectors named "detector", the tiny SSD-layout one and DETECTION_CANDIDATE."""
    from edgefleet.signing import create_signing_key, public_path

    root = tmp_path_factory.mktemp("shadow-packages")
    key = create_signing_key(root / "signing.key").path
    other = create_signing_key(root / "other.key").path
    out: dict = {"trust": public_path(key)}
    out["1"] = _compile(root, key, brightness_onnx, "1", LABELS, 16)
    out["2"] = _compile(root, key, lambda p: brightness_onnx(p, threshold=0.3), "2", LABELS, 16)
    out["3"] = _compile(root, key, lambda p: brightness_onnx(p, size=8), "3", LABELS[::-1], 8)
    out["4"] = _compile(root, key, slow_onnx, "4", LABELS, SLOW_SIDE)
    detect = ["person", "car"]
    out["det-1"] = _compile(root, key, detection_onnx, "1", detect, 16, "detector", "detection")
    candidate = partial(detection_onnx, **DETECTION_CANDIDATE)
    out["det-2"] = _compile(root, key, candidate, "2", detect, 16, "detector", "detection")
    (root / "other").mkdir()
    out["5-untrusted"] = _compile(root / "other", other, brightness_onnx, "5", LABELS, 16)
    for case in ("tampered", "unsigned"):
        out[f"2-{case}"] = broken_copy(out["2"], case, root)
    return out


def shadow_job(
    job: str, package: Path, url: str, name: str, version: str, kind: str = "shadow_install", **settings
) -> dict:
    body = {
        "schema": 1,
        "id": job,
        "job": job,
        "kind": kind,
        "rollout": 7,
        "package": {
            "name": name,
            "version": version,
            "sha256": sha256_file(package),
            "size": package.stat().st_size,
            "url": url,
        },
        "probation": {"smoke_runs": 2, "latency_budget_ms": 5000},
    }
    if kind == "shadow_install":
        body["shadow"] = {"sample_share": 1.0, "cpu_share": 1.0, "max_fps_drop_percent": 100.0, "window_s": 1.0}
        body["shadow"].update(settings)
    return body


class ShadowCamera:
    """`edgefleet agent run` with version 1 active, the fleet's view of it over MQTT, and its frames folder."""

    def __init__(
        self, tmp_path: Path, broker, packages: dict, server, max_fps: float = 200.0, active: str = "1"
    ) -> None:
        cfg = agent_config(
            tmp_path,
            broker,
            (packages[active], packages["trust"]),
            sources=[{"type": "folder", "path": str(tmp_path / "incoming"), "max_fps": max_fps, "poll_s": 0.02}],
        )
        self.tmp_path, self.packages, self.server = tmp_path, packages, server
        self.state = Path(cfg["state_dir"])
        self.incoming = tmp_path / "incoming"
        self.incoming.mkdir(exist_ok=True)
        self.config = write_config(tmp_path / "cam-1.toml", cfg)
        self.log = tmp_path / "cam-1.log"
        self.updates = broker.subscriber("edgefleet/v1/cam-1/jobs/+/update")
        self.reports = broker.subscriber("edgefleet/v1/cam-1/shadow")
        self.alerts = broker.subscriber("edgefleet/v1/cam-1/alerts")
        self.status = broker.subscriber("edgefleet/v1/cam-1/status")
        self.process: subprocess.Popen | None = None
        self.frames = 0

    def start(self, env: dict | None = None) -> ShadowCamera:
        self.process = start_agent(self.config, log=self.log, env=env)
        self.wait(lambda: any(m.json().get("state") == "online" for m in self.status.messages[-1:]), "online")
        return self

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()

    def wait(self, predicate, what: str, timeout: float = 60.0):
        try:
            wait_until(predicate, timeout)
        except AssertionError:
            raise AssertionError(f"{what} not met within {timeout} s\n{self.log.read_text()[-3000:]}") from None

    def send(self, job: str, key: str, kind: str = "shadow_install", **settings) -> None:
        """Publish a job for the package shadow_packages names `key` ("2", "det-2", "2-tampered"...)."""
        package = self.packages[key]
        name, version = ("detector", key[4:]) if key.startswith("det-") else ("brightness", key.split("-")[0])
        shutil.copy(package, self.server.root / package.name)
        body = shadow_job(job, package, self.server.url(package.name), name, version, kind, **settings)
        self.updates.client.publish("edgefleet/v1/cam-1/jobs/notify", json.dumps(body), qos=1).wait_for_publish(5)

    def states(self, job: str) -> list[str]:
        return [m.json()["state"] for m in self.updates.messages if m.topic.split("/")[-2] == job]

    def final(self, job: str) -> tuple[str, str]:
        def done():
            return [
                (b["state"], b["detail"])
                for b in (m.json() for m in self.updates.messages if m.topic.split("/")[-2] == job)
                if b["state"] in ("committed", "rolled_back", "failed")
            ]

        self.wait(done, f"job {job} finished")
        return done()[0]

    def drop(self, values: list[int]) -> None:
        """Solid grey frames, in name order."""
        from agent_support import jpeg

        for value in values:
            drop_frame(self.incoming, f"f{self.frames:05d}.jpg", jpeg(value))
            self.frames += 1

    def compared(self, job: str) -> list[dict]:
        return [m.json() for m in self.reports.messages if m.json()["job"] == job]

    def shadow_dirs(self) -> list[str]:
        return sorted(p.name for p in (self.state / "shadow" / "packages").iterdir() if not p.name.startswith("."))

    def active_link(self) -> str:
        return (self.state / "packages" / "current").readlink().name
