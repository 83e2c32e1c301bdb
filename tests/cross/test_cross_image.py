"""The arm64 and armhf agent images: built from the sysroots with the docker SDK, run with QEMU as their entrypoint."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from edgefleet.compiler.compile import compile_model
from edgefleet.cross.image import build_image

pytestmark = [pytest.mark.qemu, pytest.mark.docker, pytest.mark.slow]


# Issue 14's footprint target for a camera image, `docker image inspect` size (uncompressed).
MAX_IMAGE_BYTES = 150_000_000


@pytest.mark.parametrize(
    ("arch", "target", "qemu", "sysroot_fixture"),
    [
        ("arm64", "rasp4b", "qemu-aarch64-static", "arm64_sysroot"),
        ("armhf", "rasp3b", "qemu-arm-static", "armhf_sysroot"),
    ],
)
def test_the_image_runs_a_package_like_the_x86_reference(
    arch, target, qemu, sysroot_fixture, request, docker_client, tiny_cnn, cross_key, tmp_path
):
    from edgefleet.agent.infer import run_package_on_image
    from edgefleet.signing import public_path

    request.getfixturevalue(sysroot_fixture)
    data = tmp_path / "data"
    data.mkdir()
    compile_model(str(tiny_cnn), target, output=data / "arm.tar.gz", key=cross_key.path, verify=False, quiet=True)
    x86 = compile_model(
        str(tiny_cnn), "x86_64", output=tmp_path / "x86.tar.gz", key=cross_key.path, verify=False, quiet=True
    ).package
    shutil.copy(public_path(cross_key.path), data / "key.pub")
    Image.fromarray(np.random.default_rng(5).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(data / "frame.png")

    result = build_image(arch, f"edgefleet-agent-test:{arch}")
    try:
        assert result.architecture == ("arm64" if arch == "arm64" else "arm")
        assert result.size_bytes <= MAX_IMAGE_BYTES, f"{arch} image is {result.size_bytes / 1e6:.1f} MB"
        image = docker_client.images.get(result.tag)
        assert image.attrs["Config"]["Entrypoint"] == ["/usr/bin/python3", "-m", "edgefleet.cli"]
        qemu = shutil.which(qemu)
        out = docker_client.containers.run(
            result.tag,
            [
                "/usr/bin/python3",
                "-m",
                "edgefleet.cli",
                "run",
                "/data/arm.tar.gz",
                "--image",
                "/data/frame.png",
                "--trust",
                "/data/key.pub",
                "--json",
                "--repeat",
                "1",
            ],
            entrypoint=["/qemu"],
            volumes={qemu: {"bind": "/qemu", "mode": "ro"}, str(data): {"bind": "/data", "mode": "ro"}},
            network_mode="none",
            remove=True,
            stderr=False,
        )
        guest = json.loads(out)["predictions"]
        # What the image leaves out (cross/image.py TRIM) is nothing the agent loads: every module of
        # `agent run` and `agent install` imports, with the system libraries they link.
        imports = "import ssl, sqlite3, paho.mqtt.client, edgefleet.agent.run, edgefleet.agent.install, edgefleet.agent.enroll; print('imported')"
        assert (
            docker_client.containers.run(
                result.tag,
                ["/usr/bin/python3", "-c", imports],
                entrypoint=["/qemu"],
                volumes={qemu: {"bind": "/qemu", "mode": "ro"}},
                network_mode="none",
                remove=True,
                stderr=False,
            ).strip()
            == b"imported"
        )
        host = run_package_on_image(x86, data / "frame.png", [cross_key.public], k=5, repeat=1).predictions
        assert [p["index"] for p in guest] == [p.index for p in host]
        np.testing.assert_allclose([p["score"] for p in guest], [p.score for p in host], atol=1e-5)
    finally:
        docker_client.images.remove(result.tag, force=True)
