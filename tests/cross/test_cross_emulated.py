"""ARM packages compiled here run under QEMU user mode and match the x86 reference."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgefleet.compiler.compile import compile_model
from edgefleet.cross.emulate import emulated_worker, run_package_emulated
from edgefleet.cross.verify import run_library_emulated
from edgefleet.errors import PackageIntegrityError
from edgefleet.package import open_package

pytestmark = pytest.mark.qemu


def _compile(model: Path, target: str, out: Path, key, verify: bool = True):
    return compile_model(
        str(model), target, output=out, name="tiny", version="1", key=key.path, verify=verify, quiet=True
    )


# (target, sysroot fixture, QEMU, the guest's platform.machine())
BOARDS = [("rasp4b", "arm64_sysroot", "qemu-aarch64", "aarch64"), ("rasp3b", "armhf_sysroot", "qemu-arm", "armv7l")]


@pytest.mark.parametrize(("target", "sysroot_fixture", "qemu", "machine"), BOARDS)
def test_arm_package_is_verified_on_its_runtime_and_matches_x86(
    target, sysroot_fixture, qemu, machine, request, tiny_cnn, cross_key, tmp_path
):
    sysroot = request.getfixturevalue(sysroot_fixture)
    arm = _compile(tiny_cnn, target, tmp_path / "arm.tar.gz", cross_key)
    v = arm.manifest.verification
    # compile() itself ran the library on the target's runtime under emulation against onnxruntime.
    assert v.status == "passed", v
    assert qemu in v.ran_on and sysroot.info.key in v.ran_on and "edgefleet runtime" in v.ran_on
    assert v.max_abs_diff < 1e-4
    assert arm.manifest.runtime.requires.arch == arm.manifest.target.arch

    x86 = _compile(tiny_cnn, "x86_64", tmp_path / "x86.tar.gz", cross_key, verify=False)
    from edgefleet.agent.runtime_worker import open_tvm_model

    feeds = [np.random.default_rng(7).random((1, 3, 32, 32), dtype=np.float32)]
    with open_package(arm.package, None) as a, open_package(x86.package, None) as x:
        emulated = run_library_emulated(sysroot, a.library, feeds, repeat=2)
        native = open_tvm_model(x.library).run(feeds)
        with emulated_worker(sysroot) as worker:  # ARM kernels run parallel at any size: on edgefleet's pool
            worker.call({"op": "threads", "count": 2})
            two_threads = worker.load(a.library).run(feeds)
    np.testing.assert_array_equal(two_threads[0], emulated.outputs[0])
    assert emulated.machine == machine
    assert len(emulated.run_ms) == 2
    np.testing.assert_allclose(emulated.outputs[0], native[0], atol=1e-5, rtol=1e-4)
    assert abs(float(emulated.outputs[0].sum()) - 1.0) < 1e-4  # softmax output, not zeros


@pytest.mark.parametrize(("target", "sysroot_fixture"), [(b[0], b[1]) for b in BOARDS])
def test_arm_package_runs_through_edgefleet_run_inside_the_emulator(
    target, sysroot_fixture, request, tiny_cnn, cross_key, tmp_path
):
    from edgefleet.agent.infer import run_package_on_image
    from edgefleet.signing import public_path

    request.getfixturevalue(sysroot_fixture)
    arm = _compile(tiny_cnn, target, tmp_path / "arm.tar.gz", cross_key, verify=False)
    x86 = _compile(tiny_cnn, "x86_64", tmp_path / "x86.tar.gz", cross_key, verify=False)
    image = tmp_path / "frame.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(image)
    proc = run_package_emulated(arm.package, image, trust=[public_path(cross_key.path)], capture=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    guest = json.loads(proc.stdout)["predictions"]
    host = run_package_on_image(x86.package, image, [cross_key.public], k=5, repeat=1).predictions
    assert [p["index"] for p in guest] == [p.index for p in host]
    np.testing.assert_allclose([p["score"] for p in guest], [p.score for p in host], atol=1e-5)


def test_guest_refuses_a_package_signed_by_an_untrusted_key(arm64_sysroot, tiny_cnn, cross_key, tmp_path):
    from edgefleet.signing import create_signing_key, public_path

    arm = _compile(tiny_cnn, "rasp4b", tmp_path / "arm.tar.gz", cross_key, verify=False)
    other = create_signing_key(tmp_path / "other.key")
    image = tmp_path / "frame.png"
    Image.new("RGB", (32, 32), (10, 20, 30)).save(image)
    proc = run_package_emulated(arm.package, image, trust=[public_path(other.path)], capture=True, timeout=600)
    assert proc.returncode == 18  # PackageIntegrityError, raised by the agent code running on aarch64
    assert "error:" in proc.stderr


def test_armhf_runtime_refuses_a_library_for_another_architecture_by_name(armhf_sysroot, tiny_cnn, cross_key, tmp_path):
    x86 = _compile(tiny_cnn, "x86_64", tmp_path / "x86.tar.gz", cross_key, verify=False)
    with open_package(x86.package, None) as opened, pytest.raises(PackageIntegrityError) as err:
        run_library_emulated(armhf_sysroot, opened.library, [np.zeros((1, 3, 32, 32), np.float32)])
    assert "cannot load the compiled library model.so" in err.value.cause


def test_cross_run_cli_runs_the_guest_and_returns_its_exit_status(arm64_sysroot):
    code = "import platform, sys; print(platform.machine(), sys.version_info[:2]); sys.exit(3)"
    proc = subprocess.run(
        [sys.executable, "-m", "edgefleet.cli", "cross", "run", "--target", "rasp4b", "--", "python3", "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout.strip() == "aarch64 (3, 11)"
