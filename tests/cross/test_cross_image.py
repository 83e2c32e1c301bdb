"""The arm64 agent image: built from the sysroot with the docker SDK, run with QEMU as its entrypoint."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from edgefleet.compiler.compile import compile_model
from edgefleet.cross.image import build_image

pytestmark = [pytest.mark.qemu, pytest.mark.docker, pytest.mark.slow]


@pytest.fixture(scope="module")
def docker_client():
    docker = pytest.importorskip("docker")
    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:  # no daemon here: CI starts one (see docs/cross.md)
        pytest.skip(f"no docker daemon: {exc}")
    return client


def test_arm64_image_runs_a_package_like_the_x86_reference(arm64_sysroot, docker_client, tiny_cnn, cross_key, tmp_path):
    from edgefleet.agent.infer import run_package_on_image
    from edgefleet.signing import public_path

    data = tmp_path / "data"
    data.mkdir()
    compile_model(str(tiny_cnn), "rasp4b", output=data / "arm.tar.gz", key=cross_key.path, verify=False, quiet=True)
    x86 = compile_model(str(tiny_cnn), "x86_64", output=tmp_path / "x86.tar.gz", key=cross_key.path, verify=False, quiet=True).package
    shutil.copy(public_path(cross_key.path), data / "key.pub")
    Image.fromarray(np.random.default_rng(5).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(data / "frame.png")

    result = build_image("arm64", "edgefleet-agent-test:arm64")
    try:
        assert result.architecture == "arm64"
        image = docker_client.images.get(result.tag)
        assert image.attrs["Config"]["Entrypoint"] == ["/usr/bin/python3", "-m", "edgefleet.cli"]
        qemu = shutil.which("qemu-aarch64-static")
        out = docker_client.containers.run(
            result.tag, ["/usr/bin/python3", "-m", "edgefleet.cli", "run", "/data/arm.tar.gz", "--image", "/data/frame.png", "--trust", "/data/key.pub", "--json", "--repeat", "1"],
            entrypoint=["/qemu"], volumes={qemu: {"bind": "/qemu", "mode": "ro"}, str(data): {"bind": "/data", "mode": "ro"}},
            network_mode="none", remove=True, stderr=False,
        )
        guest = json.loads(out)["predictions"]
        host = run_package_on_image(x86, data / "frame.png", [cross_key.public], k=5, repeat=1).predictions
        assert [p["index"] for p in guest] == [p.index for p in host]
        np.testing.assert_allclose([p["score"] for p in guest], [p.score for p in host], atol=1e-5)
    finally:
        docker_client.images.remove(result.tag, force=True)
