"""Debian bookworm sysroots for ARM, built without privilege and cached by a hash of their inputs.

A sysroot is `debootstrap --foreign --variant=minbase` (download + unpack only, nothing runs
as the target) with every downloaded `.deb` unpacked by `dpkg -x`, plus the agent's wheels for
that architecture fetched with `pip download --platform` and unzipped into `site/`. QEMU's
user mode (`qemu-aarch64-static -L ROOT`) then runs its Python 3.11 directly: no chroot, no binfmt.

On disk (format version 1, see docs/cross.md):

    <cache>/<arch>-<key>/sysroot.json   SysrootInfo below; written last, so its presence means complete
    <cache>/<arch>-<key>/root/          the Debian tree
    <cache>/<arch>-<key>/site/          unzipped wheels, put on PYTHONPATH
    <cache>/<arch>-<key>/logs/          one log per build step
    <cache>/<arch>-<key>.failed/logs/   the logs of the last failed build, kept for reading

`<cache>` is $EDGEFLEET_CROSS_CACHE, else $EDGEFLEET_HOME/cross (default ~/.edgefleet/cross).
`<key>` is the first 16 hex digits of the sha256 of every input (SysrootSpec), so changing
the suite, the mirror, a Debian package or a wheel pin builds a new sysroot beside the old one.
"""

from __future__ import annotations

import compileall
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, requires, version
from pathlib import Path
from typing import Literal

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from edgefleet.errors import BuildError, MissingToolError, UsageError
from edgefleet.package import now_utc
from edgefleet.progress import Stages
from edgefleet.signing import edgefleet_home
from edgefleet.strict import Strict

FORMAT_VERSION = 1
SUITE = "bookworm"
# Debian suites a sysroot can be, and the Python each ships: bookworm is Raspberry Pi OS 12's base,
# trixie (Debian 13, Raspberry Pi OS trixie) has 3.13. Older suites have a glibc below the runtime's floor.
SUITES = {"bookworm": "3.11", "trixie": "3.13"}
DEFAULT_MIRROR = "http://deb.debian.org/debian"
CACHE_ENV = "EDGEFLEET_CROSS_CACHE"
MIRROR_ENV = "EDGEFLEET_DEBIAN_MIRROR"

SysrootArch = Literal["arm64", "armhf", "amd64"]
# What a sysroot is for: a camera's agent (ARM, run under QEMU) or the fleet service's image (amd64).
Role = Literal["agent", "fleet"]


@dataclass(frozen=True)
class ArchInfo:
    """What differs between the ARM flavours: Debian's name, QEMU's binary, pip's platform tags."""

    debian: SysrootArch
    target_arch: str  # the Target.arch of packages that run in it
    qemu: str | None  # None: runs natively here
    pip_platforms: tuple[str, ...]
    debs: tuple[str, ...]
    # Python distributions that come from Debian's packages instead of PyPI wheels.
    from_debian: tuple[str, ...] = ()


# numpy, pillow, psutil and cffi come from Debian on both ARM flavours, as they do on Raspberry Pi OS.
# On armhf they must: none publishes armv7l wheels for CPython 3.11. On arm64 it keeps the camera
# small: numpy's wheel bundles OpenBLAS (71 MB installed) and pillow's its codecs (23 MB), where
# Debian's share the system's libraries (the arm64 image: 221 MB with the wheels; docs/agent.md).
DEBIAN_PYTHON = ("python3", "python3-numpy", "python3-pil", "python3-psutil", "python3-cffi-backend")
FROM_DEBIAN = ("numpy", "pillow", "psutil", "cffi", "pycparser")

ARCHES: dict[str, ArchInfo] = {
    "arm64": ArchInfo(
        "arm64",
        "aarch64",
        "qemu-aarch64-static",
        # Bookworm has glibc 2.36; wheels tagged for any older manylinux run on it.
        (
            "manylinux_2_28_aarch64",
            "manylinux_2_27_aarch64",
            "manylinux_2_24_aarch64",
            "manylinux_2_17_aarch64",
            "manylinux2014_aarch64",
            "linux_aarch64",
        ),
        DEBIAN_PYTHON,
        from_debian=FROM_DEBIAN,
    ),
    "armhf": ArchInfo(
        "armhf",
        "armv7",
        "qemu-arm-static",
        (
            "manylinux_2_36_armv7l",
            "manylinux_2_31_armv7l",
            "manylinux_2_28_armv7l",
            "manylinux_2_17_armv7l",
            "manylinux2014_armv7l",
            "linux_armv7l",
        ),
        DEBIAN_PYTHON,
        from_debian=FROM_DEBIAN,
    ),
}
# The fleet image's tree: Python from Debian, every library from wheels (a server shares no
# Debian numpy or pillow with anything, and the fleet's scipy and psycopg come as wheels anyway).
FLEET_ARCH = ArchInfo(
    "amd64",
    "x86_64",
    None,
    (
        "manylinux_2_28_x86_64",
        "manylinux_2_27_x86_64",
        "manylinux_2_24_x86_64",
        "manylinux_2_17_x86_64",
        "manylinux2014_x86_64",
        "linux_x86_64",
    ),
    ("python3",),
)
_ARCH_ALIASES = {"aarch64": "arm64", "arm64": "arm64", "armhf": "armhf", "armv7": "armhf", "armv7l": "armhf"}

# Debian package that provides each host tool, for MissingToolError.
TOOL_PACKAGES = {
    "debootstrap": "debootstrap",
    "dpkg-deb": "dpkg",
    "qemu-aarch64-static": "qemu-user-static",
    "qemu-arm-static": "qemu-user-static",
    # Dynamically linked QEMU: the only one that loads TCG plugins (benchmarks/qemu_insn).
    "qemu-aarch64": "qemu-user",
    "qemu-arm": "qemu-user",
    "fakeroot": "fakeroot",
}


def arch_info(arch: str, role: Role = "agent") -> ArchInfo:
    if role == "fleet":
        if arch.lower() not in ("amd64", "x86_64"):
            raise UsageError(f"the fleet image is built for amd64, not {arch!r}", "use --arch amd64")
        return FLEET_ARCH
    key = _ARCH_ALIASES.get(arch.lower())
    if key is None:
        raise UsageError(
            f"unknown sysroot architecture {arch!r}",
            "use --arch arm64 (rasp4b, rasp5, aarch64) or --arch armhf (rasp3b, armv7)",
        )
    return ARCHES[key]


def require_tool(name: str) -> str:
    """The absolute path of host tool `name`, or a MissingToolError naming its Debian package."""
    path = shutil.which(name)
    if path is None:
        raise MissingToolError(
            f"`{name}` is not on PATH",
            f"apt-get install {TOOL_PACKAGES.get(name, name)}"
            + (" (it installs to /usr/sbin: have that on PATH)" if name == "debootstrap" else ""),
        )
    return path


class SysrootSpec(Strict):
    """Every input of a sysroot build; its hash is the cache key."""

    format_version: Literal[1] = FORMAT_VERSION
    arch: SysrootArch
    suite: str = SUITE
    variant: str = "minbase"
    mirror: str = DEFAULT_MIRROR
    debs: list[str]
    pip_platforms: list[str]
    python_version: str = "3.11"
    requirements: list[str]

    def key(self) -> str:
        data = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(data).hexdigest()[:16]


class SysrootInfo(Strict):
    """sysroot.json: the spec, its key and how the build went."""

    format_version: Literal[1] = FORMAT_VERSION
    spec: SysrootSpec
    key: str
    built_at: str
    step_seconds: dict[str, float]
    wheels: list[str]


@dataclass(frozen=True)
class Sysroot:
    path: Path
    info: SysrootInfo

    @property
    def root(self) -> Path:
        return self.path / "root"

    @property
    def site(self) -> Path:
        return self.path / "site"

    @property
    def arch(self) -> ArchInfo:
        return FLEET_ARCH if self.info.spec.arch == FLEET_ARCH.debian else ARCHES[self.info.spec.arch]

    @property
    def python(self) -> Path:
        return self.root / "usr" / "bin" / f"python{self.info.spec.python_version}"


def cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else edgefleet_home() / "cross"


def role_requirements(role: Role, exclude: tuple[str, ...] = ()) -> list[str]:
    """Every distribution the core and the `role` extra need, transitively, pinned to the host's versions.

    Pinning to what the host runs keeps the emulated agent on the same library versions as the
    x86 reference it is compared with; the full closure is downloaded with --no-deps, so a
    distribution taken from Debian (`exclude`) is not pulled back in by a dependent. Extras a
    requirement names (`edgefleet[cli]`, `psycopg[binary]`) are followed; edgefleet itself is not
    pinned: this checkout's code is installed beside the wheels.
    """
    pins: dict[str, str] = {}
    pending = [("edgefleet", role)]
    followed: set[tuple[str, str]] = set()
    while pending:
        dist, extra = pending.pop()
        if (canonicalize_name(dist), extra) in followed:
            continue
        followed.add((canonicalize_name(dist), extra))
        for line in requires(dist) or []:
            req = Requirement(line)
            name = canonicalize_name(req.name)
            if req.marker is not None and not req.marker.evaluate({"extra": extra}):
                continue
            pending += [(req.name, e) for e in sorted(req.extras)]
            if name in pins:
                continue
            try:
                pins[name] = f"{name}=={version(req.name)}"
            except PackageNotFoundError:
                pins[name] = f"{name}{req.specifier}"
                continue
            pending.append((req.name, ""))
    return sorted(pin for name, pin in pins.items() if name not in (*exclude, "edgefleet"))


def python_for_suite(suite: str) -> str:
    if suite not in SUITES:
        raise UsageError(
            f"unknown Debian suite {suite!r}",
            f"use one of {', '.join(SUITES)} (older suites have glibc < 2.34, below the runtime's floor)",
        )
    return SUITES[suite]


def spec_for(arch: str, mirror: str | None = None, suite: str = SUITE, role: Role = "agent") -> SysrootSpec:
    info = arch_info(arch, role)
    return SysrootSpec(
        arch=info.debian,
        suite=suite,
        python_version=python_for_suite(suite),
        mirror=mirror or os.environ.get(MIRROR_ENV) or DEFAULT_MIRROR,
        debs=list(info.debs),
        pip_platforms=list(info.pip_platforms),
        requirements=role_requirements(role, info.from_debian),
    )


def find_sysroot(
    arch: str, cache: Path | None = None, mirror: str | None = None, suite: str = SUITE, role: Role = "agent"
) -> Sysroot | None:
    """The complete cached sysroot for `arch`, `suite`, `role` and the current inputs, or None."""
    spec = spec_for(arch, mirror, suite, role)
    path = (cache or cache_dir()) / f"{spec.arch}-{spec.key()}"
    marker = path / "sysroot.json"
    if not marker.is_file():
        return None
    return Sysroot(path, SysrootInfo.model_validate_json(marker.read_text()))


def build_command(arch: str, suite: str = SUITE) -> str:
    return f"edgefleet cross sysroot --arch {arch_info(arch).debian}" + (f" --suite {suite}" if suite != SUITE else "")


class _Build:
    """Runs the build steps in a scratch directory, each with its own log."""

    def __init__(self, work: Path, stages: Stages, failed_dir: Path, what: str = "sysroot build") -> None:
        self.what = what
        self.work = work
        self.logs = work / "logs"
        self.logs.mkdir(parents=True)
        self.stages = stages
        self.failed_dir = failed_dir

    def step(self, name: str, detail: str, argv: list[str]) -> None:
        log = self.logs / f"{name}.log"
        with self.stages.stage(name, detail), open(log, "w") as fh:
            fh.write("$ " + " ".join(argv) + "\n")
            fh.flush()
            proc = subprocess.run(argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            self.fail(name, f"exited with status {proc.returncode}")

    def fail(self, name: str, why: str) -> None:
        shutil.rmtree(self.failed_dir, ignore_errors=True)
        self.failed_dir.mkdir(parents=True)
        shutil.copytree(self.logs, self.failed_dir / "logs")
        log = self.failed_dir / "logs" / f"{name}.log"
        tail = ""
        if log.is_file():
            lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
            tail = f"; last line: {lines[-1][:200]}" if len(lines) > 1 else ""
        raise BuildError(
            f"{self.what} step `{name}` {why}{tail}",
            f"read the log {log}; a network error there means this machine could not reach the Debian mirror or PyPI: retry when it can",
        )


def _link_alternatives(root: Path) -> None:
    """Make the links dpkg's maintainer scripts would make with update-alternatives.

    `dpkg -x` runs no scripts, and Debian's numpy finds BLAS and LAPACK only through
    /usr/lib/<triplet>/libblas.so.3 and liblapack.so.3, which alternatives provide.
    """
    for triplet_dir in (root / "usr" / "lib").glob("*-linux-gnu*"):
        for sub, name in (("blas", "libblas.so.3"), ("lapack", "liblapack.so.3")):
            link, target = triplet_dir / name, triplet_dir / sub / name
            if target.exists() and not link.exists():
                link.symlink_to(Path(sub) / name)


def download_wheels(build: _Build, requirements: list[str], platforms: list[str], python: str, dest: Path) -> None:
    """`pip download` of exact pins for another platform and Python: wheels only, no dependency resolution."""
    argv = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--isolated",
        "--disable-pip-version-check",
        "--only-binary=:all:",
        "--no-deps",
        "--implementation",
        "cp",
        "--python-version",
        python,
        "--dest",
        str(dest),
    ]
    for platform in platforms:
        argv += ["--platform", platform]
    # --isolated: the host's pip.conf and constraints are about the host, not the target.
    detail = f"pip download {len(requirements)} requirements for {platforms[0]}, Python {python}"
    build.step("wheels", detail, argv + requirements)


def unzip_wheels(wheels: Path, site: Path) -> list[str]:
    """Unpack every wheel in `wheels` into `site` (what pip install does, minus scripts); returns their names."""
    names = []
    for wheel in sorted(wheels.glob("*.whl")):
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(site)
        names.append(wheel.name)
    return names


def build_sysroot(
    arch: str,
    *,
    cache: Path | None = None,
    mirror: str | None = None,
    force: bool = False,
    quiet: bool = False,
    suite: str = SUITE,
    role: Role = "agent",
) -> Sysroot:
    """Build (or return the cached) sysroot for `arch` ("arm64" or "armhf"; "amd64" for the fleet `role`) of Debian `suite`.

    Steps, each logged: debootstrap (download + unpack, --foreign), unpack (dpkg -x the rest),
    wheels (pip download --platform), site (unzip wheels), bytecode (precompile .pyc so each
    emulated start skips it). Raises MissingToolError naming the Debian package of a missing tool
    and BuildError naming the failed step and its kept log.
    """
    info = arch_info(arch, role)
    spec = spec_for(arch, mirror, suite, role)
    cache = cache or cache_dir()
    final = cache / f"{spec.arch}-{spec.key()}"
    if not force:
        found = find_sysroot(arch, cache, mirror, suite, role)
        if found is not None:
            return found
    debootstrap = [require_tool("debootstrap")]
    if os.geteuid() != 0:  # debootstrap refuses to run as a user; --foreign needs no more than fakeroot
        debootstrap.insert(0, require_tool("fakeroot"))
    require_tool("dpkg-deb")
    if info.qemu:
        require_tool(info.qemu)
    stages = Stages(quiet=quiet)
    cache.mkdir(parents=True, exist_ok=True)
    work = cache / f".{final.name}.partial-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    try:
        build = _Build(work, stages, cache / f"{final.name}.failed")
        root = work / "root"
        build.step(
            "debootstrap",
            f"{spec.suite} {spec.arch} {spec.variant} from {spec.mirror}",
            [
                *debootstrap,
                f"--arch={spec.arch}",
                "--foreign",
                f"--variant={spec.variant}",
                f"--include={','.join(spec.debs)}",
                spec.suite,
                str(root),
                spec.mirror,
            ],
        )
        debs = sorted((root / "var" / "cache" / "apt" / "archives").glob("*.deb"))
        if not debs:
            build.fail("debootstrap", "downloaded no .deb files")
        build.step(
            "unpack",
            f"dpkg-deb -x {len(debs)} packages",
            ["sh", "-c", 'for d in "$@"; do dpkg-deb -x "$d" "$0" || exit 1; done', str(root), *map(str, debs)],
        )
        for deb in debs:  # the archives are unpacked; keep the sysroot small
            deb.unlink()
        _link_alternatives(root)
        if not (root / "usr" / "bin" / f"python{spec.python_version}").exists():
            build.fail("unpack", f"left no python{spec.python_version} in the sysroot")
        site = work / "site"
        site.mkdir()
        wheels: list[str] = []
        if spec.requirements:
            dest = work / "wheels"
            download_wheels(build, spec.requirements, spec.pip_platforms, spec.python_version, dest)
            with stages.stage("site", "unzip wheels"):
                wheels = unzip_wheels(dest, site)
            shutil.rmtree(dest)
        with stages.stage("bytecode", "precompile .pyc"):
            # CPython's .pyc format is the same on every 3.11 host; compiling here saves each
            # emulated start from doing it under QEMU.
            if sys.version_info[:2] == tuple(int(p) for p in spec.python_version.split(".")):
                for tree in (root / "usr" / "lib" / f"python{spec.python_version}", site):
                    compileall.compile_dir(str(tree), quiet=2, workers=1)
        sysinfo = SysrootInfo(
            spec=spec,
            key=spec.key(),
            built_at=now_utc(),
            step_seconds={k: round(v, 2) for k, v in stages.timings.items()},
            wheels=wheels,
        )
        (work / "sysroot.json").write_text(sysinfo.model_dump_json(indent=2) + "\n")
        if not force and (final / "sysroot.json").is_file():  # a concurrent build finished first: use it
            return Sysroot(final, SysrootInfo.model_validate_json((final / "sysroot.json").read_text()))
        shutil.rmtree(final, ignore_errors=True)  # the old tree (--force) or an incomplete leftover
        work.rename(final)
        shutil.rmtree(cache / f"{final.name}.failed", ignore_errors=True)
        return Sysroot(final, sysinfo)
    finally:
        shutil.rmtree(work, ignore_errors=True)
