"""Bad input to the cross tools: each gets a specific EdgefleetError before any long work."""

from __future__ import annotations

import pytest

from edgefleet.compiler.compile import compile_model
from edgefleet.cross.emulate import run_package_emulated, sysroot_for_target
from edgefleet.cross.sysroot import build_sysroot, find_sysroot, spec_for
from edgefleet.errors import BuildError, MissingToolError, TargetNotRunnableError, UsageError


def test_missing_debootstrap_names_the_debian_package(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(MissingToolError) as err:
        build_sysroot("arm64", cache=tmp_path / "cache", quiet=True)
    assert err.value.fix.startswith("apt-get install debootstrap")
    assert not (tmp_path / "cache").exists()


def test_missing_qemu_names_the_debian_package(tmp_path, monkeypatch):
    from edgefleet.cross.emulate import emulated_argv
    from edgefleet.cross.sysroot import Sysroot, SysrootInfo

    info = SysrootInfo(spec=spec_for("arm64"), key="0" * 16, built_at="now", step_seconds={}, wheels=[])
    fake_root = tmp_path / "s" / "root" / "usr" / "bin"
    fake_root.mkdir(parents=True)
    (fake_root / "python3.11").touch()
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(MissingToolError) as err:
        emulated_argv(Sysroot(tmp_path / "s", info), ["python3", "-c", "1"])
    assert err.value.fix == "apt-get install qemu-user-static"


def test_failed_build_names_the_step_and_keeps_its_log(tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(BuildError) as err:
        # Port 9 on loopback refuses at once: the same failure as a machine with no network.
        build_sysroot("armhf", cache=cache, mirror="http://127.0.0.1:9/debian", quiet=True)
    assert "sysroot build step `debootstrap`" in err.value.cause
    logs = list(cache.glob("armhf-*.failed/logs/debootstrap.log"))
    assert len(logs) == 1 and str(logs[0]) in err.value.fix
    assert "127.0.0.1:9" in logs[0].read_text()
    assert not list(cache.glob(".armhf-*partial*")), "the scratch tree is removed"
    assert find_sysroot("armhf", cache, mirror="http://127.0.0.1:9/debian") is None


def test_cache_key_follows_every_input():
    base = spec_for("arm64")
    assert base.key() == spec_for("arm64").key()
    assert spec_for("arm64", mirror="http://mirror.example/debian").key() != base.key()
    assert spec_for("armhf").key() != base.key()
    # The agent's whole closure, pinned to the host's versions; never the TVM compiler wheel.
    assert any(r.startswith("paho-mqtt==") for r in base.requirements) and any(
        r.startswith("pydantic-core==") for r in base.requirements
    )
    assert not any(r.startswith(("apache-tvm", "tvm")) for r in base.requirements)
    for arch in ("arm64", "armhf"):  # Debian's numpy and pillow, not the wheels (docs/cross.md)
        spec = spec_for(arch)
        assert "python3-numpy" in spec.debs and not any(
            r.startswith(("numpy==", "pillow==", "cffi==")) for r in spec.requirements
        )


def test_unknown_arch_and_non_arm_targets_are_refused():
    with pytest.raises(UsageError):
        spec_for("mips")
    with pytest.raises(TargetNotRunnableError) as err:
        sysroot_for_target("ml_c5")
    assert "not under QEMU" in err.value.cause


def test_missing_sysroot_says_how_to_build_it(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEFLEET_CROSS_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(TargetNotRunnableError) as err:
        sysroot_for_target("rasp4b")
    assert "edgefleet cross sysroot --arch arm64" in err.value.fix


def test_wrong_architecture_package_is_refused_before_anything_runs(tmp_path, monkeypatch, signing_key):
    from tinycnn import write_tiny_cnn

    # No sysroot exists: the refusal must come from the manifest alone, not from a failed start.
    monkeypatch.setenv("EDGEFLEET_CROSS_CACHE", str(tmp_path / "empty-cache"))
    model = write_tiny_cnn(tmp_path / "tiny.onnx")
    pkg = compile_model(str(model), "x86_64", output=tmp_path / "x86.tar.gz", verify=False, quiet=True).package
    image = tmp_path / "img.png"
    image.write_bytes(b"not read")
    with pytest.raises(TargetNotRunnableError) as err:
        run_package_emulated(pkg, image)
    assert "for x86_64 (x86_64)" in err.value.cause
