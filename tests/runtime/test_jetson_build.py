"""The Jetson CUDA runtime build, as far as a machine without a Jetson can check it: the script and the refusals."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from edgefleet.cross.runtime_build import build_runtime, cuda_options
from edgefleet.errors import MissingToolError, UsageError

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "jetson_runtime_build.sh"


def _dry_run(tmp_path: Path, compatible: bytes | None) -> subprocess.CompletedProcess:
    dt = tmp_path / "compatible"
    if compatible is not None:
        dt.write_bytes(compatible)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "EDGEFLEET_DT_COMPATIBLE": str(dt)}
    return subprocess.run(["sh", str(SCRIPT), "--dry-run"], capture_output=True, text=True, env=env, timeout=30)


def test_the_script_parses_and_builds_for_the_boards_gpu(tmp_path):
    subprocess.run(["sh", "-n", str(SCRIPT)], check=True)
    if shutil.which("shellcheck"):
        subprocess.run(["shellcheck", str(SCRIPT)], check=True)
    orin = _dry_run(tmp_path, b"nvidia,p3768-0000+p3767-0005\0nvidia,tegra234\0")
    assert orin.returncode == 0, orin.stderr
    assert orin.stdout.splitlines()[-1].endswith("-m edgefleet.cli runtime build --arch aarch64 --cuda sm_87 --json")
    assert "--cuda sm_72" in _dry_run(tmp_path, b"nvidia,jetson-xavier\0nvidia,tegra194\0").stdout


def test_the_script_refuses_a_machine_that_is_not_a_supported_jetson(tmp_path):
    missing = _dry_run(tmp_path, None)
    assert missing.returncode == 1 and "this is not a Jetson" in missing.stderr
    nano = _dry_run(tmp_path, b"nvidia,p3450-0000\0nvidia,tegra210\0")
    assert nano.returncode == 1 and "unsupported SoC" in nano.stderr and "fix:" in nano.stderr


def test_cuda_builds_are_refused_before_anything_starts_when_they_cannot_work(monkeypatch):
    with pytest.raises(UsageError, match="cannot be cross-built"):
        build_runtime("armv7", cuda_sms=["sm_87"])
    with pytest.raises(UsageError, match="sm87 is not a CUDA GPU architecture"):
        cuda_options(["sm87"])
    monkeypatch.setenv("PATH", "/nonexistent")
    if not Path("/usr/local/cuda/bin/nvcc").exists():
        with pytest.raises(MissingToolError, match="nvcc"):
            build_runtime("x86_64", cuda_sms=["sm_87"])


def test_a_cuda_build_turns_cuda_on_for_its_gpus_and_keeps_the_other_options():
    options = cuda_options(["sm_87", "sm_72"])
    assert "-DUSE_CUDA=OFF" not in options and "-DUSE_CUDA=ON" in options
    assert "-DCMAKE_CUDA_ARCHITECTURES=87;72" in options and "-DUSE_LLVM=OFF" in options
