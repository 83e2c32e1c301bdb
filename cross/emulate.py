"""Run commands from an ARM sysroot on x86 with QEMU user mode: `qemu-aarch64-static -L ROOT ...`.

No privilege and no binfmt_misc: QEMU is started explicitly and `-L ROOT` makes the guest's
absolute paths (its dynamic loader, /usr/lib, /etc) resolve inside the sysroot first and fall
back to the host's, so host paths such as a package in /tmp or this repository stay reachable.
A guest program that starts other guest programs needs binfmt (see docs/cross.md); Python code
that only imports and computes does not.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from edgefleet.agent.runtime_worker import RuntimeWorker
from edgefleet.agent_release import DEVICE_PACKAGES
from edgefleet.compiler.targets import Target, resolve_target
from edgefleet.cross.sysroot import ARCHES, Sysroot, arch_info, build_command, find_sysroot, require_tool
from edgefleet.errors import TargetNotRunnableError, UsageError
from edgefleet.package import open_package
from edgefleet.runtime_bundle import BUNDLE_ENV, find_bundle

# The subpackages a device needs; the compiler and fleet service never run on the camera.
_GUEST_BIN_DIRS = ("usr/bin", "usr/sbin", "usr/local/bin")


def sysroot_arch_for(target: Target) -> str:
    """The sysroot architecture a target's packages run in, or TargetNotRunnableError."""
    if target.run_mode not in ("qemu-aarch64", "qemu-arm"):
        raise TargetNotRunnableError(
            f"target {target.name} runs {target.run_mode}, not under QEMU user mode",
            "pick an ARM CPU target such as rasp4b, rasp5, aarch64 or rasp3b (`edgefleet targets`)",
        )
    return "arm64" if target.arch == "aarch64" else "armhf"


def require_sysroot(arch: str) -> Sysroot:
    sysroot = find_sysroot(arch)
    if sysroot is None:
        raise TargetNotRunnableError(
            f"no {arch_info(arch).debian} sysroot is built for the current inputs",
            f"build it once with `{build_command(arch)}`",
        )
    return sysroot


def sysroot_for_target(target: str | Target) -> Sysroot:
    resolved = resolve_target(target) if isinstance(target, str) else target
    return require_sysroot(sysroot_arch_for(resolved))


def _guest_program(sysroot: Sysroot, program: str) -> Path:
    """A guest program name or absolute guest path -> its host path inside the sysroot."""
    if program in ("python", "python3"):
        return sysroot.python
    if program.startswith("/"):
        candidate = sysroot.root / program.lstrip("/")
        if candidate.exists():
            return candidate
        raise UsageError(f"{program} does not exist in the {sysroot.info.spec.arch} sysroot", f"look in {sysroot.root}")
    for sub in _GUEST_BIN_DIRS:
        candidate = sysroot.root / sub / program
        if candidate.exists():
            return candidate
    raise UsageError(
        f"`{program}` is not a program in the {sysroot.info.spec.arch} sysroot",
        "give a path inside the sysroot, or `python3 ...`",
    )


def _link_device_packages(into: Path) -> Path:
    """A PYTHONPATH directory where `import edgefleet.agent` finds this checkout's code.

    The repository maps its top-level folders onto `edgefleet.*` through setuptools
    package-dir; the guest has no installed distribution, so the same layout is made of symlinks.
    """
    top = into / "edgefleet"
    top.mkdir(parents=True)
    core = Path(importlib.util.find_spec("edgefleet").submodule_search_locations[0])
    for entry in core.iterdir():
        if entry.suffix == ".py":
            (top / entry.name).symlink_to(entry)
    for name in DEVICE_PACKAGES[1:]:
        spec = importlib.util.find_spec(name)
        (top / name.rpartition(".")[2]).symlink_to(Path(spec.submodule_search_locations[0]))
    return into


@dataclass(frozen=True)
class QemuOptions:
    """Departures from the plain `qemu-*-static -L ROOT` start, for instrumented runs (benchmarks/qemu_insn).

    `binary`: another QEMU (plugins need the dynamically linked one); `options`: put before the
    guest program (-cpu, -plugin, -d, -D); `root`: the -L root instead of the sysroot's own;
    `python_path`: guest folders searched before the sysroot's wheels.
    """

    binary: str | None = None
    options: tuple[str, ...] = ()
    root: Path | None = None
    python_path: tuple[Path, ...] = ()


def guest_env(
    sysroot: Sysroot, code_dir: Path | None, extra: dict[str, str] | None = None, first: Sequence[Path] = ()
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "PYTHONPATH", "VIRTUAL_ENV", "PYTHONSTARTUP")}
    paths = [str(p) for p in first] + [str(sysroot.site)] + ([str(code_dir)] if code_dir else [])
    # PYTHONSAFEPATH: the working directory (often this repository, whose edgefleet/ folder
    # lacks the agent) must not shadow the linked package.
    env.update(PYTHONPATH=os.pathsep.join(paths), PYTHONNOUSERSITE="1", PYTHONSAFEPATH="1")
    # The guest runs packages on the runtime bundle of its architecture (a host path that
    # QEMU's -L falls back to), as a camera runs its installed one.
    if BUNDLE_ENV not in (extra or {}):
        env[BUNDLE_ENV] = str(find_bundle(sysroot.arch.target_arch).path)
    env.update(extra or {})
    return env


def emulated_argv(
    sysroot: Sysroot, command: Sequence[str], argv0: str | None = None, qemu: QemuOptions = QemuOptions()
) -> list[str]:
    """QEMU's command line for a guest `command`; `argv0` is the name the guest sees itself started as.

    `argv0` matters to a venv's interpreter: Python finds its pyvenv.cfg next to argv[0], and a
    venv's bin/python3 is a symlink that the host kernel, not QEMU, would resolve (to the host's Python).
    """
    if not command:
        raise UsageError(
            "no command to run", "put it after --, e.g. edgefleet cross run --target rasp4b -- python3 -c 'print(1)'"
        )
    binary = require_tool(qemu.binary or sysroot.arch.qemu)
    program = str(_guest_program(sysroot, command[0]))
    return [
        binary,
        *(["-0", argv0] if argv0 else []),
        *qemu.options,
        "-L",
        str(qemu.root or sysroot.root),
        program,
        *command[1:],
    ]


def run_emulated(
    sysroot: Sysroot,
    command: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float | None = None,
    capture: bool = False,
    qemu: QemuOptions = QemuOptions(),
) -> subprocess.CompletedProcess:
    """Run `command` (a guest program and its arguments) from `sysroot` under QEMU user mode.

    The guest sees the sysroot's wheels and this checkout's `edgefleet` (core and agent) on
    PYTHONPATH. Returns the finished process; its exit status is the guest program's.
    """
    argv = emulated_argv(sysroot, command, qemu=qemu)
    with tempfile.TemporaryDirectory(prefix="edgefleet-guest-") as tmp:
        code = _link_device_packages(Path(tmp))
        return subprocess.run(
            argv,
            env=guest_env(sysroot, code, env, qemu.python_path),
            cwd=cwd,
            timeout=timeout,
            capture_output=capture,
            text=capture,
            stdin=subprocess.DEVNULL,
        )


@contextmanager
def emulated_worker(sysroot: Sysroot) -> Iterator[RuntimeWorker]:
    """A RuntimeWorker whose child is the sysroot's Python under QEMU, on the sysroot architecture's runtime."""
    with tempfile.TemporaryDirectory(prefix="edgefleet-guest-") as tmp:
        env = guest_env(sysroot, _link_device_packages(Path(tmp)))
        worker = RuntimeWorker(
            emulated_argv(sysroot, ["python3"]),
            env,
            what=f"the {sysroot.info.spec.arch} runtime under {sysroot.arch.qemu}",
        )
        try:
            yield worker
        finally:
            worker.close()


def sysroot_for_package(package: Path) -> Sysroot:
    """The sysroot that runs `package`; refuses, before anything starts, one it cannot run."""
    with open_package(package, None) as opened:
        manifest = opened.manifest
    info = next((a for a in ARCHES.values() if a.target_arch == manifest.target.arch), None)
    if info is None or manifest.runtime.kind != "tvm":
        raise TargetNotRunnableError(
            f"package {manifest.name} {manifest.version} is a {manifest.runtime.kind} package for {manifest.target.arch} ({manifest.target.name}); "
            f"emulation runs TVM packages for {', '.join(a.target_arch for a in ARCHES.values())}",
            "run it natively with `edgefleet run`, or compile it for an ARM target such as rasp4b",
        )
    return require_sysroot(info.debian)


def run_package_emulated(
    package: Path,
    image: Path,
    *,
    repeat: int = 1,
    trust: list[Path] | None = None,
    timeout: float | None = None,
    capture: bool = False,
) -> subprocess.CompletedProcess:
    """`edgefleet run PACKAGE --image IMAGE --json` inside the package's emulated sysroot.

    The guest does what a camera does: checks the signature and hashes, preprocesses the
    image as the manifest says, and runs the library with the agent's runtime.
    """
    sysroot = sysroot_for_package(package)
    command = [
        "python3",
        "-m",
        "edgefleet.cli",
        "run",
        str(Path(package).resolve()),
        "--image",
        str(Path(image).resolve()),
        "--repeat",
        str(repeat),
        "--json",
    ]
    for key in trust or []:
        command += ["--trust", str(Path(key).resolve())]
    return run_emulated(sysroot, command, timeout=timeout, capture=capture)
