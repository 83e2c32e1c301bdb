"""`edgefleet cross deb`: the camera install as one Debian package per architecture, built with dpkg-deb.

`edgefleet-agent_<version>+deb<N>_<arch>.deb` holds everything; nothing is downloaded when it installs:

    /opt/edgefleet/pyvenv.cfg, bin/python3 -> /usr/bin/python3.X   a venv (PEP 405), made here as plain files
    /opt/edgefleet/lib/python3.X/site-packages/    the agent's wheels for that architecture and Python, and
                                                   edgefleet's core + agent code
    /opt/edgefleet/lib/edgefleet-runtime/          the runtime bundle (found as <sys.prefix>/lib/edgefleet-runtime)
    /opt/edgefleet/bin/edgefleet, /usr/bin/edgefleet
    /usr/lib/systemd/system/edgefleet-agent.service   `edgefleet agent launch` as user edgefleet; not enabled
    /etc/edgefleet/agent.toml.example              a config skeleton (conffile)

The system Python's packages are never touched (PEP 668): the agent's are private to the venv. The
venv is shipped as files rather than made by `python3 -m venv` in postinst, which would need
python3-venv and could fail half-way through an install. On arm64 and armhf the venv also reads the
system site-packages, for Debian's numpy, pillow, psutil and cffi (armhf: no armv7l wheels exist;
arm64: much smaller than the wheels; see cross/sysroot.py), which the package Depends on. postinst adds the `edgefleet` system user and
byte-compiles the private tree with the target's own Python; prerm removes those .pyc.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edgefleet import __version__
from edgefleet.agent_release import device_sources
from edgefleet.cross.sysroot import (
    ARCHES,
    SUITE,
    _Build,
    download_wheels,
    python_for_suite,
    require_tool,
    role_requirements,
    unzip_wheels,
)
from edgefleet.errors import UsageError
from edgefleet.progress import Stages
from edgefleet.runtime_bundle import INFO_FILE, find_bundle

PREFIX = "/opt/edgefleet"
CONFIG = "/etc/edgefleet/agent.toml"
STATE = "/var/lib/edgefleet"
UNIT = "/usr/lib/systemd/system/edgefleet-agent.service"
DEBIAN_RELEASE = {"bookworm": 12, "trixie": 13}


@dataclass(frozen=True)
class DebArch:
    debian: str
    runtime_arch: str
    pip_platforms: tuple[str, ...]
    from_debian: tuple[str, ...]  # distributions Debian provides (Depends), not bundled
    depends: tuple[str, ...]  # their Debian packages


def _deb_arches() -> dict[str, DebArch]:
    arches = {
        "amd64": DebArch(
            "amd64",
            "x86_64",
            ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "linux_x86_64"),
            (),
            (),
        )
    }
    for (
        name,
        info,
    ) in ARCHES.items():  # the ARM ones take what the sysroots take, so what the tests run is what installs
        arches[name] = DebArch(
            name, info.target_arch, info.pip_platforms, info.from_debian, tuple(d for d in info.debs if d != "python3")
        )
    return arches


DEB_ARCHES = _deb_arches()


def deb_arch(arch: str) -> DebArch:
    aliases = {"x86_64": "amd64", "aarch64": "arm64", "armv7": "armhf", "armv7l": "armhf"}
    info = DEB_ARCHES.get(aliases.get(arch, arch))
    if info is None:
        raise UsageError(f"no Debian package is made for architecture {arch!r}", f"use one of {', '.join(DEB_ARCHES)}")
    return info


def deb_version(suite: str) -> str:
    return f"{__version__}+deb{DEBIAN_RELEASE[suite]}"


def control_text(info: DebArch, python: str, suite: str, installed_kib: int) -> str:
    depends = ", ".join([f"python{python}", *info.depends])
    return (
        f"Package: edgefleet-agent\nVersion: {deb_version(suite)}\nArchitecture: {info.debian}\n"
        f"Maintainer: edgefleet <edgefleet@localhost>\nInstalled-Size: {installed_kib}\nDepends: {depends}\n"
        "Section: misc\nPriority: optional\nHomepage: https://github.com/edgefleet\n"
        f"Description: edgefleet camera agent (Debian {suite}, Python {python})\n"
        " Local inference on camera frames with edgefleet's TVM runtime, alerts over MQTT.\n"
        f" The agent and its libraries live in a private venv under {PREFIX}; configure it with\n"
        " `edgefleet agent install`, then `systemctl enable --now edgefleet-agent`.\n"
    )


POSTINST = f"""#!/bin/sh
set -e
if [ "$1" = configure ]; then
    getent passwd edgefleet >/dev/null ||
        useradd --system --user-group --home-dir {STATE} --shell /usr/sbin/nologin edgefleet
    # Bytecode for this machine's Python (the build host's may differ); the agent's user cannot write here.
    {PREFIX}/bin/python3 -m compileall -q {PREFIX}/lib >/dev/null || true
    if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
fi
"""
PRERM = f"""#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then systemctl stop edgefleet-agent.service || true; fi
find {PREFIX} -name __pycache__ -type d -prune -exec rm -rf {{}} +
"""
LAUNCHER = f"#!{PREFIX}/bin/python3\nimport sys\n\nfrom edgefleet.cli import main\n\nsys.exit(main())\n"


def _config_skeleton() -> str:
    from edgefleet.agent.config import parse_config, tomllib
    from edgefleet.agent.install import config_text

    text = config_text(
        state_dir=Path(STATE),
        device_id="cam-1",
        mqtt_host="broker.example",
        mqtt_port=8883,
        transport="paho",
        labels=["person"],
        package=None,
        fleet_url=None,
        trusted=[],
    )
    parse_config(tomllib.loads(text), "the config skeleton")  # what we ship must load
    return (
        f"# A skeleton. `edgefleet agent install` writes {CONFIG} with this device's key, certificate and broker.\n"
        + text
    )


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def _venv(tree: Path, python: str, system_site: bool) -> Path:
    """The venv's files; returns its site-packages folder."""
    opt = tree / PREFIX.lstrip("/")
    _write(
        opt / "pyvenv.cfg",
        f"home = /usr/bin\ninclude-system-site-packages = {str(system_site).lower()}\nversion = {python}\n",
    )
    (opt / "bin").mkdir(parents=True)
    (opt / "bin" / "python3").symlink_to(f"/usr/bin/python{python}")
    (opt / "bin" / "python").symlink_to("python3")
    _write(opt / "bin" / "edgefleet", LAUNCHER, 0o755)
    (tree / "usr" / "bin").mkdir(parents=True)
    (tree / "usr" / "bin" / "edgefleet").symlink_to(f"{PREFIX}/bin/edgefleet")
    site = opt / "lib" / f"python{python}" / "site-packages"
    site.mkdir(parents=True)
    return site


def _normalize_modes(tree: Path) -> int:
    """Directories 0755, files 0644 (0755 if executable), whatever the umask; returns the size in KiB."""
    total = 0
    for root, dirs, files in os.walk(tree):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o755)
        for name in files:
            path = os.path.join(root, name)
            st = os.lstat(path)
            if not stat.S_ISLNK(st.st_mode):
                os.chmod(path, 0o755 if st.st_mode & 0o111 else 0o644)
                total += st.st_size
    return total // 1024 + 1


def build_deb(arch: str, *, suite: str = SUITE, out_dir: Path = Path("."), quiet: bool = False) -> Path:
    """Build `edgefleet-agent_<version>+deb<N>_<arch>.deb` in `out_dir`; returns its path.

    Needs the runtime bundle of that architecture (`edgefleet runtime build --arch ...`), dpkg-deb,
    and pip's index for the wheels (at build time only).
    """
    info = deb_arch(arch)
    python = python_for_suite(suite)
    bundle = find_bundle(info.runtime_arch)
    dpkg_deb = require_tool("dpkg-deb")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"edgefleet-agent_{deb_version(suite)}_{info.debian}.deb"
    stages = Stages(quiet=quiet)
    with tempfile.TemporaryDirectory(prefix="edgefleet-deb-") as tmp:
        build = _Build(Path(tmp) / "work", stages, out_dir / f".{out.stem}.failed", what="Debian package build")
        tree = Path(tmp) / "tree"
        site = _venv(tree, python, system_site=bool(info.from_debian))
        download_wheels(
            build, role_requirements("agent", info.from_debian), list(info.pip_platforms), python, Path(tmp) / "wheels"
        )
        with stages.stage("site", "unzip wheels, add edgefleet"):
            unzip_wheels(Path(tmp) / "wheels", site)
            for path, name in device_sources():
                (site / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, site / name)
        runtime = tree / PREFIX.lstrip("/") / "lib" / "edgefleet-runtime"
        shutil.copytree(bundle.lib, runtime / "lib")
        shutil.copy2(bundle.path / INFO_FILE, runtime / INFO_FILE)
        from edgefleet.agent.install import unit_text

        _write(
            tree / UNIT.lstrip("/"),
            unit_text(
                config_path=Path(CONFIG), state_dir=Path(STATE), user="edgefleet", python=f"{PREFIX}/bin/python3"
            ),
        )
        _write(tree / f"{CONFIG.lstrip('/')}.example", _config_skeleton())
        installed_kib = _normalize_modes(tree)
        debian = tree / "DEBIAN"
        _write(debian / "control", control_text(info, python, suite, installed_kib))
        _write(debian / "conffiles", f"{CONFIG}.example\n")
        _write(debian / "postinst", POSTINST, 0o755)
        _write(debian / "prerm", PRERM, 0o755)
        # gzip: every dpkg reads it, and it takes seconds where xz takes a minute on two cores.
        build.step(
            "dpkg-deb", f"{out.name}", [dpkg_deb, "--root-owner-group", "-Zgzip", "--build", str(tree), str(out)]
        )
    return out
