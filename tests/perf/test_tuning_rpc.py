"""Tuning through a TVM RPC tracker, the path a real board takes: here the tracker and an
rpc_server run on this machine (x86_64), and candidates are built here and run by the server."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper, save
from support.cli import assert_cli_error

from edgefleet.errors import UsageError
from edgefleet.net import free_port

tvm = pytest.importorskip("tvm")


@pytest.fixture
def rpc_device(tmp_path):
    """A tracker and one rpc_server registered under key `x86-local`; yields (port, server log)."""
    port = free_port()
    log = tmp_path / "server.log"
    tracker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tvm.exec.rpc_tracker",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--port-end",
            str(port + 1),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    server = None
    try:
        from tvm import rpc

        deadline = time.monotonic() + 60
        while True:
            try:
                rpc.connect_tracker("127.0.0.1", port).summary()
                break
            except (RuntimeError, OSError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        with log.open("w") as out:
            server = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tvm.exec.rpc_server",
                    "--tracker",
                    f"127.0.0.1:{port}",
                    "--key",
                    "x86-local",
                    "--host",
                    "127.0.0.1",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        while not any(
            q.get("free", 0)
            for key, q in rpc.connect_tracker("127.0.0.1", port).summary()["queue_info"].items()
            if key == "x86-local"
        ):
            if time.monotonic() > deadline:
                raise TimeoutError(f"rpc_server did not register: {log.read_text()}")
            time.sleep(0.5)
        yield port, log
    finally:
        for proc in (server, tracker):
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=30)


def _conv_model(path: Path) -> Path:
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((16, 16, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 8, 8])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    save(model, path)
    return path


@pytest.mark.slow
def test_candidates_run_on_the_device_behind_the_tracker(tmp_path, signing_key, cli, rpc_device, edgefleet_home):
    port, server_log = rpc_device
    model = _conv_model(tmp_path / "conv.onnx")
    result = cli(
        "compile",
        model,
        "--target",
        "x86_64",
        "--task",
        "other",
        "--tune-trials",
        "2",
        "--tune-rpc",
        f"127.0.0.1:{port}/x86-local@1",
        "-o",
        tmp_path / "p.tar.gz",
    )
    assert result.code == 0, result.text
    assert f"candidates run on x86-local devices through the RPC tracker at 127.0.0.1:{port}" in result.text
    assert "load_module" in server_log.read_text()  # the server ran what this machine built
    from edgefleet.package import open_package

    manifest = open_package(tmp_path / "p.tar.gz", None, dest=tmp_path / "open").manifest
    assert manifest.tuning["rpc"] == f"127.0.0.1:{port}/x86-local@1"
    assert manifest.verification.status == "passed"
    # Whether the side-by-side measurement was stored is not asserted: in one loaded CI run the
    # measurements through the server stored nothing (not reproduced alone; see the issue note).
    assert (Path(manifest.tuning["database"]) / "search").is_dir()


def test_tune_rpc_mistakes(tmp_path, signing_key, cli):
    model = _conv_model(tmp_path / "conv.onnx")
    assert_cli_error(
        cli(
            "compile",
            model,
            "--target",
            "rasp4b",
            "--task",
            "other",
            "--tune-trials",
            "2",
            "--tune-rpc",
            "board:x/rasp4b",
        ),
        UsageError,
        "is not HOST:PORT/KEY or HOST:PORT/KEY@CORES",
    )
    assert_cli_error(
        cli("compile", model, "--target", "rasp4b", "--task", "other", "--tune-trials", "2"),
        UsageError,
        "this machine cannot run rasp4b code",
        "--tune-rpc HOST:PORT/KEY",
    )
