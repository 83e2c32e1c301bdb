"""The camera's Debian package: built with dpkg-deb, unpacked into the sysroots (dpkg -x), its agent run under QEMU."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from emulated_agent import check_agent_alerts
from support.broker import mqtt_broker  # noqa: F401  (the fixture)

from edgefleet.cross.debpkg import build_deb
from edgefleet.cross.emulate import emulated_argv
from edgefleet.cross.sysroot import Sysroot
from edgefleet.errors import UsageError
from edgefleet.runtime_bundle import host_arch

WHERE = (
    "import edgefleet; from edgefleet.runtime_bundle import find_bundle; print(edgefleet.__file__, find_bundle().path)"
)


def test_an_unknown_architecture_is_refused_before_anything_is_built(tmp_path):
    with pytest.raises(UsageError, match="'mips'.*amd64, arm64, armhf"):
        build_deb("mips", out_dir=tmp_path)
    assert not any(tmp_path.iterdir())


@pytest.mark.qemu
@pytest.mark.mqtt
@pytest.mark.parametrize(
    ("target", "sysroot_fixture", "depends"),
    [
        ("rasp4b", "arm64_sysroot", "python3.11, python3-numpy, python3-pil"),
        ("rasp3b", "armhf_sysroot", "python3.11, python3-numpy, python3-pil"),
        pytest.param(
            "rasp4b", "arm64_trixie_sysroot", "python3.13, python3-numpy, python3-pil", marks=pytest.mark.slow
        ),
    ],
)
def test_the_installed_package_runs_the_agent_from_its_own_venv(
    target, sysroot_fixture, depends, request, mqtt_broker, cross_key, tmp_path
):
    sysroot = request.getfixturevalue(sysroot_fixture)
    deb = build_deb(sysroot.info.spec.arch, suite=sysroot.info.spec.suite, out_dir=tmp_path / "out", quiet=True)
    fields = subprocess.run(
        ["dpkg-deb", "--field", str(deb), "Architecture", "Depends"], capture_output=True, text=True, check=True
    ).stdout
    assert f"Architecture: {sysroot.info.spec.arch}" in fields and f"Depends: {depends}" in fields
    listing = subprocess.run(["dpkg-deb", "--contents", str(deb)], capture_output=True, text=True, check=True).stdout
    assert (
        "./usr/lib/python3/" not in listing and "./usr/local/" not in listing
    )  # the system Python's packages are left alone (PEP 668)

    # A copy of the sysroot (hard links: seconds, no space) with the package unpacked where dpkg puts it.
    installed = Sysroot(tmp_path / "installed", sysroot.info)
    installed.path.mkdir()
    subprocess.run(["cp", "-al", str(sysroot.root), str(installed.root)], check=True)
    subprocess.run(["dpkg", "-x", str(deb), str(installed.root)], check=True)
    unit = (installed.root / "usr/lib/systemd/system/edgefleet-agent.service").read_text()
    assert (
        "ExecStart=/opt/edgefleet/bin/python3 -m edgefleet.cli agent launch --config /etc/edgefleet/agent.toml" in unit
    )
    assert "User=edgefleet" in unit

    prefix = "/opt/edgefleet"
    if sysroot.info.spec.arch == "armhf":
        # qemu-arm's -L does not redirect stat() (a 32-bit guest's statx) into the sysroot, so a guest path the
        # host lacks "does not exist": the venv is addressed by its host path, its base Python too (test only).
        prefix = str(installed.root / "opt" / "edgefleet")
        (installed.root / "opt/edgefleet/pyvenv.cfg").write_text(
            (installed.root / "opt/edgefleet/pyvenv.cfg")
            .read_text()
            .replace("home = /usr/bin", f"home = {installed.root}/usr/bin")
        )
    # Nothing from this checkout or the runtime build cache: the agent and its runtime come from the venv.
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "EDGEFLEET_RUNTIME_CACHE": str(tmp_path / "no-runtime-cache"),
    }

    def run(args: list[str]) -> subprocess.CompletedProcess:
        argv = emulated_argv(installed, ["python3", *args], argv0=f"{prefix}/bin/python3")
        return subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)

    where = run(["-c", WHERE])
    assert where.returncode == 0, where.stderr[-2000:]
    assert where.stdout.split() == [
        f"{prefix}/lib/python{sysroot.info.spec.python_version}/site-packages/edgefleet/__init__.py",
        f"{prefix}/lib/edgefleet-runtime",
    ]
    check_agent_alerts(target, run, mqtt_broker, cross_key, tmp_path)


@pytest.mark.mqtt
@pytest.mark.skipif(
    not Path("/usr/bin/python3.11").exists() or host_arch() != "x86_64",
    reason="needs an x86_64 Debian bookworm host (python3.11)",
)
def test_the_amd64_package_runs_the_agent_natively_from_where_it_is_unpacked(mqtt_broker, cross_key, tmp_path):
    deb = build_deb("amd64", out_dir=tmp_path / "out", quiet=True)
    subprocess.run(["dpkg", "-x", str(deb), str(tmp_path / "root")], check=True)
    python = tmp_path / "root/opt/edgefleet/bin/python3"  # a venv finds itself from argv[0], wherever it lies
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "EDGEFLEET_RUNTIME_CACHE": str(tmp_path / "no-runtime-cache"),
    }

    def run(args: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run([str(python), *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)

    where = run(["-c", WHERE])
    assert where.stdout.split() == [
        f"{python.parents[1]}/lib/python3.11/site-packages/edgefleet/__init__.py",
        f"{python.parents[1]}/lib/edgefleet-runtime",
    ], where.stderr
    assert run(["-c", "import rich"]).returncode != 0  # the camera's install has no rich
    check_agent_alerts("x86_64", run, mqtt_broker, cross_key, tmp_path)
