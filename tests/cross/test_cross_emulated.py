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
from edgefleet.cross.emulate import run_package_emulated
from edgefleet.cross.verify import load_library_emulated, run_library_emulated
from edgefleet.errors import BuildError
from edgefleet.package import open_package

pytestmark = pytest.mark.qemu


def _compile(model: Path, target: str, out: Path, key, verify: bool = True):
    return compile_model(str(model), target, output=out, name="tiny", version="1", key=key.path, verify=verify, quiet=True)


def test_rasp4b_package_matches_x86_under_qemu_aarch64(arm64_sysroot, tiny_cnn, cross_key, tmp_path):
    arm = _compile(tiny_cnn, "rasp4b", tmp_path / "arm.tar.gz", cross_key)
    v = arm.manifest.verification
    # compile() itself ran the library under emulation against onnxruntime.
    assert v.status == "passed", v
    assert "qemu-aarch64" in v.ran_on and arm64_sysroot.info.key in v.ran_on
    assert v.max_abs_diff < 1e-4

    x86 = _compile(tiny_cnn, "x86_64", tmp_path / "x86.tar.gz", cross_key, verify=False)
    from edgefleet.agent.runtime import TvmModel

    feeds = [np.random.default_rng(7).random((1, 3, 32, 32), dtype=np.float32)]
    with open_package(arm.package, None) as a, open_package(x86.package, None) as x:
        emulated = run_library_emulated(arm64_sysroot, a.library, feeds, repeat=2)
        native = TvmModel(x.library).run(feeds)
    assert emulated.machine == "aarch64"
    assert len(emulated.run_ms) == 2
    np.testing.assert_allclose(emulated.outputs[0], native[0], atol=1e-5, rtol=1e-4)
    assert abs(float(emulated.outputs[0].sum()) - 1.0) < 1e-4  # softmax output, not zeros


def test_rasp4b_package_runs_through_edgefleet_run_inside_the_emulator(arm64_sysroot, tiny_cnn, cross_key, tmp_path):
    from edgefleet.agent.infer import run_package_on_image
    from edgefleet.signing import public_path

    arm = _compile(tiny_cnn, "rasp4b", tmp_path / "arm.tar.gz", cross_key, verify=False)
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


def test_rasp3b_library_is_loaded_by_the_armhf_loader_and_the_reason_it_cannot_run_is_stated(armhf_sysroot, tiny_cnn, cross_key, tmp_path):
    arm = _compile(tiny_cnn, "rasp3b", tmp_path / "arm.tar.gz", cross_key)
    v = arm.manifest.verification
    assert v.status == "skipped"
    assert "qemu-arm" in v.ran_on
    assert "loaded by the armv7l dynamic loader" in v.reason and "no TVM runtime exists for armv7" in v.reason
    with open_package(arm.package, None) as opened:
        report = load_library_emulated(armhf_sysroot, opened.library)
    assert report["machine"] == "armv7l" and "__tvm_ffi__library_bin" in report["exported"]


def test_armhf_loader_check_rejects_a_library_for_another_architecture(armhf_sysroot, tiny_cnn, cross_key, tmp_path):
    x86 = _compile(tiny_cnn, "x86_64", tmp_path / "x86.tar.gz", cross_key, verify=False)
    with open_package(x86.package, None) as opened, pytest.raises(BuildError) as err:
        load_library_emulated(armhf_sysroot, opened.library)
    assert "qemu-arm-static failed" in err.value.cause


def test_cross_run_cli_runs_the_guest_and_returns_its_exit_status(arm64_sysroot):
    code = "import platform, sys; print(platform.machine(), sys.version_info[:2]); sys.exit(3)"
    proc = subprocess.run([sys.executable, "-m", "edgefleet.cli", "cross", "run", "--target", "rasp4b", "--", "python3", "-c", code],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout.strip() == "aarch64 (3, 11)"
